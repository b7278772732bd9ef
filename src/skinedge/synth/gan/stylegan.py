"""A StyleGAN2-style class-conditional generator and a residual discriminator.

Generator (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"): a
mapping network turns ``(z, class)`` into ``w``; a synthesis network grows a learned 4x4
constant to the output resolution through modulated/demodulated convolutions with per-pixel
noise, summing RGB outputs of every resolution (the "skip" architecture). Style mixing feeds two
``w`` to different layers during training. A per-class running mean of ``w`` supports the
truncation trick at sampling time.

Discriminator: residual blocks down to 4x4, minibatch standard deviation, and a projection of
the class embedding onto the final features (as StyleGAN2-ADA conditions it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from skinedge.synth.gan.layers import (
    Discriminator,
    EqualConv2d,
    EqualLinear,
    SynthesisLayer,
    ToRGB,
    minibatch_stddev,
    normalize_2nd_moment,
)


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: ``channel_base / resolution``, at most ``channel_max``."""
    return max(8, min(channel_base // resolution, channel_max))


def _resolutions(resolution: int) -> list[int]:
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"GAN resolution must be a power of two >= 8, got {resolution}")
    return [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]


class MappingNetwork(nn.Module):
    """``(z, class) -> w``: an MLP on the normalised latent and class embedding."""

    def __init__(self, z_dim: int, w_dim: int, num_classes: int, layers: int,
                 lr_mul: float = 0.01, w_avg_beta: float = 0.995):
        super().__init__()
        self.num_classes = num_classes
        self.embed = EqualLinear(num_classes, z_dim)
        dims = [2 * z_dim] + [w_dim] * layers
        self.net = nn.Sequential(*[
            EqualLinear(a, b, lr_mul=lr_mul, activation=True) for a, b in zip(dims[:-1], dims[1:])
        ])
        self.w_avg_beta = w_avg_beta
        self.register_buffer("w_avg", torch.zeros(num_classes, w_dim))

    def forward(self, z: torch.Tensor, labels: torch.Tensor, truncation_psi: float = 1.0,
                update_w_avg: bool = False) -> torch.Tensor:
        """z (B, z_dim), labels (B,) int64 -> w (B, w_dim)."""
        onehot = F.one_hot(labels, self.num_classes).to(z.dtype)
        x = torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.embed(onehot))], dim=1)
        w = self.net(x)
        if update_w_avg:
            with torch.no_grad():
                for c in labels.unique():
                    mean = w[labels == c].detach().mean(dim=0)
                    self.w_avg[c].lerp_(mean, 1 - self.w_avg_beta)
        if truncation_psi != 1.0:
            w = self.w_avg[labels].lerp(w, truncation_psi)
        return w


class SynthesisBlock(nn.Module):
    """One resolution: (upsample +) two synthesis layers and an RGB output."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int):
        super().__init__()
        self.first = resolution == 4
        if self.first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.torgb = ToRGB(out_channels, w_dim)
        self.num_ws = 2 if self.first else 3  # torgb's w is shared with the next block's conv0

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        rgb = self.torgb(x, ws[:, -1])
        if img is not None:
            rgb = rgb + F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
        return x, rgb


class StyleGAN2Generator(nn.Module):
    """``G(z, labels) -> images`` in [-1, 1] of shape (B, 3, resolution, resolution).

    Args:
        resolution: Output size, a power of two (8..256 here; 32..256 in configs).
        num_classes: Classes it is conditioned on (1 for a per-class model).
        z_dim, w_dim, mapping_layers: Latent sizes and mapping depth.
        channel_base, channel_max: Feature maps per resolution (see :func:`channels_at`).
    """

    def __init__(self, resolution: int, num_classes: int, *, z_dim: int = 128, w_dim: int = 256,
                 mapping_layers: int = 4, channel_base: int = 2048, channel_max: int = 256):
        super().__init__()
        self.resolution, self.num_classes, self.z_dim = resolution, num_classes, z_dim
        self.mapping = MappingNetwork(z_dim, w_dim, num_classes, mapping_layers)
        blocks, previous = [], 0
        for res in _resolutions(resolution):
            ch = channels_at(res, channel_base, channel_max)
            blocks.append(SynthesisBlock(previous, ch, w_dim, res))
            previous = ch
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = 2 * len(blocks)

    def forward(self, z: torch.Tensor, labels: torch.Tensor, *, truncation_psi: float = 1.0,
                noise_mode: str = "random", mixing_prob: float = 0.0,
                update_w_avg: bool = False) -> torch.Tensor:
        """z (B, z_dim), labels (B,) int64 -> images (B, 3, R, R).

        Args:
            truncation_psi: Pull ``w`` toward its class mean (1 = off; < 1 trades variety for
                fidelity).
            noise_mode: ``random``, ``const`` (fixed per-layer noise, so an image depends only
                on its latent) or ``none``.
            mixing_prob: Probability that a sample switches to a second latent's ``w`` from a
                random layer on (style mixing regularisation; training only).
            update_w_avg: Track the per-class mean of ``w`` (training only).
        """
        w = self.mapping(z, labels, truncation_psi, update_w_avg)
        ws = w[:, None].repeat(1, self.num_ws, 1)
        if mixing_prob > 0:
            w2 = self.mapping(torch.randn_like(z), labels, truncation_psi)
            cutoff = torch.randint(1, self.num_ws, (), device=z.device)
            mix = (torch.rand(z.shape[0], device=z.device) < mixing_prob)[:, None, None]
            layer = torch.arange(self.num_ws, device=z.device)[None, :, None] >= cutoff
            ws = torch.where(mix & layer, w2[:, None], ws)
        x = img = None
        index = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, index:index + block.num_ws], noise_mode)
            index += block.num_ws - 1
        return img


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions and a 2x downsample, plus a 1x1 skip, summed at unit variance."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        return (self.conv1(self.conv0(x)) + skip) * math.sqrt(0.5)


class ResidualDiscriminator(Discriminator):
    """``D(images, labels) -> realness logits (B,)`` with class projection.

    Args:
        resolution: Input size, a power of two.
        num_classes: Classes (1 for a per-class model).
        channel_base, channel_max: Feature maps per resolution.
        cmap_dim: Size of the projected class embedding.
    """

    def __init__(self, resolution: int, num_classes: int, *, channel_base: int = 2048,
                 channel_max: int = 256, cmap_dim: int = 128):
        super().__init__()
        self.num_classes = num_classes
        resolutions = _resolutions(resolution)[::-1]  # R, R/2, ..., 4
        ch = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.fromrgb = EqualConv2d(3, ch[0], 1)
        self.blocks = nn.Sequential(*[ResidualBlock(a, b) for a, b in zip(ch[:-1], ch[1:])])
        c4 = ch[-1]
        self.conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, cmap_dim)
        self.embed = EqualLinear(num_classes, cmap_dim)
        self.cmap_dim = cmap_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, cmap_dim) features before the class projection."""
        x = self.blocks(self.fromrgb(images))
        x = self.conv(minibatch_stddev(x))
        return self.out(self.fc(x.flatten(1)))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.features(images)
        cmap = normalize_2nd_moment(self.embed(F.one_hot(labels, self.num_classes).to(x.dtype)))
        return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
