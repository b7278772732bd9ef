"""Tiny federations: three labels.csv sites of colour-coded 40 px images, timm's test network."""

from __future__ import annotations

from pathlib import Path

import pytest

from skinedge.federated.env import flower_environment

flower_environment()  # before flwr is imported

pytest.importorskip("flwr", reason="needs skinedge[federated]")

from tests.conftest import make_tiny_dataset  # noqa: E402

TINY_FED = {"model": {"arch": "test_efficientnet", "pretrained": "none", "drop_rate": 0},
            "preprocess": {"input_size": 32}, "augment": {"enabled": False}, "batch_size": 8,
            "optim": {"lr": 0.01, "scheduler": "none"}}


@pytest.fixture(scope="session")
def tiny_sites(tmp_path_factory) -> list[Path]:
    """Three site folders (7 classes x 6 images, 40x40), different images each."""
    root = tmp_path_factory.mktemp("sites")
    return [make_tiny_dataset(root / f"site{i}", per_class=6, size=(40, 40 + 4 * i))
            for i in range(3)]


def tiny_config(sites: list[Path], **fields):
    from skinedge.federated import FederatedConfig

    return FederatedConfig.model_validate({
        "sites": [{"name": f"site{i}", "data": str(p)} for i, p in enumerate(sites)],
        **TINY_FED, **fields})
