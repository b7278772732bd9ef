"""Refusing what is not a skin lesion: an out-of-distribution check on calibrated logits.

A 7-class classifier answers one of its 7 classes for any picture, a cat or a keyboard
included. The check scores how unlike a dermoscopic lesion an image looks to the model itself,
from its calibrated logits ``z = logits / T`` (:mod:`skinedge.evaluate.calibration`):

- ``energy`` (Liu et al., 2020): ``-logsumexp(z)``; low for images the model has seen the
  like of, high for others.
- ``msp`` (Hendrycks and Gimpel, 2017): ``-max softmax(z)``, minus the top-1 confidence.

An image whose score is above the card's threshold is reported as "not a dermoscopic lesion
image" instead of a diagnosis. The threshold is chosen on the validation split, to reject at
most ``max_false_rejection`` of its real lesions; the method is the one that then catches
more of a set of non-lesion images (:func:`non_lesion_images`: photographs shipped in Python
packages, cropped, and drawn patterns), half of which, by source, is kept out of the choice
to report the detection rate on images it never saw. Training with outlier exposure
(:mod:`skinedge.train.outliers`, on :func:`outlier_sources`: the other half) makes the
classifier unsure of such pictures, which is what these scores read.

Example:
    >>> fit = fit_ood(val_logits, temperature, non_lesion_logits, halves)
    >>> fit.method, fit.threshold, fit.false_rejection, fit.detection_held_out
"""

from __future__ import annotations

import functools
import importlib.util
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from skinedge.models.ood_score import METHODS, NOT_A_LESION, ood_scores

__all__ = ["METHODS", "NOT_A_LESION", "NonLesion", "OODFit", "OutlierSource", "fit_lesion_check",
           "fit_ood", "held_out", "non_lesion_images", "non_lesion_logits", "ood_scores",
           "outlier_sources"]

#: The share of real lesions (validation) the threshold may reject.
MAX_FALSE_REJECTION = 0.05
_PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class NonLesion:
    """One image that is not a dermoscopic lesion. ``group`` is its source (a photograph, or a
    kind of pattern): the held-out half of the set is split by group, so no crop of a
    photograph that chose the method grades it."""

    name: str
    group: str
    image: Image.Image


def non_lesion_images(*, seed: int = 0, crops_per_photo: int = 3,
                      patterns_per_kind: int = 6, size: int = 256) -> list[NonLesion]:
    """:func:`make_non_lesion_images`, made once per process for each set of arguments."""
    return list(_cached_non_lesion_images(seed, crops_per_photo, patterns_per_kind, size))


@functools.lru_cache(maxsize=2)
def _cached_non_lesion_images(seed: int, crops_per_photo: int, patterns_per_kind: int,
                              size: int) -> tuple[NonLesion, ...]:
    return tuple(make_non_lesion_images(seed=seed, crops_per_photo=crops_per_photo,
                                        patterns_per_kind=patterns_per_kind, size=size))


def make_non_lesion_images(*, seed: int = 0, crops_per_photo: int = 3,
                           patterns_per_kind: int = 6, size: int = 256) -> list[NonLesion]:
    """Photographs shipped in installed packages (scikit-image's ``skimage/data``,
    scikit-learn's sample images, Matplotlib's sample data), each whole and as random crops,
    and drawn patterns (flat colours, skin-toned surfaces with no lesion, noise, gradients,
    checkerboards, stripes, text, shapes), all ``size`` px on the short side, RGB.

    Deterministic for a ``seed``. Packages that are not installed add nothing; the photographs
    found are named in each item's ``name`` (``photo:skimage/coffee.png#crop1``)."""
    rng = np.random.default_rng(seed)
    items: list[NonLesion] = []
    for package, path in _package_photos():
        with Image.open(path) as opened:
            photo = _fit_short_side(opened.convert("RGB"), size)
        group = _photo_group(package, path)
        items.append(NonLesion(group, group, photo))
        for k in range(crops_per_photo):
            items.append(NonLesion(f"{group}#crop{k}", group, _random_crop(photo, rng, size)))
    for kind, draw in _PATTERNS.items():
        for k in range(patterns_per_kind):
            items.append(NonLesion(f"{_pattern_group(kind)}#{k}", _pattern_group(kind),
                                   draw(rng, size)))
    return items


def held_out(group: str) -> bool:
    """Whether a group belongs to the held-out half (by a stable hash of its name)."""
    return zlib.crc32(group.encode()) % 2 == 1


@dataclass(frozen=True)
class OutlierSource:
    """Draws non-lesion images of one group for training: ``draw(rng)`` gives a new image
    each call (a photograph whole or cropped at random, or a newly drawn pattern)."""

    group: str
    draw: Callable[[np.random.Generator], Image.Image]


def outlier_sources(*, size: int = 256) -> list[OutlierSource]:
    """What outlier exposure trains on (:mod:`skinedge.train.outliers`): every photograph and
    pattern kind of :func:`non_lesion_images` *outside* the held-out half.

    The held-out photographs and pattern kinds stay unseen, so their detection rate still
    measures pictures unlike anything the model trained on. The other half also chooses the
    check's method, so for a model trained on it that half's ``detection`` is optimistic.
    A photograph of the same scene as a held-out one (``motorcycle_left`` beside
    ``motorcycle_right``, ``chessboard_GRAY`` beside ``chessboard_RGB``) is left out too."""
    photos = [(_photo_group(package, path), path) for package, path in _package_photos()]
    unseen = {_scene(path) for group, path in photos if held_out(group)}
    sources = []
    for group, path in photos:
        if held_out(group) or _scene(path) in unseen:
            continue
        with Image.open(path) as opened:
            photo = _fit_short_side(opened.convert("RGB"), size)
        sources.append(OutlierSource(group, functools.partial(_photo_view, photo, size=size)))
    sources += [OutlierSource(_pattern_group(kind), functools.partial(draw, size=size))
                for kind, draw in _PATTERNS.items() if not held_out(_pattern_group(kind))]
    return sources


@dataclass(frozen=True)
class OODFit:
    """The chosen check and what it did: on the validation lesions (``false_rejection``), on
    the non-lesion images it was chosen on (``detection``) and on the held-out ones."""

    method: str
    threshold: float
    max_false_rejection: float
    false_rejection: float
    detection: float
    detection_held_out: float
    lesion_images: int
    non_lesion_images: int
    non_lesion_held_out: int
    methods: dict[str, dict[str, float]]  # every method's threshold and rates
    source: str = ""
    non_lesion_sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["non_lesion_sources"] = list(self.non_lesion_sources)
        return _rounded(doc)


def fit_ood(lesion_logits: np.ndarray, temperature: float, non_lesion_logits: np.ndarray,
            held_out_mask: Sequence[bool], *, max_false_rejection: float = MAX_FALSE_REJECTION,
            source: str = "", non_lesion_sources: Sequence[str] = (),
            methods: Sequence[str] = METHODS) -> OODFit:
    """Per method, the threshold that rejects at most ``max_false_rejection`` of the lesions;
    the method that detects more of the non-held-out non-lesion images (energy on a tie).

    Args:
        lesion_logits: (N, C) raw logits of the validation split's images.
        temperature: The card's calibration temperature.
        non_lesion_logits: (M, C) raw logits of :func:`non_lesion_images`.
        held_out_mask: (M,) True for the images kept out of the choice.
        methods: The scores to choose from (an ensemble's log-probabilities: ``msp`` only).

    Raises:
        ValueError: no lesions, or no non-lesion images on either side of the split.
    """
    mask = np.asarray(held_out_mask, dtype=bool)
    if not len(lesion_logits) or mask.all() or not mask.any():
        raise ValueError("fit_ood needs lesion images and non-lesion images on both sides of "
                         f"the split; got {len(lesion_logits)} lesions, {int((~mask).sum())} "
                         f"non-lesion images to choose on and {int(mask.sum())} held out")
    if not 0.0 < max_false_rejection < 1.0:
        raise ValueError(f"max_false_rejection {max_false_rejection}: a share in (0, 1)")
    rates = {}
    for method in methods:
        lesions = ood_scores(lesion_logits, temperature, method)
        others = ood_scores(non_lesion_logits, temperature, method)
        # The (1 - max) quantile from above: at most that share of lesions scores higher.
        threshold = float(np.quantile(lesions, 1.0 - max_false_rejection, method="higher"))
        rates[method] = {
            "threshold": threshold,
            "false_rejection": float(np.mean(lesions > threshold)),
            "detection": float(np.mean(others[~mask] > threshold)),
            "detection_held_out": float(np.mean(others[mask] > threshold)),
            "auroc": _auroc(others[~mask], lesions),
        }
    method = max(rates, key=lambda m: (rates[m]["detection"], m == "energy"))
    chosen = rates[method]
    return OODFit(method=method, threshold=chosen["threshold"],
                  max_false_rejection=max_false_rejection,
                  false_rejection=chosen["false_rejection"], detection=chosen["detection"],
                  detection_held_out=chosen["detection_held_out"],
                  lesion_images=len(lesion_logits), non_lesion_images=int((~mask).sum()),
                  non_lesion_held_out=int(mask.sum()), methods=rates, source=source,
                  non_lesion_sources=tuple(non_lesion_sources))


def non_lesion_logits(model, preprocess, items: Sequence[NonLesion], *, batch_size: int = 64,
                      device: str = "cpu") -> np.ndarray:
    """(M, C) raw logits of ``items`` through a torch classifier and the card's
    preprocessing (``preprocess``, a :class:`~skinedge.data.transforms.PreprocessConfig`)."""
    import torch

    from skinedge.data import build_eval_transform
    from skinedge.evaluate.predict import predict_logits

    transform = build_eval_transform(preprocess)
    x = torch.stack([transform(item.image) for item in items])
    dataset = torch.utils.data.TensorDataset(x, torch.zeros(len(items), dtype=torch.long))
    logits, _ = predict_logits(model, dataset, batch_size=batch_size, device=device)
    return logits[0]


def fit_lesion_check(model, preprocess, lesion_logits: np.ndarray, temperature: float, *,
                     source: str, batch_size: int = 64, device: str = "cpu",
                     methods: Sequence[str] = METHODS):
    """The card's :class:`~skinedge.models.card.LesionCheck` for a model whose validation
    logits are ``lesion_logits``: :func:`fit_ood` against :func:`non_lesion_images`."""
    from skinedge.models.card import LesionCheck

    items = non_lesion_images()
    logits = non_lesion_logits(model, preprocess, items, batch_size=batch_size, device=device)
    fit = fit_ood(lesion_logits, temperature, logits, [held_out(i.group) for i in items],
                  source=source, non_lesion_sources=sorted({i.group for i in items}),
                  methods=methods)
    return LesionCheck(method=fit.method, threshold=fit.threshold, fit=fit.to_dict())


def _auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney U)."""
    pos, neg = np.sort(positives), np.sort(negatives)
    below = np.searchsorted(neg, pos, side="left")
    not_above = np.searchsorted(neg, pos, side="right")
    return float((below + not_above).sum() / (2.0 * len(pos) * len(neg)))


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- the images


def _package_photos() -> list[tuple[str, Path]]:
    """(package, file) of the photographs installed packages ship, found without importing
    them (scikit-image's data module would otherwise load its fetchers)."""
    found = []
    for package, folder, keep in (
        ("skimage", "data", lambda p: p.suffix in _PHOTO_SUFFIXES),
        ("sklearn", "datasets/images", lambda p: p.suffix in _PHOTO_SUFFIXES),
        ("matplotlib", "mpl-data/sample_data", lambda p: p.name in ("grace_hopper.jpg",
                                                                     "Minduka_Present_Blue_Pack.png")),
    ):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations))) / folder
        if root.is_dir():
            found += [(package, p) for p in sorted(root.iterdir()) if p.is_file() and keep(p)]
    return found


def _fit_short_side(image: Image.Image, size: int) -> Image.Image:
    scale = size / min(image.size)
    return image.resize((max(size, round(image.width * scale)),
                         max(size, round(image.height * scale))), Image.BILINEAR)


def _photo_group(package: str, path: Path) -> str:
    """A photograph's group, the name :func:`held_out` splits by (the check's images and
    outlier exposure's sources must name it alike)."""
    return f"photo:{package}/{path.name}"


def _pattern_group(kind: str) -> str:
    return f"pattern:{kind}"


def _scene(path: Path) -> str:
    """``motorcycle_left.png`` -> ``motorcycle``: photographs that share a scene."""
    return path.stem.split("_")[0].lower()


def _photo_view(photo: Image.Image, rng: np.random.Generator, *, size: int) -> Image.Image:
    """The photograph whole (one time in four) or a random square crop of it."""
    return photo if rng.uniform() < 0.25 else _random_crop(photo, rng, size)


def _random_crop(image: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """A square crop of 35-80% of the short side, resized to ``size``."""
    side = int(min(image.size) * rng.uniform(0.35, 0.8))
    left = int(rng.integers(0, image.width - side + 1))
    top = int(rng.integers(0, image.height - side + 1))
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    """An RGB skin tone between pale and dark (a line through typical tones, jittered)."""
    t = rng.uniform()
    pale, dark = np.array([236, 200, 180]), np.array([105, 70, 50])
    return np.clip(pale + t * (dark - pale) + rng.normal(0, 8, 3), 0, 255)


def _flat(rng, size):
    return Image.new("RGB", (size, size), _colour(rng))


def _skin(rng, size):
    """Healthy skin without a lesion: a skin tone, a soft light falloff, fine texture."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    light = 1.0 - 0.25 * ((xx - rng.uniform()) ** 2 + (yy - rng.uniform()) ** 2)
    texture = rng.normal(0, 4, (size, size, 3))
    pixels = _skin_tone(rng)[None, None, :] * light[..., None] + texture
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _noise(rng, size):
    grey = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1))


def _colour_noise(rng, size):
    coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.BICUBIC)


def _gradient(rng, size):
    a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = np.clip((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle) + 0.5, 0, 1)
    return Image.fromarray((a + t[..., None] * (b - a)).astype(np.uint8))


def _checkerboard(rng, size):
    cell = int(rng.integers(8, 64))
    yy, xx = np.mgrid[0:size, 0:size] // cell
    a, b = np.array(_colour(rng)), np.array(_colour(rng))
    return Image.fromarray(np.where(((xx + yy) % 2)[..., None] == 0, a, b).astype(np.uint8))


def _stripes(rng, size):
    period = int(rng.integers(6, 48))
    yy, xx = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, math.pi)
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) % period < period / 2
    a, b = np.array(_colour(rng)), np.array(_colour(rng))
    return Image.fromarray(np.where(phase[..., None], a, b).astype(np.uint8))


def _text(rng, size):
    """Dark print on a light page: a document, a label, a screen."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    words = ("patient", "dose", "mg", "clinic", "date", "ref", "lot", "total", "notes")
    for row in range(8, size - 12, int(rng.integers(12, 22))):
        line = " ".join(rng.choice(words, int(rng.integers(2, 6))))
        draw.text((int(rng.integers(2, 20)), row), line, fill=(20, 20, 30))
    return image


def _shapes(rng, size):
    image = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        x1, y1 = x0 + int(rng.integers(10, size // 2)), y0 + int(rng.integers(10, size // 2))
        shape = draw.ellipse if rng.uniform() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=_colour(rng))
    return image


_PATTERNS = {"flat": _flat, "skin": _skin, "noise": _noise, "colour-noise": _colour_noise,
             "gradient": _gradient, "checkerboard": _checkerboard, "stripes": _stripes,
             "text": _text, "shapes": _shapes}
