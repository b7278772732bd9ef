"""Generative augmentation: StyleGAN2-style and DCGAN class-conditional GANs.

Doors: :func:`train_gan` (train on a manifest's train split), :func:`sample_candidates`
(seeded candidates with discriminator scores), :func:`load_gans` (trained models back).
Names are imported on first use, so importing the package does not pull in torch.
"""

from importlib import import_module

_EXPORTS = {
    "GANConfig": "config",
    "ARCHITECTURES": "networks", "TrainedGAN": "networks", "create_gan": "networks",
    "load_gans": "networks",
    "GANCallbacks": "trainer", "GANResult": "trainer", "train_gan": "trainer",
    "generate": "sample", "image_seed": "sample", "sample_candidates": "sample",
    "save_grid": "sample",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'skinedge.synth.gan' has no attribute {name!r}")
    value = getattr(import_module(f"skinedge.synth.gan.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
