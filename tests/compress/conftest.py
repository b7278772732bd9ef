"""Compression fixtures: a two-member ensemble of tiny trained classifiers."""

from __future__ import annotations

from pathlib import Path

import pytest

# timm's test network at 32 px on the tiny colour-coded dataset, without augmentation.
TINY = ["model.arch=test_efficientnet", "model.pretrained=none", "preprocess.input_size=32",
        "num_workers=0", "batch_size=8", "eval_batch_size=32", "device=cpu",
        "augment.enabled=false", "model.drop_rate=0", "optim.scheduler=none"]


def manifest_of(checkpoint: Path) -> Path:
    """The manifest of a run made by ``tiny_checkpoint`` (RUN/manifest.json, RUN/train/best)."""
    return checkpoint.parent.parent / "manifest.json"


@pytest.fixture(scope="session")
def teacher(tiny_checkpoint, tmp_path_factory) -> Path:
    """An ensemble of the shared tiny checkpoint and a second member trained with another seed."""
    from skinedge.models import create_ensemble
    from skinedge.train.config import load_train_config
    from skinedge.train.trainer import train_classifier

    root = tmp_path_factory.mktemp("members")
    cfg = load_train_config(None, [*TINY, "epochs=3", "optim.lr=1e-2", "seed=1",
                                   f"data.manifest={manifest_of(tiny_checkpoint)}"])
    second = train_classifier(cfg, root / "seed1").best_dir
    return create_ensemble([tiny_checkpoint, second], root / "ensemble")
