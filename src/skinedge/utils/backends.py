"""Optional heavy backends (ONNX Runtime, OpenVINO, LiteRT, coremltools, TensorRT), imported lazily.

Each backend is a pip extra of skinedge; importing one that is missing raises
:class:`MissingBackendError` naming the extra to install, instead of a bare ImportError deep in
an export.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# extra -> the modules it provides (what `pip install 'skinedge[extra]'` installs)
EXTRAS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "openvino": ("openvino", "nncf", "onnx", "onnxscript"),
    "tflite": ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
    "coreml": ("coremltools",),
    "tensorrt": ("tensorrt", "onnx", "onnxscript"),
    "quantize": ("nncf", "onnx", "onnxscript", "onnxruntime"),
}


class MissingBackendError(ImportError):
    """A backend's package is not installed; the message names the pip extra."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or explain which skinedge extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingBackendError(
            f"{module} is not installed ({exc}); install it with: pip install 'skinedge[{extra}]'"
        ) from exc


def missing(extra: str) -> str | None:
    """None when every module of ``extra`` is installed, else which one is not (no import)."""
    for module in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed; pip install 'skinedge[{extra}]'"
    return None
