"""Teacher logits, computed once per member and split and cached on disk.

Each member's logits are computed on the teacher's own evaluation preprocessing and cached
under a key made of the member's weights, its preprocessing and the split's image hashes, so
distillation never reruns the ensemble while training, and a second student (or a resumed
run, or another ensemble sharing a member) reuses the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from skinedge.data import LesionDataset, Manifest, build_eval_transform
from skinedge.data.manifest import check_classes
from skinedge.models import ModelCard, load_card, load_checkpoint
from skinedge.models.checkpoint import checkpoint_dir
from skinedge.models.ensemble import ensemble_members
from skinedge.utils.device import resolve_device

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    root = os.environ.get("SKINEDGE_CACHE") or Path.home() / ".cache" / "skinedge"
    return Path(root) / "teacher-logits"


@dataclass
class TeacherLogits:
    """Teacher logits for one split: every member's, in the split's image order."""

    images: list[str]
    logits: np.ndarray  # (N, M, C) float32: image, member, class
    cache_files: list[Path] = field(default_factory=list)
    computed: int = 0  # members computed now (the rest came from the cache)

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        """The teacher's probabilities (N, C): mean over members of softmax(logits / T)."""
        z = self.logits / temperature
        z = np.exp(z - z.max(axis=2, keepdims=True))
        return (z / z.sum(axis=2, keepdims=True)).mean(axis=1)


def teacher_members(teacher: Path) -> list[tuple[Path, ModelCard]]:
    """(folder, card) of each member of an ensemble checkpoint, or of the one model.

    Raises:
        ModelError: a member's weights differ from the ones the ensemble recorded.
    """
    directory = checkpoint_dir(Path(teacher))
    card = load_card(directory)
    return ensemble_members(directory, card) if card.members else [(directory, card)]


def cache_key(card: ModelCard, manifest: Manifest, split: str) -> str:
    """What teacher logits depend on: weights, preprocessing, and the split's image contents."""
    payload = {
        "version": CACHE_VERSION, "weights": card.weights_sha256,
        "preprocess": card.preprocess.model_dump(mode="json"),
        "images": [[r.image, r.sha256] for r in manifest.subset(split)],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def _member_logits(directory: Path, card: ModelCard, manifest: Manifest, split: str, *,
                   batch_size: int, device: torch.device, num_workers: int,
                   progress: Callable[[int, int], None] | None) -> np.ndarray:
    model, _ = load_checkpoint(directory)
    model.to(device, memory_format=torch.channels_last).eval()
    dataset = LesionDataset.from_manifest(manifest, split, build_eval_transform(card.preprocess))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    out, done = [], 0
    for images, _ in loader:
        images = images.to(device, memory_format=torch.channels_last)
        out.append(model(images).float().cpu().numpy())
        done += len(images)
        if progress:
            progress(done, len(dataset))
    return np.concatenate(out).astype(np.float32)


def teacher_logits(
    teacher: Path | str,
    manifest: Manifest,
    split: str,
    *,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> TeacherLogits:
    """Every teacher member's logits on one split of a manifest, from the cache when there.

    Args:
        teacher: Checkpoint folder of an ensemble or of one model.
        progress: ``progress(description, done, total)`` while a member runs.

    Raises:
        DataError: the teacher's classes differ from the manifest's.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    # Under torchrun every rank computes (or reads) the logits on its own GPU.
    torch_device = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    rows = manifest.subset(split)
    images = [r.image for r in rows]
    result = TeacherLogits(images, np.zeros((0,)))
    per_member = []
    for i, (directory, card) in enumerate(teacher_members(Path(teacher))):
        check_classes(manifest, card.classes, "the manifest", f"teacher {directory}")
        file = cache / f"{cache_key(card, manifest, split)}.npz"
        logits = _read_cache(file, images, card.num_classes)
        if logits is None:
            step = (lambda done, total, i=i: progress(f"teacher {i} {split}", done, total)) \
                if progress else None
            logits = _member_logits(directory, card, manifest, split, batch_size=batch_size,
                                    device=torch_device, num_workers=num_workers, progress=step)
            _write_cache(file, images, logits, directory, card)
            result.computed += 1
        per_member.append(logits)
        result.cache_files.append(file)
    result.logits = np.stack(per_member, axis=1)
    return result


def _read_cache(file: Path, images: list[str], num_classes: int) -> np.ndarray | None:
    if not file.is_file():
        return None
    try:
        with np.load(file) as data:
            cached_images, logits = list(data["images"]), data["logits"]
    except (OSError, ValueError, KeyError):
        return None  # a truncated or foreign file: recompute and overwrite it
    if cached_images != images or logits.shape != (len(images), num_classes):
        return None
    return logits


def _write_cache(file: Path, images: list[str], logits: np.ndarray, directory: Path,
                 card: ModelCard) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.stem}.{os.getpid()}.tmp.npz")  # ranks may race: one each
    np.savez(tmp, images=np.array(images), logits=logits,
             teacher=np.array(str(directory)), weights_sha256=np.array(card.weights_sha256 or ""))
    os.replace(tmp, file)
