"""Evaluation of checkpoints on ISIC splits: metrics, reports, per-image predictions."""

from skinedge.evaluate.api import EvaluationResult, evaluate_checkpoint

__all__ = ["EvaluationResult", "evaluate_checkpoint"]
