"""ai-edge-quantizer INT8 (``--quantizer aeq``): min/max activation ranges, and the same ops
left float as PT2E (everything up to the ``float_first``-th convolution, and the classifier)."""

from __future__ import annotations

import numpy as np
import pytest

from skinedge.export import TARGETS, export_checkpoint
from skinedge.export.records import FLOAT_FIRST, ExportOptions
from tests.export.tflite_ops import tflite_ops

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def float_model(tiny_checkpoint) -> bytes:
    if reason := TARGETS["tflite"].missing_backend("int8"):
        pytest.skip(reason)
    import torch

    from skinedge.export.targets.tflite import _convert, nhwc_model
    from skinedge.models.checkpoint import load_checkpoint

    model, card = load_checkpoint(tiny_checkpoint)
    size = card.preprocess.input_size
    return bytes(_convert(nhwc_model(model.eval()), (torch.zeros(1, size, size, 3),))
                 .model_content())


def test_ranges_are_the_calibration_images_min_and_max(float_model) -> None:
    """The library's calibrator keeps a moving average of each image's range, which clips
    every image but a typical one; the logits' range must cover every calibration image."""
    from ai_edge_quantizer import recipe

    from skinedge.export.targets.tflite import _interpreter, min_max_ranges

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (12, 3, 32, 32)).astype(np.float32)
    images[5] *= 0.1  # one image far narrower than the rest
    interpreter = _interpreter(float_model)
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    logits = []
    for image in images:
        interpreter.set_tensor(source["index"], image[None].transpose(0, 2, 3, 1).copy())
        interpreter.invoke()
        logits.append(interpreter.get_tensor(sink["index"]).copy())
    ranges = min_max_ranges(float_model, recipe.static_wi8_ai8(), images)
    output = ranges[sink["name"]]
    assert float(np.min(output["min"])) == pytest.approx(float(np.min(logits)), rel=1e-5)
    assert float(np.max(output["max"])) == pytest.approx(float(np.max(logits)), rel=1e-5)


@pytest.mark.parametrize("first", [0, 1, FLOAT_FIRST])
def test_float_ends_are_the_first_convolutions_and_the_classifier(float_model, first) -> None:
    from skinedge.export.targets.tflite import _float_ends

    ops = tflite_ops(float_model)
    convs = [i for i, (name, _) in enumerate(ops) if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    classifier = max(i for i, (name, _) in enumerate(ops) if name == "FULLY_CONNECTED")
    scopes = _float_ends(float_model, first)
    assert len(scopes) == (0 if first == 0 else 1 + convs[first - 1] + 1 + 1)  # input, ops, classifier
    assert all(scope.endswith(";") for scope in scopes)
    assert len(set(scopes)) == len(scopes)  # one op each
    assert classifier > convs[-1]  # the classifier is kept besides the leading ops


@pytest.mark.parametrize("float_first", [0, FLOAT_FIRST])
def test_int8_export_keeps_the_float_ends(tiny_checkpoint, tmp_path, float_first) -> None:
    """float_first=0 is full-integer (int8 input, no float convolution); the default keeps
    its first convolutions and the classifier float, so the file takes float input."""
    if reason := TARGETS["tflite"].missing_backend("int8"):
        pytest.skip(reason)
    from ai_edge_litert import schema_py_generated as schema

    result = export_checkpoint(tiny_checkpoint, "tflite", precision="int8", out_dir=tmp_path,
                               calibration_images=20, verify_images=14,
                               options=ExportOptions(quantizer="aeq", float_first=float_first))
    details = result.card.artifact.details
    assert details["variant"] == "aeq" and details["float_first"] == float_first
    assert "min/max" in details["quantizer"]
    assert result.card.artifact.input.dtype == ("int8" if float_first == 0 else "float32")
    flat = result.path.read_bytes()
    layers = [(name, weight) for name, weight in tflite_ops(flat)
              if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    dtypes = [weight for _, weight in layers]
    kept = 0 if float_first == 0 else float_first
    assert all(d == schema.TensorType.FLOAT32 for d in dtypes[:kept])
    assert all(d == schema.TensorType.INT8 for d in dtypes[kept:-1])
    assert layers[-1][0] == "FULLY_CONNECTED"
    assert dtypes[-1] == (schema.TensorType.INT8 if float_first == 0 else schema.TensorType.FLOAT32)


def test_the_export_report_says_where_error_enters(tiny_checkpoint, tmp_path) -> None:
    """Per-layer SQNR of the int8 file against the FP32 one, written into the .export.json:
    no error before the first int8 op (the float ends), a finite SQNR after it."""
    if reason := TARGETS["tflite"].missing_backend("int8"):
        pytest.skip(reason)
    import json

    result = export_checkpoint(tiny_checkpoint, "tflite", precision="int8", out_dir=tmp_path,
                               calibration_images=20, verify_images=14,
                               options=ExportOptions(quantizer="aeq"))
    diagnosis = json.loads(result.report.read_text())["int8_layers"]
    rows = diagnosis["layers"]
    assert diagnosis["images"] == 16 and rows
    assert [r["sqnr_db"] for r in rows[:FLOAT_FIRST]] == [None] * FLOAT_FIRST
    quantized = [r for r in rows[FLOAT_FIRST:] if r["sqnr_db"] is not None]
    assert quantized and all(5 < r["sqnr_db"] < 80 for r in quantized)
    assert 5 < diagnosis["logits_sqnr_db"] < 80
    assert any(r["layer"].startswith("wrapped.blocks.") for r in rows)  # module paths
    drops = [r["drop_db"] for r in diagnosis["weakest"]]
    assert drops and drops == sorted(drops, reverse=True)


def test_tflite_tensor_names_become_module_paths() -> None:
    from skinedge.compress.int8_diagnosis import _tflite_layer_name

    name = ("litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper/timm.models."
            "efficientnet.EfficientNet_wrapped/timm.layers.norm_act.BatchNormAct2d_bn1;;"
            "litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper/timm.models."
            "efficientnet.EfficientNet_wrapped/torch.nn.modules.container.Sequential_blocks/"
            "torch.nn.modules.container.Sequential_1/timm.models._efficientnet_blocks."
            "InvertedResidual_0/torch.nn.modules.conv.Conv2d_conv_pwl;2")
    assert _tflite_layer_name(name) == "wrapped.blocks.1.0.conv_pwl"
    assert _tflite_layer_name("serving_default_output_0_output") == "serving_default_output_0_output"
