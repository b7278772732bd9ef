"""Grad-CAM and overlays: where in the image the evidence for a class lies.

Inference code (the clinician service uses it): ``explain_images`` (api) loads a checkpoint and
writes overlay PNGs; ``explain_batch`` (gradcam) returns heatmaps for preprocessed tensors;
``save_explanation`` (overlays) draws one as a captioned PNG.
"""

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "CamResult": "gradcam", "explain_batch": "gradcam",
    "blend_heatmap": "overlays", "save_explanation": "overlays",
    "explain_images": "api",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
