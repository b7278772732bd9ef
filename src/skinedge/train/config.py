"""Training configuration: YAML file -> validated object -> ``--set a.b=c`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skinedge.data.transforms import AugmentConfig, PreprocessConfig
from skinedge.errors import ConfigError
from skinedge.models.offline import OFFLINE_WEIGHTS, no_offline_weights
from skinedge.utils.config import load_config
from skinedge.utils.device import check_device_word


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    manifest: Path | None = None  # split manifest from `skinedge data split`
    root: Path | None = None  # where the manifest's images are on this machine, if moved
    licence: str | None = None  # data licence for the model card; read from the folder's README when None
    # Synthetic set from `skinedge gan select`: its images join the train split only.
    synthetic: Path | None = None
    # Refuse to train when a class has fewer real images than this in the train split: with
    # none it is never learned (yet scored on val/test), with one it is memorised and its
    # inverse class weight dwarfs the rest. 2 refuses exactly those mistakes and still trains
    # the smallest honest splits (2 lesions of 2 images in train); 0 allows anything. Classes
    # with no image anywhere in the manifest (ISIC 2019's 'unk') are not counted.
    min_images_per_class: int = Field(2, ge=0)


class ModelSection(_Section):
    arch: str = "tf_efficientnet_lite0"
    pretrained: str = "imagenet"  # imagenet | none | path to a weights file
    drop_rate: float = Field(0.3, ge=0, lt=1)
    head_init_std: float = Field(1e-3, gt=0)
    # Freeze the stem and the first N stages (timm `blocks`): generic edge filters that barely
    # change in fine-tuning, and whose backward pass at full resolution is the costliest part
    # on a CPU (2 stages: 1.8x faster steps for Lite0 at 224 px here). 0 trains everything.
    freeze_stages: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _weights_exist_offline(self) -> ModelSection:
        # Refused when the config is read, not hours later when a pipeline reaches the stage.
        if self.pretrained == "imagenet" and self.arch not in OFFLINE_WEIGHTS:
            raise ValueError(no_offline_weights(self.arch))
        return self


class OptimSection(_Section):
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: Literal["plateau", "cosine", "none"] = "plateau"
    plateau_factor: float = Field(0.3, gt=0, lt=1)
    plateau_patience: int = Field(1, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(1e-6, ge=0)


class LossSection(_Section):
    kind: Literal["ce", "focal"] = "ce"
    class_weights: Literal["none", "inverse", "sqrt_inverse"] = "inverse"
    focal_gamma: float = Field(2.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class OutlierSection(_Section):
    """Outlier exposure (:mod:`skinedge.train.outliers`): non-lesion pictures join training,
    taught to be none of the classes, so the card's lesion check refuses more of them."""

    weight: float = Field(0.0, ge=0)  # of the outlier loss term; 0 = off (Hendrycks et al.: 0.5)
    share: float = Field(0.1, gt=0, lt=1)  # of each epoch's training items that are outliers


class EmaSection(_Section):
    """An exponential moving average of the weights (:mod:`skinedge.train.ema`): the average
    is what each epoch validates and what ``best/`` keeps; ``last/`` keeps both."""

    # Per training step, once warmed up (skinedge.train.ema.WARMUP_POWER: a 14-epoch CPU run
    # ends near 0.994, whatever larger value is set); 0 = off.
    decay: float = Field(0.0, ge=0, lt=1)


class TrainConfig(_Section):
    """Everything a training run depends on; written as ``config.yaml`` next to its outputs."""

    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimSection = Field(default_factory=OptimSection)
    loss: LossSection = Field(default_factory=LossSection)
    outliers: OutlierSection = Field(default_factory=OutlierSection)
    ema: EmaSection = Field(default_factory=EmaSection)
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    early_stopping_patience: int = Field(5, ge=0)  # epochs without improvement; 0 disables
    monitor: Literal["balanced_accuracy", "melanoma_auc", "macro_auc", "accuracy"] = "balanced_accuracy"
    num_workers: int = Field(2, ge=0)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None = torch's default
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    amp: bool = True  # mixed precision, on CUDA only
    seed: int = 0
    max_batches_per_epoch: int | None = Field(None, ge=1)  # smoke tests and quick trials
    # Fit best/'s temperature on the val split when training ends (card.temperature; see
    # skinedge.evaluate.calibration): calibrated probabilities in every runtime and export.
    calibrate: bool = True

    @field_validator("device")
    @classmethod
    def _device_word(cls, word: str) -> str:
        """A misspelt device is refused with the config, before any data is read."""
        return check_device_word(word)


def load_data_manifest(cfg: TrainConfig):
    """The config's split manifest, loaded once per run (its image hashes are checked).

    Raises:
        ConfigError: no ``data.manifest`` set.
    """
    from skinedge.data import load_manifest

    if cfg.data.manifest is None:
        raise ConfigError("no data: set data.manifest (make one with `skinedge data split`)")
    return load_manifest(cfg.data.manifest, root=cfg.data.root)


def load_train_config(path: Path | None = None, overrides: list[str] | None = None,
                      config_class: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """Read a YAML config (optional), apply overrides, validate as ``config_class``.

    Raises:
        ConfigError: unreadable YAML or invalid values; the message names the file and field.
    """
    return load_config(path, overrides, config_class, kind="training config")
