"""A projected discriminator (Sauer et al. 2021, "Projected GANs Converge Faster").

The discriminator does not learn its own features. A frozen ImageNet EfficientNet-Lite (the
paper's feature network, whose weights this project ships offline) turns each image into feature
maps at four scales (1/4, 1/8, 1/16 and 1/32 of the input). Two fixed random projections make
those features harder for the discriminator to fixate on a few of them:

- cross-channel mixing (CCM): a random 1x1 convolution per scale, to 64, 128, 256 and 512
  channels (``channels`` x 1, 2, 4, 8);
- cross-scale mixing (CSM): top-down, as in a U-Net decoder; each scale adds a random 3x3
  convolution of the bilinearly upsampled mixed scale below it.

A small discriminator per scale, trained, turns each mixed map into a map of patch logits:
strided 4x4 convolutions with spectral normalisation, BatchNorm and LeakyReLU down to 8x8 or
less, then a 4x4 convolution (the map's size, below 4 px) to ``cmap_dim`` channels,
projected onto the class embedding (conditioning as in Miyato & Koyama 2018). The forward pass returns every scale's patch logits
side by side, ``(B, N)``; the paper trains them with the hinge loss (``loss.objective: hinge``).

Images enter in [-1, 1], which is EfficientNet-Lite's own normalisation (mean = std = 0.5), at
the GAN's resolution (no upsampling to 224 px: on a CPU budget that would triple the cost). When
no gradient to the images is needed (the discriminator's own step), the frozen network runs
without autograd.

Written from the paper's description; not a copy of the authors' code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from skinedge.synth.gan.layers import Discriminator
from skinedge.synth.gan.stylegan import channels_at

#: Blocks of timm's EfficientNet-Lite whose outputs are the four scales (1/4 ... 1/32).
_FEATURE_BLOCKS = (1, 2, 4, 6)


class RandomProjector(nn.Module):
    """Frozen EfficientNet-Lite features, mixed across channels and scales by fixed random
    convolutions: ``(B, 3, R, R)`` in [-1, 1] -> four maps ``(B, channels * 2**k, R / 2**(k+2),
    R / 2**(k+2))``, finest first.

    Args:
        network: ``tf_efficientnet_lite0/1/2`` (packaged ImageNet weights).
        channels: CCM output channels at the finest scale (doubled per coarser scale).
        pretrained: ``imagenet`` for the packaged weights; ``none`` for random weights (tests).
    """

    def __init__(self, network: str = "tf_efficientnet_lite1", channels: int = 64,
                 pretrained: str = "imagenet"):
        super().__init__()
        from skinedge.models.factory import create_classifier

        backbone, self.provenance = create_classifier(network, 1000, pretrained=pretrained)
        if [info["module"] for info in backbone.feature_info[1:5]] != \
                [f"blocks.{b}" for b in _FEATURE_BLOCKS]:
            raise ValueError(f"{network}: its feature stages are not EfficientNet-Lite's; "
                             "choose tf_efficientnet_lite0, _lite1 or _lite2")
        self.stem = nn.Sequential(backbone.conv_stem, backbone.bn1)
        self.blocks = nn.Sequential(*backbone.blocks[:_FEATURE_BLOCKS[-1] + 1])
        widths = [backbone.feature_info[i]["num_chs"] for i in (1, 2, 3, 4)]
        self.out_channels = [channels * 2 ** k for k in range(4)]
        self.ccm = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(widths, self.out_channels))
        self.csm = nn.ModuleList(nn.Conv2d(b, a, 3, padding=1)
                                 for a, b in zip(self.out_channels[:-1], self.out_channels[1:]))
        for conv in [*self.ccm, *self.csm]:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
            nn.init.zeros_(conv.bias)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> RandomProjector:
        """Always in eval mode: the frozen network's BatchNorm keeps its ImageNet statistics."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        scales = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in _FEATURE_BLOCKS:
                scales.append(x)
        mixed = [ccm(s) for ccm, s in zip(self.ccm, scales)]
        for k in range(len(mixed) - 2, -1, -1):  # coarse to fine
            up = F.interpolate(mixed[k + 1], size=mixed[k].shape[-2:], mode="bilinear",
                               align_corners=False)
            mixed[k] = mixed[k] + self.csm[k](up)
        return mixed


class ScaleDiscriminator(nn.Module):
    """Patch logits of one mixed feature map: ``(B, C, S, S), labels -> (B, S' * S')``."""

    def __init__(self, in_channels: int, size: int, num_classes: int, *, channel_base: int,
                 channel_max: int, cmap_dim: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        while size > 8:
            size //= 2
            out = channels_at(size, channel_base, channel_max)
            layers += [spectral_norm(nn.Conv2d(channels, out, 4, 2, 1, bias=False)),
                       nn.BatchNorm2d(out), nn.LeakyReLU(0.2, inplace=True)]
            channels = out
        layers.append(spectral_norm(nn.Conv2d(channels, cmap_dim, min(4, size), 1, 0)))
        self.net = nn.Sequential(*layers)
        self.embed = nn.Embedding(num_classes, cmap_dim)
        self.cmap_scale = 1 / math.sqrt(cmap_dim)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.net(features)  # (B, cmap_dim, S', S')
        cmap = self.embed(labels)[:, :, None, None]
        return ((out * cmap).sum(dim=1) * self.cmap_scale).flatten(1)


class ProjectedDiscriminator(Discriminator):
    """``D(images, labels) -> (B, N)`` patch realness logits of all four scales.

    Args:
        resolution: Input size R (a power of two).
        num_classes: Classes (1 for a per-class model).
        channel_base, channel_max: Width of the per-scale discriminators (``channels_at``).
        feature_network: Frozen ImageNet EfficientNet-Lite (``tf_efficientnet_lite0/1/2``).
        projection_channels: CCM channels at the finest scale.
        pretrained: ``imagenet`` (packaged weights) or ``none`` (random frozen features: tests).
    """

    def __init__(self, resolution: int, num_classes: int, *, channel_base: int = 2048,
                 channel_max: int = 256, feature_network: str = "tf_efficientnet_lite1",
                 projection_channels: int = 64, pretrained: str = "imagenet", **_: object):
        super().__init__()
        self.num_classes = num_classes
        self.projector = RandomProjector(feature_network, projection_channels, pretrained)
        sizes = [max(1, math.ceil(resolution / 2 ** (k + 2))) for k in range(4)]
        self.heads = nn.ModuleList(
            ScaleDiscriminator(c, s, num_classes, channel_base=channel_base,
                               channel_max=channel_max)
            for c, s in zip(self.projector.out_channels, sizes))

    def requires_grad_(self, requires_grad: bool = True) -> ProjectedDiscriminator:
        """Switch the trained heads only; the projector stays frozen."""
        self.heads.requires_grad_(requires_grad)
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The per-scale discriminators' parameters; the projector is never trained."""
        return self.heads.parameters()

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean of an image's patch logits over every scale, (B,)."""
        return self(images, labels).mean(dim=1)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The frozen network needs autograd only when a gradient must reach the images (the
        # generator's step, R1); the discriminator's own step trains the heads alone.
        with torch.set_grad_enabled(torch.is_grad_enabled() and images.requires_grad):
            features = self.projector(images)
        return torch.cat([head(f, labels) for head, f in zip(self.heads, features)], dim=1)
