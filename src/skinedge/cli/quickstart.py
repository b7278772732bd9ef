"""``skinedge quickstart``: the main job end to end on one dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinedge.cli.common import ConfigOpt, SetOpt, print_error

app = typer.Typer()


@app.command()
def quickstart(
    data: Annotated[list[Path] | None, typer.Option(
        help="Labelled dataset folder; default $SKINEDGE_DATA/ham10000-sample. Repeat it for "
             "several sources in one split (each split on its own, labels mapped into the "
             "first folder's classes, figures per source).")] = None,
    out: Annotated[Path, typer.Option(
        help="Output folder; run again to continue an interrupted quickstart.")
                   ] = Path("runs/quickstart"),
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """The main job end to end: split by lesion, train, evaluate on the test split, explain,
    export to ONNX and bench (the packaged pipeline-quickstart.yaml: each stage is cached, a
    rerun continues where it stopped). --config and --set change the training recipe. Exit 1
    when the export or the bench failed."""
    from skinedge.cli.progress import RichReporter, console
    from skinedge.pipelines.quickstart import run_quickstart
    from skinedge.utils.provenance import command_line

    summary, result = run_quickstart(list(data) if data else None, out, config,
                                     list(overrides or []),
                                     command=command_line(), reporter=RichReporter())
    console.print(summary)
    for name, reason in result.failures.items():
        print_error(f"{name} failed: {reason}")
    if not result.passed:
        raise typer.Exit(1)
