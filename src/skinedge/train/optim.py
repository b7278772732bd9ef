"""What the optimizer sees: frozen stages, parameter groups, learning-rate warm-up and schedule."""

from __future__ import annotations

import torch
from torch import nn

from skinedge.errors import ConfigError
from skinedge.train.config import TrainConfig

#: A learning-rate schedule from :func:`build_scheduler` (None for a constant rate).
Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


def freeze_stages(model: nn.Module, stages: int) -> None:
    """Stop gradients to the stem and the first ``stages`` of timm's ``model.blocks``.

    Raises:
        ConfigError: the model has fewer stages (or no ``blocks``).
    """
    if not stages:
        return
    blocks = getattr(model, "blocks", None)
    if blocks is None or stages > len(blocks):
        raise ConfigError(f"model.freeze_stages={stages}: {type(model).__name__} has "
                          f"{len(blocks) if blocks is not None else 'no'} stages in `blocks`")
    stem = [m for name, m in model.named_children() if name in ("conv_stem", "bn1")]
    for module in (*stem, *blocks[:stages]):
        module.requires_grad_(False)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optim``'s optimizer over the trainable parameters, in two groups: weights with
    weight decay; norms, biases and quantizer scales without."""
    o = cfg.optim
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Norms, biases and quantizer scales (NNCF's hooks) are not decayed.
        plain = param.ndim <= 1 or name.endswith(".bias") or "nncf" in name
        (no_decay if plain else decay).append(param)
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=0.9, nesterov=True)
    if o.optimizer == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    return torch.optim.AdamW(groups, lr=o.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Scheduler | None:
    """``plateau`` (on the monitored metric), ``cosine`` (over the epochs after warm-up) or
    None (``none``: a constant rate after warm-up)."""
    o = cfg.optim
    if o.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=o.plateau_factor, patience=o.plateau_patience,
            min_lr=o.min_lr)
    if o.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(cfg.epochs - o.warmup_epochs, 1), eta_min=o.min_lr)
    return None


def warmup_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> None:
    """Linear warm-up over the first ``optim.warmup_epochs`` epochs (per epoch); call it
    before each epoch, epochs counted from 1."""
    if epoch <= cfg.optim.warmup_epochs:
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * epoch / (cfg.optim.warmup_epochs + 1)
    elif epoch == cfg.optim.warmup_epochs + 1 and cfg.optim.warmup_epochs:
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr


def step_scheduler(scheduler: Scheduler | None, cfg: TrainConfig, epoch: int,
                   metric: float) -> None:
    """Advance the schedule after ``epoch``: a plateau scheduler on the monitored ``metric``,
    any other one once warm-up is over."""
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(metric)
    elif epoch > cfg.optim.warmup_epochs:
        scheduler.step()
