"""Classifier training: one entry point for one CPU, one GPU, or ``torchrun`` with DDP.

Every epoch ends with a checkpoint (``last/``, with optimizer, scheduler and history) and, when
the monitored validation metric improved, ``best/``. Each epoch's randomness (sampling order,
augmentation, dropout) is seeded from ``(seed, epoch)``, so a run killed at any point and
resumed with ``resume=True`` ends with the same weights as an uninterrupted one (on the
CPU, where the tests prove it bit for bit; CUDA kernels are not deterministic by default).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from skinedge.data import (
    LesionDataset,
    Manifest,
    build_eval_transform,
    build_train_transform,
)
from skinedge.data.synthetic import augmented_train_set, load_synthetic_set
from skinedge.evaluate.metrics import compute_metrics
from skinedge.evaluate.predict import predict_probs
from skinedge.models import DataInfo, ModelCard, create_classifier, save_checkpoint
from skinedge.models.checkpoint import load_checkpoint_weights, load_trainer_state
from skinedge.train.callbacks import TrainCallbacks
from skinedge.train.config import TrainConfig, dump_config, load_data_manifest
from skinedge.train.losses import build_loss, class_weights
from skinedge.train.sampler import ShardedSampler, balanced_weights
from skinedge.utils.device import resolve_device
from skinedge.utils.io import atomic_write_text, package_versions

# Settings that may change between a run and its resumption without changing its result.
# (num_workers and device change the random streams or the arithmetic, so they must match.)
_RESUMABLE_CHANGES = {"epochs", "threads", "eval_batch_size", "early_stopping_patience"}


@dataclass
class TrainResult:
    out_dir: Path
    best_epoch: int
    best_metric: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"


_LOGGED_METRICS = ("accuracy", "balanced_accuracy", "melanoma_auc", "macro_auc", "ece")


@dataclass
class _Progress:
    """Where a run stands: what resume restores besides optimizer and scheduler."""

    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0  # last finished epoch
    best_metric: float = -math.inf
    best_epoch: int = 0
    stale: int = 0  # epochs since the monitored metric last improved

    @property
    def next_epoch(self) -> int:
        return self.epoch + 1

    def update(self, epoch: int, current: float) -> bool:
        self.epoch = epoch
        if current > self.best_metric or self.best_epoch == 0:
            self.best_metric, self.best_epoch, self.stale = current, epoch, 0
            return True
        self.stale += 1
        return False

    def as_state(self) -> dict[str, Any]:
        return {"history": self.history, "epoch": self.epoch, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "stale": self.stale}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Progress:
        return cls(state["history"], state["epoch"], state["best_metric"], state["best_epoch"],
                   state["stale"])


class Objective(Protocol):
    """What the trainer optimises besides plain supervised learning (e.g. distillation).

    Training items become ``(image, target, *extras)`` and the criterion is called as
    ``criterion(logits, targets, *extras)``. Optional members, used when present:
    ``prepare_model(model) -> model`` (after weights are loaded, before the optimizer is
    built: e.g. inserting quantizers), ``train_mode(model)`` (instead of ``model.train()``)
    and ``precision`` (for the card).
    """

    def train_dataset(self, dataset: LesionDataset) -> Dataset: ...
    def criterion(self, label_loss: nn.Module) -> nn.Module: ...
    def val_metrics(self, probs: np.ndarray) -> dict[str, float]: ...
    def card_info(self) -> dict[str, Any]: ...


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train_classifier(
    cfg: TrainConfig,
    out_dir: Path | str,
    *,
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
    objective: Objective | None = None,
    manifest: Manifest | None = None,
) -> TrainResult:
    """Train a classifier on the train split of ``cfg.data.manifest``, validating on ``val``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group (NCCL on GPU, gloo on
    CPU), shards batches by rank and writes outputs from rank 0 only.

    Args:
        cfg: Validated training configuration.
        out_dir: Run folder: ``config.yaml``, ``versions.json``, ``metrics.jsonl``,
            ``last/``, ``best/`` (and ``tensorboard/`` when tensorboard is installed).
        resume: Continue from ``out_dir/last``.
        callbacks: Progress hooks.
        objective: Replaces label cross-entropy, e.g. a
            :class:`skinedge.compress.distill.DistillationObjective`.
        manifest: ``cfg.data.manifest`` when the caller has already loaded (and verified) it.

    Raises:
        ValueError: no manifest, resume without a checkpoint, or a changed config on resume.
    """
    dist = _init_distributed(cfg.device)
    try:
        manifest = manifest or load_data_manifest(cfg)
        return _train(cfg, Path(out_dir), resume, callbacks or TrainCallbacks(), dist, objective,
                      manifest)
    finally:
        _cleanup_distributed(dist)


def _train(cfg: TrainConfig, out_dir: Path, resume: bool, callbacks: TrainCallbacks,
           dist: _Dist, objective: Objective | None, manifest: Manifest) -> TrainResult:
    device = resolve_device(cfg.device, dist.local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    vocab = manifest.vocabulary
    synthetic = (load_synthetic_set(cfg.data.synthetic, manifest)
                 if cfg.data.synthetic is not None else None)
    train_set = augmented_train_set(manifest, synthetic,
                                    build_train_transform(cfg.preprocess, cfg.augment))
    val_set = LesionDataset.from_manifest(manifest, "val", build_eval_transform(cfg.preprocess))
    if not len(train_set) or not len(val_set):
        raise ValueError(f"{cfg.data.manifest}: the train and val splits must both have images")
    counts = [train_set.targets.count(i) for i in range(vocab.num_classes)]
    if cfg.monitor == "melanoma_auc" and vocab.positive not in vocab.codes:
        raise ValueError(f"monitor melanoma_auc needs a 'mel' class; {vocab.name} has none")

    torch.manual_seed(cfg.seed)
    model, provenance = create_classifier(
        cfg.model.arch, vocab.num_classes, pretrained=cfg.model.pretrained,
        drop_rate=cfg.model.drop_rate, head_init_std=cfg.model.head_init_std)
    _freeze_stages(model, cfg.model.freeze_stages)
    if objective is not None and hasattr(objective, "prepare_model"):
        model = objective.prepare_model(model)
    model.to(device, memory_format=torch.channels_last)
    optimizer = _build_optimizer(model, cfg)
    scheduler = _build_scheduler(optimizer, cfg)
    weights = class_weights(counts, cfg.loss.class_weights)
    criterion = build_loss(cfg.loss.kind, weights, gamma=cfg.loss.focal_gamma,
                           label_smoothing=cfg.loss.label_smoothing)
    fit_set: Dataset = train_set
    if objective is not None:
        fit_set = objective.train_dataset(train_set)
        criterion = objective.criterion(criterion)
    criterion.to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")

    if not resume and dist.is_main and any((out_dir / d).exists() for d in ("last", "best")):
        raise ValueError(f"{out_dir} already holds a training run; continue it with --resume, "
                         "or choose another --out (or delete the folder) to start afresh")
    progress = _Progress()
    if resume:
        state = _resume_state(out_dir, cfg)
        model.load_state_dict(load_checkpoint_weights(out_dir / "last"))
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        progress = _Progress.from_state(state)

    train_model: nn.Module = model
    if dist.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = ShardedSampler(
        len(train_set),
        balanced_weights(train_set.targets, vocab.num_classes) if cfg.sampler == "balanced" else None,
        seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    card_base = _base_card(cfg, manifest, provenance)
    if objective is not None and hasattr(objective, "precision"):
        card_base = card_base.model_copy(update={"precision": objective.precision})
    extra_card = objective.card_info() if objective is not None else {}
    if synthetic is not None:
        extra_card = {**extra_card, "synthetic": synthetic.card_info()}
    writer = _tensorboard(out_dir) if dist.is_main else None
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", dump_config(cfg))
        atomic_write_text(out_dir / "versions.json", json.dumps(package_versions(), indent=2))
    callbacks.on_start({
        "train": len(train_set), "val": len(val_set), "classes": list(vocab.codes),
        "class_counts": dict(zip(vocab.codes, counts)), "device": str(device),
        "world_size": dist.world_size, "start_epoch": progress.next_epoch, "epochs": cfg.epochs,
        "pretrained": provenance,
        "synthetic": synthetic.counts() if synthetic is not None else {},
    })

    stopped_early = False
    for epoch in range(progress.next_epoch, cfg.epochs + 1):
        if cfg.early_stopping_patience and progress.stale >= cfg.early_stopping_patience:
            stopped_early = True
            break
        started = time.perf_counter()
        _seed_epoch(cfg.seed, epoch, dist.rank)
        sampler.set_epoch(epoch)
        _warmup_lr(optimizer, cfg, epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_loss = _train_one_epoch(train_model, fit_set, sampler, optimizer, criterion,
                                      scaler, cfg, device, epoch, callbacks, dist.rank,
                                      train_mode=getattr(objective, "train_mode", None))
        probs, targets = _predict(model, val_set, cfg, device, dist, callbacks)
        metrics = compute_metrics(targets, probs, vocab.codes,
                                  melanoma_class=card_base.positive_class)
        current = metrics[cfg.monitor] if metrics[cfg.monitor] is not None else -math.inf
        _step_scheduler(scheduler, cfg, epoch, current)
        improved = progress.update(epoch, current)
        record = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": _nll(probs, targets),
            "lr": lr, "seconds": round(time.perf_counter() - started, 1),
            **{k: metrics[k] for k in _LOGGED_METRICS},
            **(objective.val_metrics(probs) if objective is not None else {}),
            "best": improved,
        }
        progress.history.append(record)
        if dist.is_main:
            card = card_base.model_copy(update={
                "metrics": {"split": "val", **metrics},
                "training": {"epoch": epoch, "config": cfg.model_dump(mode="json"),
                             **extra_card},
            })
            trainer_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict(), "config": cfg.model_dump(mode="json"),
                **progress.as_state(),
            }
            if improved:
                save_checkpoint(out_dir / "best", model, card)
            save_checkpoint(out_dir / "last", model, card, trainer_state)
            atomic_write_text(out_dir / "metrics.jsonl",
                              "".join(json.dumps(r) + "\n" for r in progress.history))
            _log_scalars(writer, record)
        callbacks.on_epoch_end(epoch, record)
        _barrier(dist)
    if writer is not None:
        writer.close()
    return TrainResult(out_dir, progress.best_epoch, progress.best_metric, progress.history,
                       stopped_early)


# --------------------------------------------------------------------------- epoch


def _train_one_epoch(model, dataset, sampler, optimizer, criterion, scaler, cfg, device, epoch,
                     callbacks, rank: int = 0, train_mode=None) -> float:
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
        drop_last=len(sampler) > cfg.batch_size, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch + rank * 104_729),
        persistent_workers=False,
    )
    num_batches = len(loader)
    if cfg.max_batches_per_epoch:
        num_batches = min(num_batches, cfg.max_batches_per_epoch)
    callbacks.on_epoch_start(epoch, num_batches)
    if train_mode is not None:
        train_mode(model)
    else:
        model.train()
    total, seen = 0.0, 0
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
        total += loss.item() * len(targets)
        seen += len(targets)
        callbacks.on_batch_end(epoch, batch, loss.item(), optimizer.param_groups[0]["lr"])
        if batch >= num_batches:
            break
    if sampler.world_size > 1:  # mean over every rank's batches, not rank 0's alone
        import torch.distributed as tdist

        sums = torch.tensor([total, float(seen)], dtype=torch.float64)
        tdist.all_reduce(sums)
        total, seen = sums.tolist()
    return total / max(seen, 1)


def _predict(model, dataset, cfg, device, dist: _Dist, callbacks) -> tuple[np.ndarray, np.ndarray]:
    """Validation probabilities; under DDP each rank predicts a shard and rank order is restored."""
    if dist.world_size == 1:
        return predict_probs(model, dataset, batch_size=cfg.eval_batch_size,
                             num_workers=cfg.num_workers, device=device,
                             progress=callbacks.on_validate)
    import torch.distributed as tdist

    indices = list(range(dist.rank, len(dataset), dist.world_size))
    probs, targets = predict_probs(model, Subset(dataset, indices), batch_size=cfg.eval_batch_size,
                                   num_workers=cfg.num_workers, device=device)
    gathered: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(gathered, (indices, probs, targets))
    all_probs = np.zeros((len(dataset), probs.shape[1]))
    all_targets = np.zeros(len(dataset), dtype=np.int64)
    for idx, p, t in gathered:
        all_probs[idx], all_targets[idx] = p, t
    return all_probs, all_targets


# --------------------------------------------------------------------------- pieces


def _build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
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


def _base_card(cfg: TrainConfig, manifest: Manifest, provenance: str) -> ModelCard:
    vocab = manifest.vocabulary
    return ModelCard(
        architecture=cfg.model.arch, classes=list(vocab.codes), class_names=vocab.names,
        vocabulary=vocab.name,
        positive_class=vocab.positive if vocab.positive in vocab.codes else None,
        preprocess=cfg.preprocess, drop_rate=cfg.model.drop_rate, pretrained=provenance,
        data=DataInfo(manifest=str(cfg.data.manifest), split_hash=manifest.split_hash,
                      layout=manifest.layout, counts=manifest.counts(),
                      licence=cfg.data.licence or _detect_licence(manifest.root)),
        versions=package_versions(),
    )


def _step_scheduler(scheduler, cfg: TrainConfig, epoch: int, current: float) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(current)
    elif epoch > cfg.optim.warmup_epochs:
        scheduler.step()


def _nll(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probs (N, C), targets (N,))."""
    return float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, 1)).mean())


def _log_scalars(writer, record: dict[str, Any]) -> None:
    if writer is None:
        return
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
            writer.add_scalar(key, value, record["epoch"])


def _freeze_stages(model: nn.Module, stages: int) -> None:
    if not stages:
        return
    blocks = getattr(model, "blocks", None)
    if blocks is None or stages > len(blocks):
        raise ValueError(f"model.freeze_stages={stages}: {type(model).__name__} has "
                         f"{len(blocks) if blocks is not None else 'no'} stages in `blocks`")
    stem = [m for name, m in model.named_children() if name in ("conv_stem", "bn1")]
    for module in (*stem, *blocks[:stages]):
        module.requires_grad_(False)


def _build_scheduler(optimizer, cfg: TrainConfig):
    o = cfg.optim
    if o.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=o.plateau_factor, patience=o.plateau_patience,
            min_lr=o.min_lr)
    if o.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(cfg.epochs - o.warmup_epochs, 1), eta_min=o.min_lr)
    return None


def _warmup_lr(optimizer, cfg: TrainConfig, epoch: int) -> None:
    """Linear warm-up over the first ``optim.warmup_epochs`` epochs (per epoch)."""
    if epoch <= cfg.optim.warmup_epochs:
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * epoch / (cfg.optim.warmup_epochs + 1)
    elif epoch == cfg.optim.warmup_epochs + 1 and cfg.optim.warmup_epochs:
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr


def _seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed everything an epoch draws from (ranks differ, so dropout masks do too)."""
    value = seed * 1_000_003 + epoch + rank * 7_777_777
    torch.manual_seed(value)
    np.random.seed(value % 2**32)


def _resume_state(out_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    try:
        state = load_trainer_state(out_dir / "last")  # falls back to .last.old after a kill
    except FileNotFoundError:
        state = None
    if state is None:
        raise ValueError(f"cannot resume: {out_dir / 'last'} holds no trainer state; "
                         "start without --resume")
    # Validate the saved config again so fields added since then compare at their defaults;
    # where the images lie (data.root) may change.
    old = type(cfg).model_validate(state["config"]).model_dump(mode="json")
    new = cfg.model_dump(mode="json")
    old["data"]["root"] = new["data"]["root"] = None
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES)
    if changed:
        raise ValueError(
            f"cannot resume {out_dir}: the config changed in {changed} since the run started; "
            f"use the run's own config ({out_dir / 'config.yaml'}) or a new output folder")
    if old.get("epochs") != new["epochs"] and new["optim"]["scheduler"] == "cosine":
        # The cosine schedule is laid out over `epochs`; its saved state cannot be stretched.
        raise ValueError(
            f"cannot resume {out_dir} with epochs={new['epochs']}: its cosine learning-rate "
            f"schedule was laid out over epochs={old.get('epochs')}; resume with that value, or "
            f"fine-tune its weights in a new run folder with --set "
            f"model.pretrained={out_dir / 'last' / 'model.safetensors'}")
    return state


_LICENCE = re.compile(r"CC[ -]BY(?:-[A-Z]{2})*(?:-[A-Z]{2})? \d\.\d")


def _detect_licence(root: Path) -> str:
    """The data licence named in the dataset folder's README, e.g. ``CC BY-NC 4.0``."""
    for name in ("README.md", "README.txt", "README", "LICENSE"):
        path = root / name
        if path.is_file():
            match = _LICENCE.search(path.read_text(errors="replace"))
            if match:
                return match.group(0)
    return "unknown (set data.licence)"


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as tdist

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if on_gpu else "gloo")
    return _Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _cleanup_distributed(dist: _Dist) -> None:
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.destroy_process_group()


def _barrier(dist: _Dist) -> None:
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.barrier()
