"""The DCGAN baseline (Radford et al. 2016), class-conditional, behind the StyleGAN2 interface.

Generator: ``(z, class embedding)`` -> 4x4 -> transposed convolutions with BatchNorm and ReLU ->
tanh. Discriminator: strided convolutions with LeakyReLU (BatchNorm after the first), a linear
realness output plus a projection of the class embedding (Miyato & Koyama 2018).
"""

from __future__ import annotations

import torch
from torch import nn

from skinedge.synth.gan.layers import Discriminator
from skinedge.synth.gan.stylegan import _resolutions, channels_at


class DCGANGenerator(nn.Module):
    """``G(z, labels) -> images`` in [-1, 1]; same call signature as the StyleGAN2 generator
    (truncation, noise and mixing arguments are accepted and ignored: DCGAN has none)."""

    def __init__(self, resolution: int, num_classes: int, *, z_dim: int = 128,
                 channel_base: int = 2048, channel_max: int = 256, **_: object):
        super().__init__()
        self.resolution, self.num_classes, self.z_dim = resolution, num_classes, z_dim
        resolutions = _resolutions(resolution)
        ch = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.embed = nn.Embedding(num_classes, z_dim)
        self.project = nn.Sequential(nn.Linear(2 * z_dim, ch[0] * 16), nn.BatchNorm1d(ch[0] * 16),
                                     nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b),
                       nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(ch[-1], 3, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.ch0 = ch[0]

    def forward(self, z: torch.Tensor, labels: torch.Tensor, **_: object) -> torch.Tensor:
        x = self.project(torch.cat([z, self.embed(labels)], dim=1))
        return self.net(x.view(-1, self.ch0, 4, 4))


class DCGANDiscriminator(Discriminator):
    """``D(images, labels) -> realness logits (B,)``."""

    def __init__(self, resolution: int, num_classes: int, *, channel_base: int = 2048,
                 channel_max: int = 256, **_: object):
        super().__init__()
        self.num_classes = num_classes
        resolutions = _resolutions(resolution)[::-1]
        ch = [channels_at(r, channel_base, channel_max) for r in resolutions]
        layers: list[nn.Module] = [nn.Conv2d(3, ch[0], 3, padding=1), nn.LeakyReLU(0.2, True)]
        for i, (a, b) in enumerate(zip(ch[:-1], ch[1:])):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=i == 0)]
            if i:
                layers.append(nn.BatchNorm2d(b))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.net = nn.Sequential(*layers, nn.Flatten())
        features = ch[-1] * 16
        self.out = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, C * 16) flattened 4x4 features."""
        return self.net(images)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(images)
        return self.out(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)
