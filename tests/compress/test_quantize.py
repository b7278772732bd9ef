"""NNCF INT8 helpers: risky-layer warnings, int8-only Q/DQ for TensorRT, outputs near FP32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skinedge.compress.quantize import quantization_warnings
from skinedge.models import create_classifier


def test_warns_for_silu_and_se_but_not_for_lite() -> None:
    risky, _ = create_classifier("test_efficientnet", 7, pretrained="none")
    warnings = quantization_warnings(risky)
    assert any("SiLU" in w for w in warnings) and any("squeeze-and-excitation" in w for w in warnings)
    lite, _ = create_classifier("tf_efficientnet_lite0", 7, pretrained="none")
    assert quantization_warnings(lite) == []


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory):
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("nncf")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(), torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()
    path = tmp_path_factory.mktemp("q") / "float.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=True,
                      input_names=["image"], output_names=["logits"])
    return model, onnx.load(str(path))


def _run(model_proto, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model_proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])


@pytest.mark.parametrize("signed", [False, True], ids=["nncf", "tensorrt-int8"])
def test_quantized_onnx_stays_close_to_float(float_onnx, signed) -> None:
    from onnx import numpy_helper

    from skinedge.compress.quantize import quantize_onnx

    model, proto = float_onnx
    rng = np.random.default_rng(0)
    # Smooth, image-like inputs (not white noise): what calibration and inference will see.
    base = rng.uniform(-1, 1, (64, 3, 1, 1)).astype(np.float32)
    x = np.clip(base + rng.normal(0, 0.1, (64, 3, 16, 16)), -1, 1).astype(np.float32)
    quantized = quantize_onnx(proto, x[:48], input_name="image", signed_activations=signed)
    ops = {n.op_type for n in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    if signed:
        inits = {i.name: i for i in quantized.graph.initializer}
        dtypes = {numpy_helper.to_array(inits[n.input[2]]).dtype for n in quantized.graph.node
                  if n.op_type == "QuantizeLinear"}
        assert dtypes == {np.dtype(np.int8)}
    with torch.no_grad():
        expected = model(torch.from_numpy(x[48:])).numpy()
    got = _run(quantized, x[48:])
    # Close on average and in shape: quantization noise, not a broken graph.
    assert np.abs(got - expected).mean() < 0.05 * expected.std()
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98
