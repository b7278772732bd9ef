"""Classifier training: config, the trainer (DDP, resume, early stopping), the reusable loop
(``TrainState``, ``fit_epoch``, ``validate``, ``save_state`` / ``load_state``), optimizers and
schedules, losses, the class-balanced sampler, progress callbacks, and ensembles of trained
members.

``train_classifier`` runs a whole configured run; code that trains a model it already holds
(a federated client, retraining from corrections) calls the loop's functions directly. Names
are imported on first use (PEP 562), so ``import skinedge.train.callbacks`` stays free of torch.
"""

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "TrainCallbacks": "callbacks",
    "TrainConfig": "config", "load_train_config": "config",
    "train_ensemble": "ensemble",
    "EpochStats": "loop", "TrainState": "loop", "ValidationResult": "loop",
    "epoch_loader": "loop", "fit_epoch": "loop", "load_state": "loop", "save_state": "loop",
    "seed_epoch": "loop", "validate": "loop",
    "build_loss": "losses",
    "build_optimizer": "optim", "build_scheduler": "optim", "freeze_stages": "optim",
    "ShardedSampler": "sampler",
    "Objective": "trainer", "TrainResult": "trainer", "train_classifier": "trainer",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
