"""``skinedge ensemble``: several checkpoints that average their probabilities, as one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinedge.cli.common import ConfigOpt, SetOpt, load_run_config

app = typer.Typer(help="Ensembles: several checkpoints that average their probabilities.",
                  no_args_is_help=True)


@app.command("create")
def ensemble_create(
    out: Annotated[Path, typer.Argument(help="New ensemble checkpoint folder.")],
    members: Annotated[list[Path], typer.Argument(help="Member checkpoint folders (two or more).")],
) -> None:
    """Copy member checkpoints into one ensemble checkpoint that evaluate, bench, export and
    distil accept like any other."""
    from skinedge.cli.progress import console
    from skinedge.models import create_ensemble

    path = create_ensemble(members, out)
    console.print(f"ensemble of {len(members)} members: {path} (uncalibrated: fit its "
                  f"temperature with `skinedge calibrate {path}`)")


@app.command("train")
def ensemble_train(
    out: Annotated[Path, typer.Option(help="Folder: members/member-k runs and ensemble/.")],
    config: ConfigOpt = None,
    manifest: Annotated[Path | None, typer.Option(
        help="Split manifest (same as --set data.manifest=...).")] = None,
    synthetic: Annotated[list[Path] | None, typer.Option(
        help="Synthetic set of member k (repeat once per member; from `skinedge gan select`).")] = None,
    members: Annotated[int | None, typer.Option(
        help="Number of members on real data only (instead of --synthetic).")] = None,
    overrides: SetOpt = None,
) -> None:
    """Train K members (member k: seed k, k-th synthetic set) and ensemble them. Finished
    members are kept and stopped ones resume, so rerun the same command after a kill."""
    from skinedge.cli.progress import RichTrainCallbacks, console, make_progress
    from skinedge.train.ensemble import train_ensemble
    from skinedge.utils.provenance import now, record_command

    started = now()
    cfg = load_run_config(out, config, overrides, False, {"data.manifest": manifest})
    with make_progress() as progress:
        path = train_ensemble(cfg, out, members=members, synthetic=synthetic or None,
                              callbacks=lambda k: RichTrainCallbacks(progress))
    record_command(out, started=started, finished=now())
    console.print(f"ensemble: {path}")
