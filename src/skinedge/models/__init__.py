"""Classifier factory (timm), offline pretrained weights, model card, checkpoints."""

from skinedge.models.card import DataInfo, ModelCard
from skinedge.models.checkpoint import load_card, load_checkpoint, save_checkpoint
from skinedge.models.ensemble import Ensemble, create_ensemble
from skinedge.models.factory import create_classifier
from skinedge.models.pretrained import OFFLINE_WEIGHTS, map_lite_state_dict, offline_weights_path

__all__ = [
    "OFFLINE_WEIGHTS", "DataInfo", "Ensemble", "ModelCard", "create_classifier", "create_ensemble", "load_card",
    "load_checkpoint", "map_lite_state_dict", "offline_weights_path", "save_checkpoint",
]
