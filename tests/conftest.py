"""Shared fixtures: a tiny synthetic labels.csv dataset and the real ISIC samples.

``make_tiny_dataset`` is a plain function, for tests that need several folders or other sizes.
Under ``--import-mode=importlib`` pytest registers this file as ``tests.conftest``, so a test
module can ``from tests.conftest import make_tiny_dataset``; simpler still, take the
``tiny_dataset`` fixture (one read-only folder per session) or the ``make_labels_folder``
factory fixture (a fresh folder per call, same keyword arguments).
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``gpu`` tests need a CUDA GPU, ``macos`` tests need macOS: elsewhere they skip, saying so."""
    if item.get_closest_marker("gpu") and not _cuda_available():
        pytest.skip("needs a CUDA GPU (marker gpu); none here")
    if item.get_closest_marker("macos") and sys.platform != "darwin":
        pytest.skip(f"needs macOS (marker macos); this is {sys.platform}")


#: The 7 HAM10000 / ISIC 2018 class codes, in the order of the official ground-truth CSV.
HAM10000_CODES = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")

#: One clearly different base colour per class (RGB), so a model can tell them apart.
CLASS_COLOURS = {
    "mel": (70, 40, 30),
    "nv": (160, 110, 80),
    "bcc": (220, 170, 190),
    "akiec": (200, 80, 70),
    "bkl": (140, 140, 60),
    "df": (90, 120, 160),
    "vasc": (170, 30, 120),
}


def make_image(colour: tuple[int, int, int], size: tuple[int, int], seed: int) -> Image.Image:
    """A small RGB image: a base colour, a darker blob in the middle and some noise.

    Args:
        colour: Base RGB colour.
        size: (height, width) in pixels.
        seed: Noise seed (different images of one class differ a little).
    """
    height, width = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    blob = ((yy - height / 2) / (height / 3)) ** 2 + ((xx - width / 2) / (width / 3)) ** 2 < 1
    pixels = np.empty((height, width, 3), dtype=np.float32)
    pixels[:] = colour
    pixels[blob] *= 0.6
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_tiny_dataset(
    root: Path,
    per_class: int = 10,
    size: tuple[int, int] = (48, 64),
    codes: tuple[str, ...] = HAM10000_CODES,
) -> Path:
    """Write a ``labels.csv`` dataset folder of small JPEGs.

    Layout: ``root/labels.csv`` (image, lesion_id, dx) and ``root/images/<code>_<n>.jpg``;
    two images per lesion (lesion ids ``L_<code>_<k>``), colours differing per class.

    Args:
        root: Folder to create (may exist).
        per_class: Images per class (``per_class // 2`` lesions of 2 images, plus one of 1
            image when odd).
        size: (height, width) of every image.
        codes: Class codes to use (default: the 7 HAM10000 codes).

    Returns:
        ``root``.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for class_index, code in enumerate(codes):
        fallback = ((40 + 67 * class_index) % 256, 120, (200 + 101 * class_index) % 256)
        colour = CLASS_COLOURS.get(code, fallback)
        for n in range(per_class):
            image = f"images/{code}_{n:03d}.jpg"
            make_image(colour, size, seed=1000 * class_index + n).save(root / image, quality=90)
            rows.append((image, f"L_{code}_{n // 2:03d}", code))
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "lesion_id", "dx"])
        writer.writerows(rows)
    return root


@pytest.fixture
def make_labels_folder(tmp_path_factory) -> Callable[..., Path]:
    """Factory: ``make_labels_folder(per_class=10, size=(48, 64), codes=...)`` -> new folder."""

    def make(**kwargs) -> Path:
        return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data", **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A labels.csv folder: 7 classes x 10 JPEGs of 48x64, 2 images per lesion.

    Shared by the session: treat it as read-only (copy it, or use ``make_labels_folder``, to
    change files).
    """
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny-shared") / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder holding the real ISIC samples (ham10000-sample/, isic2019-sample/, ...)."""
    env = os.environ.get("SKINEDGE_DATA")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if candidate.is_dir():
        return candidate
    pytest.skip(
        "real ISIC samples not found: set SKINEDGE_DATA to the folder holding ham10000-sample/"
    )


# timm's test network at 32 px on the tiny colour-coded dataset, without augmentation.
TINY = ["model.arch=test_efficientnet", "model.pretrained=none", "preprocess.input_size=32",
        "num_workers=0", "batch_size=8", "eval_batch_size=32", "device=cpu",
        "augment.enabled=false", "model.drop_rate=0", "optim.scheduler=none"]


#: The calibration temperature in ``tiny_checkpoint``'s card.
TINY_TEMPERATURE = 1.7


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    """timm's test_efficientnet at 32 px, trained for a few epochs on the tiny colour-coded
    classes so that its predictions are confident: a flip under export means a broken export,
    not a coin toss. Its card carries a calibration temperature of :data:`TINY_TEMPERATURE`
    (its 14 validation images are too few to fit one), so every runtime and export that
    reproduces its probabilities proves it applies the temperature."""
    from skinedge.data import make_manifest, read_dataset
    from skinedge.evaluate.calibration import TemperatureFit, set_temperature
    from skinedge.train.config import load_train_config
    from skinedge.train.trainer import train_classifier

    root = tmp_path_factory.mktemp("export-run")
    manifest = root / "manifest.json"
    make_manifest(read_dataset(tiny_dataset)).save(manifest)
    cfg = load_train_config(None, [*TINY, "epochs=8", "optim.lr=1e-2",
                                   "early_stopping_patience=10", f"data.manifest={manifest}"])
    best = train_classifier(cfg, root / "train").best_dir
    set_temperature(best, TemperatureFit(TINY_TEMPERATURE, images=0, nll_before=0.0,
                                         nll_after=0.0, ece_before=0.0, ece_after=0.0,
                                         source="tests: a set temperature"))
    return best


# Training fixtures (tiny_dataset split into a manifest).

@pytest.fixture(scope="session")
def tiny_manifest(tiny_dataset, tmp_path_factory) -> Path:
    """Grouped train/val/test manifest of ``tiny_dataset`` (5 lesions per class: 3/1/1)."""
    from skinedge.data import make_manifest, read_dataset

    path = tmp_path_factory.mktemp("manifest") / "manifest.json"
    make_manifest(read_dataset(tiny_dataset)).save(path)
    return path


# Compression fixtures: a two-member ensemble of tiny trained classifiers.

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


@pytest.fixture
def split_raises(monkeypatch):
    """Make the library call behind `skinedge data split` raise the given exception."""
    import skinedge.data.splitting

    def install(exc: BaseException) -> None:
        def split_folder(*args, **kwargs):
            raise exc

        monkeypatch.setattr(skinedge.data.splitting, "split_folder", split_folder)

    return install
