"""Package attributes imported on first use (PEP 562), so importing a package stays cheap.

``skinedge.data``, ``skinedge.models``, ``skinedge.explain`` and others name their public
objects in a table and resolve them only when asked: ``import skinedge.data.images`` or the
CLI's ``--help`` then pulls in no torch through a sibling module.
"""

from __future__ import annotations

import pkgutil
import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from
    ``package.<exports[name]>`` on first access and keeps it in the package's namespace.

    Example::

        _EXPORTS = {"load_rgb": "images", "Manifest": "manifest"}
        __all__ = sorted(_EXPORTS)
        __getattr__ = lazy_exports(__name__, _EXPORTS)
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


def import_submodules(package: str) -> None:
    """Import every module of ``package``: how the export targets and the runtimes register
    their built-in members (each module's decorator does), with no list naming them."""
    for module in pkgutil.iter_modules(import_module(package).__path__):
        import_module(f"{package}.{module.name}")
