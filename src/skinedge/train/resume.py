"""Whether a run folder may be started afresh or resumed, and with which config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from skinedge.errors import ConfigError
from skinedge.models.checkpoint import load_trainer_state
from skinedge.train.config import TrainConfig

#: Settings that may change between a run and its resumption without changing its result.
#: (num_workers and device change the random streams or the arithmetic, so they must match.)
RESUMABLE_CHANGES = frozenset({"epochs", "threads", "eval_batch_size", "early_stopping_patience"})


def has_trainer_state(run: Path) -> bool:
    """A run to resume: ``last/``, or its previous copy left by a kill between two renames."""
    return (run / "last").exists() or (run / ".last.old").exists()


def refuse_existing_run(out_dir: Path) -> None:
    """A fresh run must not overwrite another one's checkpoints.

    Raises:
        ConfigError: ``out_dir`` holds ``last/`` or ``best/``.
    """
    if any((out_dir / d).exists() for d in ("last", "best")):
        raise ConfigError(f"{out_dir} already holds a training run; continue it with --resume, "
                          "or choose another --out (or delete the folder) to start afresh")


def resumable_state(out_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    """The trainer state of ``out_dir/last`` (or its ``.last.old`` copy after a kill),
    once ``cfg`` is checked against the config the run started with.

    Raises:
        ConfigError: no trainer state; a changed setting other than
            :data:`RESUMABLE_CHANGES`; more or fewer epochs of a cosine schedule.
    """
    try:
        state = load_trainer_state(out_dir / "last")  # falls back to .last.old after a kill
    except FileNotFoundError:
        state = None
    if state is None:
        raise ConfigError(f"cannot resume: {out_dir / 'last'} holds no trainer state; "
                          "start without --resume")
    # Validate the saved config again so fields added since then compare at their defaults;
    # where the images lie (data.root) may change.
    try:
        old = type(cfg).model_validate(state["config"]).model_dump(mode="json")
    except ValidationError as exc:
        raise ConfigError(f"cannot resume: the config saved in {out_dir / 'last'} is not valid "
                          f"for this skinedge version ({exc.errors()[0]['msg']} at "
                          f"{'.'.join(map(str, exc.errors()[0]['loc']))}); start a new run "
                          "without --resume") from exc
    new = cfg.model_dump(mode="json")
    old["data"]["root"] = new["data"]["root"] = None
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"cannot resume {out_dir}: the config changed in {changed} since the run started; "
            f"use the run's own config ({out_dir / 'config.yaml'}) or a new output folder")
    if old.get("epochs") != new["epochs"] and new["optim"]["scheduler"] == "cosine":
        # The cosine schedule is laid out over `epochs`; its saved state cannot be stretched.
        raise ConfigError(
            f"cannot resume {out_dir} with epochs={new['epochs']}: its cosine learning-rate "
            f"schedule was laid out over epochs={old.get('epochs')}; resume with that value, or "
            f"fine-tune its weights in a new run folder with --set "
            f"model.pretrained={out_dir / 'last' / 'model.safetensors'}")
    return state
