"""Grad-CAM and overlays: where in the image the evidence for a class lies.

Inference code (the clinician service uses it): ``Explainer`` (api) loads a checkpoint once and
explains one image at a time, thread-safe; ``explain_images`` (api) writes overlay PNGs;
``explain_batch`` (gradcam) returns heatmaps for preprocessed tensors; ``save_explanation``
(overlays) draws one as a captioned PNG.
"""

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "CamResult": "gradcam", "explain_batch": "gradcam",
    "blend_heatmap": "overlays", "save_explanation": "overlays",
    "Explainer": "api", "explain_images": "api",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
