"""A ``.web`` folder (``skinedge export --target web``) in Python: ONNX Runtime on its
``model.onnx``, the file the page runs in the browser with ONNX Runtime Web. What the export
verifies against PyTorch; the browser itself is checked by
:func:`skinedge.export.web.run_in_browser` (headless Chromium)."""

from __future__ import annotations

from pathlib import Path

from skinedge.models.card import ModelCard
from skinedge.runtimes.onnxruntime import OnnxRuntime
from skinedge.runtimes.registry import register_runtime

SUFFIX = ".web"
MODEL = "model.onnx"
CARD = "model.card.json"  # not card.json: a folder with one is a checkpoint (TorchRuntime)


@register_runtime
class WebFolderRuntime(OnnxRuntime):
    """ONNX Runtime on a ``.web`` folder's ``model.onnx`` (its card embedded, as in ``.onnx``)."""

    backend = "web"
    suffixes = (SUFFIX,)
    exports = {"web": (SUFFIX,)}
    extra = "onnx"
    requires = ("onnxruntime",)

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> WebFolderRuntime:
        inner = OnnxRuntime.open(Path(path) / MODEL, threads)
        return cls(path, inner.card, threads, inner.session)

    @staticmethod
    def read_card(path: Path) -> ModelCard:
        return OnnxRuntime.read_card(Path(path) / MODEL)

    @property
    def model_file(self) -> Path:
        return Path(self.path) / MODEL
