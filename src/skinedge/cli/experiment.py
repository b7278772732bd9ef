"""``skinedge experiment``: studies that train and compare several models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinedge.cli.common import SetOpt

app = typer.Typer(help="Studies that train and compare several models.", no_args_is_help=True)


@app.command("ablation")
def ablation(
    config: Annotated[Path, typer.Option("--config", "-c", help="Ablation YAML (AblationConfig).")],
    out: Annotated[Path, typer.Option(help="Folder of every arm's runs, sets and evaluations.")],
    overrides: SetOpt = None,
) -> None:
    """No augmentation / classic augmentation / GAN without selection / GAN with selection /
    ensembles, on one split: balanced accuracy, melanoma AUC and rare-class recall with
    paired-bootstrap differences, as ablation.md and ablation.json. Rerun to continue."""
    from skinedge.cli.progress import StageProgress, console, make_progress
    from skinedge.pipelines.ablation import load_ablation_config, run_ablation
    from skinedge.utils.provenance import now, record_command

    started = now()
    cfg = load_ablation_config(config, list(overrides or []))
    with make_progress() as progress:
        run_ablation(cfg, out, callbacks=lambda arm: _announce(arm, progress),
                     progress=StageProgress(progress))
    record_command(out, started=started, finished=now())
    console.print((out / "ablation.md").read_text())


def _announce(arm: str, progress):
    from skinedge.cli.progress import RichTrainCallbacks, console

    console.print(f"[bold]arm {arm}[/]")
    return RichTrainCallbacks(progress)


@app.command("kfold")
def kfold(
    config: Annotated[Path, typer.Option("--config", "-c",
                                         help="K-fold ablation YAML (KFoldAblationConfig).")],
    out: Annotated[Path, typer.Option(help="Folder of every fold's split, GANs, runs and "
                                           "evaluations.")],
    overrides: SetOpt = None,
) -> None:
    """Classic augmentation against GAN augmentation over lesion-grouped folds: a GAN and the
    classifiers trained on each fold's train split, every image tested once, the difference
    pooled over folds and seeds with a lesion bootstrap and the difference this design can
    detect, as kfold.md and kfold.json. Rerun to continue."""
    from skinedge.cli.progress import StageProgress, console, make_progress
    from skinedge.pipelines.kfold import KFoldAblationConfig, run_kfold_ablation
    from skinedge.utils.config import load_config
    from skinedge.utils.provenance import now, record_command

    started = now()
    cfg = load_config(config, list(overrides or []), KFoldAblationConfig,
                      kind="k-fold ablation config")
    with make_progress() as progress:
        run_kfold_ablation(cfg, out, callbacks=lambda name: _announce(name, progress),
                           progress=StageProgress(progress))
    record_command(out, started=started, finished=now())
    console.print((out / "kfold.md").read_text())
