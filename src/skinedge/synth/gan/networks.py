"""The GAN architectures by name, and trained GANs loaded back for sampling and scoring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from skinedge.errors import ModelError, NotFoundError
from skinedge.synth.gan.config import GANConfig
from skinedge.synth.gan.dcgan import DCGANDiscriminator, DCGANGenerator
from skinedge.synth.gan.layers import Discriminator
from skinedge.synth.gan.projected import ProjectedDiscriminator
from skinedge.synth.gan.stylegan import ResidualDiscriminator, StyleGAN2Generator

#: arch name -> (generator class, its own discriminator class)
ARCHITECTURES: dict[str, tuple[type[nn.Module], type[Discriminator]]] = {
    "stylegan2": (StyleGAN2Generator, ResidualDiscriminator),
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
}

CHECKPOINT = "last.pt"


def create_gan(cfg: GANConfig, num_classes: int) -> tuple[nn.Module, Discriminator]:
    """A fresh (generator, discriminator) pair for ``cfg.model.arch`` and
    ``cfg.model.discriminator``."""
    m = cfg.model
    generator_class, discriminator_class = ARCHITECTURES[m.arch]
    generator = generator_class(cfg.resolution, num_classes, z_dim=m.z_dim, w_dim=m.w_dim,
                                mapping_layers=m.mapping_layers, channel_base=m.channel_base,
                                channel_max=m.channel_max)
    if m.discriminator == "projected":
        discriminator = ProjectedDiscriminator(
            cfg.resolution, num_classes, channel_base=m.channel_base, channel_max=m.channel_max,
            feature_network=m.feature_network, projection_channels=m.projection_channels,
            pretrained=m.feature_weights)
    else:
        discriminator = discriminator_class(cfg.resolution, num_classes,
                                            channel_base=m.channel_base, channel_max=m.channel_max)
    return generator, discriminator


@dataclass
class TrainedGAN:
    """A trained GAN: the EMA generator and the discriminator, in eval mode.

    Attributes:
        generator: ``G(z, labels)``; labels index ``classes``.
        discriminator: ``D(images, labels)`` realness logits; ``score`` gives one per image.
        classes: Class codes the model's labels stand for.
        config: The run's configuration.
        kimg: Thousands of real images the discriminator had seen.
        path: The checkpoint file.
        sha256: Its hash, for provenance.
        split_hash: The manifest split whose train images it learned from.
    """

    generator: nn.Module
    discriminator: Discriminator
    classes: list[str]
    config: GANConfig
    kimg: float
    path: Path
    sha256: str
    split_hash: str


def load_gan_checkpoint(path: Path, device: str | torch.device = "cpu") -> TrainedGAN:
    """Load one GAN run's checkpoint (``RUN/last.pt``).

    Raises:
        NotFoundError: no checkpoint.
        ModelError: not a skinedge GAN checkpoint.
    """
    from skinedge.utils.io import sha256_file

    if not path.is_file():
        raise NotFoundError(f"{path}: no GAN checkpoint; train one with `skinedge gan train`")
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("kind") != "skinedge.gan/1":
        raise ModelError(f"{path} is not a skinedge GAN checkpoint")
    try:
        cfg = GANConfig.model_validate(state["config"])
    except ValidationError as exc:
        raise ModelError(f"{path}: its saved GAN config is not valid for this skinedge version "
                         f"({exc.errors()[0]['msg']} at "
                         f"{'.'.join(map(str, exc.errors()[0]['loc']))}); train it again") from exc
    generator, discriminator = create_gan(cfg, len(state["classes"]))
    generator.load_state_dict(state["generator_ema"])
    discriminator.load_state_dict(state["discriminator"])
    return TrainedGAN(generator.to(device).eval().requires_grad_(False),
                      discriminator.to(device).eval().requires_grad_(False),
                      list(state["classes"]), cfg, state["shown"] / 1000, path,
                      sha256_file(path), state["split_hash"])


def load_gans(run_dir: Path | str, device: str | torch.device = "cpu") -> dict[str, TrainedGAN]:
    """Class code -> the GAN that generates it, for a class-conditional or a per-class run.

    Raises:
        NotFoundError: ``run_dir`` holds neither kind of run.
        ModelError: per-class models trained on different splits.
    """
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT).is_file():
        gan = load_gan_checkpoint(run_dir / CHECKPOINT, device)
        return dict.fromkeys(gan.classes, gan)
    per_class = sorted((run_dir / "classes").glob(f"*/{CHECKPOINT}"))
    if not per_class:
        raise NotFoundError(f"{run_dir}: no GAN checkpoint ({CHECKPOINT} or "
                                f"classes/*/{CHECKPOINT}); train one with `skinedge gan train`")
    gans = [load_gan_checkpoint(p, device) for p in per_class]
    splits = {gan.split_hash for gan in gans}
    if len(splits) > 1:
        raise ModelError(f"{run_dir}: its per-class models were trained on different splits "
                         f"({sorted(h[:12] for h in splits)}); retrain them on one manifest")
    return {gan.classes[0]: gan for gan in gans}
