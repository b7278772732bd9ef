"""Tests for skinedge.evaluate.metrics: hand-checked values and sklearn cross-checks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from skinedge.evaluate.metrics import compute_metrics

HAM_CLASSES = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]
EXPECTED_KEYS = {
    "n",
    "accuracy",
    "balanced_accuracy",
    "per_class",
    "macro_auc",
    "melanoma_auc",
    "melanoma_sensitivity_at_spec",
    "ece",
    "confusion_matrix",
    "classes",
}


def probs_for_predictions(preds: list[int], n_classes: int, confidence: float = 0.8) -> np.ndarray:
    """(N, C) probabilities whose arg-max is ``preds``; the rest shared equally."""
    rest = (1.0 - confidence) / (n_classes - 1)
    probs = np.full((len(preds), n_classes), rest)
    probs[np.arange(len(preds)), preds] = confidence
    return probs


def binary_probs(p_mel: list[float]) -> np.ndarray:
    """(N, 2) probabilities for classes (benign, mel) from P(mel)."""
    p = np.asarray(p_mel, dtype=float)
    return np.stack([1.0 - p, p], axis=1)


def test_accuracy_balanced_accuracy_and_per_class_on_hand_example():
    # true:  mel mel | nv nv nv nv | bcc bcc
    # pred:  mel nv  | nv nv nv mel| bcc mel
    y_true = np.array([0, 0, 1, 1, 1, 1, 2, 2])
    preds = [0, 1, 1, 1, 1, 0, 2, 0]
    metrics = compute_metrics(y_true, probs_for_predictions(preds, 3), ["mel", "nv", "bcc"])

    assert set(metrics) == EXPECTED_KEYS
    assert metrics["n"] == 8
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    # Recalls 1/2, 3/4, 1/2.
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, preds))
    assert metrics["confusion_matrix"] == [[1, 1, 0], [1, 3, 0], [1, 0, 1]]
    mel = metrics["per_class"]["mel"]
    assert mel["precision"] == pytest.approx(1 / 3)
    assert mel["recall"] == pytest.approx(1 / 2)
    assert mel["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert mel["support"] == 2
    assert metrics["per_class"]["nv"]["precision"] == pytest.approx(3 / 4)
    assert metrics["per_class"]["bcc"]["precision"] == pytest.approx(1.0)
    assert metrics["classes"] == ["mel", "nv", "bcc"]


def test_matches_sklearn_on_random_seven_class_data():
    rng = np.random.default_rng(0)
    y_true = np.tile(np.arange(7), 6)
    logits = rng.normal(size=(42, 7)) + 1.5 * np.eye(7)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = probs.argmax(axis=1)
    metrics = compute_metrics(y_true, probs, HAM_CLASSES)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=range(7), zero_division=0
    )
    aucs = roc_auc_score(y_true, probs, multi_class="ovr", average=None)
    for k, code in enumerate(HAM_CLASSES):
        scores = metrics["per_class"][code]
        assert scores["precision"] == pytest.approx(precision[k])
        assert scores["recall"] == pytest.approx(recall[k])
        assert scores["f1"] == pytest.approx(f1[k])
        assert scores["support"] == support[k]
        assert scores["auc"] == pytest.approx(aucs[k])
    assert metrics["macro_auc"] == pytest.approx(aucs.mean())
    assert metrics["melanoma_auc"] == pytest.approx(aucs[0])
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert metrics["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()


def test_auc_is_one_when_melanoma_scores_separate_perfectly():
    metrics = compute_metrics(np.array([0, 0, 1, 1]), binary_probs([0.1, 0.2, 0.8, 0.9]),
                              ["benign", "mel"])
    assert metrics["melanoma_auc"] == pytest.approx(1.0)
    assert metrics["per_class"]["benign"]["auc"] == pytest.approx(1.0)
    assert metrics["macro_auc"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("p_mel", "expected_auc"),
    [
        ([0.9, 0.8, 0.2, 0.1], 0.0),  # every melanoma scored below every benign lesion
        ([0.3, 0.3, 0.7, 0.7], 0.5),  # interleaved: one win, one loss, two ties out of 4 pairs
    ],
)
def test_auc_for_inverted_and_uninformative_scores(p_mel, expected_auc):
    y_true = np.array([0, 1, 0, 1]) if expected_auc == 0.5 else np.array([0, 0, 1, 1])
    metrics = compute_metrics(y_true, binary_probs(p_mel), ["benign", "mel"])
    assert metrics["melanoma_auc"] == pytest.approx(expected_auc)


def test_melanoma_sensitivity_at_specificity_by_hand():
    # 10 benign lesions: one scores 0.85, one 0.65, the rest <= 0.4.
    benign = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.4, 0.65, 0.85]
    # 4 melanomas.
    melanoma = [0.95, 0.8, 0.6, 0.3]
    y_true = np.array([0] * 10 + [1] * 4)
    metrics = compute_metrics(y_true, binary_probs(benign + melanoma), ["benign", "mel"])
    # Spec >= 0.9 allows 1 false positive (threshold 0.8: 0.85 is the FP) -> 2/4 melanomas.
    # Spec >= 0.8 allows 2 false positives (threshold 0.6: 0.85, 0.65) -> 3/4 melanomas.
    assert metrics["melanoma_sensitivity_at_spec"] == {"0.80": 0.75, "0.90": 0.5}


def test_sensitivity_uses_the_named_melanoma_column_and_custom_targets():
    # Multi-class: melanoma is column 1; P(mel) ranks both melanomas first.
    y_true = np.array([1, 1, 0, 0, 2, 2])
    probs = np.array(
        [
            [0.1, 0.7, 0.2],
            [0.3, 0.6, 0.1],
            [0.6, 0.3, 0.1],
            [0.8, 0.1, 0.1],
            [0.2, 0.2, 0.6],
            [0.1, 0.1, 0.8],
        ]
    )
    metrics = compute_metrics(y_true, probs, ["nv", "mel", "bcc"], specificities=(0.95, 1.0))
    assert metrics["melanoma_sensitivity_at_spec"] == {"0.95": 1.0, "1.00": 1.0}
    assert metrics["melanoma_auc"] == pytest.approx(1.0)


def test_ece_by_hand_and_depends_on_bins():
    # Confidences 0.95 (right), 0.95 (wrong), 0.65 (right), 0.65 (right).
    y_true = np.array([1, 0, 1, 0])
    probs = binary_probs([0.95, 0.95, 0.65, 0.35])
    # 15 bins: |0.5 - 0.95| * 2/4 + |1.0 - 0.65| * 2/4 = 0.225 + 0.175.
    assert compute_metrics(y_true, probs, ["benign", "mel"])["ece"] == pytest.approx(0.4)
    # 1 bin: |accuracy 0.75 - mean confidence 0.8|.
    one_bin = compute_metrics(y_true, probs, ["benign", "mel"], ece_bins=1)
    assert one_bin["ece"] == pytest.approx(0.05)


def test_class_absent_from_y_true_is_excluded_from_auc_and_balanced_accuracy():
    # bcc never occurs but is predicted once (wrongly).
    y_true = np.array([0, 0, 1, 1, 1])
    preds = [0, 2, 1, 1, 0]
    probs = probs_for_predictions(preds, 3)
    probs[:, 0] = [0.8, 0.15, 0.1, 0.1, 0.75]  # P(mel); keeps the arg-max at ``preds``
    probs[:, 1] = 1.0 - probs[:, 0] - probs[:, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning / divide-by-zero spam
        metrics = compute_metrics(y_true, probs, ["mel", "nv", "bcc"])

    bcc = metrics["per_class"]["bcc"]
    assert bcc == {"precision": 0.0, "recall": None, "f1": None, "support": 0, "auc": None}
    defined = [metrics["per_class"][c]["auc"] for c in ("mel", "nv")]
    # mel: 0.8 ranks above all 3 nv, 0.15 above 2 of them -> 5/6; nv columns rank perfectly.
    assert defined == pytest.approx([5 / 6, 1.0])
    assert metrics["macro_auc"] == pytest.approx(np.mean(defined))
    # Recalls: mel 1/2, nv 2/3; bcc is not averaged in.
    assert metrics["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that y_pred has a class not in y_true
        assert metrics["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(y_true, preds)
        )


def test_class_never_predicted_has_precision_zero_without_warnings():
    y_true = np.array([0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = compute_metrics(y_true, probs_for_predictions([0, 1, 1], 3), ["mel", "nv", "bcc"])
    assert metrics["per_class"]["bcc"]["precision"] == 0.0
    assert metrics["per_class"]["bcc"]["recall"] == 0.0
    assert metrics["per_class"]["bcc"]["f1"] == 0.0


def test_single_class_present_gives_no_auc_and_no_melanoma_operating_point():
    metrics = compute_metrics(np.array([1, 1, 1]), binary_probs([0.9, 0.4, 0.7]),
                              ["benign", "mel"])
    assert metrics["per_class"]["mel"]["auc"] is None
    assert metrics["per_class"]["benign"]["auc"] is None
    assert metrics["macro_auc"] is None
    assert metrics["melanoma_sensitivity_at_spec"] == {"0.80": None, "0.90": None}
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_binary_benign_vs_melanoma():
    y_true = np.array([0, 0, 0, 1, 1])
    metrics = compute_metrics(y_true, binary_probs([0.1, 0.6, 0.3, 0.7, 0.4]), ["benign", "mel"])
    assert set(metrics) == EXPECTED_KEYS
    assert metrics["confusion_matrix"] == [[2, 1], [1, 1]]
    # 6 (mel, benign) pairs, melanoma ranked higher in 5: 0.7 > all three, 0.4 > 0.1 and 0.3.
    assert metrics["melanoma_auc"] == pytest.approx(5 / 6)
    # With two columns summing to 1, both one-vs-rest AUCs are the same number.
    assert metrics["per_class"]["benign"]["auc"] == pytest.approx(metrics["melanoma_auc"])


@pytest.mark.parametrize("melanoma_class", ["mel", None])
def test_melanoma_metrics_are_none_without_a_melanoma_class(melanoma_class):
    metrics = compute_metrics(np.array([0, 1, 0, 1]), probs_for_predictions([0, 1, 1, 1], 2),
                              ["nv", "bcc"], melanoma_class=melanoma_class)
    assert metrics["melanoma_auc"] is None
    assert metrics["melanoma_sensitivity_at_spec"] == {"0.80": None, "0.90": None}
    assert metrics["macro_auc"] is not None


def test_rows_summing_to_one_within_float32_tolerance_are_accepted():
    probs = binary_probs([0.2, 0.9]).astype(np.float32) * np.float32(1.0002)
    metrics = compute_metrics(np.array([0, 1], dtype=np.int32), probs, ["benign", "mel"])
    assert metrics["accuracy"] == 1.0


GOOD_PROBS = binary_probs([0.2, 0.9, 0.4])
GOOD_LABELS = np.array([0, 1, 0])


@pytest.mark.parametrize(
    ("y_true", "probs", "classes", "kwargs", "message"),
    [
        (np.array([], dtype=int), np.zeros((0, 2)), ["benign", "mel"], {}, "empty"),
        (GOOD_LABELS, GOOD_PROBS[:2], ["benign", "mel"], {}, "3 labels but probs has 2 rows"),
        (GOOD_LABELS, GOOD_PROBS, ["benign", "mel", "bcc"], {}, "2 columns but 3 classes"),
        (GOOD_LABELS, GOOD_PROBS[:, 1], ["benign", "mel"], {}, "must be 2-D"),
        (GOOD_LABELS[:, None], GOOD_PROBS, ["benign", "mel"], {}, "must be 1-D"),
        (np.array([0, 2, 0]), GOOD_PROBS, ["benign", "mel"], {}, r"outside \[0, 1\].*row 1"),
        (np.array([0, -1, 0]), GOOD_PROBS, ["benign", "mel"], {}, "outside"),
        (np.array([0.0, 1.0, 0.0]), GOOD_PROBS, ["benign", "mel"], {}, "integer class indices"),
        (GOOD_LABELS, np.where(np.eye(3, 2) == 1, np.nan, GOOD_PROBS), ["benign", "mel"], {},
         "NaN"),
        (GOOD_LABELS, np.array([[2.0, -1.0], [0.5, 0.5], [0.5, 0.5]]), ["benign", "mel"], {},
         "apply softmax"),
        (GOOD_LABELS, np.array([[0.5, 0.4], [0.5, 0.5], [0.5, 0.5]]), ["benign", "mel"], {},
         "row 0 sums to 0.9"),
        (GOOD_LABELS, GOOD_PROBS, ["mel", "mel"], {}, "unique"),
        (np.array([0, 0, 0]), np.ones((3, 1)), ["mel"], {}, "at least 2 classes"),
        (GOOD_LABELS, GOOD_PROBS, ["benign", "mel"], {"specificities": (0.8, 1.5)}, r"\(0, 1\]"),
        (GOOD_LABELS, GOOD_PROBS, ["benign", "mel"], {"ece_bins": 0}, "ece_bins"),
    ],
)
def test_bad_inputs_raise_value_error_saying_what_is_wrong(y_true, probs, classes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(y_true, probs, classes, **kwargs)


def test_result_round_trips_through_strict_json():
    # Includes None values (absent class) and numpy inputs of several dtypes.
    y_true = np.array([0, 0, 1, 1, 1], dtype=np.int32)
    probs = probs_for_predictions([0, 1, 1, 1, 0], 3).astype(np.float32)
    metrics = compute_metrics(y_true, probs, ("mel", "nv", "bcc"))
    text = json.dumps(metrics, allow_nan=False)
    assert json.loads(text) == metrics
    assert metrics["per_class"]["bcc"]["auc"] is None
    assert isinstance(metrics["per_class"]["mel"]["support"], int)
    assert isinstance(metrics["confusion_matrix"][0][0], int)


def test_bootstrap_intervals_bracket_the_estimate_and_shrink_with_more_data():
    from skinedge.evaluate.metrics import bootstrap_intervals

    rng = np.random.default_rng(0)

    def sample(n):
        y = rng.integers(0, 3, n)
        logits = rng.normal(size=(n, 3))
        logits[np.arange(n), y] += 1.5
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return y, p

    y, p = sample(200)
    point = compute_metrics(y, p, ["mel", "nv", "bkl"])
    ci = bootstrap_intervals(y, p, ["mel", "nv", "bkl"], n_boot=300)
    for key in ("accuracy", "balanced_accuracy", "melanoma_auc"):
        lo, hi = ci[key]
        assert lo < point[key] < hi
    y2, p2 = sample(3000)
    ci2 = bootstrap_intervals(y2, p2, ["mel", "nv", "bkl"], n_boot=300)
    width = lambda c: c["balanced_accuracy"][1] - c["balanced_accuracy"][0]  # noqa: E731
    assert width(ci2) < width(ci) / 2
    assert bootstrap_intervals(y, p, ["mel", "nv", "bkl"], n_boot=50, seed=1) == \
        bootstrap_intervals(y, p, ["mel", "nv", "bkl"], n_boot=50, seed=1)
    assert bootstrap_intervals(y, p, ["a", "b", "c"], n_boot=20)["melanoma_auc"] is None


def test_melanoma_detection_scores_p_mel_and_decides_by_top1():
    from skinedge.evaluate.metrics import melanoma_detection_metrics

    # classes mel, nv, bcc; rows 0-2 melanoma, rows 3-5 benign.
    probs = np.array([
        [0.40, 0.30, 0.30],  # mel top-1 with P(mel) < 0.5: a hit for "mel is top-1"
        [0.45, 0.50, 0.05],  # nv top-1: a missed melanoma
        [0.90, 0.05, 0.05],  # hit
        [0.35, 0.60, 0.05],  # benign, not flagged
        [0.50, 0.20, 0.30],  # benign flagged as melanoma
        [0.10, 0.10, 0.80],  # benign, not flagged
    ])
    is_mel = np.array([1, 1, 1, 0, 0, 0])

    m = melanoma_detection_metrics(is_mel, probs, ["mel", "nv", "bcc"])

    assert m["task"] == "melanoma-detection" and m["classes"] == ["benign", "mel"]
    assert m["sensitivity"] == pytest.approx(2 / 3)  # rows 0 and 2 of 3
    assert m["specificity"] == pytest.approx(2 / 3)  # rows 3 and 5 of 3
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["melanoma_auc"] == pytest.approx(roc_auc_score(is_mel, probs[:, 0]))
    # A 0.5 threshold on P(mel) would have called row 0 benign: the decision is top-1.
    assert m["per_class"]["mel"]["recall"] == m["sensitivity"]
    with pytest.raises(ValueError, match="no 'mel' to score"):
        melanoma_detection_metrics(is_mel, probs[:, 1:] / probs[:, 1:].sum(1, keepdims=True),
                                   ["nv", "bcc"])


def test_compute_metrics_checks_given_predictions():
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="y_pred must hold 3 integer class indices"):
        compute_metrics(y, binary_probs([0.2, 0.7, 0.9]), ["benign", "mel"], y_pred=np.array([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        compute_metrics(y, binary_probs([0.2, 0.7, 0.9]), ["benign", "mel"],
                        y_pred=np.array([0, 1, 2]))
