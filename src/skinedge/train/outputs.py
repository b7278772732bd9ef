"""What a training run writes besides its weights: ``config.yaml``, ``versions.json``,
``metrics.jsonl``, TensorBoard scalars, and the model card its checkpoints carry."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from skinedge.data import Manifest
from skinedge.models import DataInfo, ModelCard
from skinedge.train.config import TrainConfig
from skinedge.utils.config import dump_config
from skinedge.utils.io import atomic_write_text, package_versions, writing

_LICENCE = re.compile(r"CC[ -]BY(?:-[A-Z]{2})*(?:-[A-Z]{2})? \d\.\d")


def base_card(cfg: TrainConfig, manifest: Manifest, provenance: str) -> ModelCard:
    """The card of every checkpoint of a run, before its epoch, metrics and training info.

    Args:
        provenance: Where the starting weights came from (``create_classifier``'s answer).
    """
    vocab = manifest.vocabulary
    return ModelCard(
        architecture=cfg.model.arch, classes=list(vocab.codes), class_names=vocab.names,
        vocabulary=vocab.name,
        positive_class=vocab.positive if vocab.positive in vocab.codes else None,
        preprocess=cfg.preprocess, drop_rate=cfg.model.drop_rate, pretrained=provenance,
        data=DataInfo(manifest=str(cfg.data.manifest), split_hash=manifest.split_hash,
                      layout=manifest.layout, counts=manifest.counts(),
                      licence=cfg.data.licence or dataset_licence(manifest)),
        versions=package_versions(),
    )


def epoch_card(base: ModelCard, cfg: TrainConfig, epoch: int, metrics: dict[str, Any],
               training: dict[str, Any]) -> ModelCard:
    """``base`` with one epoch's validation metrics and the run's config and ``training``
    details (distillation, quantization, synthetic data)."""
    return base.model_copy(update={
        "metrics": {"split": "val", **metrics},
        "training": {"epoch": epoch, "config": cfg.model_dump(mode="json"), **training},
    })


def dataset_licence(manifest: Manifest) -> str:
    """The licence of the manifest's folder, or of each source folder (distinct ones joined)."""
    found = dict.fromkeys(detect_licence(root) for root in manifest.source_roots())
    return "; ".join(found)


def detect_licence(root: Path) -> str:
    """The data licence named in the dataset folder's README, e.g. ``CC BY-NC 4.0``."""
    for name in ("README.md", "README.txt", "README", "LICENSE"):
        path = root / name
        if path.is_file():
            match = _LICENCE.search(path.read_text(errors="replace"))
            if match:
                return match.group(0)
    return "unknown (set data.licence)"


def write_run_files(out_dir: Path, cfg: TrainConfig) -> None:
    """``config.yaml`` (the resolved config) and ``versions.json`` (package versions).

    Raises:
        WriteError: ``out_dir`` cannot be made or written (a parent folder that is not
            writable, a full disk).
    """
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", dump_config(cfg))
    atomic_write_text(out_dir / "versions.json", json.dumps(package_versions(), indent=2))


def write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one JSON record per finished epoch, rewritten whole (atomically)."""
    atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


class ScalarLog:
    """Epoch records as TensorBoard scalars in ``out_dir/tensorboard``; does nothing when
    tensorboard is not installed."""

    def __init__(self, out_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            with writing(out_dir / "tensorboard"):  # made at once, maybe with out_dir
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        """Every number of ``record`` but ``epoch`` (and booleans), at step ``record["epoch"]``."""
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                self.writer.add_scalar(key, value, record["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
