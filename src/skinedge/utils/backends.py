"""Optional heavy backends (ONNX Runtime, OpenVINO, LiteRT, coremltools, TensorRT), imported lazily.

Each backend is a pip extra of skinedge; importing one that is missing raises
:class:`MissingBackendError` naming the extra to install, instead of a bare ImportError deep in
an export.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from skinedge.errors import MissingBackendError

__all__ = ["MissingBackendError", "missing", "require"]  # the error lives in errors.py


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or explain which skinedge extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingBackendError(
            f"{module} is not installed ({exc}); install it with: pip install 'skinedge[{extra}]'"
        ) from exc


def missing(modules: tuple[str, ...], extra: str) -> str | None:
    """None when every one of ``modules`` is installed, else which one is not and the extra that
    brings it (imports nothing). Export targets and runtimes name their modules themselves."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed; pip install 'skinedge[{extra}]'"
    return None
