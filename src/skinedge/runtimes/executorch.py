"""ExecuTorch on ``.pte`` programs, through ExecuTorch's Python bindings (``executorch.runtime``).

A ``.pte`` is what PyTorch's own on-device runtime loads on Android and iOS; here the same file
runs with the bindings of the ``executorch`` wheel, XNNPACK delegate included. The card travels
inside the program as a constant method, :data:`CARD_METHOD`, which returns the card's UTF-8
JSON as a uint8 tensor (a ``.pte`` has no metadata field); an app that only calls ``forward``
never runs it.

Not torch-free: the bindings link libtorch and take and return torch tensors, so this backend
needs torch (the ``executorch`` extra, with ``train``). The torch-free ExecuTorch reader on PyPI
(``executorch-numpy-runtime``) needs Python >= 3.12, and this project is on 3.11.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from skinedge.errors import ModelError
from skinedge.models.card import ModelCard
from skinedge.runtimes.base import Runtime, embedded_card, unreadable_artifact
from skinedge.runtimes.registry import register_runtime
from skinedge.utils.backends import require

EXTRA = "executorch"
#: The program's method that returns the card (UTF-8 JSON) as a uint8 tensor.
CARD_METHOD = "skinedge_card"
FORWARD = "forward"
XNNPACK = "XnnpackBackend"  # the delegate's name in ExecuTorch's backend registry


def _runtime():
    """ExecuTorch's process-wide runtime (it imports torch)."""
    return require("executorch.runtime", EXTRA).Runtime.get()


def _load_program(path: Path):
    with unreadable_artifact(path, "ExecuTorch"):
        return _runtime().load_program(Path(path))


def read_card_bytes(program, path: Path) -> bytes | None:
    """The card JSON that ``program`` (an ``executorch.runtime.Program`` loaded from ``path``)
    carries; None when it has none."""
    if CARD_METHOD not in program.method_names:
        return None
    with unreadable_artifact(path, "ExecuTorch"):
        (tensor,) = program.load_method(CARD_METHOD).execute([])
        return bytes(tensor.numpy().astype(np.uint8))


@register_runtime
class ExecuTorchRuntime(Runtime):
    """An ExecuTorch program (``forward``: NCHW float32 images -> logits), XNNPACK on CPU."""

    backend = "executorch"
    suffixes = (".pte",)
    exports = {"executorch": (".pte",)}
    extra = EXTRA
    requires = ("executorch", "torch")

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None,
                 program=None):
        super().__init__(path, card, threads)
        if threads:  # process-wide, as torch.set_num_threads is for the torch backend
            portable = require("executorch.extension.pybindings.portable_lib", EXTRA)
            portable._unsafe_reset_threadpool(threads)
        program = program or _load_program(path)
        if FORWARD not in program.method_names:
            raise ModelError(f"{path}: the ExecuTorch program has no '{FORWARD}' method "
                             f"(it has {sorted(program.method_names)}); export it again with "
                             f"`skinedge export --target executorch`")
        with unreadable_artifact(path, "ExecuTorch"):  # XNNPACK compiles its graph here
            self.method = program.load_method(FORWARD)

    @staticmethod
    def read_card(path: Path) -> ModelCard:
        data = read_card_bytes(_load_program(path), path)
        return embedded_card(data, path, f"its '{CARD_METHOD}' method")

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> Runtime:
        """Load the program once: its card and its ``forward`` come from the same load."""
        program = _load_program(path)
        card = embedded_card(read_card_bytes(program, path), path, f"its '{CARD_METHOD}' method")
        return cls(path, card, threads, program=program)

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        (logits,) = self.method.execute([torch.from_numpy(np.ascontiguousarray(x))])
        return logits.float().numpy()

    def _execution(self) -> dict[str, Any]:
        """Whether this build has the XNNPACK delegate the export lowered to, and the threads
        of ExecuTorch's pool."""
        portable = require("executorch.extension.pybindings.portable_lib", EXTRA)
        return {"xnnpack": _runtime().backend_registry.is_available(XNNPACK),
                "threads": int(portable._threadpool_get_thread_count())}
