"""Export a checkpoint to ONNX, OpenVINO, TFLite, Core ML or TensorRT, each verified on export.

``export_checkpoint(checkpoint, "tflite", precision="int8",
options=ExportOptions(quantizer="aeq"))``; the registered targets are in
``TARGETS`` (filled on first use, backends imported only when a target runs).
"""

from importlib import import_module
from typing import Any

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "ExportError": "base", "VerificationFailed": "base", "ExportTarget": "base", "Tolerance": "base", "PRECISIONS": "base",
    "register_target": "base", "get_target": "base",
    "ExportResult": "api", "export_checkpoint": "api",
    "ExportOptions": "records", "VerificationResult": "records", "Calibration": "records",
    "AccuracyControl": "records",
}

__all__ = sorted([*_EXPORTS, "TARGETS"])

_lazy = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "TARGETS":  # every built-in target registered first
        import_module("skinedge.export.targets")
        return import_module("skinedge.export.base").TARGETS
    return _lazy(name)
