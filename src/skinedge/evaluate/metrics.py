"""Classification metrics for skin-lesion models, as a JSON-ready dict.

Pure numpy + scikit-learn. The headline numbers follow dermatology practice: balanced accuracy
(mean per-class recall, the ISIC 2018 task 3 metric), one-vs-rest AUCs, melanoma sensitivity at
fixed specificity (the operating points used to compare against dermatologists) and the
expected calibration error of the top-1 confidence.

Example:
    >>> metrics = compute_metrics(y_true, probs, ["mel", "nv", "bcc"])
    >>> metrics["balanced_accuracy"], metrics["melanoma_sensitivity_at_spec"]["0.90"]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

__all__ = ["compute_metrics", "compute_partial_metrics", "melanoma_detection_metrics"]

#: How far a row of ``probs`` may sum from 1 (float16/float32 softmax outputs drift a little).
ROW_SUM_TOLERANCE = 1e-3
#: How far an entry of ``probs`` may fall outside [0, 1] before it is rejected.
RANGE_TOLERANCE = 1e-6
#: Slack when comparing a specificity read off the ROC curve with a target (float round-off).
_SPEC_SLACK = 1e-9


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    melanoma_class: str | None = "mel",
    specificities: Sequence[float] = (0.8, 0.9),
    ece_bins: int = 15,
    y_pred: np.ndarray | None = None,
) -> dict:
    """Scores predicted class probabilities against true labels.

    Predictions are the arg-max of ``probs`` (ties go to the first class), unless ``y_pred``
    gives them.

    Args:
        y_true: (N,) integer class indices into ``classes``.
        probs: (N, C) class probabilities, rows summing to 1 (apply softmax to logits first).
        classes: C class codes, e.g. ``["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]``.
        melanoma_class: code of the melanoma class for the melanoma metrics; ``None`` to skip.
        specificities: target specificities in (0, 1] for the melanoma operating points.
        ece_bins: number of equal-width confidence bins on [0, 1] for the ECE.
        y_pred: (N,) predicted class indices, when the decision is not the arg-max of ``probs``
            (see :func:`melanoma_detection_metrics`); accuracy, recall, precision and the
            confusion matrix use them, the AUCs and the ECE use ``probs``.

    Returns:
        A JSON-serialisable dict (plain ints/floats/lists, ``None`` where undefined) with keys
        ``n``, ``accuracy``, ``balanced_accuracy`` (mean recall over classes present in
        ``y_true``), ``per_class`` (``{code: {precision, recall, f1, support, auc}}``;
        precision is 0 for a class never predicted; recall, f1 and auc are ``None`` for a class
        absent from ``y_true``; auc is also ``None`` when the class is the only one present),
        ``macro_auc`` (mean of the defined per-class AUCs), ``melanoma_auc``,
        ``melanoma_sensitivity_at_spec`` (``{"0.80": sens, ...}``: highest sensitivity whose
        specificity reaches the target; values ``None`` when the melanoma class is not in
        ``classes`` or when ``y_true`` lacks melanoma or non-melanoma cases), ``ece``,
        ``confusion_matrix`` (C x C, rows true, columns predicted) and ``classes``.

    Raises:
        ValueError: if the inputs are empty, mis-shaped, non-finite, not probabilities, hold a
            label outside ``range(C)``, or if ``classes``/``specificities``/``ece_bins`` are
            invalid.
    """
    y_true, probs, classes = _validate_inputs(y_true, probs, classes)
    specificities = _validate_specificities(specificities)
    if isinstance(ece_bins, bool) or not isinstance(ece_bins, (int, np.integer)) or ece_bins < 1:
        raise ValueError(f"ece_bins must be a positive integer, got {ece_bins!r}.")

    n, n_classes = probs.shape
    y_pred = probs.argmax(axis=1) if y_pred is None else _validate_predictions(y_pred, n, n_classes)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    support = cm.sum(axis=1)
    present = support > 0
    recall = np.divide(np.diag(cm), support, out=np.zeros(n_classes), where=present)

    per_class = {
        code: _class_scores(cm, y_true, probs, k) for k, code in enumerate(classes)
    }
    aucs = [scores["auc"] for scores in per_class.values() if scores["auc"] is not None]

    has_melanoma = melanoma_class is not None and melanoma_class in classes
    mel_index = classes.index(melanoma_class) if has_melanoma else None
    return {
        "n": int(n),
        "accuracy": float(np.mean(y_pred == y_true)),
        "balanced_accuracy": float(recall[present].mean()),
        "per_class": per_class,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "melanoma_auc": per_class[melanoma_class]["auc"] if has_melanoma else None,
        "melanoma_sensitivity_at_spec": _sensitivity_at_specificity(
            y_true, probs, mel_index, specificities
        ),
        "ece": _expected_calibration_error(y_true, probs, ece_bins),
        "confusion_matrix": cm.astype(int).tolist(),
        "classes": list(classes),
    }


def _class_scores(cm: np.ndarray, y_true: np.ndarray, probs: np.ndarray, k: int) -> dict:
    """Precision, recall, F1, support and one-vs-rest AUC of class ``k``.

    Args:
        cm: (C, C) confusion matrix, rows true, columns predicted.
        y_true: (N,) class indices.
        probs: (N, C) probabilities.
        k: class index.
    """
    tp = int(cm[k, k])
    support = int(cm[k, :].sum())
    predicted = int(cm[:, k].sum())
    precision = tp / predicted if predicted else 0.0
    if support == 0:
        recall = f1 = None
    else:
        recall = tp / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    is_k = y_true == k
    auc = float(roc_auc_score(is_k, probs[:, k])) if 0 < support < len(y_true) else None
    return {
        "precision": float(precision),
        "recall": None if recall is None else float(recall),
        "f1": None if f1 is None else float(f1),
        "support": support,
        "auc": auc,
    }


def _sensitivity_at_specificity(
    y_true: np.ndarray,
    probs: np.ndarray,
    mel_index: int | None,
    specificities: list[float],
) -> dict[str, float | None]:
    """Highest melanoma sensitivity whose specificity is at least each target.

    Read off the full ROC curve of P(melanoma) (every threshold kept), so the value is the
    best operating point achievable by thresholding that probability.

    Args:
        y_true: (N,) class indices.
        probs: (N, C) probabilities.
        mel_index: column of the melanoma class, or ``None`` when there is none.
        specificities: targets in (0, 1].

    Returns:
        ``{"0.80": sensitivity, ...}`` keyed by the target with two decimals; values are
        ``None`` when there is no melanoma class or ``y_true`` lacks either side.
    """
    keys = [f"{spec:.2f}" for spec in specificities]
    is_mel = None if mel_index is None else y_true == mel_index
    if is_mel is None or is_mel.all() or not is_mel.any():
        return dict.fromkeys(keys)
    fpr, tpr, _ = roc_curve(is_mel, probs[:, mel_index], drop_intermediate=False)
    specificity = 1.0 - fpr
    # The curve starts at (fpr=0, tpr=0), so every target in (0, 1] has a feasible point.
    return {
        key: float(tpr[specificity >= spec - _SPEC_SLACK].max())
        for key, spec in zip(keys, specificities, strict=True)
    }


def _expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int) -> float:
    """Expected calibration error of the top-1 confidence (Guo et al., 2017).

    ``sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|`` over ``n_bins`` equal-width
    bins ``(lo, hi]`` on [0, 1] (a confidence of exactly 0 falls in the first bin).

    Args:
        y_true: (N,) class indices.
        probs: (N, C) probabilities.
        n_bins: number of bins.
    """
    confidence = np.clip(probs.max(axis=1), 0.0, 1.0)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    bin_index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bin_index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bin_index, weights=correct, minlength=n_bins)
    # |sum(correct) - sum(conf)| / N per bin == |B| / N * |acc(B) - conf(B)|.
    return float(np.abs(correct_sum - conf_sum).sum() / len(y_true))


def _validate_inputs(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Checks shapes, values and labels; returns (int64 labels, float64 probs, class list)."""
    classes = list(classes)
    if len(classes) < 2:
        raise ValueError(f"classes must name at least 2 classes, got {classes!r}.")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ValueError(f"classes must be unique; repeated: {duplicates}.")

    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be 1-D (N,), got shape {y_true.shape}.")
    if y_true.size == 0:
        raise ValueError("y_true is empty: nothing to evaluate (check the split or the loader).")
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, C), got shape {probs.shape}.")
    if probs.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"y_true has {y_true.shape[0]} labels but probs has {probs.shape[0]} rows; "
            "they must describe the same images in the same order."
        )
    if probs.shape[1] != len(classes):
        raise ValueError(
            f"probs has {probs.shape[1]} columns but {len(classes)} classes were given "
            f"({classes}); pass the model's class list in column order."
        )
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(
            f"y_true must hold integer class indices, got dtype {y_true.dtype}; "
            "map class codes to indices first."
        )
    if not np.issubdtype(probs.dtype, np.number) or np.issubdtype(probs.dtype, np.complexfloating):
        raise ValueError(f"probs must be real numbers, got dtype {probs.dtype}.")
    probs = probs.astype(np.float64)

    bad_labels = (y_true < 0) | (y_true >= len(classes))
    if bad_labels.any():
        rows = np.flatnonzero(bad_labels)
        raise ValueError(
            f"y_true has {rows.size} label(s) outside [0, {len(classes) - 1}] "
            f"(first at row {rows[0]}: {y_true[rows[0]]}); labels must index into classes."
        )
    non_finite = ~np.isfinite(probs).all(axis=1)
    if non_finite.any():
        rows = np.flatnonzero(non_finite)
        raise ValueError(
            f"probs has NaN or infinite values in {rows.size} row(s) (first at row {rows[0]}); "
            "check the model output for numerical overflow."
        )
    if probs.min() < -RANGE_TOLERANCE or probs.max() > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"probs must lie in [0, 1] but span [{probs.min():.4g}, {probs.max():.4g}]; "
            "these look like logits: apply softmax first."
        )
    row_error = np.abs(probs.sum(axis=1) - 1.0)
    if (row_error > ROW_SUM_TOLERANCE).any():
        row = int(row_error.argmax())
        raise ValueError(
            f"probs rows must sum to 1 (tolerance {ROW_SUM_TOLERANCE}); row {row} sums to "
            f"{probs[row].sum():.6g}. Apply softmax over the class axis (not sigmoid)."
        )
    return y_true.astype(np.int64), probs, classes


def _validate_predictions(y_pred: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    """Checks that ``y_pred`` holds ``n`` class indices in ``range(n_classes)``."""
    y_pred = np.asarray(y_pred)
    if y_pred.shape != (n,) or not np.issubdtype(y_pred.dtype, np.integer):
        raise ValueError(f"y_pred must hold {n} integer class indices, got shape {y_pred.shape} "
                         f"and dtype {y_pred.dtype}.")
    if ((y_pred < 0) | (y_pred >= n_classes)).any():
        raise ValueError(f"y_pred has class indices outside [0, {n_classes - 1}].")
    return y_pred.astype(np.int64)


def melanoma_detection_metrics(
    is_melanoma: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    melanoma_class: str = "mel",
    specificities: Sequence[float] = (0.8, 0.9),
) -> dict:
    """Scores a multi-class model on a melanoma-vs-benign set (ISIC 2020 style labels).

    The score is the model's P(melanoma): AUC and sensitivity at fixed specificity. The
    decision is what the app shows, "melanoma is the top-1 class": accuracy, the confusion
    matrix, sensitivity (recall of ``mel``) and specificity (recall of ``benign``). The ECE is
    the calibration of P(melanoma) as a two-class probability.

    Args:
        is_melanoma: (N,) 1 for melanoma, 0 for benign.
        probs: (N, C) the model's class probabilities, columns in ``classes`` order.
        classes: The model's C class codes; must include ``melanoma_class``.
        melanoma_class: Code of the melanoma class among ``classes``.
        specificities: Target specificities for the sensitivity operating points.

    Returns:
        The :func:`compute_metrics` dict over the classes ``["benign", "mel"]``, plus
        ``task: "melanoma-detection"``, ``sensitivity`` and ``specificity`` (of the top-1
        decision; None when the set lacks melanomas or benign lesions).

    Raises:
        ValueError: ``melanoma_class`` is not among ``classes``, or the inputs are invalid.
    """
    y_true, probs, classes = _validate_inputs(is_melanoma, probs, classes)
    if melanoma_class not in classes:
        raise ValueError(f"the model's classes {classes} have no {melanoma_class!r} to score.")
    if ((y_true != 0) & (y_true != 1)).any():
        raise ValueError("is_melanoma must hold 0 (benign) or 1 (melanoma).")
    mel = classes.index(melanoma_class)
    p_mel = probs[:, mel]
    binary = np.stack([1.0 - p_mel, p_mel], axis=1)
    top1 = (probs.argmax(axis=1) == mel).astype(np.int64)
    metrics = compute_metrics(y_true, binary, ["benign", "mel"], melanoma_class="mel",
                              specificities=specificities, y_pred=top1)
    metrics.update(task="melanoma-detection",
                   sensitivity=metrics["per_class"]["mel"]["recall"],
                   specificity=metrics["per_class"]["benign"]["recall"])
    return metrics


def compute_partial_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    melanoma_class: str | None = "mel",
    specificities: Sequence[float] = (0.8, 0.9),
) -> dict:
    """:func:`compute_metrics` of a split whose rows may carry the partial label "not
    melanoma" (target ``-1``, ISIC 2020's benign in a multi-source split).

    Class figures (accuracy, balanced accuracy, per-class, ECE, confusion matrix) are over the
    rows with a class; the melanoma figures (``melanoma_auc``, ``melanoma_sensitivity_at_spec``)
    over every row, a partial row being a non-melanoma. ``partial_rows`` counts them. Without
    partial rows this is :func:`compute_metrics`.

    Raises:
        ValueError: as :func:`compute_metrics`; also when every row is partial.
    """
    y_true = np.asarray(y_true)
    partial = y_true == -1
    if not partial.any():
        return compute_metrics(y_true, probs, classes, melanoma_class=melanoma_class,
                               specificities=specificities)
    if partial.all():
        raise ValueError("every row is labelled only 'not melanoma': score them with "
                         "melanoma_detection_metrics")
    probs = np.asarray(probs)
    metrics = compute_metrics(y_true[~partial], probs[~partial], classes,
                              melanoma_class=melanoma_class, specificities=specificities)
    if melanoma_class is not None and melanoma_class in classes:
        mel = melanoma_detection_metrics(
            (y_true == list(classes).index(melanoma_class)).astype(np.int64), probs, classes,
            melanoma_class=melanoma_class, specificities=specificities)
        metrics.update(melanoma_auc=mel["melanoma_auc"],
                       melanoma_sensitivity_at_spec=mel["melanoma_sensitivity_at_spec"])
    metrics.update(n=int(len(y_true)), partial_rows=int(partial.sum()))
    return metrics


def _validate_specificities(specificities: Sequence[float]) -> list[float]:
    """Checks that every target specificity lies in (0, 1] and the keys are distinct."""
    values = [float(s) for s in specificities]
    out_of_range = [s for s in values if not 0.0 < s <= 1.0]
    if out_of_range:
        raise ValueError(f"specificities must lie in (0, 1], got {out_of_range}.")
    keys = [f"{s:.2f}" for s in values]
    if len(set(keys)) != len(keys):
        raise ValueError(f"specificities must differ at 2 decimals (they key the result): {keys}.")
    return values


def bootstrap_intervals(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    melanoma_class: str | None = "mel",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    y_pred: np.ndarray | None = None,
) -> dict:
    """Percentile bootstrap confidence intervals of the headline metrics.

    Test splits of a few hundred images (a dozen dermatofibromas) make point estimates noisy;
    the interval says how much. Images are resampled with replacement ``n_boot`` times.

    Args:
        y_true: (N,) integer class indices.
        probs: (N, C) class probabilities.
        classes: C class codes.
        melanoma_class: code whose one-vs-rest AUC is bootstrapped; None to skip.
        n_boot: bootstrap resamples.
        level: central coverage of the interval.
        seed: resampling seed (the intervals are reproducible).
        y_pred: (N,) predicted class indices when not the arg-max of ``probs`` (as in
            :func:`compute_metrics`).

    Returns:
        ``{"level", "n_boot", "accuracy": [lo, hi], "balanced_accuracy": [lo, hi],
        "melanoma_auc": [lo, hi] or None}``.
    """
    y_true, probs, classes = _validate_inputs(y_true, probs, classes)
    rng = np.random.default_rng(seed)
    n, n_classes = probs.shape
    y_pred = probs.argmax(axis=1) if y_pred is None else _validate_predictions(y_pred, n, n_classes)
    correct = y_pred == y_true
    mel = classes.index(melanoma_class) if melanoma_class in classes else None
    is_mel = y_true == mel if mel is not None else None
    acc, bal, auc = [], [], []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        acc.append(correct[idx].mean())
        support = np.bincount(y_true[idx], minlength=n_classes)
        hits = np.bincount(y_true[idx], weights=correct[idx], minlength=n_classes)
        present = support > 0
        bal.append((hits[present] / support[present]).mean())
        if mel is not None and 0 < is_mel[idx].sum() < n:
            auc.append(roc_auc_score(is_mel[idx], probs[idx, mel]))
    tail = (1 - level) / 2 * 100

    def interval(values: list[float]) -> list[float] | None:
        if not values:
            return None
        lo, hi = np.percentile(values, [tail, 100 - tail])
        return [float(lo), float(hi)]

    return {"level": level, "n_boot": n_boot, "accuracy": interval(acc),
            "balanced_accuracy": interval(bal), "melanoma_auc": interval(auc)}
