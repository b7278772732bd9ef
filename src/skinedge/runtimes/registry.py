"""The runtime registry: one :class:`Runtime` subclass per backend, found by the file it loads.

A backend is a module of this package whose class is decorated with :func:`register_runtime`;
the built-in modules are found by listing the package (no table names them), so adding a format
is adding one file. Third-party code registers its own class the same way.
"""

from __future__ import annotations

from pathlib import Path

from skinedge.errors import ModelError, NotFoundError
from skinedge.models.card import ModelCard
from skinedge.runtimes.base import Runtime
from skinedge.utils.lazy import import_submodules

#: backend name -> Runtime class, in registration order.
RUNTIMES: dict[str, type[Runtime]] = {}

_PACKAGE = "skinedge.runtimes"
_builtins_loaded = False


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: register a :class:`Runtime` subclass under its ``backend`` name.

    Raises:
        TypeError: not a Runtime, no backend name, no ``read_card``, a name or suffix taken.
    """
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise TypeError(f"{cls!r} is not a Runtime subclass")
    if not cls.backend:
        raise TypeError(f"{cls.__name__} has no backend name")
    if getattr(cls.read_card, "__isabstractmethod__", False):
        raise TypeError(f"{cls.__name__} does not implement read_card(path)")
    if cls.backend in RUNTIMES:
        raise TypeError(f"runtime backend {cls.backend!r} is registered twice")
    taken = {s: other.backend for other in RUNTIMES.values() for s in other.suffixes}
    for suffix in cls.suffixes:
        if not suffix.startswith("."):
            raise TypeError(f"{cls.__name__}: suffix {suffix!r} must start with a dot")
        if suffix in taken:
            raise TypeError(f"{cls.__name__}: suffix {suffix} is already {taken[suffix]}'s")
    RUNTIMES[cls.backend] = cls
    return cls


def builtin_runtimes() -> dict[str, type[Runtime]]:
    """:data:`RUNTIMES`, after importing every module of this package once (which registers the
    built-in backends; their heavy packages load only when a model does)."""
    global _builtins_loaded
    if not _builtins_loaded:
        import_submodules(_PACKAGE)
        _builtins_loaded = True
    return RUNTIMES


def runtime_class(path: Path | str) -> type[Runtime]:
    """The registered runtime that loads ``path`` (by suffix; a checkpoint folder: torch).

    Raises:
        NotFoundError: ``path`` does not exist.
        ModelError: no registered runtime loads that format.
    """
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{path}: no such model file")
    runtimes = builtin_runtimes().values()
    for cls in runtimes:
        if cls.handles(path):
            return cls
    suffixes = sorted({s for cls in runtimes for s in cls.suffixes})
    raise ModelError(f"{path}: unknown model format {path.suffix!r}; expected a checkpoint "
                     f"folder or one of {suffixes}")


def read_artifact_card(path: Path | str) -> ModelCard:
    """The model card of a checkpoint folder or an exported artifact, without loading the model."""
    return runtime_class(path).read_card(Path(path))


def load_runtime(path: Path | str, *, threads: int | None = None) -> Runtime:
    """Load a checkpoint folder or an exported artifact behind the common :class:`Runtime`.

    Args:
        path: Checkpoint folder (torch), or a file of a registered format: ``.onnx``, ``.xml``
            (OpenVINO IR), ``.tflite``, ``.mlpackage`` (Core ML, macOS only),
            ``.engine``/``.plan`` (TensorRT).
        threads: Intra-op threads for the backend (None: its default).

    Raises:
        NotFoundError: no such file.
        ModelError: an unknown format, or an artifact without a skinedge card.
        MissingBackendError: the backend's extra is not installed (the message names it).
    """
    path = Path(path)
    return runtime_class(path).open(path, threads)
