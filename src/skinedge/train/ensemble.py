"""Train K classifiers, member k with seed k on the k-th augmented set, and ensemble them.

The paper's ensemble: EfficientNets trained on differently seeded GAN-augmented datasets,
combined by averaging probabilities. With no synthetic sets it is the control: K seeds on the
real data alone, which shows how much of an ensemble's gain is the ensembling, not the GAN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from skinedge.errors import ConfigError
from skinedge.train.callbacks import TrainCallbacks
from skinedge.train.config import TrainConfig


def member_dir(out_dir: Path, index: int) -> Path:
    """Run folder of member ``index``."""
    return Path(out_dir) / "members" / f"member-{index}"


def train_ensemble(
    cfg: TrainConfig, out_dir: Path | str, *, members: int | None = None,
    synthetic: Sequence[Path | None] | None = None,
    callbacks: Callable[[int], TrainCallbacks | None] | None = None,
) -> Path:
    """Train the members (resuming any that stopped) and write the ensemble checkpoint.

    Args:
        cfg: Member configuration; member k runs with ``seed = cfg.seed + k`` and
            ``data.synthetic = synthetic[k]``.
        out_dir: ``members/member-k/`` runs and the ensemble checkpoint in ``ensemble/``.
        members: K when ``synthetic`` is not given (real data only).
        synthetic: One synthetic set per member (None entries train on real data only).
        callbacks: ``callbacks(k)`` -> progress hooks of member k.

    Returns:
        The ensemble checkpoint folder.

    Raises:
        ConfigError: fewer than two members, or both/neither of ``members`` and ``synthetic``.
    """
    from skinedge.models import create_ensemble
    from skinedge.train.config import load_data_manifest
    from skinedge.train.resume import has_trainer_state
    from skinedge.train.trainer import train_classifier

    if (members is None) == (synthetic is None):
        raise ConfigError("give the number of members or one synthetic set per member")
    sets = list(synthetic) if synthetic is not None else [None] * int(members or 0)
    if len(sets) < 2:
        raise ConfigError(f"an ensemble needs at least two members, got {len(sets)}")
    out_dir = Path(out_dir)
    manifest = load_data_manifest(cfg)
    for k, synthetic_set in enumerate(sets):
        run = member_dir(out_dir, k)
        data = cfg.data.model_copy(update={"synthetic": synthetic_set})
        member_cfg = cfg.model_copy(update={"seed": cfg.seed + k, "data": data})
        train_classifier(member_cfg, run, resume=has_trainer_state(run),
                         callbacks=callbacks(k) if callbacks else None, manifest=manifest)
    ensemble = out_dir / "ensemble"
    if not (ensemble / "card.json").is_file():
        create_ensemble([member_dir(out_dir, k) / "best" for k in range(len(sets))], ensemble)
    if cfg.calibrate:
        calibrate_ensemble(ensemble, cfg.data.manifest, device=cfg.device)
    return ensemble


def calibrate_ensemble(ensemble: Path, manifest: Path | str | None = None,
                       device: str = "auto", min_images: int | None = None) -> None:
    """Fit a new ensemble's temperature on its validation split, unless it has one already
    (a rerun after a kill) or the split is too small to fit on (card left at T = 1).

    Each member's temperature calibrates that member alone; the mean of their probabilities
    is a model of its own, usually less confident than its members, and is fitted anew."""
    from skinedge.evaluate.calibration import MIN_CALIBRATION_IMAGES, calibrate_on_split
    from skinedge.models import load_card
    from skinedge.utils.device import resolve_device

    if load_card(ensemble).calibration is None:
        calibrate_on_split(ensemble, manifest, "val", required=False,
                           device=resolve_device(device),
                           min_images=min_images or MIN_CALIBRATION_IMAGES)
