"""Quantization-aware fine-tuning (QAT) with NNCF, for when post-training INT8 misses its bound.

NNCF inserts fake quantizers into the PyTorch model (initialised by post-training calibration
on training images: per-channel symmetric int8 weights, per-tensor activations), and the
trainer fine-tunes weights and quantizer scales together, optionally distilling from a teacher
at the same time. BatchNorm statistics stay frozen at their calibrated values (batches of 32
give noisy statistics, and the quantizer ranges were calibrated against the frozen ones).

The result is an INT8 checkpoint: ``card.precision == "int8"`` and
``card.training["quantization"]["nncf_config"]`` say where the quantizers go, so
``load_checkpoint`` rebuilds the fake-quantized model (the reference the exports are verified
against), and ``skinedge export --target openvino|onnx`` turns it into a real INT8 artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from skinedge.compress.distill import DistillationObjective, DistillSection, prepare_distillation
from skinedge.compress.quantize import OVERFLOW_FIXES, resolve_overflow_fix
from skinedge.errors import ConfigError
from skinedge.models.quantized import import_nncf
from skinedge.train.config import TrainConfig


class QuantizeSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calibration_images: int = Field(300, ge=1)  # from the training split, seeded
    overflow_fix: Literal[OVERFLOW_FIXES] = "auto"  # see compress.quantize.resolve_overflow_fix
    freeze_bn: bool = True


class QATConfig(TrainConfig):
    """A training config whose ``model.pretrained`` is the FP32 checkpoint's weights, plus the
    quantizer settings and an optional teacher to distil from while fine-tuning."""

    quantize: QuantizeSection = Field(default_factory=QuantizeSection)
    distill: DistillSection | None = None

    @model_validator(mode="after")
    def _no_weight_average(self) -> QATConfig:
        if self.ema.decay:
            raise ValueError(
                "ema.decay: quantization-aware training fine-tunes without a weight average (its "
                "BatchNorm statistics are frozen and NNCF's quantizers live in the model it "
                "copies); set ema.decay=0")
        return self


def insert_quantizers(model: nn.Module, calibration: np.ndarray, overflow_fix: str) -> nn.Module:
    """NNCF post-training quantizers on a copy of ``model`` (eval mode), calibrated on
    ``calibration`` (N, 3, H, W) float32: the starting point of QAT."""
    import torch
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    nncf = import_nncf()
    model.eval()
    items = [torch.from_numpy(calibration[i:i + 1]) for i in range(len(calibration))]
    return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                         advanced_parameters=AdvancedQuantizationParameters(
                             overflow_fix=OverflowFix(overflow_fix)))


def freeze_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class QATObjective:
    """The trainer's hooks for QAT: quantizers in the model, frozen BatchNorm, INT8 card;
    data, loss and metrics from an inner distillation objective when there is a teacher."""

    precision = "int8"

    def __init__(self, cfg: QATConfig, calibration, inner: DistillationObjective | None = None):
        self.cfg, self.calibration, self.inner = cfg, calibration, inner
        self.overflow_fix = resolve_overflow_fix(cfg.quantize.overflow_fix)
        self.nncf_config: dict[str, Any] | None = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import json

        nncf = import_nncf()
        quantized = insert_quantizers(model, self.calibration.x, self.overflow_fix)
        # JSON round trip: the card stores it as JSON, and loading must see what was saved.
        self.nncf_config = json.loads(json.dumps(nncf.torch.get_config(quantized)))
        return quantized

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if self.cfg.quantize.freeze_bn:
            freeze_batchnorm(model)

    def train_dataset(self, dataset):
        return self.inner.train_dataset(dataset) if self.inner else dataset

    def criterion(self, label_loss: nn.Module) -> nn.Module:
        return self.inner.criterion(label_loss) if self.inner else label_loss

    def outlier_extras(self) -> tuple:
        return self.inner.outlier_extras() if self.inner else ()

    def val_metrics(self, probs: np.ndarray) -> dict[str, float]:
        return self.inner.val_metrics(probs) if self.inner else {}

    def card_info(self) -> dict[str, Any]:
        info = {"quantization": {
            "method": "NNCF quantization-aware training (fake quantizers, PTQ-initialised)",
            "nncf_config": self.nncf_config, "overflow_fix": self.overflow_fix,
            "freeze_bn": self.cfg.quantize.freeze_bn,
            "calibration": {"split": "train", "images": len(self.calibration),
                            "images_sha256": self.calibration.fingerprint},
            "source_weights": self.cfg.model.pretrained,
        }}
        return {**info, **(self.inner.card_info() if self.inner else {})}


def prepare_qat(cfg: QATConfig, manifest, *, progress=None) -> QATObjective:
    """Calibration images (training split of ``manifest``, the loaded ``cfg.data.manifest``)
    and, with a teacher, its cached logits.

    Raises:
        ConfigError: ``model.pretrained`` is not a weights file (QAT fine-tunes a trained
            model; quantizing ImageNet weights for 7 lesion classes makes no sense).
    """
    from skinedge.data.arrays import manifest_arrays

    if cfg.model.pretrained in ("imagenet", "none") or not Path(cfg.model.pretrained).is_file():
        raise ConfigError(f"model.pretrained={cfg.model.pretrained!r}: QAT fine-tunes a trained "
                         "checkpoint; give its model.safetensors (skinedge compress quantize "
                         "--mode qat CHECKPOINT does)")
    calibration = manifest_arrays(manifest, "train", cfg.preprocess,
                                  limit=cfg.quantize.calibration_images, seed=cfg.seed,
                                  source=f"{cfg.data.manifest}:train")
    inner = None
    if cfg.distill is not None:
        inner = prepare_distillation(cfg, manifest, progress=progress)  # type: ignore[arg-type]
    return QATObjective(cfg, calibration, inner)
