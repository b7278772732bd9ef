"""ONNX Runtime on ``.onnx`` files (the ``runtime-onnx`` extra: onnxruntime alone).

The card is stored in the model's ``metadata_props`` under :data:`CARD_KEY`; ONNX Runtime shows
it as ``custom_metadata_map``, so reading it needs no ``onnx`` package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from skinedge.models.card import ModelCard
from skinedge.runtimes.base import Runtime, card_from_json, no_card_error
from skinedge.runtimes.registry import register_runtime
from skinedge.utils.backends import require

CARD_KEY = "skinedge.card"
EXTRA = "runtime-onnx"


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """The model's ``metadata_props``: with ``onnx`` when installed (reads the file only), else
    through an ONNX Runtime session."""
    if importlib.util.find_spec("onnx") is not None:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {prop.key: prop.value for prop in model.metadata_props}
    ort = require("onnxruntime", EXTRA)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


@register_runtime
class OnnxRuntime(Runtime):
    """ONNX Runtime's CPU execution provider, all graph optimisations on."""

    backend = "onnxruntime"
    suffixes = (".onnx",)
    extra = EXTRA
    requires = ("onnxruntime",)

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
        super().__init__(path, card, threads)
        ort = require("onnxruntime", self.extra)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    @staticmethod
    def read_card(path: Path) -> ModelCard:
        data = read_onnx_metadata(path).get(CARD_KEY)
        if data is None:
            raise no_card_error(path, f"its '{CARD_KEY}' metadata")
        return card_from_json(data, path)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]
