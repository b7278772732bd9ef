"""Temperature scaling: probabilities that mean what they say (Guo et al., 2017).

A classifier trained with class-balanced sampling and label weights is confident in the wrong
places: its top-1 confidence is not the share of such answers that are right. Temperature
scaling divides the logits by one number ``T`` fitted on the validation split (the ``T`` that
minimises the negative log-likelihood), so the class ranking, and with it every accuracy
figure, stays as it was, and only the confidence moves.

``T`` lives in the model card (``card.temperature``, covered by its integrity hash): every
runtime divides the logits by it (:meth:`skinedge.runtimes.base.Runtime.predict_array`), and
every export folds it into the classifier layer
(:func:`skinedge.models.temperature.fold_temperature`), so an app reading
an artifact's outputs with its own softmax (MediaPipe, Core ML, the web page) gets the
calibrated probabilities too.

Example:
    >>> fit = fit_temperature(val_logits, val_targets)
    >>> fit.temperature, fit.ece_before, fit.ece_after
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TemperatureFit", "calibrate_checkpoint", "calibrate_on_split", "fit_temperature",
           "plot_reliability", "reliability_bins", "scaled_softmax", "set_temperature"]

#: The search interval of the inverse temperature 1/T (T from 0.05 to 20).
_BETA_RANGE = (0.05, 20.0)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
#: Fewer validation images than this and no temperature is fitted.
MIN_CALIBRATION_IMAGES = 100


def scaled_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64, stable for large values."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray,
                            temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against ``targets``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(z)), targets]))


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the top-1 confidence over ``n_bins`` equal-width bins (as
    :func:`~skinedge.evaluate.metrics.compute_metrics` reports it)."""
    from skinedge.evaluate.metrics import _expected_calibration_error

    return _expected_calibration_error(np.asarray(targets), np.asarray(probs), n_bins)


def reliability_bins(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15
                     ) -> list[dict[str, float]]:
    """Per equal-width confidence bin ``(lo, hi]``: its images, mean top-1 confidence and the
    share of them whose top-1 class is right (a reliability diagram's bars)."""
    confidence = np.clip(np.asarray(probs).max(axis=1), 0.0, 1.0)
    correct = (np.asarray(probs).argmax(axis=1) == np.asarray(targets)).astype(float)
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        rows.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": count,
                     "confidence": float(confidence[inside].mean()) if count else 0.0,
                     "accuracy": float(correct[inside].mean()) if count else 0.0})
    return rows


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what it did on the images it was fitted on."""

    temperature: float
    images: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    source: str = ""  # e.g. "runs/ham/manifest.json:val"

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def fit_temperature(logits: np.ndarray, targets: np.ndarray, *, source: str = "",
                    tolerance: float = 1e-5) -> TemperatureFit:
    """The temperature minimising the negative log-likelihood of ``softmax(logits / T)``.

    The NLL is convex in the inverse temperature ``1/T`` (a log-sum-exp of linear functions
    minus a linear one), so a golden-section search over ``1/T`` in [0.05, 20] finds the
    global minimum without a solver.

    Args:
        logits: (N, C) raw logits (or log-probabilities: softmax is unchanged by a per-row shift).
        targets: (N,) class indices.

    Raises:
        ValueError: no images, or logits and targets that disagree in length.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(targets) or not len(targets):
        raise ValueError(f"fit_temperature needs (N, C) logits and N targets with N > 0, got "
                         f"{logits.shape} and {targets.shape}")
    lo, hi = _BETA_RANGE
    loss = lambda beta: negative_log_likelihood(logits, targets, 1.0 / beta)  # noqa: E731
    a, b = lo + (1 - _GOLDEN) * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tolerance:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - _GOLDEN) * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    temperature = 2.0 / (lo + hi)
    return TemperatureFit(
        temperature=temperature, images=len(targets), source=source,
        nll_before=negative_log_likelihood(logits, targets),
        nll_after=negative_log_likelihood(logits, targets, temperature),
        ece_before=expected_calibration_error(scaled_softmax(logits), targets),
        ece_after=expected_calibration_error(scaled_softmax(logits, temperature), targets))


def plot_reliability(bins_before: list[dict], bins_after: list[dict], path: Path | str, *,
                     title: str, temperature: float, ece_before: float, ece_after: float) -> Path:
    """A reliability diagram (accuracy against confidence per bin, before and after) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skinedge.utils.io import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharey=True)
    for ax, bins, name, ece in ((axes[0], bins_before, "before (T = 1)", ece_before),
                                (axes[1], bins_after, f"after (T = {temperature:.3g})",
                                 ece_after)):
        filled = [b for b in bins if b["count"]]
        width = bins[0]["hi"] - bins[0]["lo"]
        ax.bar([b["lo"] for b in filled], [b["accuracy"] for b in filled], width=width,
               align="edge", color="#4c72b0", edgecolor="white", label="accuracy")
        ax.bar([b["lo"] for b in filled], [b["confidence"] - b["accuracy"] for b in filled],
               bottom=[b["accuracy"] for b in filled], width=width, align="edge",
               color="#dd8452", alpha=0.45, edgecolor="none", label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top-1 confidence")
        ax.set_title(f"{name}: ECE {ece:.3f}")
    axes[0].set_ylabel("top-1 accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path


def calibrate_checkpoint(
    checkpoint: Path | str,
    dataset,
    *,
    source: str,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "cpu",
    min_images: int = MIN_CALIBRATION_IMAGES,
    ood: bool = True,
) -> TemperatureFit:
    """Fit the temperature of a checkpoint on ``dataset`` (its validation split) and write it
    into the checkpoint's card (:func:`set_temperature`); with ``ood``, then choose its
    lesion check on the same logits (:func:`skinedge.evaluate.ood.fit_ood`, in ``card.ood``).

    The logits are the model's raw ones whatever temperature the card already holds, so
    calibrating again refits from scratch rather than compounding.

    Args:
        dataset: Preprocessed images with labels in the card's class order (a
            :class:`~skinedge.data.LesionDataset` of the validation split). Rows labelled
            only "not melanoma" (target -1) are left out of the fit and kept for the lesion
            check, which needs no label.
        source: Where the images came from, recorded in the card (``manifest.json:val``).
        min_images: Refuse to fit on fewer images: on a handful of images that the model
            gets all right the fitted temperature runs to the edge of its range.

    Raises:
        DataError: fewer than ``min_images`` images.
    """
    from skinedge.errors import DataError
    from skinedge.evaluate.predict import predict_logits
    from skinedge.models.checkpoint import load_checkpoint

    labelled = sum(t >= 0 for t in getattr(dataset, "targets", range(len(dataset))))
    if labelled < min_images:
        raise DataError(f"{source}: {labelled} images with a class are too few to fit a "
                        "temperature on "
                        f"(at least {min_images}): the fit would follow these few images, not "
                        "the model; use a larger validation split")
    model, card = load_checkpoint(checkpoint)
    model.to(device)
    logits, targets = predict_logits(model, dataset, batch_size=batch_size,
                                     num_workers=num_workers, device=device)
    exact = targets >= 0  # rows labelled only "not melanoma" (-1) name no class to fit on
    fit = fit_temperature(logits[0][exact], targets[exact], source=source)
    check = None
    if ood:
        from skinedge.evaluate.ood import METHODS, fit_lesion_check

        # An ensemble outputs log-probabilities, whose energy is constant: msp only.
        check = fit_lesion_check(model, card.preprocess, logits[0], round(fit.temperature, 6),
                                 source=source, batch_size=batch_size, device=device,
                                 methods=("msp",) if card.members else METHODS)
    set_temperature(checkpoint, fit, ood=check)
    return fit


def calibrate_on_split(
    checkpoint: Path | str,
    manifest: Path | str | None = None,
    split: str = "val",
    *,
    required: bool = True,
    batch_size: int = 64,
    device: str = "cpu",
    min_images: int = MIN_CALIBRATION_IMAGES,
) -> TemperatureFit | None:
    """:func:`calibrate_checkpoint` on a split of a manifest (by default the one the card
    records): what ``skinedge calibrate`` runs, and what makes an ensemble's temperature.

    Args:
        split: ``val`` (or ``train``); never ``test``, the split that grades the model.
        required: False: a split of fewer than ``min_images`` images leaves the card as it
            is and returns None (a pipeline on a tiny dataset), instead of raising.

    Raises:
        ConfigError: ``split`` is ``test``.
        DataError: fewer than ``min_images`` images and ``required``; the manifest's classes
            are not the model's.
    """
    from skinedge.data import LesionDataset, build_eval_transform, load_manifest
    from skinedge.data.manifest import check_classes
    from skinedge.errors import ConfigError
    from skinedge.models.card import checkpoint_dir, load_card, resolve_manifest

    if split not in ("train", "val"):
        raise ConfigError(f"split {split!r}: fit the temperature on val (or train), never on "
                          "the test split that is to grade it")
    checkpoint = checkpoint_dir(Path(checkpoint))
    card = load_card(checkpoint)
    manifest = resolve_manifest(manifest, card, checkpoint)
    loaded = load_manifest(manifest)
    check_classes(loaded, card.classes, manifest)
    dataset = LesionDataset.from_manifest(loaded, split, build_eval_transform(card.preprocess))
    if not required and len(dataset) < min_images:
        return None
    return calibrate_checkpoint(checkpoint, dataset, source=f"{manifest}:{split}",
                                batch_size=batch_size, device=device, min_images=min_images)


def set_temperature(checkpoint: Path | str, fit: TemperatureFit, *, ood=None) -> Path:
    """Write ``fit``'s temperature into a checkpoint's card, the fit under
    ``card.calibration``, and ``ood`` (a :class:`~skinedge.models.card.LesionCheck`, fitted on
    this temperature) or none, and seal it again (both are covered by its integrity)."""
    from skinedge.models.card import CARD, checkpoint_dir, load_card
    from skinedge.utils.io import atomic_write_text

    card = load_card(checkpoint)
    calibrated = card.model_copy(update={"temperature": round(fit.temperature, 6),
                                         "calibration": fit.to_dict(), "ood": ood}).sealed()
    return atomic_write_text(checkpoint_dir(Path(checkpoint)) / CARD, calibrated.to_json())
