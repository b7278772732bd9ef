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


def _exported(model: torch.nn.Module, folder) -> object:
    """``model`` (16 x 16 RGB input) as a float ``onnx.ModelProto``, input ``image``."""
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("nncf")
    path = folder / "float.onnx"
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, 16, 16),), str(path), dynamo=True,
                      input_names=["image"], output_names=["logits"])
    return onnx.load(str(path))


def _image_like(n: int) -> np.ndarray:
    """Smooth, image-like inputs (not white noise): what calibration and inference will see."""
    rng = np.random.default_rng(0)
    base = rng.uniform(-1, 1, (n, 3, 1, 1)).astype(np.float32)
    return np.clip(base + rng.normal(0, 0.1, (n, 3, 16, 16)), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(), torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()
    return model, _exported(model, tmp_path_factory.mktemp("q"))


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
    x = _image_like(64)
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


class _InvertedResidual(torch.nn.Module):
    """EfficientNet-Lite's block: expand, depthwise, project (no activation), residual sum."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        wide = 4 * channels
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, wide, 1), torch.nn.ReLU6(),
            torch.nn.Conv2d(wide, wide, 3, padding=1, groups=wide), torch.nn.ReLU6(),
            torch.nn.Conv2d(wide, channels, 1))

    def forward(self, x):
        return x + self.body(x)


@pytest.fixture(scope="module")
def lite_block_onnx(tmp_path_factory):
    """A stem and two inverted residual blocks as float ONNX, with image-like inputs."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(), _InvertedResidual(8),
        _InvertedResidual(8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 4))
    return _exported(model, tmp_path_factory.mktemp("q")), _image_like(40)


def test_int8_onnx_runs_every_convolution_and_sum_as_an_integer_kernel(lite_block_onnx,
                                                                       tmp_path) -> None:
    """NNCF alone quantizes depthwise inputs per channel and signed tensors as int8, and ONNX
    Runtime then keeps those convolutions and the residual sums in float (the INT8 file was
    2.3x slower than FP32); per-tensor uint8 activations make every one an integer kernel."""
    import onnx

    from skinedge.compress.quantize import quantize_onnx
    from skinedge.runtimes.onnxruntime import compute_ops

    proto, x = lite_block_onnx
    path = tmp_path / "int8.onnx"
    onnx.save(quantize_onnx(proto, x[:32], input_name="image"), str(path))
    ops = compute_ops(path)
    assert ops.get("QLinearConv") == 7 and ops.get("QLinearAdd") == 2, ops
    assert not {"Conv", "FusedConv", "Add"} & set(ops), ops


def test_unsigned_qdq_is_the_same_model(lite_block_onnx) -> None:
    """int8 activations moved to uint8 (zero point + 128) give the same outputs, bit for bit,
    when ONNX Runtime runs the Q/DQ ops as written (no fusion)."""
    ort = pytest.importorskip("onnxruntime")
    from skinedge.compress.quantize import quantize_onnx, unsigned_qdq

    proto, x = lite_block_onnx
    signed = quantize_onnx(proto, x[:32], input_name="image", signed_activations=True)
    before = signed.SerializeToString()
    unsigned = unsigned_qdq(signed)
    assert any(i.data_type == 2 for i in unsigned.graph.initializer)  # uint8 zero points

    def run(blob: bytes) -> np.ndarray:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])

    np.testing.assert_array_equal(run(unsigned.SerializeToString()), run(before))


def _float_weight_convs(model) -> list[str]:
    """An OpenVINO model's convolutions whose weight input is a float32 constant (not int8
    weights dequantized), in order."""
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution")
            and op.input_value(1).get_node().get_type_name() == "Constant"
            and op.input_value(1).get_element_type().get_type_name() == "f32"]


def test_float_first_leaves_the_first_convolutions_in_float(lite_block_onnx, tmp_path) -> None:
    """ONNX: the first convolutions read float weights (no DequantizeLinear) and run as float
    kernels; every later one is still an integer kernel. OpenVINO: the same names are found in
    its ordered ops, and NNCF leaves their weights float."""
    import onnx

    from skinedge.compress.quantize import first_convolutions, quantize_onnx, quantize_openvino
    from skinedge.runtimes.onnxruntime import compute_ops

    proto, x = lite_block_onnx
    quantized = quantize_onnx(proto, x[:32], input_name="image", float_first=2)
    produced_by = {o: n.op_type for n in quantized.graph.node for o in n.output}
    convs = [n for n in quantized.graph.node if n.op_type == "Conv"]
    assert [produced_by.get(c.input[1]) for c in convs[:3]] == [None, None, "DequantizeLinear"]
    path = tmp_path / "int8.onnx"
    onnx.save(quantized, str(path))
    ops = compute_ops(path)
    assert ops.get("QLinearConv") == 5 and ops.get("QLinearAdd") == 2, ops

    ov = pytest.importorskip("openvino")
    onnx.save(proto, str(tmp_path / "float.onnx"))
    model = ov.convert_model(str(tmp_path / "float.onnx"))
    names = first_convolutions(model, 2)
    ordered = [op.get_friendly_name() for op in model.get_ordered_ops()
               if op.get_type_name() in ("Convolution", "GroupConvolution")]
    assert names == ordered[:2] and len(ordered) == 7

    assert _float_weight_convs(quantize_openvino(model, x[:32])) == []
    assert _float_weight_convs(quantize_openvino(model, x[:32], float_first=2)) == names


def test_accuracy_control_keeps_float_first_and_meets_its_budget(lite_block_onnx,
                                                                 tmp_path) -> None:
    """``qac``: NNCF's accuracy control with the first convolutions kept float as well."""
    import onnx

    from skinedge.compress.quantize import first_convolutions, quantize_openvino_controlled

    ov = pytest.importorskip("openvino")
    proto, x = lite_block_onnx
    onnx.save(proto, str(tmp_path / "float.onnx"))
    model = ov.convert_model(str(tmp_path / "float.onnx"))
    compiled = ov.Core().compile_model(model, "CPU")
    reference = np.array([int(np.argmax(compiled(x[i:i + 1])[0])) for i in range(32, 40)])
    quantized, control = quantize_openvino_controlled(
        model, x[:32], x[32:], reference, max_drop=0.125, float_first=2)
    assert control["agreement"] >= 1 - 0.125 and control["validation_images"] == 8
    assert set(first_convolutions(model, 2)) <= set(_float_weight_convs(quantized))
