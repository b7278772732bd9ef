"""Classifier factory (timm), offline pretrained weights, model card, checkpoints.

Names are imported on first use (PEP 562), so ``import skinedge.models.card`` (what every
runtime reads) pulls in no torch or timm.
"""

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "DataInfo": "card", "ModelCard": "card",
    "load_card": "card", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "Ensemble": "ensemble", "create_ensemble": "ensemble",
    "create_classifier": "factory",
    "OFFLINE_WEIGHTS": "offline", "map_lite_state_dict": "pretrained",
    "offline_weights_path": "pretrained",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
