"""Grad-CAM and overlays: where in the image the evidence for a class lies.

Inference code (the clinician service uses it): ``explain_images`` loads a checkpoint and
writes overlay PNGs; ``explain_batch`` returns heatmaps for preprocessed tensors.
"""

from importlib import import_module

_EXPORTS = {
    "CamResult": "gradcam", "explain_batch": "gradcam", "save_explanation": "gradcam",
    "explain_images": "overlays",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'skinedge.explain' has no attribute {name!r}")
    return getattr(import_module(f"skinedge.explain.{_EXPORTS[name]}"), name)
