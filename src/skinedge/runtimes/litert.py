"""LiteRT (TFLite) on ``.tflite`` files (the ``runtime-litert`` extra: ai-edge-litert alone).

The card is a flatbuffer ``metadata`` entry named :data:`CARD_KEY`; :func:`with_metadata` and
:func:`read_metadata` write and read such entries with ai-edge-litert's schema only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from skinedge.models.card import ModelCard
from skinedge.runtimes.base import (
    CARD_KEY,
    Runtime,
    dequantize_output,
    embedded_card,
    quantize_input,
    unreadable_artifact,
)
from skinedge.runtimes.registry import register_runtime
from skinedge.utils.backends import require

EXTRA = "runtime-litert"


def with_metadata(flatbuffer: bytes, name: str, data: bytes) -> bytes:
    """Add (or replace) a named metadata buffer in a TFLite flatbuffer."""
    require("ai_edge_litert", EXTRA)
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    for buf in model.buffers:  # data stored after the flatbuffer (ai-edge-quantizer): inline it,
        if buf.offset and buf.offset > 1:  # or re-serialising would drop it
            buf.data = np.frombuffer(flatbuffer, np.uint8, count=buf.size, offset=buf.offset).copy()
            buf.offset = buf.size = 0
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != name]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name.encode()
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(flatbuffer: bytes, name: str) -> bytes | None:
    """The named metadata buffer of a TFLite flatbuffer (None when there is none)."""
    require("ai_edge_litert", EXTRA)
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == name:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


@register_runtime
class LiteRTRuntime(Runtime):
    """LiteRT interpreter (XNNPACK on CPU). NHWC input; int8 tensors (de)quantized here."""

    backend = "litert"
    suffixes = (".tflite",)
    exports = {"tflite": (".tflite",)}
    extra = EXTRA
    requires = ("ai_edge_litert",)

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
        super().__init__(path, card, threads)
        litert = require("ai_edge_litert.interpreter", self.extra)
        with unreadable_artifact(path, "LiteRT"):
            self.interpreter = litert.Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    @staticmethod
    def read_card(path: Path) -> ModelCard:
        with unreadable_artifact(path, "ai-edge-litert"):
            data = read_metadata(Path(path).read_bytes(), CARD_KEY)
        return embedded_card(data, path, f"its '{CARD_KEY}' metadata")

    def _run(self, x: np.ndarray) -> np.ndarray:
        spec = self.card.artifact
        if spec.input.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(quantize_input(x, spec.input)))
        self.interpreter.invoke()
        return dequantize_output(self.interpreter.get_tensor(self.output), spec.output)

    def _execution(self) -> dict[str, Any]:
        """Whether the XNNPACK delegate took over part of the graph (LiteRT applies it by
        default; a graph it cannot take runs on the reference kernels): a ``DELEGATE`` node."""
        ops = self.interpreter._get_ops_details()  # the only place the delegate shows
        return {"xnnpack": any(op.get("op_name") == "DELEGATE" for op in ops)}
