"""Generative augmentation: StyleGAN2-style and DCGAN class-conditional GANs.

Doors: :func:`train_gan` (train on a manifest's train split), :func:`sample_candidates`
(seeded candidates with discriminator scores), :func:`load_gans` (trained models back).
Names are imported on first use, so importing the package does not pull in torch.
"""

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "GANConfig": "config",
    "ARCHITECTURES": "networks", "TrainedGAN": "networks", "create_gan": "networks",
    "load_gans": "networks",
    "GANCallbacks": "trainer", "GANResult": "trainer", "train_gan": "trainer",
    "generate": "sample", "image_seed": "sample", "sample_candidates": "sample",
    "save_grid": "sample",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
