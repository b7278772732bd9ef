"""ONNX Runtime on ``.onnx`` files (the ``runtime-onnx`` extra: onnxruntime alone).

The card is stored in the model's ``metadata_props`` under :data:`CARD_KEY`; ONNX Runtime shows
it as ``custom_metadata_map``, so reading it needs no ``onnx`` package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from skinedge.models.card import ModelCard
from skinedge.runtimes.base import CARD_KEY, Runtime, embedded_card, unreadable_artifact
from skinedge.runtimes.registry import register_runtime
from skinedge.utils.backends import require

EXTRA = "runtime-onnx"


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
        """The execution provider the session runs on (the first of ``get_providers``)."""
        providers = self.session.get_providers()
        return {"provider": providers[0] if providers else None}
