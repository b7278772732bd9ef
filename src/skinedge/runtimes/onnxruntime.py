"""ONNX Runtime on ``.onnx`` files (the ``runtime-onnx`` extra: onnxruntime alone).

The card is stored in the model's ``metadata_props`` under :data:`CARD_KEY`; ONNX Runtime shows
it as ``custom_metadata_map``, so reading it needs no ``onnx`` package.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from skinedge.models.card import ModelCard
from skinedge.runtimes.base import CARD_KEY, Runtime, embedded_card, unreadable_artifact
from skinedge.runtimes.registry import register_runtime
from skinedge.utils.backends import require

EXTRA = "runtime-onnx"
#: The ops that carry a convolutional classifier's arithmetic, float and integer.
COMPUTE_OPS = ("QLinearConv", "QLinearAdd", "QLinearMatMul", "QGemm", "ConvInteger",
               "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
               "Conv", "FusedConv", "Add", "Gemm", "MatMul", "FusedMatMul")


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """The model's ``metadata_props``: with ``onnx`` when installed (reads the file only), else
    through an ONNX Runtime session.

    Raises:
        ModelError: a file that does not parse (truncated, corrupted); the message names it.
    """
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        with unreadable_artifact(path, "onnx"):
            model = onnx.load(str(path), load_external_data=False)
        return {prop.key: prop.value for prop in model.metadata_props}
    return dict(_session(path).get_modelmeta().custom_metadata_map)


def _session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session, all graph optimisations on; a file ONNX Runtime cannot
    load is a :class:`~skinedge.errors.ModelError` naming it."""
    ort = require("onnxruntime", EXTRA)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with unreadable_artifact(path, "ONNX Runtime"):
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@register_runtime
class OnnxRuntime(Runtime):
    """ONNX Runtime's CPU execution provider, all graph optimisations on."""

    backend = "onnxruntime"
    suffixes = (".onnx",)
    exports = {"onnx": (".onnx",), "tensorrt": (".trt.onnx",)}  # the TensorRT-ready ONNX
    extra = EXTRA
    requires = ("onnxruntime",)

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None, session=None):
        super().__init__(path, card, threads)
        self.session = session or _session(path, threads)
        self.input = self.session.get_inputs()[0].name

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> OnnxRuntime:
        """One session, whose metadata gives the card (the file is loaded once)."""
        session = _session(path, threads)
        data = session.get_modelmeta().custom_metadata_map.get(CARD_KEY)
        return cls(path, embedded_card(data, path, f"its '{CARD_KEY}' metadata"), threads, session)

    @staticmethod
    def read_card(path: Path) -> ModelCard:
        data = read_onnx_metadata(path).get(CARD_KEY)
        return embedded_card(data, path, f"its '{CARD_KEY}' metadata")

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]

    def _execution(self) -> dict[str, Any]:
        """The execution provider the session runs on (the first of ``get_providers``) and
        the compute ops of the graph it runs (:func:`compute_ops`)."""
        providers = self.session.get_providers()
        return {"provider": providers[0] if providers else None,
                "compute_ops": compute_ops(self.model_file)}

    @property
    def model_file(self) -> Path:
        """The ``.onnx`` file the session runs."""
        return self.path


def compute_ops(path: Path) -> dict[str, int]:
    """The compute ops of ``path`` after ONNX Runtime's graph optimisations, by type: an INT8
    file whose QDQ groups became integer kernels shows ``QLinearConv``/``QLinearAdd``; a
    ``Conv`` or ``Add`` left in one runs in float between dequantize and quantize ops, slower
    than the FP32 file. (Optimisation level ``extended``: the QDQ fusions, without the
    machine-specific NCHWc layout of ``all``.) Empty without the ``onnx`` package, which
    reads the optimised file (the ``runtime-onnx`` extra is onnxruntime alone)."""
    if importlib.util.find_spec("onnx") is None:
        return {}
    import onnx

    ort = require("onnxruntime", EXTRA)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="skinedge-ort-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    counts = Counter(node.op_type for node in graph.node if node.op_type in COMPUTE_OPS)
    return dict(sorted(counts.items()))
