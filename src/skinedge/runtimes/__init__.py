"""One inference contract over every format: ``load_runtime(path).predict(images)``.

>>> rt = load_runtime("exports/tf_efficientnet_lite0_int8.tflite", threads=1)
>>> rt.predict(["lesion.jpg"])          # (1, 7) probabilities, columns = rt.card.classes
>>> rt.assess(["photo.jpg"]).verdicts(rt.card.classes)  # ["nv"], or ["not a dermoscopic lesion image"]

One module per backend (``torch``, ``onnxruntime``, ``openvino``, ``litert``, ``coreml``,
``executorch``, ``tensorrt``), each registered with :func:`register_runtime`. Importing this package imports no
torch: with ``pip install 'skinedge[runtime-onnx]'`` (or ``-litert``, ``-openvino``) an exported
artifact runs with NumPy and Pillow preprocessing rebuilt from its card.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "Assessment": "base", "Runtime": "base", "artifact_label": "base", "softmax": "base",
    "load_runtime": "registry", "read_artifact_card": "registry",
    "check_artifact_files": "registry", "verify_artifact": "registry",
    "register_runtime": "registry", "runtime_class": "registry",
}

__all__ = sorted([*_EXPORTS, "RUNTIMES"])

_lazy = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "RUNTIMES":  # every built-in backend registered first
        return import_module("skinedge.runtimes.registry").builtin_runtimes()
    return _lazy(name)
