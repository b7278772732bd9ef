"""GAN training configuration: YAML -> validated object -> ``--set a.b=c`` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from skinedge.synth.gan.augment import POLICIES
from skinedge.utils.device import check_device_word


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GANDataSection(_Section):
    manifest: Path | None = None  # split manifest; only its train split is read
    root: Path | None = None  # where the manifest's images are on this machine, if moved
    classes: list[str] | None = None  # classes to learn (default: all with train images)
    # Only these classes' train images are shown (default: every class above). A fine-tune
    # (`train_gan(init_from=...)`) of a class-conditional model keeps its source's classes as
    # its labels and refreshes some of them: data.classes = the source's, focus_classes = those.
    focus_classes: list[str] | None = None
    # Real batches draw image i with weight count(class_i) ** -balance: 0 keeps the data's
    # class frequencies, 1 shows every class equally often. Rare classes need the generator's
    # attention more than their share; 0.5 is in between.
    balance: float = Field(0.5, ge=0, le=1)
    # Dermoscopy has no "up": flips and 90-degree rotations of real images are more real images
    # (dataset augmentation, not the discriminator-side DiffAugment below).
    dihedral: bool = True


class GANModelSection(_Section):
    arch: Literal["stylegan2", "dcgan"] = "stylegan2"  # the generator
    # own: the generator arch's discriminator (residual for stylegan2, convolutional for
    # dcgan); projected: frozen ImageNet EfficientNet-Lite features, randomly mixed, judged by
    # small discriminators per scale (Sauer et al. 2021; pair it with loss.objective=hinge).
    discriminator: Literal["own", "projected"] = "own"
    feature_network: Literal["tf_efficientnet_lite0", "tf_efficientnet_lite1",
                             "tf_efficientnet_lite2"] = "tf_efficientnet_lite1"  # projected only
    projection_channels: int = Field(64, ge=8)  # projected only: CCM width at 1/4 scale
    # projected only: imagenet (packaged weights); none (random frozen features, for tests)
    feature_weights: Literal["imagenet", "none"] = "imagenet"
    # label: one class-conditional model (classes share what they have in common);
    # per_class: one unconditional model per class, as in the paper.
    conditioning: Literal["label", "per_class"] = "label"
    z_dim: int = Field(128, ge=1)
    w_dim: int = Field(256, ge=1)
    mapping_layers: int = Field(4, ge=1)
    channel_base: int = Field(2048, ge=64)  # feature maps at resolution r: base / r ...
    channel_max: int = Field(256, ge=8)  # ... at most this


class GANLossSection(_Section):
    # logistic: non-saturating logistic loss (StyleGAN2); hinge: as the projected GAN paper
    objective: Literal["logistic", "hinge"] = "logistic"
    r1_gamma: float = Field(0.1, ge=0)  # R1 penalty on real images; 0 disables
    r1_interval: int = Field(16, ge=1)  # lazy regularisation: every N discriminator steps
    style_mixing: float = Field(0.9, ge=0, le=1)  # StyleGAN2 only


class GANOptimSection(_Section):
    g_lr: float = Field(0.0025, gt=0)
    d_lr: float = Field(0.0025, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)


class GANConfig(_Section):
    """Everything a GAN run depends on; written as ``config.yaml`` next to its outputs."""

    data: GANDataSection = Field(default_factory=GANDataSection)
    model: GANModelSection = Field(default_factory=GANModelSection)
    loss: GANLossSection = Field(default_factory=GANLossSection)
    optim: GANOptimSection = Field(default_factory=GANOptimSection)
    diffaugment: list[str] = Field(default_factory=lambda: list(POLICIES))  # [] disables
    resolution: int = 64
    batch_size: int = Field(32, ge=2)
    kimg: float = Field(200, gt=0)  # length of training: thousands of real images shown to D
    snapshot_kimg: float = Field(4, gt=0)  # checkpoint + sample grid every this many kimg
    ema_kimg: float = Field(10, ge=0)  # half-life of the generator's EMA, in kimg
    ema_rampup: float = Field(0.05, ge=0)  # EMA half-life at most this fraction of kimg so far
    time_limit_minutes: float | None = Field(None, gt=0)  # stop (with a checkpoint) after this
    grid_per_class: int = Field(8, ge=1)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device_word(cls, word: str) -> str:
        return check_device_word(word)

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value > 256 or value & (value - 1):
            raise ValueError(f"resolution must be a power of two from 16 to 256, got {value}")
        return value

    @field_validator("diffaugment")
    @classmethod
    def _known_policies(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(POLICIES))
        if unknown:
            raise ValueError(f"unknown DiffAugment policies {unknown}; choose from {POLICIES}")
        return value
