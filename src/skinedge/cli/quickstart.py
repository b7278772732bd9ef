"""``skinedge quickstart``: the main job end to end on one dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinedge.cli.common import ConfigOpt, SetOpt

app = typer.Typer()


@app.command()
def quickstart(
    data: Annotated[Path | None, typer.Option(
        help="Labelled dataset folder; default $SKINEDGE_DATA/ham10000-sample.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/quickstart"),
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted quickstart.")] = False,
) -> None:
    """The main job end to end: split by lesion, train, evaluate on the test split, explain."""
    from skinedge.cli.progress import RichReporter, console
    from skinedge.pipelines.quickstart import run_quickstart
    from skinedge.utils.provenance import command_line

    summary = run_quickstart(data, out, config, list(overrides or []), resume=resume,
                             command=command_line(),
                             reporter=RichReporter())
    console.print(summary)
