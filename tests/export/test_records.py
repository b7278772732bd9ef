"""The export's typed records: options refuse words no target knows, and the verification result
writes the same ``verification`` section the export reports have always had."""

from __future__ import annotations

import numpy as np
import pytest

from skinedge.errors import ConfigError
from skinedge.export import TARGETS, Tolerance, export_checkpoint
from skinedge.export.records import (
    Calibration,
    ExportOptions,
    VerificationResult,
    known_quantizers,
)

MEASURED = {  # a passed verification, as export reports have it (keys in their order)
    "images": 14, "source": "runs/x/manifest.json:val", "max_prob_diff": 2.5e-07,
    "mean_prob_diff": 3.1e-08, "flips": 0, "flip_rate": 0.0, "accuracy_reference": 0.857,
    "accuracy_artifact": 0.857,
    "tolerance": {"max_prob_diff": 0.001, "max_flip_rate": 0.0, "max_mean_prob_diff": 1.0},
    "status": "passed", "reason": "",
}


def test_bad_quantizer_word_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"quantizer 'int4': choose one of aeq, pt2e, pt2e-qat, "
                                          r"ptq, qac, qat"):
        ExportOptions(quantizer="int4")
    assert issubclass(ConfigError, ValueError)  # callers catching ValueError still do


def test_bad_overflow_fix_word_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"overflow_fix 'sometimes': choose one of auto, "
                                          r"enable, first_layer_only, disable"):
        ExportOptions(overflow_fix="sometimes")
    with pytest.raises(ConfigError, match="max_drop"):
        ExportOptions(quantizer="qac", max_drop=5)


def test_options_are_frozen_with_the_targets_defaults() -> None:
    options = ExportOptions()
    assert (options.quantizer, options.max_drop, options.max_control, options.overflow_fix) == (
        None, 0.01, 200, "auto")
    with pytest.raises(AttributeError):
        options.quantizer = "qac"


def test_the_quantizer_words_are_the_registered_targets_own() -> None:
    """A target's INT8 methods are data on it: registering a target is what makes its words
    valid, so a new target with a new method needs no edit here."""
    words = known_quantizers()
    assert {"pt2e", "aeq", "ptq", "qac", "qat"} <= set(words)
    for target in TARGETS.values():
        assert set(target.quantizers) <= set(words), target.name
        for quantizer in target.quantizers:
            assert ExportOptions(quantizer=quantizer).quantizer == quantizer


def test_calibration_provenance_is_the_cards_calibration_section() -> None:
    calibration = Calibration(np.zeros((3, 3, 8, 8), np.float32), source="m.json:train",
                              images_sha256="a" * 64, manifest_split_hash="b" * 16)
    assert len(calibration) == 3
    assert calibration.provenance() == {"split": "m.json:train", "images": 3,
                                        "images_sha256": "a" * 64,
                                        "manifest_split_hash": "b" * 16}


@pytest.mark.parametrize("doc", [
    MEASURED,
    {**MEASURED, "max_prob_diff": 0.3, "flips": 2, "flip_rate": 2 / 14, "status": "failed",
     "reason": "top-1 differs on 2/14 images (14.3%, bound 5.0%)"},
    {"status": "skipped", "reason": "verification turned off", "images": 0},
    {"status": "failed", "images": 14, "reason": "its runtime could not run it: RuntimeError: x"},
    {"status": "not built", "reason": "TensorRT engine not built: no CUDA GPU"},
], ids=["passed", "failed", "skipped", "unloadable", "not-built"])
def test_verification_result_round_trips_to_the_reports_json(doc) -> None:
    result = VerificationResult.from_dict(doc)
    assert result.to_dict() == doc
    assert result.measured == ("max_prob_diff" in doc)
    if result.measured:
        assert list(result.to_dict()) == list(doc)  # the reports' key order too


def test_verification_result_built_in_code_writes_todays_keys() -> None:
    result = VerificationResult("passed", "", images=14, source="runs/x/manifest.json:val",
                                max_prob_diff=2.5e-07, mean_prob_diff=3.1e-08, flips=0,
                                flip_rate=0.0, accuracy_reference=0.857, accuracy_artifact=0.857,
                                tolerance=Tolerance(max_prob_diff=1e-3, max_flip_rate=0.0))
    assert result.to_dict() == MEASURED
    assert VerificationResult("skipped", "no GPU", images=0).to_dict() == {
        "status": "skipped", "reason": "no GPU", "images": 0}


def test_reports_from_before_the_mean_bound_still_read() -> None:
    old = {**MEASURED, "tolerance": {"max_prob_diff": 0.001, "max_flip_rate": 0.0}}
    assert VerificationResult.from_dict(old).tolerance == Tolerance(0.001, 0.0)
    with pytest.raises(ValueError, match="unknown keys"):
        VerificationResult.from_dict({**MEASURED, "p99": 1})
    with pytest.raises(ValueError, match="verification status 'fine'"):
        VerificationResult("fine")


def test_a_quantizer_the_target_lacks_is_refused(tiny_checkpoint, tmp_path) -> None:
    if TARGETS["onnx"].missing_backend("int8") or TARGETS["openvino"].missing_backend("fp32"):
        pytest.skip("onnx/nncf/openvino not installed")
    with pytest.raises(ValueError, match=r"target onnx has no quantizer 'aeq'"):
        export_checkpoint(tiny_checkpoint, "onnx", precision="int8", out_dir=tmp_path,
                          options=ExportOptions(quantizer="aeq"))
    with pytest.raises(ValueError, match=r"quantizer \(ptq\) only applies to int8"):
        export_checkpoint(tiny_checkpoint, "openvino", precision="fp32", out_dir=tmp_path,
                          options=ExportOptions(quantizer="ptq"))


def test_cli_export_refuses_a_bad_quantizer_word(tmp_path) -> None:
    from typer.testing import CliRunner

    from skinedge.cli.main import app

    done = CliRunner().invoke(app, ["export", str(tmp_path), "--target", "onnx",
                                    "--quantizer", "int4"])
    assert done.exit_code != 0
    assert "quantizer 'int4': choose one of" in done.output
