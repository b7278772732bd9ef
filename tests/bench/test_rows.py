"""A benchmark row writes the same ``bench.json`` entry the harness wrote when rows were dicts:
only the keys of what happened to the model, with the same values."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from skinedge.bench.rows import BenchRow
from skinedge.export.records import VerificationResult

WORKER = {"backend": "onnxruntime", "threads": 1, "cpus": [0, 1],
          "execution": {"provider": "CPUExecutionProvider"}, "load_s": 0.05,
          "cold_ms": 3.2, "p50_ms": 1.1, "p95_ms": 1.4, "p99_ms": 1.9, "mean_ms": 1.2,
          "iterations": 100, "warmup": 10, "peak_rss_mb": 310.5, "model_rss_mb": 12.25}
SCORES = {"accuracy": 0.8, "balanced_accuracy": 0.75, "melanoma_auc": 0.9}


def test_a_measured_row_has_every_figure_and_its_drops() -> None:
    check = VerificationResult("passed", "", images=14, source="m.json:val", max_prob_diff=1e-7,
                               mean_prob_diff=1e-8, flips=0, flip_rate=0.0,
                               accuracy_reference=0.8, accuracy_artifact=0.8,
                               tolerance=None)
    row = BenchRow("onnx-fp32", Path("exports/m.onnx"), export=check, size_mb=4.5,
                   **{**WORKER, "cpus": (0, 1)}, **SCORES, flip_rate=0.0, accuracy_drop=0.0,
                   balanced_accuracy_drop=0.0, melanoma_auc_drop=0.0)
    assert row.to_dict() == {
        "label": "onnx-fp32", "model": "exports/m.onnx", "status": "ok",
        "export": {"images": 14, "source": "m.json:val", "max_prob_diff": 1e-7,
                   "mean_prob_diff": 1e-8, "flips": 0, "flip_rate": 0.0,
                   "accuracy_reference": 0.8, "accuracy_artifact": 0.8, "tolerance": None,
                   "status": "passed", "reason": ""},
        "size_mb": 4.5, **WORKER, **SCORES, "flip_rate": 0.0, "accuracy_drop": 0.0,
        "balanced_accuracy_drop": 0.0, "melanoma_auc_drop": 0.0,
    }


def test_the_reference_row_says_so_and_a_missing_auc_has_no_drop() -> None:
    row = BenchRow("torch-fp32", Path("runs/x/train/best"), reference=True, size_mb=16.0,
                   **{**WORKER, "backend": "torch", "threads": None, "cpus": (0,)},
                   **{**SCORES, "melanoma_auc": None}, flip_rate=0.0, accuracy_drop=0.0,
                   balanced_accuracy_drop=0.0)
    assert row.to_dict() == {
        "label": "torch-fp32", "model": "runs/x/train/best", "status": "ok", "reference": True,
        "size_mb": 16.0, **WORKER, "backend": "torch", "threads": None, "cpus": [0],
        **SCORES, "melanoma_auc": None, "flip_rate": 0.0, "accuracy_drop": 0.0,
        "balanced_accuracy_drop": 0.0,
    }


def test_rows_that_did_not_run_keep_only_what_is_known() -> None:
    assert BenchRow("tflite-int8", None, "failed", "MissingBackendError: pip install x"
                    ).to_dict() == {"label": "tflite-int8", "model": None, "status": "failed",
                                    "reason": "MissingBackendError: pip install x"}
    assert BenchRow("tensorrt-fp16", None, "skipped", "TensorRT engine not built").to_dict() == {
        "label": "tensorrt-fp16", "model": None, "status": "skipped",
        "reason": "TensorRT engine not built"}
    skipped = VerificationResult("skipped", "Core ML prediction needs macOS", images=0)
    coreml = replace(BenchRow("coreml-fp16", Path("m.mlpackage"), export=skipped),
                     size_mb=2.0, status="skipped", reason="Core ML prediction needs macOS")
    assert coreml.to_dict() == {
        "label": "coreml-fp16", "model": "m.mlpackage", "status": "skipped",
        "reason": "Core ML prediction needs macOS",
        "export": {"status": "skipped", "reason": "Core ML prediction needs macOS", "images": 0},
        "size_mb": 2.0}
    assert not coreml.measured


def test_flips_are_split_by_how_sure_the_reference_was() -> None:
    """A flip on an image the reference answers with a lead of CONFIDENT_MARGIN or more counts
    in confident_flip_rate too; a flip on a near-tie only in flip_rate."""
    import numpy as np

    from skinedge.bench.harness import _against_reference
    from skinedge.bench.rows import CONFIDENT_MARGIN

    reference = np.array([[0.9, 0.05, 0.05],  # confident
                          [0.45, 0.44, 0.11],  # near-tie
                          [0.2, 0.7, 0.1],  # confident
                          [0.5, 0.5 - CONFIDENT_MARGIN, CONFIDENT_MARGIN]])  # just confident
    probs = np.array([[0.4, 0.6, 0.0],  # flips a confident answer
                      [0.44, 0.45, 0.11],  # flips the near-tie
                      [0.2, 0.7, 0.1],
                      [0.5, 0.3, 0.2]])
    row = _against_reference(BenchRow("onnx-int8", None, **WORKER, **SCORES), probs, reference,
                             dict(SCORES))
    assert row.flip_rate == 0.5
    assert row.confident_flip_rate == 1 / 3
    assert row.to_dict()["confident_flip_rate"] == 1 / 3
    unmeasured = _against_reference(BenchRow("web-int8", None), None, reference, dict(SCORES))
    assert unmeasured.flip_rate is None and "confident_flip_rate" not in unmeasured.to_dict()
