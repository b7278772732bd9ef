"""PyTorch on a skinedge checkpoint folder: the reference every exported artifact is held to.

Needs the ``train`` extra (torch, timm); a checkpoint is a folder with ``card.json`` and
``model.safetensors``, so this backend claims folders rather than a file suffix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from skinedge.models.card import CARD, ModelCard, load_card
from skinedge.runtimes.base import Runtime
from skinedge.runtimes.registry import register_runtime
from skinedge.utils.backends import require


@register_runtime
class TorchRuntime(Runtime):
    """A checkpoint folder run by PyTorch on the CPU (or ``device``)."""

    backend = "torch"
    extra = "train"
    requires = ("torch", "timm")

    def __init__(self, path: Path, card: ModelCard | None = None, threads: int | None = None,
                 device: str = "cpu"):
        torch = require("torch", self.extra)

        from skinedge.models.checkpoint import load_checkpoint
        from skinedge.utils.device import resolve_device

        if threads:
            torch.set_num_threads(threads)  # process-wide in torch
        self.model, loaded = load_checkpoint(path)
        super().__init__(path, card or loaded, threads)
        self.device = resolve_device(device)
        self.model.to(self.device).eval()

    @classmethod
    def handles(cls, path: Path) -> bool:
        return path.is_dir() and (path / CARD).is_file()

    read_card = staticmethod(load_card)  # the checkpoint's card.json, read without torch

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> Runtime:
        """Load once: :func:`~skinedge.models.checkpoint.load_checkpoint` reads and checks the
        card itself."""
        return cls(path, None, threads)

    @classmethod
    def artifact_files(cls, path: Path) -> list[Path]:
        return []  # a checkpoint has no export report: its card holds the weights' sha256

    def _execution(self) -> dict[str, Any]:
        import torch

        return {"device": str(self.device), "threads": torch.get_num_threads(),
                "mkldnn": bool(torch.backends.mkldnn.is_available())}

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()
