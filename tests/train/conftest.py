"""Training fixtures on top of ``tests/conftest.py``'s ``tiny_dataset``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_manifest(tiny_dataset, tmp_path_factory) -> Path:
    """Grouped train/val/test manifest of ``tiny_dataset`` (5 lesions per class: 3/1/1)."""
    from skinedge.data import make_manifest, read_dataset

    path = tmp_path_factory.mktemp("manifest") / "manifest.json"
    make_manifest(read_dataset(tiny_dataset)).save(path)
    return path
