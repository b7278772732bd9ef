"""Building blocks of the StyleGAN2-style networks, written from the paper (Karras et al. 2020).

Equalised learning rate: weights are stored at unit variance and scaled by ``1/sqrt(fan_in)``
at run time, so Adam's per-parameter steps are the same size for every layer. Up- and
down-sampling are bilinear / 2x2 average pooling instead of StyleGAN2's FIR-filter CUDA ops:
slower to alias-free, but plain PyTorch that runs anywhere (NVIDIA's code and ops are under a
non-commercial licence and are not used).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit mean square (StyleGAN's pixel norm of latents)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU with the gain that keeps unit variance."""
    return F.leaky_relu(x, 0.2) * SQRT2


class Discriminator(nn.Module):
    """What every discriminator answers besides ``forward(images, labels)``, whose logits are
    (B,) for a whole-image discriminator or (B, N) patches for the projected one: callers
    that score images or optimise the network ask it, instead of knowing its shape."""

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One realness logit per image, (B,)."""
        return self(images, labels)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters its optimiser updates (all of them, unless a part is frozen)."""
        return self.parameters()


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate.

    Args:
        in_features, out_features: Sizes.
        bias_init: Initial bias (1.0 for style affines, so styles start at identity).
        lr_mul: Learning-rate multiplier (0.01 in the mapping network).
        activation: Apply :func:`lrelu`.
    """

    def __init__(self, in_features: int, out_features: int, *, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return lrelu(out) if self.activation else out


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate; ``down`` halves the resolution afterwards."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, bias: bool = True,
                 activation: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.activation = activation
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias,
                     padding=self.weight.shape[-1] // 2)
        if self.down:
            x = F.avg_pool2d(x, 2)
        return lrelu(x) if self.activation else x


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled by a style, then demodulated.

    Computed as scale -> shared convolution -> per-sample output scale, which equals the
    per-sample modulated weights of the paper but runs as one ordinary convolution (fast on
    CPUs, no grouped convolution).

    Args:
        in_channels, out_channels, kernel: Convolution shape.
        w_dim: Size of the intermediate latent ``w``.
        demodulate: Normalise each output feature map to unit variance (off for toRGB).
        up: Upsample the input 2x (bilinear) first.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, w_dim: int, *,
                 demodulate: bool = True, up: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.demodulate = demodulate
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (B, Cin, H, W), w (B, w_dim) -> (B, Cout, H', W')."""
        styles = self.affine(w)  # (B, Cin)
        weight = self.weight * self.weight_gain
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.conv2d(x * styles[:, :, None, None], weight, padding=weight.shape[-1] // 2)
        if self.demodulate:
            # sum over (Cin, k, k) of (w_oikk * s_i)^2 = sum_i s_i^2 * sum_kk w_oikk^2
            dcoefs = (styles.square() @ weight.square().sum(dim=(2, 3)).T + 1e-8).rsqrt()
            x = x * dcoefs[:, :, None, None]
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution + per-pixel noise + bias + activation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *,
                 up: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        x = self.conv(x, w)
        if noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device) * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        return lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB, without demodulation (the skip generator's output)."""

    def __init__(self, in_channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one feature map: the std of features across a group of samples (ProGAN).

    It lets the discriminator see a batch's variety, which penalises mode collapse.
    """
    b, c, h, w = x.shape
    g = min(group_size, b)
    while b % g:
        g -= 1
    y = x.reshape(g, -1, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # (B/g, C, H, W)
    y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)
