"""The reusable training loop: train one epoch, validate, and keep a resumable state.

:func:`skinedge.train.train_classifier` is a sequence of these calls (and so are distillation
and QAT, which run through it). Anything else that must "train N epochs from these weights on
this data" (a federated client, retraining from clinicians' corrections) calls them too::

    state = TrainState(model, build_optimizer(model, cfg))
    for epoch in range(1, epochs + 1):
        seed_epoch(cfg.seed, epoch)
        loader = epoch_loader(train_set, batch_size=32, seed=cfg.seed, epoch=epoch)
        stats = fit_epoch(model, loader, criterion, state.optimizer, device=device, epoch=epoch)
        result = validate(model, val_set, device=device)
        state.update_best(epoch, -result.loss)
    save_state(out_dir / "last", state, card)

Every epoch's randomness (sampling order, augmentation, dropout) comes from ``(seed, epoch)``
and the rank, so an epoch replayed after a resume draws the same numbers. Under ``torchrun``
these functions read the rank from the process group: the epoch loss is averaged over every
rank's batches, and validation gathers each rank's shard.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from skinedge.errors import NotFoundError
from skinedge.evaluate.predict import predict_probs
from skinedge.models import ModelCard, save_checkpoint
from skinedge.models.checkpoint import load_checkpoint_weights, load_trainer_state
from skinedge.train.callbacks import TrainCallbacks
from skinedge.train.distributed import gather_from_ranks, rank_and_world_size, sum_over_ranks
from skinedge.train.ema import WeightAverage
from skinedge.train.sampler import ShardedSampler


@dataclass
class TrainState:
    """A model under training, what optimises it, and how far the run has come.

    ``state_dict()`` holds everything but the model's own weights (a checkpoint keeps those
    in ``model.safetensors``), the weight average's included; :func:`save_state` and
    :func:`load_state` write and read both.
    """

    model: nn.Module  # the unwrapped model (not its DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: Any = None  # a torch LR scheduler, or None for a constant rate
    scaler: torch.amp.GradScaler | None = None  # mixed precision on CUDA
    epoch: int = 0  # last finished epoch; 0 before the first
    best_metric: float = -math.inf  # best monitored validation metric so far (higher is better)
    best_epoch: int = 0
    stale: int = 0  # epochs since the monitored metric last improved
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    ema: WeightAverage | None = None  # an average of the weights, validated and kept instead

    @property
    def next_epoch(self) -> int:
        return self.epoch + 1

    @property
    def eval_model(self) -> nn.Module:
        """The model to validate and keep as ``best/``: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def update_best(self, epoch: int, metric: float) -> bool:
        """Mark ``epoch`` finished with validation ``metric``; True when it is the best yet."""
        self.epoch = epoch
        if metric > self.best_metric or self.best_epoch == 0:
            self.best_metric, self.best_epoch, self.stale = metric, epoch, 0
            return True
        self.stale += 1
        return False

    def patience_exhausted(self, patience: int) -> bool:
        """True when ``patience`` epochs (0: never) passed without improvement: stop early."""
        return bool(patience) and self.stale >= patience

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scheduler, scaler, weight average and progress (epoch, best, history);
        not the model's own weights."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "history": self.history, "epoch": self.epoch, "best_metric": self.best_metric,
            "best_epoch": self.best_epoch, "stale": self.stale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (weights are loaded separately)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if not state.get("ema"):
                raise NotFoundError("the checkpoint holds no weight average to resume (it was "
                                    "trained without ema.decay); resume with the run's config")
            self.ema.load_state_dict(state["ema"])
        self.history = state["history"]
        self.epoch, self.best_metric = state["epoch"], state["best_metric"]
        self.best_epoch, self.stale = state["best_epoch"], state["stale"]


@dataclass
class EpochStats:
    """What one :func:`fit_epoch` did."""

    loss: float  # mean training loss per image, over every rank's batches under DDP
    images: int  # images trained on (all ranks)
    batches: int  # batches run by this rank


@dataclass
class ValidationResult:
    """Probabilities for every item of a validation set, in dataset order."""

    probs: np.ndarray  # (N, C) float64, rows sum to 1
    targets: np.ndarray  # (N,) int64

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood of the true class, over the rows with a class (rows
        labelled only "not melanoma", target -1, count in the melanoma metrics instead)."""
        exact = self.targets >= 0
        true = self.probs[np.flatnonzero(exact), self.targets[exact]]
        return float(-np.log(np.clip(true, 1e-12, 1)).mean()) if exact.any() else float("nan")


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed everything an epoch draws from: torch (dropout, augmentation) and NumPy.

    Ranks get different seeds, so their dropout masks differ too.
    """
    rank, _ = rank_and_world_size()
    value = seed * 1_000_003 + epoch + rank * 7_777_777
    torch.manual_seed(value)
    np.random.seed(value % 2**32)


def epoch_loader(dataset: Dataset, *, batch_size: int, epoch: int, seed: int = 0,
                 sampler: Sampler[int] | None = None, num_workers: int = 0,
                 device: torch.device | str = "cpu") -> DataLoader:
    """The training batches of one epoch, in an order fixed by ``(seed, epoch)`` and the rank.

    Args:
        dataset: Items ``(image (3, H, W), target, *extras)``.
        batch_size: Images per batch (per rank under DDP). The last, partial batch is dropped
            unless it is the only one.
        epoch: Epoch number (from 1); with ``seed``, fixes the order and the workers' seeds.
        seed: Run seed.
        sampler: Index order; by default a :class:`ShardedSampler` shuffled by
            ``(seed, epoch)`` and sharded by rank (pass one to balance classes; it is set to
            ``epoch`` here when it has ``set_epoch``).
        num_workers: Loader processes.
        device: Where the batches go (pins memory for CUDA).
    """
    rank, world = rank_and_world_size()
    if sampler is None:
        sampler = ShardedSampler(len(dataset), seed=seed, rank=rank, world_size=world)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        drop_last=len(sampler) > batch_size, pin_memory=torch.device(device).type == "cuda",
        generator=torch.Generator().manual_seed(seed * 7919 + epoch + rank * 104_729),
        persistent_workers=False,
    )


def fit_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device | str,
    scaler: torch.amp.GradScaler | None = None,
    max_batches: int | None = None,
    epoch: int = 1,
    train_mode: Callable[[nn.Module], None] | None = None,
    callbacks: TrainCallbacks | None = None,
    ema: WeightAverage | None = None,
) -> EpochStats:
    """Train ``model`` for one pass over ``loader`` (at most ``max_batches`` batches).

    Args:
        model: The model, or its DDP wrapper; already on ``device``.
        loader: Batches ``(images (N, 3, H, W), targets (N,), *extras)``, e.g. from
            :func:`epoch_loader`.
        criterion: Called as ``criterion(logits (N, C), targets, *extras)`` -> scalar.
        optimizer: Steps once per batch.
        device: Where the batches go (channels-last).
        scaler: Mixed precision (float16 autocast) when given and enabled.
        max_batches: Stop after this many batches (smoke tests, quick trials).
        epoch: Epoch number, for the callbacks.
        train_mode: Puts the model in training mode instead of ``model.train()`` (e.g. with
            frozen BatchNorm for QAT).
        callbacks: ``on_epoch_start(epoch, num_batches)`` and ``on_batch_end`` per batch.
        ema: Updated after every optimizer step with the (unwrapped) model's weights.
    """
    device = torch.device(device)
    callbacks = callbacks or TrainCallbacks()
    scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
    num_batches = len(loader)
    if max_batches:
        num_batches = min(num_batches, max_batches)
    callbacks.on_epoch_start(epoch, num_batches)
    unwrapped = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if train_mode is not None:
        train_mode(model)
    else:
        model.train()
    total, seen, batch = 0.0, 0, 0
    for batch, (images, targets, *extras) in enumerate(loader, start=1):
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        extras = [e.to(device, non_blocking=True) for e in extras]
        with torch.autocast(device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
            loss = criterion(model(images), targets, *extras)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(unwrapped)
        batch_loss = loss.item()  # one device sync per batch
        total += batch_loss * len(targets)
        seen += len(targets)
        callbacks.on_batch_end(epoch, batch, batch_loss, optimizer.param_groups[0]["lr"])
        if batch >= num_batches:
            break
    total, seen = sum_over_ranks([total, seen])  # every rank's batches, not rank 0's alone
    return EpochStats(loss=total / max(seen, 1), images=int(seen), batches=batch)


def validate(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device | str,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ValidationResult:
    """Softmax probabilities of ``model`` (eval mode, no augmentation) for every item.

    Under DDP each rank predicts every ``world_size``-th item and the shards are gathered back
    into dataset order on every rank (``progress`` is then not called).

    Args:
        model: The unwrapped model, on ``device``.
        dataset: Items ``(image (3, H, W), target)``.
        progress: Called as ``progress(done, total)`` after each batch.
    """
    rank, world = rank_and_world_size()
    if world == 1:
        probs, targets = predict_probs(model, dataset, batch_size=batch_size,
                                       num_workers=num_workers, device=device, progress=progress)
        return ValidationResult(probs, targets)
    indices = list(range(rank, len(dataset), world))
    probs, targets = predict_probs(model, Subset(dataset, indices), batch_size=batch_size,
                                   num_workers=num_workers, device=device)
    all_probs = np.zeros((len(dataset), probs.shape[1]))
    all_targets = np.zeros(len(dataset), dtype=np.int64)
    for idx, p, t in gather_from_ranks((indices, probs, targets)):
        all_probs[idx], all_targets[idx] = p, t
    return ValidationResult(all_probs, all_targets)


def save_state(directory: Path, state: TrainState, card: ModelCard, *,
               extra: dict[str, Any] | None = None) -> Path:
    """Write a resumable checkpoint: weights, card and ``trainer_state.pt`` (the state's
    :meth:`TrainState.state_dict` plus ``extra``, e.g. the run's config).

    The folder is written beside its place, fsync'd and renamed into it, so a kill at any
    moment leaves the previous checkpoint or the new one.
    """
    return save_checkpoint(directory, state.model, card, {**state.state_dict(), **(extra or {})})


def load_state(directory: Path, state: TrainState, *,
               trainer_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_state` into ``state``: weights (checked against
    the card's hash) into ``state.model``, then optimizer, scheduler, scaler and progress.

    Args:
        directory: The checkpoint folder (its ``.old`` copy after a kill between renames).
        state: Built as for a fresh run (same model, optimizer and scheduler types).
        trainer_state: The folder's trainer state, when the caller has already read it.

    Returns:
        The trainer state as saved (with any ``extra`` keys).

    Raises:
        NotFoundError: the folder is no checkpoint, or holds no trainer state.
    """
    if trainer_state is None:
        trainer_state = load_trainer_state(directory)
        if trainer_state is None:
            raise NotFoundError(f"{directory} holds no trainer state; it is not a resumable "
                                "checkpoint (use its model.safetensors as starting weights)")
    state.model.load_state_dict(load_checkpoint_weights(directory))
    state.load_state_dict(trainer_state)
    return trainer_state
