"""``skinedge experiment``: studies that train and compare several models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinedge.cli.main import SetOpt, app, fail

experiment_app = typer.Typer(help="Studies that train and compare several models.",
                             no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("ablation")
def ablation(
    config: Annotated[Path, typer.Option("--config", "-c", help="Ablation YAML (AblationConfig).")],
    out: Annotated[Path, typer.Option(help="Folder of every arm's runs, sets and evaluations.")],
    overrides: SetOpt = None,
) -> None:
    """No augmentation / classic augmentation / GAN without selection / GAN with selection /
    ensembles, on one split: balanced accuracy, melanoma AUC and rare-class recall with
    paired-bootstrap differences, as ablation.md and ablation.json. Rerun to continue."""
    import yaml

    from skinedge.cli.progress import StageProgress, console, make_progress
    from skinedge.pipelines.ablation import AblationConfig, run_ablation
    from skinedge.train.config import apply_overrides
    from skinedge.utils.provenance import now, record_command

    started = now()
    try:
        doc = apply_overrides(yaml.safe_load(config.read_text()) or {}, list(overrides or []))
        cfg = AblationConfig.model_validate(doc)
        with make_progress() as progress:
            run_ablation(cfg, out, callbacks=lambda arm: _announce(arm, progress),
                         progress=StageProgress(progress))
    except (ValueError, FileNotFoundError, OSError, yaml.YAMLError) as exc:
        fail(str(exc))
    record_command(out, started=started, finished=now())
    console.print((out / "ablation.md").read_text())


def _announce(arm: str, progress):
    from skinedge.cli.progress import RichTrainCallbacks, console

    console.print(f"[bold]arm {arm}[/]")
    return RichTrainCallbacks(progress)
