"""Knowledge distillation: one small student learns an ensemble's (or one model's) probabilities.

The loss is ``alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, label)``
(Hinton et al. 2015), where ``p^T`` is the softmax at temperature ``T`` and the teacher's
``p^T`` is the mean of its members' softened probabilities. The cross-entropy term is the
training config's own loss (class weights, label smoothing).

Teacher logits are computed once per member and split and cached
(:mod:`skinedge.compress.teacher`): distillation never reruns the ensemble during training.
The student sees augmented views of images whose
teacher targets come from the plain view ("consistent teaching" would recompute the teacher
per view; with flips, rotations and mild colour changes the targets barely move).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import Dataset

from skinedge.compress.teacher import TeacherLogits, teacher_logits
from skinedge.data import LesionDataset, Manifest
from skinedge.errors import ConfigError, DataError
from skinedge.models import ModelCard, load_card
from skinedge.train.callbacks import TrainCallbacks
from skinedge.train.config import TrainConfig, load_data_manifest
from skinedge.train.trainer import TrainResult, train_classifier


class DistillSection(BaseModel):
    """How the student learns from the teacher."""

    model_config = ConfigDict(extra="forbid")

    teacher: Path  # a checkpoint folder: an ensemble (`skinedge ensemble create`) or one model
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)  # weight of the distillation term; 1 - alpha for labels
    cache_dir: Path | None = None  # teacher logits; default $SKINEDGE_CACHE/teacher-logits
    batch_size: int = Field(64, ge=1)  # for computing teacher logits


class DistillConfig(TrainConfig):
    """A training config for the student plus the ``distill`` section."""

    distill: DistillSection


class WithTeacher(Dataset):
    """A training dataset whose items carry the teacher's logits: (image, target, (M, C))."""

    def __init__(self, dataset: LesionDataset, teacher: TeacherLogits):
        if list(dataset.images) != teacher.images:
            raise ValueError("teacher logits are not in the dataset's image order; "
                             "compute them from the same manifest split")
        self.dataset = dataset
        self.logits = torch.from_numpy(teacher.logits)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image, target = self.dataset[index]
        return image, target, self.logits[index]

    @property
    def targets(self) -> list[int]:
        return self.dataset.targets


class DistillationLoss(nn.Module):
    """``alpha * T^2 * KL(teacher^T || student^T) + (1 - alpha) * label loss``.

    Args:
        temperature: Softens both distributions; ``T^2`` keeps the gradient scale (Hinton).
        alpha: Weight of the distillation term.
        label_loss: The label term, e.g. class-weighted cross-entropy.
    """

    def __init__(self, temperature: float, alpha: float, label_loss: nn.Module):
        super().__init__()
        self.temperature, self.alpha = temperature, alpha
        self.label_loss = label_loss

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                teacher: torch.Tensor) -> torch.Tensor:
        """logits (N, C), targets (N,), teacher (N, M, C) member logits -> scalar."""
        t = self.temperature
        soft = torch.softmax(teacher.float() / t, dim=-1).mean(dim=1)
        kl = F.kl_div(F.log_softmax(logits.float() / t, dim=1), soft, reduction="batchmean")
        loss = self.alpha * t * t * kl
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * self.label_loss(logits, targets)
        return loss


class DistillationObjective:
    """The trainer's hooks for distillation: teacher-carrying data, loss, agreement metric."""

    def __init__(self, cfg: DistillSection, train: TeacherLogits, val: TeacherLogits,
                 teacher_card: ModelCard):
        self.cfg, self.train, self.val, self.teacher_card = cfg, train, val, teacher_card
        self.val_top1 = val.probs().argmax(axis=1)

    def train_dataset(self, dataset: LesionDataset) -> Dataset:
        return WithTeacher(dataset, self.train)

    def criterion(self, label_loss: nn.Module) -> nn.Module:
        return DistillationLoss(self.cfg.temperature, self.cfg.alpha, label_loss)

    def outlier_extras(self) -> tuple[torch.Tensor, ...]:
        """Teacher logits for outlier exposure's pictures: zeros that the outlier loss keeps
        from the distillation term (the teacher never saw them; the student is taught them as
        outliers, to be none of the classes)."""
        return (torch.zeros(self.train.logits.shape[1:]),)

    def val_metrics(self, probs: np.ndarray) -> dict[str, float]:
        """Top-1 agreement of the student with the teacher on the validation split."""
        return {"teacher_agreement": float((probs.argmax(axis=1) == self.val_top1).mean())}

    def card_info(self) -> dict[str, Any]:
        return {"distillation": {
            "teacher": str(self.cfg.teacher),
            "teacher_architecture": self.teacher_card.architecture,
            "teacher_members": len(self.teacher_card.members or []) or 1,
            "teacher_weights_sha256": self.teacher_card.weights_sha256,
            "temperature": self.cfg.temperature, "alpha": self.cfg.alpha,
            "teacher_cache": [f.name for f in self.train.cache_files + self.val.cache_files],
        }}


def prepare_distillation(cfg: DistillConfig, manifest: Manifest, *, device: str | None = None,
                         progress: Callable[[str, int, int], None] | None = None
                         ) -> DistillationObjective:
    """Teacher logits for the train and val splits of ``manifest`` (``cfg.data.manifest``,
    loaded), from the cache when there, checked against the student.

    Raises:
        ConfigError: a synthetic set in the config.
        DataError: a teacher trained on another split (it may have seen the student's
            validation or test images) or with other classes.
    """
    if cfg.data.synthetic is not None:
        raise ConfigError("distillation reads teacher logits of the manifest's train images only; "
                         "unset data.synthetic (synthetic images cannot be distilled on yet)")
    teacher_card = load_card(cfg.distill.teacher)
    if teacher_card.data.split_hash and teacher_card.data.split_hash != manifest.split_hash:
        raise DataError(
            f"teacher {cfg.distill.teacher} was trained on split "
            f"{teacher_card.data.split_hash[:12]}, the student's manifest is "
            f"{manifest.split_hash[:12]}: the teacher may have seen the student's validation "
            "or test images; distil on the teacher's own manifest")
    kwargs = dict(cache_dir=cfg.distill.cache_dir, batch_size=cfg.distill.batch_size,
                  device=device or cfg.device, num_workers=cfg.num_workers, progress=progress)
    train = teacher_logits(cfg.distill.teacher, manifest, "train", **kwargs)
    val = teacher_logits(cfg.distill.teacher, manifest, "val", **kwargs)
    return DistillationObjective(cfg.distill, train, val, teacher_card)


def distill_classifier(
    cfg: DistillConfig,
    out_dir: Path | str,
    *,
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> TrainResult:
    """Train the student described by ``cfg`` on its teacher's cached logits.

    Same run folder, checkpoints, resume and progress as :func:`train_classifier`; the
    validation record adds ``teacher_agreement``, and the card's ``training.distillation``
    names the teacher, its weights' hash, the temperature and alpha.
    """
    last = Path(out_dir) / "last"
    if resume and (last / "card.json").is_file():
        before = load_card(last).training.get("distillation", {}).get("teacher_weights_sha256")
        now = load_card(cfg.distill.teacher).weights_sha256
        if before and before != now:
            raise ConfigError(f"cannot resume {out_dir}: the teacher {cfg.distill.teacher} has "
                             "other weights than when the run started; distil into a new --out")
    manifest = load_data_manifest(cfg)
    objective = prepare_distillation(cfg, manifest, progress=progress)
    return train_classifier(cfg, out_dir, resume=resume, callbacks=callbacks, objective=objective,
                            manifest=manifest)
