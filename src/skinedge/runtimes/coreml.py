"""Core ML on ``.mlpackage`` folders: predicts on macOS only (Core ML's runtime is Apple's).

The card is the package's user-defined metadata :data:`CARD_KEY`, readable on Linux too
(coremltools loads the spec without the model).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from skinedge.errors import UnsupportedHereError
from skinedge.models.card import ModelCard
from skinedge.runtimes.base import CARD_KEY, Runtime, embedded_card, unreadable_artifact
from skinedge.runtimes.registry import register_runtime
from skinedge.utils.backends import require

EXTRA = "coreml"


def unavailable_reason() -> str | None:
    """Why a Core ML package cannot predict here (None on macOS)."""
    if sys.platform != "darwin":
        return "Core ML prediction needs macOS (conversion works here; the .mlpackage loads as a spec)"
    return None


@register_runtime
class CoreMLRuntime(Runtime):
    """Core ML. Input arrays are turned back into the RGB images the model declares (its
    normalisation runs inside the model); outputs are class probabilities."""

    backend = "coreml"
    suffixes = (".mlpackage",)
    exports = {"coreml": (".mlpackage",)}
    extra = EXTRA
    requires = ("coremltools",)
    needs = ("macos",)

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
        super().__init__(path, card, threads)
        if reason := unavailable_reason():
            raise UnsupportedHereError(f"{path}: {reason}; on Linux the package loads only as a "
                                       f"spec (coremltools.models.MLModel(path, "
                                       f"skip_model_load=True))")
        ct = require("coremltools", self.extra)
        self.model = ct.models.MLModel(str(path))

    @staticmethod
    def read_card(path: Path) -> ModelCard:
        """The card from the package's metadata (loads the spec only: works on Linux)."""
        ct = require("coremltools", EXTRA)
        with unreadable_artifact(path, "coremltools"):
            spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
        data = dict(spec.description.metadata.userDefined).get(CARD_KEY)
        return embedded_card(data, path, f"its '{CARD_KEY}' metadata")

    @property
    def batch_size(self) -> int | None:
        return 1

    def _execution(self) -> dict[str, Any]:
        """The compute units Core ML may use (``ALL``: CPU, GPU and Neural Engine)."""
        return {"compute_units": self.model.compute_unit.name}

    def _run(self, x: np.ndarray) -> np.ndarray:
        from PIL import Image

        pre, art = self.card.preprocess, self.card.artifact
        mean = np.asarray(pre.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(pre.std, dtype=np.float32)[:, None, None]
        rows = []
        for image in x:
            rgb = np.clip((image * std + mean) * 255 + 0.5, 0, 255).astype(np.uint8)
            out = self.model.predict({art.input.name: Image.fromarray(rgb.transpose(1, 2, 0))})
            probs = out[art.output.name]
            rows.append([probs[c] for c in self.card.classes])
        return np.asarray(rows, dtype=np.float32)
