"""Classifier training: one entry point for one CPU, one GPU, or ``torchrun`` with DDP.

Every epoch ends with a checkpoint (``last/``, with optimizer, scheduler and history) and, when
the monitored validation metric improved, ``best/``. Each epoch's randomness (sampling order,
augmentation, dropout) is seeded from ``(seed, epoch)``, so a run killed at any point and
resumed with ``resume=True`` ends with the same weights as an uninterrupted one (on the
CPU, where the tests prove it bit for bit; CUDA kernels are not deterministic by default).

This module assembles a run from its config; the epoch itself is :mod:`skinedge.train.loop`
(``fit_epoch``, ``validate``, ``TrainState``), which other callers use without a config.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from skinedge.data import LesionDataset, Manifest, build_eval_transform, build_train_transform
from skinedge.data.classes import NOT_POSITIVE, NOT_POSITIVE_LABEL
from skinedge.data.synthetic import SyntheticSet, augmented_train_set, load_synthetic_set
from skinedge.errors import ConfigError, DataError
from skinedge.evaluate.calibration import (
    MIN_CALIBRATION_IMAGES,
    TemperatureFit,
    calibrate_checkpoint,
)
from skinedge.evaluate.metrics import compute_partial_metrics
from skinedge.models import ModelCard, create_classifier, load_card, save_checkpoint
from skinedge.train import loop
from skinedge.train.callbacks import TrainCallbacks
from skinedge.train.config import TrainConfig, load_data_manifest
from skinedge.train.distributed import (
    DistContext,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
    wrap_for_training,
)
from skinedge.train.ema import WeightAverage
from skinedge.train.losses import PartialLabelLoss, build_loss, class_weights
from skinedge.train.optim import (
    build_optimizer,
    build_scheduler,
    freeze_stages,
    step_scheduler,
    warmup_lr,
)
from skinedge.train.outliers import OutlierExposureLoss, sampling_weights, with_outliers
from skinedge.train.outputs import ScalarLog, base_card, epoch_card, write_metrics, write_run_files
from skinedge.train.resume import refuse_existing_run, resumable_state
from skinedge.train.sampler import ShardedSampler, balanced_weights
from skinedge.utils.device import resolve_device

_LOGGED_METRICS = ("accuracy", "balanced_accuracy", "melanoma_auc", "macro_auc", "ece")


@dataclass
class TrainResult:
    out_dir: Path
    best_epoch: int
    best_metric: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    calibration: TemperatureFit | None = None  # best/'s temperature, fitted on val

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"


class Objective(Protocol):
    """What the trainer optimises besides plain supervised learning (e.g. distillation).

    Training items become ``(image, target, *extras)`` and the criterion is called as
    ``criterion(logits, targets, *extras)``. Optional members, used when present:
    ``prepare_model(model) -> model`` (after weights are loaded, before the optimizer is
    built: e.g. inserting quantizers), ``train_mode(model)`` (instead of ``model.train()``),
    ``precision`` (for the card) and ``outlier_extras()`` (stand-ins for the extras, carried
    by outlier exposure's pictures; required when the items have extras and
    ``outliers.weight`` is set). ``train_dataset``'s result has the split's ``targets``.
    """

    def train_dataset(self, dataset: LesionDataset) -> Dataset: ...
    def criterion(self, label_loss: nn.Module) -> nn.Module: ...
    def val_metrics(self, probs: np.ndarray) -> dict[str, float]: ...
    def card_info(self) -> dict[str, Any]: ...


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
        ConfigError: no manifest, a run already in ``out_dir`` without ``resume``, resume
            without a checkpoint, or a changed config on resume.
    """
    dist = init_distributed(cfg.device)
    try:
        manifest = manifest or load_data_manifest(cfg)
        return _train(cfg, Path(out_dir), resume, callbacks or TrainCallbacks(), dist, objective,
                      manifest)
    finally:
        cleanup_distributed(dist)


@dataclass
class _Run:
    """What every epoch of one run shares; built once by :func:`_prepare_run`."""

    cfg: TrainConfig
    out_dir: Path
    dist: DistContext
    device: torch.device
    state: loop.TrainState
    train_model: nn.Module  # state.model, or its DDP wrapper
    fit_set: Dataset  # the train split as the objective sees it
    val_set: Dataset
    sampler: ShardedSampler
    criterion: nn.Module
    card: ModelCard  # every checkpoint's card, before its epoch and metrics
    card_training: dict[str, Any]  # the objective's and the synthetic set's card details
    objective: Objective | None
    callbacks: TrainCallbacks
    scalars: ScalarLog | None = None  # rank 0 only


def _train(cfg: TrainConfig, out_dir: Path, resume: bool, callbacks: TrainCallbacks,
           dist: DistContext, objective: Objective | None, manifest: Manifest) -> TrainResult:
    run, start_info = _prepare_run(cfg, out_dir, resume, callbacks, dist, objective, manifest)
    if dist.is_main:
        run.scalars = ScalarLog(out_dir)
        write_run_files(out_dir, cfg)
    callbacks.on_start(start_info)
    state, stopped_early = run.state, False
    for epoch in range(state.next_epoch, cfg.epochs + 1):
        if state.patience_exhausted(cfg.early_stopping_patience):
            stopped_early = True
            break
        record, metrics, improved = _run_epoch(run, epoch)
        if dist.is_main:
            _save_epoch(run, epoch, record, metrics, improved)
        callbacks.on_epoch_end(epoch, record)
        barrier(dist)
    if run.scalars is not None:
        run.scalars.close()
    calibration = None
    if cfg.calibrate and dist.is_main and (out_dir / "best").is_dir():
        if len(run.val_set) < MIN_CALIBRATION_IMAGES:
            callbacks.on_calibrated({"skipped": f"{len(run.val_set)} val images, fewer than "
                                                f"{MIN_CALIBRATION_IMAGES}: temperature left at 1"})
        else:
            # Refits from the raw logits each time, so a resumed run that calibrates again
            # after a kill gets the same temperature.
            try:
                calibration = calibrate_checkpoint(
                    out_dir / "best", run.val_set, source=f"{cfg.data.manifest}:val",
                    batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers,
                    device=run.device)
            except (DataError, ValueError) as exc:  # the other ranks wait at the barrier
                callbacks.on_calibrated({"skipped": f"calibration failed: {exc}; best/ keeps "
                                                    "temperature 1 (`skinedge calibrate`)"})
            else:
                check = load_card(out_dir / "best").ood
                callbacks.on_calibrated({**calibration.to_dict(), "ood": check and check.fit})
    barrier(dist)
    return TrainResult(out_dir, state.best_epoch, state.best_metric, state.history, stopped_early,
                       calibration)


def _prepare_run(cfg: TrainConfig, out_dir: Path, resume: bool, callbacks: TrainCallbacks,
                 dist: DistContext, objective: Objective | None,
                 manifest: Manifest) -> tuple[_Run, dict[str, Any]]:
    """Data, model, optimizer and loss of a run (restored from ``last/`` on resume), and the
    ``on_start`` summary."""
    device = resolve_device(cfg.device, dist.local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    vocab = manifest.vocabulary
    synthetic, train_set, val_set = _datasets(cfg, manifest)
    counts = [train_set.targets.count(i) for i in range(vocab.num_classes)]
    if cfg.monitor == "melanoma_auc" and vocab.positive not in vocab.codes:
        raise ConfigError(f"monitor melanoma_auc needs a 'mel' class; {vocab.name} has none")

    torch.manual_seed(cfg.seed)
    model, provenance = _build_model(cfg, vocab.num_classes, objective, device)
    state = loop.TrainState(model, build_optimizer(model, cfg), scaler=torch.amp.GradScaler(
        "cuda", enabled=cfg.amp and device.type == "cuda"))
    state.scheduler = build_scheduler(state.optimizer, cfg)
    if cfg.ema.decay:
        state.ema = WeightAverage(model, cfg.ema.decay)
    fit_set = objective.train_dataset(train_set) if objective is not None else train_set
    outliers = None
    if cfg.outliers.weight:
        # An objective's items carry extras (a student's teacher logits): the outliers carry
        # zeros of their shape, which the outlier loss never passes on.
        extras = objective.outlier_extras() if hasattr(objective, "outlier_extras") else ()
        fit_set, outliers = with_outliers(fit_set, cfg.outliers.share, train_set.transform,
                                          extras)
    partial = train_set.targets.count(NOT_POSITIVE)
    criterion = _build_criterion(cfg, counts, objective,
                                 positive=vocab.codes.index(vocab.positive) if partial else None
                                 ).to(device)
    if not resume and dist.is_main:
        refuse_existing_run(out_dir)
    if resume:
        loop.load_state(out_dir / "last", state, trainer_state=resumable_state(out_dir, cfg))

    weights = None
    if cfg.sampler == "balanced":
        def balanced(targets: list[int]) -> list[float]:
            return balanced_weights(targets, vocab.num_classes)

        weights = (balanced(train_set.targets) if outliers is None
                   else sampling_weights(fit_set.targets, cfg.outliers.share, balanced))
    sampler = ShardedSampler(len(fit_set), weights, seed=cfg.seed, rank=dist.rank,
                             world_size=dist.world_size)
    card = base_card(cfg, manifest, provenance)
    if objective is not None and hasattr(objective, "precision"):
        card = card.model_copy(update={"precision": objective.precision})
    card_training = objective.card_info() if objective is not None else {}
    if synthetic is not None:
        card_training = {**card_training, "synthetic": synthetic.card_info()}
    if outliers is not None:
        card_training = {**card_training, "outlier_exposure": outliers.card_info(
            cfg.outliers.weight, cfg.outliers.share)}
    if state.ema is not None:
        card_training = {**card_training, "weight_average": state.ema.card_info()}
    run = _Run(cfg, out_dir, dist, device, state, wrap_for_training(model, device, dist), fit_set,
               val_set, sampler, criterion, card, card_training, objective, callbacks)
    start_info = {
        "train": len(train_set), "val": len(val_set), "classes": list(vocab.codes),
        "class_counts": {**dict(zip(vocab.codes, counts)),
                         **({NOT_POSITIVE_LABEL: partial} if partial else {}),
                         **({"not a lesion (outlier exposure)": len(outliers)}
                            if outliers is not None else {})},
        "device": str(device),
        "world_size": dist.world_size, "start_epoch": state.next_epoch, "epochs": cfg.epochs,
        "pretrained": provenance,
        "synthetic": synthetic.counts() if synthetic is not None else {},
    }
    return run, start_info


def _run_epoch(run: _Run, epoch: int) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Train and validate one epoch: (its ``metrics.jsonl`` record, the validation metrics,
    whether the monitored one improved)."""
    cfg, state = run.cfg, run.state
    started = time.perf_counter()
    loop.seed_epoch(cfg.seed, epoch)
    warmup_lr(state.optimizer, cfg, epoch)
    lr = state.optimizer.param_groups[0]["lr"]
    loader = loop.epoch_loader(run.fit_set, batch_size=cfg.batch_size, epoch=epoch,
                               seed=cfg.seed, sampler=run.sampler,
                               num_workers=cfg.num_workers, device=run.device)
    stats = loop.fit_epoch(run.train_model, loader, run.criterion, state.optimizer,
                           device=run.device, scaler=state.scaler,
                           max_batches=cfg.max_batches_per_epoch, epoch=epoch,
                           train_mode=getattr(run.objective, "train_mode", None),
                           callbacks=run.callbacks, ema=state.ema)
    broadcast_buffers(state.eval_model)  # every rank validates, and resumes, with rank 0's
    val = loop.validate(state.eval_model, run.val_set, device=run.device,
                        batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers,
                        progress=run.callbacks.on_validate)
    metrics = compute_partial_metrics(val.targets, val.probs, run.card.classes,
                                      melanoma_class=run.card.positive_class)
    current = metrics[cfg.monitor] if metrics[cfg.monitor] is not None else -math.inf
    step_scheduler(state.scheduler, cfg, epoch, current)
    improved = state.update_best(epoch, current)
    record = {
        "epoch": epoch, "train_loss": stats.loss, "val_loss": val.loss,
        "lr": lr, "seconds": round(time.perf_counter() - started, 1),
        **{k: metrics[k] for k in _LOGGED_METRICS},
        **(run.objective.val_metrics(val.probs) if run.objective is not None else {}),
        "best": improved,
    }
    state.history.append(record)
    return record, metrics, improved


def _save_epoch(run: _Run, epoch: int, record: dict[str, Any], metrics: dict[str, Any],
                improved: bool) -> None:
    """Rank 0's files after an epoch: ``best/`` when it improved, ``last/`` with the trainer
    state, ``metrics.jsonl`` and the scalars."""
    card = epoch_card(run.card, run.cfg, epoch, metrics, run.card_training)
    if improved:
        save_checkpoint(run.out_dir / "best", run.state.eval_model, card)
    loop.save_state(run.out_dir / "last", run.state, card,
                    extra={"config": run.cfg.model_dump(mode="json")})
    write_metrics(run.out_dir, run.state.history)
    if run.scalars is not None:
        run.scalars.log(record)


def _datasets(cfg: TrainConfig, manifest: Manifest
              ) -> tuple[SyntheticSet | None, LesionDataset, LesionDataset]:
    """(synthetic set or None, train split with its synthetic images, val split)."""
    refuse_small_classes(manifest, cfg.data.min_images_per_class,
                         cfg.data.manifest or "the manifest")
    synthetic = (load_synthetic_set(cfg.data.synthetic, manifest)
                 if cfg.data.synthetic is not None else None)
    train_set = augmented_train_set(manifest, synthetic,
                                    build_train_transform(cfg.preprocess, cfg.augment))
    val_set = LesionDataset.from_manifest(manifest, "val", build_eval_transform(cfg.preprocess))
    if not len(train_set) or not len(val_set):
        raise DataError(f"{cfg.data.manifest}: the train and val splits must both have images")
    return synthetic, train_set, val_set


def refuse_small_classes(manifest: Manifest, minimum: int, where: object) -> None:
    """Refuse a train split with fewer than ``minimum`` real images of a class.

    Classes without any image in the manifest are left out: the split already warned about
    them, and no val/test figure depends on them.

    Raises:
        DataError: naming ``where`` (the manifest), the classes, their counts and the option.
    """
    if minimum <= 0:
        return
    present = {r.label for r in manifest.rows}
    train = Counter(r.label for r in manifest.subset("train"))
    small = [c for c in manifest.vocabulary.codes if c in present and train[c] < minimum]
    if small:
        counts = ", ".join(f"{c} ({train[c]})" for c in small)
        raise DataError(
            f"{where}: the train split has fewer than {minimum} images of class(es) {counts}: a "
            "model cannot learn a class from so few, and its val/test figures for it are noise. "
            "Add images of these classes and make a new split with `skinedge data split`, or "
            "train anyway with `--set data.min_images_per_class=0` (or the same key in the "
            "config file; for `skinedge experiment ablation`, add data.min_images_per_class=0 "
            "to train_overrides in its YAML)")


def _build_model(cfg: TrainConfig, num_classes: int, objective: Objective | None,
                 device: torch.device) -> tuple[nn.Module, str]:
    """The classifier with its starting weights and frozen stages, on ``device``, and where
    its weights came from."""
    model, provenance = create_classifier(
        cfg.model.arch, num_classes, pretrained=cfg.model.pretrained,
        drop_rate=cfg.model.drop_rate, head_init_std=cfg.model.head_init_std)
    freeze_stages(model, cfg.model.freeze_stages)
    if objective is not None and hasattr(objective, "prepare_model"):
        model = objective.prepare_model(model)
    model.to(device, memory_format=torch.channels_last)
    return model, provenance


def _build_criterion(cfg: TrainConfig, counts: list[int], objective: Objective | None,
                     positive: int | None = None) -> nn.Module:
    """``cfg.loss`` with class weights from the train split's ``counts``, wrapped by the
    objective's criterion. With ``positive`` (the melanoma output, when some train rows are
    labelled only "not melanoma") the loss is :class:`PartialLabelLoss`; with
    ``outliers.weight`` the whole (objective included) is wrapped in
    :class:`OutlierExposureLoss`.

    Raises:
        ConfigError: partial rows with a focal loss or label smoothing (not defined for them).
    """
    weights = class_weights(counts, cfg.loss.class_weights)
    if positive is not None:
        if cfg.loss.kind != "ce" or cfg.loss.label_smoothing:
            raise ConfigError(
                "the train split has rows labelled only 'not melanoma' (a multi-source split), "
                "which the partial-label cross-entropy learns from; it has no focal or "
                "label-smoothed form: set loss.kind=ce and loss.label_smoothing=0")
        criterion = PartialLabelLoss(positive, weights)
    else:
        criterion = build_loss(cfg.loss.kind, weights, gamma=cfg.loss.focal_gamma,
                               label_smoothing=cfg.loss.label_smoothing)
    if objective is not None:
        criterion = objective.criterion(criterion)
    if cfg.outliers.weight:  # outermost: the objective's loss sees the lesion rows alone
        criterion = OutlierExposureLoss(criterion, cfg.outliers.weight)
    return criterion
