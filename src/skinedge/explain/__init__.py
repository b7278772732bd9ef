"""Grad-CAM and overlays: where in the image the evidence for a class lies.

Inference code (the clinician service uses it): ``explain_images`` loads a checkpoint and
writes overlay PNGs; ``explain_batch`` returns heatmaps for preprocessed tensors.
"""

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "CamResult": "gradcam", "explain_batch": "gradcam", "save_explanation": "gradcam",
    "explain_images": "overlays",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
