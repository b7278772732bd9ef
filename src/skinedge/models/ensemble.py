"""Ensembles: classifiers that average their probabilities, saved and loaded as one checkpoint.

An ensemble checkpoint is a folder with its own ``card.json`` (``architecture: ensemble`` and a
``members`` list) and a copy of each member checkpoint under ``members/NN``, so it moves between
machines as one piece. ``load_checkpoint`` returns an :class:`Ensemble` for it, so evaluation,
Grad-CAM, export, benchmarks and distillation take an ensemble wherever they take a model.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from skinedge.errors import ConfigError, ModelError
from skinedge.models.card import CARD, EnsembleMember, ModelCard
from skinedge.models.checkpoint import load_card, load_checkpoint
from skinedge.utils.io import atomic_write_text, fsync_path

ARCHITECTURE = "ensemble"


class Ensemble(nn.Module):
    """The mean of the members' softmax probabilities.

    ``forward`` returns the log of that mean, so ``softmax(forward(x))`` is the averaged
    probability and every caller that turns logits into probabilities works unchanged.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def member_probs(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) -> each member's probabilities (M, N, C)."""
        return torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) -> log of the averaged probabilities (N, C)."""
        return self.member_probs(x).mean(0).clamp_min(1e-12).log()


def create_ensemble(members: Sequence[Path | str], out: Path | str) -> Path:
    """Copy member checkpoints into ``out/members/NN`` and write the ensemble's card.

    Members must agree on classes, preprocessing and data split: averaging models that read
    images differently is wrong, and one trained on another split may have seen the test set.

    Raises:
        ConfigError: fewer than two members, or an ``out`` that already exists.
        ModelError: a member that is itself an ensemble, or members that disagree.
    """
    out = Path(out)
    if len(members) < 2:
        raise ConfigError("an ensemble needs at least two member checkpoints")
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another folder or delete it")
    cards = [load_card(m) for m in members]
    first = cards[0]
    for path, card in zip(members, cards):
        if card.members:
            raise ModelError(f"{path} is itself an ensemble; list its members instead")
        for field in ("classes", "preprocess"):
            if getattr(card, field) != getattr(first, field):
                raise ModelError(f"{path} differs from {members[0]} in {field}: "
                                 f"{getattr(card, field)} vs {getattr(first, field)}")
        if card.data.split_hash != first.data.split_hash:
            raise ModelError(
                f"{path} was trained on split {card.data.split_hash}, {members[0]} on "
                f"{first.data.split_hash}: an ensemble of different splits may have seen "
                "its own test images; train the members on one manifest")
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    entries = []
    for i, (path, card) in enumerate(zip(members, cards)):
        rel = f"members/{i:02d}"
        src = Path(path)
        src = src.parent if src.is_file() else src
        shutil.copytree(src, tmp / rel, ignore=shutil.ignore_patterns("trainer_state.pt"))
        entries.append(EnsembleMember(path=rel, architecture=card.architecture,
                                      weights_sha256=card.weights_sha256, source=str(path),
                                      metrics=card.metrics))
    card = first.model_copy(update={
        "architecture": ARCHITECTURE, "members": entries, "metrics": {}, "training": {},
        "weights_sha256": ensemble_hash([e.weights_sha256 or "" for e in entries]),
        "pretrained": "members", "drop_rate": 0.0,
        # the members' temperatures calibrate each alone; the mean of their probabilities
        # is fitted anew (`skinedge calibrate`)
        "temperature": 1.0, "calibration": None, "ood": None,
    }).sealed()
    atomic_write_text(tmp / CARD, card.to_json())
    fsync_path(tmp)
    tmp.rename(out)
    return out


def ensemble_hash(member_hashes: Sequence[str]) -> str:
    """One sha256 for an ensemble: over its members' weight hashes, in order."""
    return hashlib.sha256("\n".join(member_hashes).encode()).hexdigest()


def ensemble_members(directory: Path, card: ModelCard) -> list[tuple[Path, ModelCard]]:
    """(folder, card) of every member of an ensemble checkpoint.

    Raises:
        ModelError: a member's weights differ from the ones the ensemble recorded.
    """
    members = []
    for member in card.members or []:
        member_card = load_card(directory / member.path)
        if member_card.weights_sha256 != member.weights_sha256:
            raise ModelError(f"{directory / member.path}: weights differ from the ones recorded in "
                             f"{directory / CARD}; recreate the ensemble with `skinedge ensemble create`")
        members.append((directory / member.path, member_card))
    return members


def load_ensemble(directory: Path, card: ModelCard) -> Ensemble:
    """Load every member of an ensemble checkpoint (each member's weights are hash-checked)."""
    return Ensemble([load_checkpoint(path)[0] for path, _ in ensemble_members(directory, card)]).eval()
