"""Constant padding in NHWC (``skinedge.export.targets.tflite.nhwc_constant_pad``): timm's
``Conv2dSame`` pads asymmetrically before a VALID convolution; without the rewrite the PT2E
INT8 file keeps each such pad in NCHW between two TRANSPOSEs."""

from __future__ import annotations

import numpy as np
import pytest

from skinedge.export import TARGETS
from tests.export.tflite_ops import tflite_ops

pytestmark = pytest.mark.slow


def _net():
    import torch
    from timm.layers import Conv2dSame

    class Net(torch.nn.Module):
        """SAME-padded stride-2 convolutions as in the tf_ EfficientNets: the depthwise one pads
        an int8 tensor when the first convolution is float."""

        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                Conv2dSame(3, 8, 3, stride=2), torch.nn.ReLU6(),
                torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU6(),
                Conv2dSame(8, 8, 3, stride=2, groups=8), torch.nn.ReLU6(),
                torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU6())
            self.head = torch.nn.Linear(16, 5)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    torch.manual_seed(0)
    return Net().eval()


def _op_names(flatbuffer: bytes) -> list[str]:
    return [name for name, _ in tflite_ops(flatbuffer)]


def _run(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(-2, 2, (8, 1, 29, 31, 3)).astype(np.float32)


def test_int8_file_keeps_no_pad_between_transposes_and_agrees(images):
    if reason := TARGETS["tflite"].missing_backend("int8"):
        pytest.skip(reason)
    import torch
    from litert_torch.quantize import quant_config

    from skinedge.compress.pt2e import quantize_pt2e
    from skinedge.export.targets.tflite import _convert, nhwc_model, pt2e_quantizer

    net = nhwc_model(_net())
    sample = (torch.from_numpy(images[0]),)
    quantizer = pt2e_quantizer(1)  # float input, the depthwise convolution int8
    graph, _ = quantize_pt2e(net, sample, quantizer, [torch.from_numpy(x) for x in images],
                             fold_quantize=False, diagnose=0)
    int8 = bytes(_convert(graph, sample, quant_config=quant_config.QuantConfig(
        pt2e_quantizer=quantizer)).model_content())

    ops = [op for op in _op_names(int8) if op not in ("QUANTIZE", "DEQUANTIZE")]
    # Both pads folded into their convolutions, as in the FP32 file; without the rewrite each
    # depthwise one is TRANSPOSE, PAD, TRANSPOSE in front of its convolution.
    assert ops == _op_names(_convert(net, sample).model_content()), ops
    assert ops[:4] == ["CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D"], ops
    with torch.no_grad():
        expected = np.concatenate([net(torch.from_numpy(x)).numpy() for x in images])
    got = np.concatenate([_run(int8, x) for x in images])
    sqnr = 10 * np.log10((expected ** 2).sum() / ((expected - got) ** 2).sum())
    assert sqnr > 20, sqnr  # the pads sit where the float model has them


def test_float_file_is_unchanged_by_the_rewrite(images):
    """FP32 conversion goes through the same layout pass: its padding stays exact."""
    if reason := TARGETS["tflite"].missing_backend("fp32"):
        pytest.skip(reason)
    import torch

    from skinedge.export.targets.tflite import _convert, nhwc_model

    net = nhwc_model(_net())
    fp32 = bytes(_convert(net, (torch.from_numpy(images[0]),)).model_content())

    assert _op_names(fp32)[:4] == ["CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D"]
    with torch.no_grad():
        for x in images:
            np.testing.assert_allclose(_run(fp32, x), net(torch.from_numpy(x)).numpy(),
                                       rtol=1e-4, atol=1e-5)
