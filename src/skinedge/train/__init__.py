"""Classifier training: config, the trainer (DDP, resume, early stopping), losses, the
class-balanced sampler, progress callbacks, and ensembles of trained members."""
