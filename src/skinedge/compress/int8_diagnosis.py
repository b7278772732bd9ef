"""Where INT8 error enters a network: per-layer SQNR of a PT2E-quantized graph against itself in
float, written into the export report of every PT2E artifact (TFLite, ExecuTorch); for an
ai-edge-quantizer ``.tflite`` file, against its FP32 file (:func:`tflite_layer_sqnr`).

Two numbers per layer, both ``10 log10(sum x^2 / sum (x - x_q)^2)`` over a few calibration
images (higher is better; about 6 dB per bit, so 30 dB is roughly 5 clean bits):

* ``sqnr_db``: the layer's output in the INT8 graph against the float graph, error from every
  layer before it included (how much is left of the signal here);
* ``local_sqnr_db``: the layer computed on the float graph's inputs, quantized as the INT8
  graph quantizes them and its own weights (what this layer adds by itself).

A low ``local_sqnr_db`` names the layer to fix (its observer, its range, its weights); a
``sqnr_db`` that falls steadily with every layer at a normal local figure is accumulated error,
not one broken layer. The float graph is the quantized one with its quantize/dequantize pairs
bypassed, so BatchNorm folding and every other rewrite are the same on both sides.

This is how the ReLU6 quantization bug of the PT2E quantizers was found
(:mod:`skinedge.compress.pt2e`): local SQNR of about 11 dB in the first block, activation
scales 8 times the ReLU6 range.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.fx import Interpreter, Node
from torch.fx.node import map_arg

_QDQ = ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
        "dequantize_per_channel")
# Ops that move or pad values without computing: no rows of their own.
_PLUMBING = ("flatten", "view", "reshape", "dropout", "pad", "permute", "getitem", "clone",
             "contiguous", "squeeze", "unsqueeze", "_assert")


def _is_qdq(node: Node) -> bool:
    return node.op == "call_function" and any(k in str(node.target) for k in _QDQ)


def _op_name(node: Node) -> str:
    """``aten.conv2d.default`` -> ``conv2d``."""
    parts = str(node.target).split(".")
    return parts[-2] if len(parts) > 1 else parts[0]


def _layer_name(node: Node) -> str:
    """The module path the node came from (``blocks.0.0.conv_pw``), else the node's name."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else node.name


def _sqnr_db(signal: float, noise: float) -> float | None:
    """In dB, to 0.01; None for no noise at all (a layer left in float, before any int8)."""
    if noise <= 0:
        return None
    return round(float(10 * np.log10(max(signal, 1e-30) / noise)), 2)


class _Pass(Interpreter):
    """One run of the quantized graph: ``quant`` as it is, ``float`` with its quantize and
    dequantize ops bypassed, ``local`` with each op fed the ``reference`` (float) values of its
    inputs, through this graph's quantize/dequantize ops."""

    def __init__(self, module: torch.fx.GraphModule, mode: str,
                 reference: dict[str, torch.Tensor] | None = None):
        super().__init__(module)
        self.mode, self.reference = mode, reference or {}
        self.outputs: dict[str, torch.Tensor] = {}

    def _reference_or_own(self, node: Node):
        if not _is_qdq(node) and node.name in self.reference:
            return self.reference[node.name].clone()  # clone: in-place ops (hardtanh_) follow
        return self.env[node]

    def run_node(self, node: Node) -> Any:
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            return None  # torch.export's shape guards: not part of the computation
        if self.mode == "float" and _is_qdq(node):
            result = self.env[node.args[0]]
        elif self.mode == "local" and node.op == "call_function":
            args = map_arg(node.args, self._reference_or_own)
            kwargs = map_arg(node.kwargs, self._reference_or_own)
            result = getattr(self, node.op)(node.target, args, kwargs)
        else:
            result = super().run_node(node)
        if (node.op == "call_function" and not _is_qdq(node) and isinstance(result, torch.Tensor)
                and result.is_floating_point()):
            self.outputs[node.name] = result.detach().clone()
        return result


def layer_sqnr(quantized: torch.fx.GraphModule, images: np.ndarray | torch.Tensor,
               *, top: int = 5) -> dict[str, Any]:
    """Per-layer SQNR of a converted PT2E graph (``convert_pt2e(..., fold_quantize=False)``)
    against the same graph in float.

    Args:
        quantized: The converted graph; its weights must still be float constants followed by
            quantize/dequantize ops (not folded), so that the float pass has them.
        images: Inputs as the graph takes them (N, ...), run one at a time.
        top: How many of the weakest layers (lowest local SQNR) to list in ``weakest``.

    Returns:
        ``{"images", "logits_sqnr_db", "layers": [{"layer", "op", "sqnr_db",
        "local_sqnr_db"}, ...] in graph order, "weakest": [...]}``; an SQNR is None where
        there is no error at all (layers left in float before the first int8 one), and a
        local SQNR is None for a float layer anywhere (a float classifier at the end).
    """
    for node in quantized.graph.nodes:
        if (_is_qdq(node) and "dequantize" in str(node.target)
                and isinstance(node.args[0], Node) and node.args[0].op == "get_attr"):
            raise ValueError(f"{node.name} dequantizes a folded int8 constant: convert with "
                             f"fold_quantize=False for the float pass to see the float weights")
    images = torch.as_tensor(np.asarray(images, dtype=np.float32))
    sums: dict[str, np.ndarray] = {}  # node -> (signal, cumulative noise, local noise)
    logits = [0.0, 0.0]
    with torch.no_grad():
        for image in images:
            x = image[None]
            reference = _Pass(quantized, "float")
            float_out = reference.run(x)
            own = _Pass(quantized, "quant")
            quant_out = own.run(x)
            local = _Pass(quantized, "local", reference.outputs)
            local.run(x)
            for name, value in reference.outputs.items():
                acc = sums.setdefault(name, np.zeros(3))
                acc[0] += float(value.double().pow(2).sum())
                acc[1] += float((value - own.outputs[name]).double().pow(2).sum())
                acc[2] += float((value - local.outputs[name]).double().pow(2).sum())
            f, q = _first_tensor(float_out), _first_tensor(quant_out)
            logits[0] += float(f.double().pow(2).sum())
            logits[1] += float((f - q).double().pow(2).sum())
    nodes = {n.name: n for n in quantized.graph.nodes}
    rows = [{"layer": _layer_name(nodes[name]), "op": _op_name(nodes[name]),
             "sqnr_db": _sqnr_db(s, cum), "local_sqnr_db": _sqnr_db(s, loc)}
            for name, (s, cum, loc) in sums.items()
            if not any(p in _op_name(nodes[name]) for p in _PLUMBING)]
    quantized_rows = [r for r in rows if r["local_sqnr_db"] is not None]
    return {"images": len(images), "logits_sqnr_db": _sqnr_db(*logits),
            "layers": rows,
            "weakest": sorted(quantized_rows, key=lambda r: r["local_sqnr_db"])[:top]}


def tflite_layer_sqnr(float_model: bytes, quantized: bytes, images: np.ndarray,
                      *, top: int = 5) -> dict[str, Any]:
    """Per-layer SQNR of an INT8 ``.tflite`` file against its FP32 source file, for INT8 that
    was not made in torch (ai-edge-quantizer): every op's output tensor is compared with the
    tensor of the same name in the float file, both run by LiteRT's built-in kernels with every
    tensor kept.

    Only the cumulative ``sqnr_db`` can be measured this way (LiteRT runs a whole graph, not one
    op on the float file's inputs): ``local_sqnr_db`` is None and ``drop_db``, the fall in SQNR
    from the op's quantized input to its output, stands in for it (``weakest`` ranks by it).

    Args:
        images: NHWC float inputs (N, H, W, C), run one at a time.

    Returns:
        As :func:`layer_sqnr`, each row with ``drop_db`` besides.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from skinedge.models.card import TensorSpec
    from skinedge.runtimes.base import dequantize_output, quantize_input

    def spec(detail: dict) -> TensorSpec:
        scale, zero = detail["quantization"]
        return TensorSpec(name=detail["name"], shape=list(detail["shape"]), layout="NHWC",
                          dtype=np.dtype(detail["dtype"]).name, scale=scale, zero_point=zero)

    class File:
        """One file in LiteRT's built-in kernels, every tensor kept."""

        def __init__(self, flatbuffer: bytes):
            self.interpreter = Interpreter(
                model_content=flatbuffer, experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            self.interpreter.allocate_tensors()
            self.source = spec(self.interpreter.get_input_details()[0])
            self.tensors = {d["index"]: spec(d) for d in self.interpreter.get_tensor_details()}
            self.ops = self.interpreter._get_ops_details()  # LiteRT has no public op listing

        def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
            """Every op's output for one image, dequantized, by tensor name."""
            index = self.interpreter.get_input_details()[0]["index"]
            self.interpreter.set_tensor(index, quantize_input(image[None], self.source))
            self.interpreter.invoke()
            return {self.tensors[t].name: dequantize_output(
                        self.interpreter.get_tensor(t), self.tensors[t]).astype(np.float64)
                    for op in self.ops for t in op["outputs"] if t >= 0}

    reference, own = File(float_model), File(quantized)
    sink = own.interpreter.get_output_details()[0]["name"]
    sums: dict[str, np.ndarray] = {}  # tensor name -> (signal, noise), over the images
    for image in images:  # one image at a time: every tensor of Lite0 is tens of MB
        expected, got = reference.run(image), own.run(image)
        for name, value in got.items():
            if name in expected and expected[name].shape == value.shape:
                acc = sums.setdefault(name, np.zeros(2))
                acc += (float((expected[name] ** 2).sum()),
                        float(((expected[name] - value) ** 2).sum()))
    names = {t: tensor.name for t, tensor in own.tensors.items()}
    rows, seen = [], {}
    for op in own.ops:
        name = next((names[t] for t in op["outputs"] if t >= 0), None)
        if name not in sums or op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        sqnr = _sqnr_db(*sums[name])
        inputs = [seen[names[t]] for t in op["inputs"]
                  if t >= 0 and seen.get(names[t]) is not None]
        drop = round(min(inputs) - sqnr, 2) if inputs and sqnr is not None else None
        seen[name] = sqnr
        rows.append({"layer": _tflite_layer_name(name), "op": op["op_name"].lower(),
                     "sqnr_db": sqnr, "local_sqnr_db": None, "drop_db": drop})
    ranked = [r for r in rows if r["drop_db"] is not None]
    return {"images": len(images), "logits_sqnr_db": _sqnr_db(*sums[sink]), "layers": rows,
            "weakest": sorted(ranked, key=lambda r: -r["drop_db"])[:top]}


def _tflite_layer_name(tensor: str) -> str:
    """litert-torch's tensor name -> the module path, as :func:`_layer_name` gives it:
    ``.../timm...InvertedResidual_0/torch.nn.modules.conv.Conv2d_conv_pwl;2`` (the last of
    the fused names) -> ``wrapped.blocks.1.0.conv_pwl``; other names as they are."""
    last = tensor.split(";;")[-1].split(";")[0]
    parts = [p.rsplit(".", 1)[-1] for p in last.split("/")[1:]]
    if not parts or not all("_" in p for p in parts):
        return tensor
    return ".".join(p.split("_", 1)[1] for p in parts)


def _first_tensor(value: Any) -> torch.Tensor:
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


def describe(diagnosis: dict[str, Any]) -> str:
    """One line for the log: the logits' SQNR and the weakest layers."""
    def db(value: float | None) -> str:
        return "no error" if value is None else f"{value:.1f} dB"

    if any("drop_db" in r for r in diagnosis["weakest"]):  # a .tflite file's diagnosis
        weakest = ", ".join(f"{r['layer']} ({r['op']}) -{r['drop_db']:.1f} dB"
                            for r in diagnosis["weakest"])
        kind = "largest SQNR drops"
    else:
        weakest = ", ".join(f"{r['layer']} ({r['op']}) {db(r['local_sqnr_db'])}"
                            for r in diagnosis["weakest"])
        kind = "weakest layers by their own error"
    return (f"INT8 error by layer (SQNR against float on {diagnosis['images']} calibration "
            f"images): logits {db(diagnosis['logits_sqnr_db'])}; {kind}: {weakest}")
