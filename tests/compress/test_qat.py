"""Quantization-aware training with NNCF on a tiny model: quantizers stay close to FP32, the
INT8 checkpoint trains, resumes, reloads and exports as it is; the quantize command's modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("nncf")

from skinedge.compress.qat import insert_quantizers, prepare_qat  # noqa: E402
from skinedge.compress.quantize import resolve_overflow_fix  # noqa: E402
from skinedge.data import load_manifest  # noqa: E402
from skinedge.data.arrays import manifest_arrays  # noqa: E402
from skinedge.models import load_card, load_checkpoint  # noqa: E402
from skinedge.pipelines.quantize import qat_config, quantize_checkpoint  # noqa: E402
from skinedge.train.trainer import train_classifier  # noqa: E402
from tests.conftest import manifest_of  # noqa: E402

FAST = ["epochs=1", "optim.scheduler=none", "optim.lr=1e-3", "device=cpu", "num_workers=0",
        "quantize.calibration_images=24"]


def softmax(x: torch.Tensor) -> np.ndarray:
    return torch.softmax(x, 1).numpy()


def test_overflow_fix_follows_the_cpu(monkeypatch):
    import skinedge.compress.quantize as q

    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: False)
    assert resolve_overflow_fix("auto") == "enable"
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: True)
    assert resolve_overflow_fix("auto") == "first_layer_only"
    assert resolve_overflow_fix("disable") == "disable"
    with pytest.raises(ValueError, match="overflow_fix"):
        resolve_overflow_fix("sometimes")


def test_quantizers_keep_outputs_close_to_fp32_on_real_looking_images(tiny_checkpoint):
    model, card = load_checkpoint(tiny_checkpoint)
    man = load_manifest(manifest_of(tiny_checkpoint))
    calibration = manifest_arrays(man, "train", card.preprocess, limit=24)
    images = torch.from_numpy(manifest_arrays(man, "val", card.preprocess).x)
    quantized = insert_quantizers(model, calibration.x, "enable")
    with torch.no_grad():
        fp32, int8 = softmax(model(images)), softmax(quantized(images))
    assert np.abs(fp32 - int8).max() < 0.15
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9
    assert any("nncf" in name for name, _ in quantized.named_modules())


@pytest.fixture(scope="module")
def qat_run(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "run"
    cfg = qat_config(tiny_checkpoint, overrides=FAST)
    man = load_manifest(manifest_of(tiny_checkpoint))
    first = train_classifier(cfg, out, objective=prepare_qat(cfg, man))
    longer = qat_config(tiny_checkpoint, overrides=[*FAST, "epochs=2"])
    resumed = train_classifier(longer, out, resume=True, objective=prepare_qat(longer, man))
    return first, resumed


def test_qat_checkpoint_is_int8_resumes_and_reloads(qat_run, tiny_checkpoint):
    first, resumed = qat_run
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    card = load_card(resumed.best_dir)
    assert card.precision == "int8"
    quantization = card.training["quantization"]
    assert quantization["nncf_config"] and quantization["calibration"]["images"] == 24
    model, _ = load_checkpoint(resumed.out_dir / "last")
    fp32, _ = load_checkpoint(tiny_checkpoint)
    x = torch.from_numpy(manifest_arrays(load_manifest(manifest_of(tiny_checkpoint)), "val",
                                         card.preprocess).x)
    with torch.no_grad():
        again, _ = load_checkpoint(resumed.out_dir / "last")
        assert torch.equal(model(x), again(x))  # reload is exact
        assert (model(x).argmax(1) == fp32(x).argmax(1)).float().mean() >= 0.8
    # The fine-tune changed the weights: it trained, not merely calibrated.
    assert not torch.equal(model.conv_stem.weight, fp32.conv_stem.weight)


@pytest.mark.parametrize("target", ["openvino", "onnx"])
def test_qat_checkpoint_exports_as_int8_and_verifies(qat_run, target, tmp_path):
    """Calibrated too: its temperature wraps the quantized model (the trained weight ranges
    keep it out of the head's weights), and the verification holds the artifact to it."""
    import shutil

    from skinedge.evaluate.calibration import TemperatureFit, set_temperature
    from skinedge.export import export_checkpoint

    checkpoint = shutil.copytree(qat_run[1].best_dir, tmp_path / "best")
    set_temperature(checkpoint, TemperatureFit(1.7, images=0, nll_before=0.0, nll_after=0.0,
                                               ece_before=0.0, ece_after=0.0, source="test"))
    result = export_checkpoint(checkpoint, target, out_dir=tmp_path / "out", verify_images=14)
    assert result.precision == "int8" and result.verification.status == "passed"
    assert result.card.artifact.details["variant"] == "qat"
    assert result.card.artifact.output.temperature == 1.7
    assert result.path.name.endswith(f"_int8_qat{'.xml' if target == 'openvino' else '.onnx'}")
    if target == "onnx":
        import onnx

        ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_checkpoint_refuses_targets_and_precisions_it_cannot_take(qat_run, tmp_path):
    from skinedge.export import export_checkpoint

    with pytest.raises(ValueError, match="openvino"):
        export_checkpoint(qat_run[1].best_dir, "tflite", out_dir=tmp_path)
    with pytest.raises(ValueError, match="already INT8"):
        export_checkpoint(qat_run[1].best_dir, "openvino", precision="fp32", out_dir=tmp_path)


def test_quantize_command_ptq_then_qat(tiny_checkpoint, tmp_path):
    from skinedge.cli.main import app

    runner = CliRunner()
    done = runner.invoke(app, ["compress", "quantize", str(tiny_checkpoint), "--out",
                               str(tmp_path / "ptq"), "--mode", "ptq", "--calibration-images", "24"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "ptq" / "test_efficientnet_int8.xml").is_file()
    outcome = quantize_checkpoint(tiny_checkpoint, tmp_path / "qat", mode="qat",
                                  targets=["openvino"], calibration_images=24,
                                  qat_overrides=[f for f in FAST if "calibration" not in f])
    assert outcome.mode == "qat" and not outcome.failed
    assert load_card(outcome.qat_checkpoint).precision == "int8"
    assert outcome.artifacts[0].path.name == "test_efficientnet_int8_qat.xml"


def test_auto_falls_back_to_qat_only_when_ptq_misses_its_bound(tiny_checkpoint, tmp_path,
                                                               monkeypatch):
    import dataclasses

    from skinedge.export import get_target

    spec = get_target("openvino")
    strict = dataclasses.replace(spec.tolerances["int8"], max_prob_diff=0.0, max_mean_prob_diff=0.0)
    monkeypatch.setitem(spec.tolerances, "int8", strict)  # no INT8 model can pass this
    outcome = quantize_checkpoint(tiny_checkpoint, tmp_path, mode="auto", targets=["openvino"],
                                  calibration_images=24,
                                  qat_overrides=[f for f in FAST if "calibration" not in f])
    first, second = outcome.attempts
    assert first["mode"] == "ptq" and first["missed_bound"]
    assert second["mode"] == outcome.mode == "qat" and outcome.qat_checkpoint.is_dir()
    assert set(outcome.against_fp32) >= {"agreement", "fp32_balanced_accuracy",
                                         "int8_balanced_accuracy"}
    assert 0 <= outcome.against_fp32["agreement"] <= 1
    card = load_card(outcome.qat_checkpoint)
    assert card.training["quantization"]["against_fp32"] == outcome.against_fp32


def test_qat_keeps_the_outlier_exposure_the_checkpoint_was_trained_with(tiny_checkpoint,
                                                                        tmp_path):
    """A model taught to refuse non-lesion pictures is fine-tuned with them too (its QAT config
    copies the section), and such a QAT run trains; one trained without them stays without."""
    import json
    import shutil

    manifest = manifest_of(tiny_checkpoint)
    assert qat_config(tiny_checkpoint, overrides=FAST).outliers.weight == 0
    checkpoint = shutil.copytree(tiny_checkpoint, tmp_path / "best")
    card_path = checkpoint / "card.json"
    card = json.loads(card_path.read_text())
    card["training"]["config"]["outliers"] = {"weight": 0.5, "share": 0.2}
    card_path.write_text(json.dumps(card))

    cfg = qat_config(checkpoint, manifest=manifest, overrides=FAST)
    assert (cfg.outliers.weight, cfg.outliers.share) == (0.5, 0.2)
    result = train_classifier(cfg, tmp_path / "qat", objective=prepare_qat(cfg, load_manifest(manifest)))
    assert load_card(result.best_dir).training["config"]["outliers"]["weight"] == 0.5
