"""INT8 post-training quantization with NNCF, on the graph each runtime will execute.

Quantizing the ONNX or OpenVINO graph itself (rather than a torch model exported later) means
the Q/DQ placement that was calibrated is the one that ships. Calibration images come from the
training split (never validation or test), preprocessed exactly as at inference.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
from torch import nn

from skinedge.errors import ConfigError
from skinedge.utils.backends import require
from skinedge.utils.cpu import cpu_info

# Activations and blocks that post-training INT8 handles badly: unbounded smooth activations
# spread their output range, and squeeze-excitation multiplies two quantized tensors. Plain
# PTQ of EfficientNet-B0 (SiLU + SE) has been reported to fall from 67 to 39 top-1.
_RISKY = {
    "SiLU": "SiLU/Swish activations (smooth, unbounded: wide activation ranges)",
    "Swish": "SiLU/Swish activations (smooth, unbounded: wide activation ranges)",
    "GELU": "GELU activations (smooth, unbounded)",
    "Hardswish": "hard-swish activations (asymmetric range around zero)",
    "SqueezeExcite": "squeeze-and-excitation blocks (products of two quantized tensors)",
}


def quantization_warnings(model: nn.Module) -> list[str]:
    """Reasons to expect an accuracy drop from INT8 PTQ, one line per risky layer type."""
    counts: dict[str, int] = {}
    for module in model.modules():
        name = type(module).__name__
        if name in _RISKY:
            counts[_RISKY[name]] = counts.get(_RISKY[name], 0) + 1
    return [f"{n} x {what}: post-training INT8 may lose accuracy; check the measured drop, "
            f"or prefer a ReLU6 student without SE (tf_efficientnet_lite*)"
            for what, n in counts.items()]


OverflowFix = Literal["auto", "enable", "first_layer_only", "disable"]
OVERFLOW_FIXES: tuple[str, ...] = get_args(OverflowFix)


def cpu_has_vnni() -> bool | None:
    """Whether this CPU has int8 dot-product instructions (VNNI/AMX on x86, dotprod/i8mm on
    ARM); None when unknown (:func:`skinedge.utils.cpu.cpu_info`)."""
    return cpu_info()["int8_dot"]


def resolve_overflow_fix(value: str = "auto") -> str:
    """NNCF's ``overflow_fix``: halve the int8 weight range so u8 x s8 pair sums cannot
    saturate int16 in the AVX2 kernels of CPUs without VNNI (OpenVINO, ONNX Runtime).

    ``auto`` picks ``enable`` on such a CPU (the machine that verifies the artifact) and
    NNCF's default ``first_layer_only`` elsewhere; the choice is recorded in the card. Weights
    then use about 7 bits: the cost of running correctly on older x86.
    """
    if value not in OVERFLOW_FIXES:
        raise ConfigError(f"overflow_fix {value!r}: choose one of {OVERFLOW_FIXES}")
    if value != "auto":
        return value
    import platform

    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return "enable" if x86 and cpu_has_vnni() is False else "first_layer_only"


def _advanced(overflow_fix: str, *, per_tensor_activations: bool = False):
    """NNCF's advanced parameters; ``per_tensor_activations`` overrides its CPU hardware
    config, which quantizes the inputs of depthwise convolutions per channel (OpenVINO runs
    that in int8, ONNX Runtime and TensorRT do not)."""
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    activations = QuantizationParameters(per_channel=False) if per_tensor_activations else None
    return AdvancedQuantizationParameters(overflow_fix=OverflowFix(resolve_overflow_fix(overflow_fix)),
                                          activations_quantization_params=activations)


def first_convolutions(model: Any, count: int) -> list[str]:
    """The names of the first ``count`` convolutions of an ``onnx.ModelProto`` (its nodes are
    in execution order) or an ``openvino.Model`` (``get_ordered_ops``)."""
    if count <= 0:
        return []
    if hasattr(model, "graph"):
        return [n.name for n in model.graph.node if n.op_type == "Conv"][:count]
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution")][:count]


def _kept_float(model: Any, float_first: int):
    """NNCF's ``ignored_scope`` for :func:`first_convolutions` (None when there are none)."""
    nncf = require("nncf", "quantize")
    names = first_convolutions(model, float_first)
    return nncf.IgnoredScope(names=names) if names else None


def _dataset(calibration: np.ndarray, transform):
    nncf = require("nncf", "quantize")
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ConfigError(f"calibration images must be a non-empty (N, C, H, W) array, got "
                         f"shape {calibration.shape}")
    return nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))], transform)


def signed_qdq(model: Any) -> Any:
    """Rewrite uint8 Q/DQ pairs (zero point 0) as int8, the only activation type TensorRT's
    explicit quantization takes. NNCF quantizes non-negative activations (after ReLU6) as uint8
    with zero point 0, covering [0, 255 s]; int8 with scale 255 s / 127 covers the same range
    with 7 bits instead of 8 (the documented cost of this rewrite).
    """
    onnx = require("onnx", "onnx")
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        scale_name, zp_name = node.input[1], node.input[2]
        if node.op_type == "QuantizeLinear" and zp_name in done:
            _set_elem_type(model, node.output[0], onnx.TensorProto.INT8)
        if zp_name in done or zp_name not in inits:
            continue
        zp = numpy_helper.to_array(inits[zp_name])
        if zp.dtype != np.uint8:
            continue
        if zp.any():
            raise ValueError(f"{node.name}: asymmetric uint8 quantization (zero point "
                             f"{zp.ravel()[:3]}) cannot become int8 Q/DQ for TensorRT")
        scale = numpy_helper.to_array(inits[scale_name]) * np.float32(255 / 127)
        inits[scale_name].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), scale_name))
        inits[zp_name].CopyFrom(numpy_helper.from_array(zp.astype(np.int8), zp_name))
        done.add(zp_name)
        if node.op_type == "QuantizeLinear":
            _set_elem_type(model, node.output[0], onnx.TensorProto.INT8)
    onnx.checker.check_model(model)
    return model


def unsigned_qdq(model: Any) -> Any:
    """Rewrite int8 activation Q/DQ pairs as uint8 with the zero point moved by 128: the same
    grid of values (q + 128 for every q), so the same model, in the form ONNX Runtime fuses.

    ONNX Runtime turns DQ -> Conv/Add -> Q into QLinearConv/QLinearAdd, but off ARM only for
    uint8 activations (its ``QDQIsInt8Allowed``); NNCF writes int8 for signed tensors (the
    outputs of projection convolutions and residual sums), and a graph left like that runs
    those layers in float between quantize and dequantize ops, slower than FP32. Weights
    (DQ of an initializer) stay int8: ONNX Runtime's U8S8 kernels.
    """
    onnx = require("onnx", "onnx")
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replaced: set[str] = set()
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        zp = numpy_helper.to_array(inits[node.input[2]])
        if zp.dtype != np.int8:
            continue
        readers = consumers.get(node.output[0], [])
        if any(r.op_type != "DequantizeLinear" for r in readers):  # checked before any change
            other = next(r for r in readers if r.op_type != "DequantizeLinear")
            raise ValueError(f"{other.name} ({other.op_type}) reads the int8 tensor "
                             f"{node.output[0]!r} directly: not the Q -> DQ layout NNCF writes, "
                             f"so it cannot be moved to uint8; export with precision fp32")
        name = f"{node.output[0]}_zero_point_uint8"
        shifted = (zp.astype(np.int16) + 128).astype(np.uint8)
        graph.initializer.append(numpy_helper.from_array(shifted, name))
        replaced.add(node.input[2])
        node.input[2] = name
        for dq in readers:
            if len(dq.input) < 3:
                dq.input.append(name)
            else:
                replaced.add(dq.input[2])
                dq.input[2] = name
        _set_elem_type(model, node.output[0], onnx.TensorProto.UINT8)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name in replaced - used]:
        graph.initializer.remove(init)
    onnx.checker.check_model(model)
    return model


def _set_elem_type(model: Any, name: str, elem_type: int) -> None:
    """Keep recorded value types in step with a Q/DQ pair whose type changed."""
    for info in model.graph.value_info:
        if info.name == name:
            info.type.tensor_type.elem_type = elem_type


def quantize_onnx(model: Any, calibration: np.ndarray, *, input_name: str,
                  signed_activations: bool = False, overflow_fix: str = "auto",
                  float_first: int = 0) -> Any:
    """NNCF PTQ of an ``onnx.ModelProto``: returns a QDQ model (int8 weights per channel,
    activations per tensor).

    Activations are uint8 (:func:`unsigned_qdq`), so that ONNX Runtime runs every convolution
    and residual sum as an integer kernel, or int8 for TensorRT (:func:`signed_qdq`). Both are
    per tensor: ONNX Runtime's QLinearConv and TensorRT take one scale per activation tensor.

    Args:
        calibration: (N, C, H, W) float32, preprocessed training images.
        input_name: The graph input fed with the images.
        signed_activations: int8 (not uint8) activations, as TensorRT requires.
        overflow_fix: See :func:`resolve_overflow_fix`.
        float_first: Leading convolutions left in float (:func:`first_convolutions`).
    """
    nncf = require("nncf", "quantize")
    quantized = nncf.quantize(
        model, _dataset(calibration, lambda x: {input_name: x}),
        preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calibration),
        advanced_parameters=_advanced(overflow_fix, per_tensor_activations=True),
        ignored_scope=_kept_float(model, float_first))
    return signed_qdq(quantized) if signed_activations else unsigned_qdq(quantized)


def quantize_openvino(model: Any, calibration: np.ndarray, *, overflow_fix: str = "auto",
                      float_first: int = 0) -> Any:
    """NNCF PTQ of an ``openvino.Model`` (symmetric INT8, fast bias correction), its first
    ``float_first`` convolutions left in float."""
    nncf = require("nncf", "quantize")
    return nncf.quantize(model, _dataset(calibration, lambda x: x),
                         preset=nncf.QuantizationPreset.PERFORMANCE,
                         subset_size=len(calibration), advanced_parameters=_advanced(overflow_fix),
                         ignored_scope=_kept_float(model, float_first))


def quantize_openvino_controlled(model: Any, calibration: np.ndarray, validation: np.ndarray,
                                 reference_top1: np.ndarray, *,
                                 max_drop: float = 0.01, overflow_fix: str = "auto",
                                 float_first: int = 0) -> tuple[Any, dict]:
    """NNCF PTQ with accuracy control on an ``openvino.Model``, its first ``float_first``
    convolutions left in float.

    Quantizes, then reverts the most sensitive layers to float, one group at a time, until the
    top-1 agreement with the float model on ``validation`` drops by at most ``max_drop``
    (absolute). Agreement, not accuracy, because parity with the source model is the contract.

    Returns:
        (quantized model, {"agreement": agreement of the returned model, "reverted": ...}).
    """
    nncf = require("nncf", "quantize")
    ov = require("openvino", "openvino")
    if len(validation) != len(reference_top1):
        raise ValueError(f"{len(validation)} validation images but {len(reference_top1)} labels")
    # Each item carries its reference answer: NNCF scores subsets and single items when it
    # ranks layers, so the metric must not assume it sees the whole set in order.
    items = [(validation[i:i + 1], int(reference_top1[i])) for i in range(len(validation))]

    def agreement(compiled, data) -> tuple[float, list[float]]:
        hits = [float(int(np.argmax(compiled(x)[0])) == ref) for x, ref in data]
        return float(np.mean(hits)) if hits else 0.0, hits

    quantized = nncf.quantize_with_accuracy_control(
        model, _dataset(calibration, lambda x: x), nncf.Dataset(items, lambda item: item[0]),
        # + 1e-9: 1 - 0.99 is 0.010000000000000009 in floating point, which NNCF would
        # count as missing a 0.01 budget and keep reverting layers.
        validation_fn=agreement, max_drop=max_drop + 1e-9, drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calibration),
        advanced_quantization_parameters=_advanced(overflow_fix),
        ignored_scope=_kept_float(model, float_first))
    final, _ = agreement(ov.Core().compile_model(quantized, "CPU"), items)
    return quantized, {"method": "nncf.quantize_with_accuracy_control",
                       "metric": "top-1 agreement with the float model",
                       "max_drop": max_drop, "validation_images": len(validation),
                       "agreement": final}
