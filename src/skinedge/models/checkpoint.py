"""Checkpoints: a folder with ``model.safetensors`` and ``card.json``.

Writes go to a hidden temporary folder that is renamed into place, so a kill at any moment
leaves either the previous checkpoint or the new one, never a mix. Trainer state (optimizer,
scheduler, RNG) sits beside the weights as ``trainer_state.pt`` when training can resume from it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skinedge.errors import ConfigError, ModelError
from skinedge.models.card import CARD, ModelCard, checkpoint_dir, load_card  # noqa: F401
from skinedge.utils.io import fsync_path, sha256_file, writing

WEIGHTS = "model.safetensors"
TRAINER_STATE = "trainer_state.pt"


def save_checkpoint(
    directory: Path, model: nn.Module, card: ModelCard, trainer_state: dict[str, Any] | None = None
) -> Path:
    """Write weights, card (with the weights' sha256, sealed: :meth:`ModelCard.sealed`) and
    optional trainer state atomically.

    Raises:
        WriteError: a full disk or a folder that is not writable (the previous checkpoint is
            left as it was, and no half-written temporary folder).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp"
    try:
        # A full disk or a folder that is not writable: WriteError naming the checkpoint (the
        # full-disk check needs the partial file, so tmp is removed after the conversion).
        with writing(directory):
            directory.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            state = {k: v.detach().contiguous().cpu()
                     for k, v in _unwrap(model).state_dict().items()}
            save_file(state, str(tmp / WEIGHTS))
            card = card.model_copy(update={"weights_sha256": sha256_file(tmp / WEIGHTS)}).sealed()
            (tmp / CARD).write_text(card.to_json())
            if trainer_state is not None:
                torch.save(trainer_state, tmp / TRAINER_STATE)
            for file in tmp.iterdir():
                fsync_path(file)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays (nor its space)
        raise
    old = directory.parent / f".{directory.name}.old"
    if not directory.exists() and old.exists():
        old.rename(directory)  # an earlier kill between the renames below: restore first
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    fsync_path(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_checkpoint(path: Path | str) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model described by a checkpoint's card and load its weights.

    An ensemble checkpoint (card with ``members``) loads as a
    :class:`skinedge.models.ensemble.Ensemble`; a QAT checkpoint (``precision: int8``) as the
    model with its NNCF fake quantizers.

    Raises:
        NotFoundError: not a checkpoint folder.
        ModelError: an invalid or edited card (see :func:`load_card`), weights whose hash
            differs from the card's (a corrupted or swapped file), an architecture timm does
            not know, or weights that do not fit the card's architecture.
    """
    from skinedge.models.factory import create_classifier

    card = load_card(path)
    if card.members:
        from skinedge.models.ensemble import load_ensemble

        return load_ensemble(checkpoint_dir(Path(path)), card), card
    try:
        model, _ = create_classifier(card.architecture, card.num_classes, pretrained="none",
                                     drop_rate=card.drop_rate)
    except ConfigError as exc:  # the name comes from the card, not from an option
        raise ModelError(f"{checkpoint_dir(Path(path)) / CARD}: {exc}; restore the checkpoint "
                         "folder from the training run") from exc
    quantization = card.training.get("quantization")
    if quantization and quantization.get("nncf_config"):
        from skinedge.models.quantized import restore_quantizers

        model = restore_quantizers(model, quantization["nncf_config"])
    try:
        model.load_state_dict(load_checkpoint_weights(path, card), strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or shapes: card and weights disagree
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise ModelError(f"{checkpoint_dir(Path(path)) / WEIGHTS}: the weights do not fit the "
                         f"{card.architecture} with {card.num_classes} classes that {CARD} "
                         f"describes ({details}); restore the checkpoint folder from the "
                         "training run") from exc
    model.eval()
    return model, card


def load_checkpoint_weights(path: Path | str, card: ModelCard | None = None,
                            ) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint folder, checked against the hash in its card (``card``
    when the caller has read it already, else the folder's ``card.json``)."""
    from safetensors.torch import load_file

    directory = checkpoint_dir(Path(path))
    weights = directory / WEIGHTS
    expected = (card or load_card(directory)).weights_sha256
    if expected and sha256_file(weights) != expected:
        raise ModelError(
            f"{weights}: sha256 differs from the one in {CARD}; the file was changed or "
            "corrupted, restore it from the training run"
        )
    return load_file(str(weights))


def load_trainer_state(path: Path | str) -> dict[str, Any] | None:
    file = checkpoint_dir(Path(path)) / TRAINER_STATE
    if not file.is_file():
        return None
    return torch.load(file, map_location="cpu", weights_only=False)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
