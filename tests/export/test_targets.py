"""The export contract, for every registered target that can run here: export the tiny
checkpoint, reload it through its runtime, compare with PyTorch. A new target is covered by
registering it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skinedge.errors import NotFoundError
from skinedge.export import TARGETS, ExportError, ExportOptions, Tolerance, export_checkpoint
from skinedge.export.records import FLOAT_FIRST
from skinedge.runtimes import RUNTIMES, load_runtime, read_artifact_card
from skinedge.utils.io import path_size


def _case(target, precision: str):
    """A parity case, marked with what its runtime needs (``gpu``, ``macos``): it skips, saying
    so, on machines without it."""
    runtime = next(r for r in RUNTIMES.values() if target.suffix in r.suffixes)
    return pytest.param(target.name, precision, id=f"{target.name}-{precision}",
                        marks=[getattr(pytest.mark, need) for need in runtime.needs])


CASES = [_case(t, p) for t in TARGETS.values() for p in t.precisions]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each (target, precision) exported once per module: result or the error it raised."""
    out = tmp_path_factory.mktemp("exports")
    cache: dict = {}

    def get(checkpoint, target, precision):
        if (target, precision) not in cache:
            try:
                cache[target, precision] = export_checkpoint(
                    checkpoint, target, precision=precision, out_dir=out,
                    calibration_images=40, verify_images=14)
            except ExportError as exc:
                cache[target, precision] = exc
        return cache[target, precision]

    return get


def reference_probs(checkpoint, images):
    return load_runtime(checkpoint).predict(images)


def test_registry_has_every_issue_target() -> None:
    assert set(TARGETS) == {"onnx", "openvino", "tflite", "coreml", "tensorrt", "executorch", "web"}


def test_every_target_has_a_registered_runtime_for_its_files(tmp_path) -> None:
    from skinedge.runtimes import runtime_class

    for target in TARGETS.values():
        (tmp_path / f"model{target.suffix}").touch()
        assert target.suffix in runtime_class(tmp_path / f"model{target.suffix}").suffixes


@pytest.mark.slow
@pytest.mark.parametrize(("target", "precision"), CASES)
def test_export_reload_matches_pytorch(target, precision, tiny_checkpoint, tiny_dataset,
                                       exports) -> None:
    spec = TARGETS[target]
    if reason := spec.missing_backend(precision):
        pytest.skip(reason)
    result = exports(tiny_checkpoint, target, precision)
    if isinstance(result, ExportError):
        raise result
    card = read_artifact_card(result.path)
    assert card.artifact.target == target and card.artifact.precision == precision
    assert card.weights_sha256 == card.artifact.source_weights_sha256 is not None
    assert card.classes == read_artifact_card(tiny_checkpoint).classes
    assert result.verification.status == "passed", result.verification
    images = sorted((tiny_dataset / "images").glob("*.jpg"))[::3]  # 24 images, all classes
    expected = reference_probs(tiny_checkpoint, images)
    runtime = load_runtime(result.path, threads=1)
    got = runtime.predict(images)
    tol = spec.tolerance(precision)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-6)
    if precision == "int8":  # quantization noise: bounded on average, and few flips
        assert np.abs(got - expected).mean() < 0.05
        assert (got.argmax(1) != expected.argmax(1)).mean() <= max(tol.max_flip_rate, 1 / 24)
    else:
        np.testing.assert_allclose(got, expected, atol=tol.max_prob_diff)
        assert (got.argmax(1) == expected.argmax(1)).all()


@pytest.mark.slow
def test_onnx_card_is_in_the_file_metadata(tiny_checkpoint, exports) -> None:
    ort = pytest.importorskip("onnxruntime")
    result = exports(tiny_checkpoint, "onnx", "fp32")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    card = json.loads(session.get_modelmeta().custom_metadata_map["skinedge.card"])
    assert card["artifact"]["input"]["shape"] == [1, 3, 32, 32]
    assert card["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert card["data"]["licence"]
    report = json.loads(result.report.read_text())
    assert report["verification"]["status"] == "passed"


@pytest.mark.slow
def test_tflite_int8_has_float_io_by_default(tiny_checkpoint, exports) -> None:
    """The first convolutions and the classifier stay float (FLOAT_FIRST): float in, logits out."""
    if TARGETS["tflite"].missing_backend("int8"):
        pytest.skip("litert not installed")
    result = exports(tiny_checkpoint, "tflite", "int8")
    assert not isinstance(result, ExportError), result
    spec = read_artifact_card(result.path).artifact
    assert spec.input.dtype == spec.output.dtype == "float32" and spec.input.layout == "NHWC"
    assert spec.details["float_first"] == FLOAT_FIRST > 0
    assert spec.calibration["images"] == 40 and len(spec.calibration["images_sha256"]) == 64


@pytest.mark.slow
def test_full_integer_tflite_has_int8_io_and_the_runtime_quantizes(tiny_checkpoint,
                                                                   tmp_path) -> None:
    if TARGETS["tflite"].missing_backend("int8"):
        pytest.skip("litert not installed")
    result = export_checkpoint(tiny_checkpoint, "tflite", precision="int8", out_dir=tmp_path,
                               calibration_images=40, verify_images=14,
                               options=ExportOptions(float_first=0))
    spec = read_artifact_card(result.path).artifact
    assert spec.input.dtype == "int8" and spec.input.layout == "NHWC"
    assert spec.input.scale > 0 and spec.output.dtype == "int8"
    assert result.verification.status == "passed"  # load_runtime quantized the input


@pytest.mark.slow
def test_executorch_program_carries_its_card_and_runs_on_xnnpack(tiny_checkpoint, exports) -> None:
    if TARGETS["executorch"].missing_backend("int8"):
        pytest.skip("executorch not installed")
    from executorch.runtime import Runtime

    from skinedge.runtimes.executorch import CARD_METHOD

    paths = {}
    for precision in ("fp32", "int8"):
        result = exports(tiny_checkpoint, "executorch", precision)
        assert not isinstance(result, ExportError), result
        paths[precision] = result.path
        program = Runtime.get().load_program(result.path)
        assert program.method_names == {"forward", CARD_METHOD}
        (stored,) = program.load_method(CARD_METHOD).execute([])  # what a phone app reads
        card = read_artifact_card(result.path)
        assert json.loads(bytes(stored.numpy())) == json.loads(card.to_json())
        assert b"XnnpackBackend" in result.path.read_bytes()  # forward is lowered to XNNPACK
        runtime = load_runtime(result.path, threads=1)
        assert runtime.execution() == {"xnnpack": True, "threads": 1}
    spec = read_artifact_card(paths["int8"]).artifact
    assert spec.input.dtype == spec.output.dtype == "float32" and spec.input.layout == "NCHW"
    assert "XNNPACKQuantizer" in spec.details["quantizer"] and spec.calibration["images"] == 40
    assert path_size(paths["int8"]) < path_size(paths["fp32"])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tflite", "executorch"])
def test_pt2e_int8_report_says_where_error_enters(target, tiny_checkpoint, exports) -> None:
    if TARGETS[target].missing_backend("int8"):
        pytest.skip(f"{target} not installed")
    result = exports(tiny_checkpoint, target, "int8")
    assert not isinstance(result, ExportError), result
    from skinedge.compress.pt2e import DIAGNOSIS_IMAGES

    layers = json.loads(result.report.read_text())["int8_layers"]
    assert layers["images"] == DIAGNOSIS_IMAGES and np.isfinite(layers["logits_sqnr_db"])
    convs = [row for row in layers["layers"] if row["op"] == "conv2d"]
    # The first FLOAT_FIRST convolutions run in float: no error of their own (None).
    assert [r["local_sqnr_db"] for r in convs[:FLOAT_FIRST]] == [None] * FLOAT_FIRST
    assert len(convs) >= 5 and all(np.isfinite(r["local_sqnr_db"]) for r in convs[FLOAT_FIRST:])
    assert layers["weakest"][0]["local_sqnr_db"] == min(
        r["local_sqnr_db"] for r in layers["layers"] if r["local_sqnr_db"] is not None)
    fp32 = exports(tiny_checkpoint, target, "fp32")
    assert json.loads(fp32.report.read_text())["int8_layers"] is None


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tflite", "executorch"])
def test_pt2e_qat_export_is_distilled_verified_and_labelled(target, tiny_checkpoint,
                                                            tmp_path) -> None:
    """The fallback INT8 method: calibration, then quantization-aware distillation over the
    whole training split; the card says what it did on which images, and the artifact passes
    the same verification as any INT8 export."""
    if TARGETS[target].missing_backend("int8"):
        pytest.skip(f"{target} not installed")
    from skinedge.data.manifest import load_manifest
    from skinedge.models.card import load_card, resolve_manifest
    from skinedge.runtimes.base import artifact_label

    lines: list[str] = []
    result = export_checkpoint(tiny_checkpoint, target, precision="int8", out_dir=tmp_path,
                               calibration_images=40, verify_images=14, log=lines.append,
                               options=ExportOptions(quantizer="pt2e-qat", qat_epochs=1))
    assert result.verification.status == "passed"
    card = read_artifact_card(result.path)
    qat = card.artifact.details["qat"]
    manifest = load_manifest(resolve_manifest(None, load_card(tiny_checkpoint), tiny_checkpoint))
    train = [row for row in manifest.rows if row.split == "train"]
    assert qat["images"] == len(train) and qat["epochs"] == 1 and len(qat["images_sha256"]) == 64
    assert qat["steps"] == max(1, len(train) // 16) and qat["images_source"].endswith(":train")
    assert card.artifact.calibration["images"] == 40  # ranges still come from calibration
    assert artifact_label(card) == f"{target}-int8-pt2e-qat" and "pt2e-qat" in result.path.name
    assert any("INT8 distillation: epoch 1/1" in line for line in lines)
    report = json.loads(result.report.read_text())
    assert np.isfinite(report["int8_layers"]["logits_sqnr_db"])


@pytest.mark.slow
def test_pt2e_seeds_script_measures_both_methods_and_renders_a_section(tiny_checkpoint,
                                                                       tmp_path) -> None:
    """``scripts/pt2e_qat_seeds.py`` (each calibration seed, pt2e and pt2e-qat, in the TFLite
    file) and its RESULTS section."""
    import subprocess
    import sys
    from pathlib import Path

    if TARGETS["tflite"].missing_backend("int8"):
        pytest.skip("litert not installed")
    root, out = Path(__file__).parents[2], tmp_path / "seeds"
    subprocess.run([sys.executable, "scripts/pt2e_qat_seeds.py", str(tiny_checkpoint),
                    "--seeds", "0", "1", "--calibration", "8", "--out", str(out)],
                   check=True, cwd=root, capture_output=True)
    doc = json.loads((out / "pt2e-seeds.json").read_text())
    assert [(r["seed"], r["method"]) for r in doc["rows"]] == [
        (0, "pt2e"), (0, "pt2e-qat"), (1, "pt2e"), (1, "pt2e-qat")]
    for row in doc["rows"]:
        assert row["test"]["images"] > 0 and 0 <= row["test"]["flip_rate"] <= 1
        assert np.isfinite(row["val"]["sqnr_db"])
    results = tmp_path / "RESULTS.md"
    results.write_text("# Measured results\n\nkept\n")
    subprocess.run([sys.executable, "scripts/results.py", "--update", "--pt2e-seeds", str(out),
                    "--out", str(results)], check=True, cwd=root)
    text = results.read_text()
    assert "kept" in text and "<!-- section: pt2e-seeds -->" in text
    assert "| 1 | pt2e-qat |" in text and "- pt2e-qat over 2 seeds, test: flips" in text


def test_qat_epochs_without_pt2e_qat_is_refused(tiny_checkpoint, tmp_path) -> None:
    from typer.testing import CliRunner

    from skinedge.cli.main import app

    result = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "--target", "tflite",
                                      "--precision", "int8", "--qat-epochs", "3",
                                      "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "--qat-epochs applies to --quantizer pt2e-qat" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_coreml_package_loads_back_as_a_spec_with_an_image_input(tiny_checkpoint, exports) -> None:
    ct = pytest.importorskip("coremltools")
    for precision in TARGETS["coreml"].precisions:  # the parity cases need macOS
        result = exports(tiny_checkpoint, "coreml", precision)
        assert result.verification.status == "skipped"  # Core ML predicts on macOS only
        card = read_artifact_card(result.path)  # the runtime's card reader works here
        assert (card.artifact.target, card.artifact.precision) == ("coreml", precision)
        assert card.weights_sha256 == card.artifact.source_weights_sha256 is not None
        spec = ct.models.MLModel(str(result.path), skip_model_load=True).get_spec()
        assert spec.description.input[0].type.WhichOneof("Type") == "imageType"
        assert {o.name for o in spec.description.output} >= {"label"}
        assert "skinedge.card" in spec.description.metadata.userDefined
    fp16 = exports(tiny_checkpoint, "coreml", "fp16").path
    int8 = exports(tiny_checkpoint, "coreml", "int8").path
    assert path_size(int8) < path_size(fp16)


@pytest.mark.slow
def test_tensorrt_without_gpu_refuses_but_writes_onnx_and_trtexec(tiny_checkpoint, tiny_dataset,
                                                                 exports) -> None:
    from skinedge.runtimes.tensorrt import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the engine is built instead")
    if TARGETS["tensorrt"].missing_backend("int8"):
        pytest.skip("onnx/nncf not installed")
    error = exports(tiny_checkpoint, "tensorrt", "int8")
    assert isinstance(error, ExportError)
    assert "trtexec" in str(error) and "tensorrt" in str(error)
    onnx_path, script, sidecar = error.files
    assert sidecar.name == "test_efficientnet_int8.card.json"
    assert "--stronglyTyped" in script.read_text() and "--int8" not in script.read_text()
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # The TensorRT-ready graph carries the card, and its int8-only rewrite (7-bit activations
    # where NNCF chose uint8) still runs in ONNX Runtime close to torch.
    images = sorted((tiny_dataset / "images").glob("*.jpg"))[::3]
    got = load_runtime(onnx_path).predict(images)
    assert np.abs(got - reference_probs(tiny_checkpoint, images)).mean() < 0.05


@pytest.mark.slow
def test_drift_beyond_tolerance_fails_and_moves_the_artifact(tiny_checkpoint, tmp_path) -> None:
    if TARGETS["onnx"].missing_backend("int8"):
        pytest.skip("onnx/nncf not installed")
    with pytest.raises(ExportError, match="failed verification"):
        export_checkpoint(tiny_checkpoint, "onnx", precision="int8", out_dir=tmp_path,
                          calibration_images=20, verify_images=14,
                          tolerance=Tolerance(max_prob_diff=0.0, max_flip_rate=0.0))
    assert (tmp_path / "rejected" / "test_efficientnet_int8.onnx").is_file()
    assert not (tmp_path / "test_efficientnet_int8.onnx").exists()
    report = json.loads(
        (tmp_path / "rejected" / "test_efficientnet_int8.onnx.export.json").read_text())
    assert report["verification"]["status"] == "failed"


def test_export_without_images_names_the_manifest_option(tiny_checkpoint, tmp_path) -> None:
    import shutil

    from skinedge.models.checkpoint import load_card

    copy = tmp_path / "elsewhere" / "best"
    shutil.copytree(tiny_checkpoint, copy)
    card = load_card(copy)
    (copy / "card.json").write_text(card.model_copy(update={"data": card.data.model_copy(
        update={"manifest": str(tmp_path / "gone.json")})}).to_json())
    with pytest.raises(NotFoundError, match="--manifest"):
        export_checkpoint(copy, "onnx", out_dir=tmp_path / "out")


def test_missing_backend_names_the_extra(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    import importlib.util

    from skinedge.utils.backends import MissingBackendError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "litert_torch" else real(name, *a))
    with pytest.raises(MissingBackendError, match=r"skinedge\[tflite\]"):
        export_checkpoint(tiny_checkpoint, "tflite", out_dir=tmp_path)


def test_unknown_target_and_precision_are_refused(tiny_checkpoint, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown export target"):
        export_checkpoint(tiny_checkpoint, "tvm", out_dir=tmp_path)
    with pytest.raises(ValueError, match="not fp16"):
        export_checkpoint(tiny_checkpoint, "onnx", precision="fp16", out_dir=tmp_path)


@pytest.mark.slow
def test_cli_export_verifies_and_tensorrt_refusal_exits_nonzero(tiny_checkpoint, tmp_path) -> None:
    from typer.testing import CliRunner

    from skinedge.cli.main import app

    if TARGETS["onnx"].missing_backend("fp32"):
        pytest.skip("onnx not installed")
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(tiny_checkpoint), "--target", "onnx", "--out",
                               str(tmp_path), "--verify-images", "14"])
    assert done.exit_code == 0, done.output
    assert "verified on 14 validation images" in done.output
    assert (tmp_path / "test_efficientnet_fp32.onnx").is_file()
    from skinedge.runtimes.tensorrt import unavailable_reason

    if unavailable_reason() is None:
        return
    refused = runner.invoke(app, ["export", str(tiny_checkpoint), "--target", "tensorrt",
                                  "--precision", "fp16", "--out", str(tmp_path)])
    assert refused.exit_code == 1
    assert "trtexec --onnx=test_efficientnet_fp16.trt.onnx" in refused.output
    assert "--fp16" in (tmp_path / "test_efficientnet_fp16.trtexec.sh").read_text()
    # The ONNX holds fp32 weights (the engine is built fp16): its card says so, at both levels.
    card = read_artifact_card(tmp_path / "test_efficientnet_fp16.trt.onnx")
    assert card.precision == card.artifact.precision == "fp32"


@pytest.mark.slow
def test_tensorrt_without_gpu_writes_the_card_the_built_engine_needs(tiny_checkpoint,
                                                                    tmp_path) -> None:
    """The engine that the trtexec script builds on the device loads only with its sidecar
    card: export writes it (sealed, listed in the report) under the name the runtime looks
    for beside the engine the script saves."""
    import re

    from typer.testing import CliRunner

    from skinedge.cli.main import app
    from skinedge.models.checkpoint import load_card
    from skinedge.runtimes import verify_artifact
    from skinedge.runtimes.tensorrt import card_path, unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the engine is built instead")
    if TARGETS["tensorrt"].missing_backend("fp16"):
        pytest.skip("onnx not installed")
    refused = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "--target", "tensorrt",
                                       "--precision", "fp16", "--out", str(tmp_path)])
    assert refused.exit_code == 1, refused.output
    script = tmp_path / "test_efficientnet_fp16.trtexec.sh"
    sidecar = tmp_path / "test_efficientnet_fp16.card.json"
    assert sidecar.is_file() and sidecar.name in refused.output
    engine = tmp_path / re.search(r"--saveEngine=(\S+)", script.read_text()).group(1)
    assert card_path(engine) == sidecar
    engine.write_bytes(b"")  # where trtexec saves the engine on the device
    card = verify_artifact(engine)  # the sidecar, checked against the report's sha256 and sealed
    assert card.integrity == card.compute_integrity()
    assert card.precision == card.artifact.precision == "fp16"
    assert card.artifact.target == "tensorrt"
    size = load_card(tiny_checkpoint).preprocess.input_size
    assert card.artifact.input.shape == [1, 3, size, size]
    assert card.artifact.output.shape == [1, card.num_classes]
    assert card.artifact.details["trtexec"] in script.read_text()
    report = json.loads((tmp_path / "test_efficientnet_fp16.tensorrt.export.json").read_text())
    assert sidecar.name in [f["path"].rsplit("/", 1)[-1] for f in report["files"]]
