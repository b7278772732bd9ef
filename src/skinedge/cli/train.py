"""``skinedge train``: a classifier from a split manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from skinedge.cli.common import ConfigOpt, SetOpt, load_run_config

app = typer.Typer()


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run folder: config.yaml, metrics.jsonl, last/, best/.")],
    config: ConfigOpt = None,
    manifest: Annotated[Path | None, typer.Option(
        help="Split manifest from `skinedge data split` (same as --set data.manifest=...).")] = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out after a stop.")] = False,
) -> None:
    """Train a classifier on a manifest's train split, validating every epoch on its val split.

    Runs unchanged under `torchrun --nproc_per_node N` (DDP; NCCL on GPUs, gloo on CPUs).
    """
    from skinedge.cli.progress import RichTrainCallbacks, console, make_progress
    from skinedge.train.trainer import train_classifier
    from skinedge.utils.provenance import now, record_command

    started = now()
    cfg = load_run_config(out, config, overrides, resume, {"data.manifest": manifest})
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with make_progress() as progress:
        callbacks = RichTrainCallbacks(progress) if rank0 else None
        result = train_classifier(cfg, out, resume=resume, callbacks=callbacks)
    if rank0:
        record_command(out, started=started, finished=now())  # what made this run, for reports
        note = " (stopped early)" if result.stopped_early else ""
        console.print(f"best epoch {result.best_epoch}: val {cfg.monitor} "
                      f"{result.best_metric:.4f}{note}\ncheckpoint: {result.best_dir}")
