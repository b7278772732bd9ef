"""The torch-free evaluation pipeline gives bit for bit what torchvision's did.

``preprocess_image`` (NumPy + PIL) replaced ``Resize / CenterCrop / ToTensor / Normalize``; the
reference below is that torchvision pipeline, so every runtime (which installs without torch)
feeds a model exactly the input it was trained and verified on.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skinedge.data import PreprocessConfig, build_eval_transform, preprocess_image
from skinedge.data.transforms import display_image, equalize_luminance, shades_of_gray

IMAGE_SIZES = [(48, 64), (64, 48), (31, 31), (33, 97), (300, 17), (375, 500), (450, 600)]


def torchvision_eval(cfg: PreprocessConfig, image: Image.Image) -> np.ndarray:
    """The evaluation pipeline as it was built with torchvision (the reference)."""
    from torchvision import transforms as T

    mode = T.InterpolationMode.BICUBIC if cfg.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    if cfg.color_constancy == "shades_of_gray":
        image = shades_of_gray(image, cfg.shades_of_gray_p)
    if cfg.equalize:
        image = equalize_luminance(image)
    size = cfg.input_size
    geometry = ([T.Resize(size, interpolation=mode), T.CenterCrop(size)]
                if cfg.resize_mode == "crop" else [T.Resize((size, size), interpolation=mode)])
    pipeline = T.Compose([*geometry, T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    return pipeline(image).numpy()


def random_photo(height: int, width: int, seed: int) -> Image.Image:
    """Noise over a smooth gradient: resampling filters see both edges and flat regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([yy * 255 / height, xx * 255 / width, (yy + xx) * 127 / (height + width)], -1)
    pixels = smooth + rng.normal(0, 40, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("resize_mode", ["crop", "squash"])
@pytest.mark.parametrize("input_size", [16, 32, 224])
def test_numpy_pipeline_equals_torchvision_bit_for_bit(input_size, resize_mode, interpolation):
    pytest.importorskip("torchvision")
    cfg = PreprocessConfig(input_size=input_size, resize_mode=resize_mode,
                           interpolation=interpolation, mean=(0.485, 0.456, 0.406),
                           std=(0.229, 0.224, 0.225))
    for seed, (height, width) in enumerate(IMAGE_SIZES):
        image = random_photo(height, width, seed)
        got = preprocess_image(image, cfg)
        expected = torchvision_eval(cfg, image)
        assert got.dtype == np.float32 and got.shape == (3, input_size, input_size)
        assert np.array_equal(got, expected), (height, width, np.abs(got - expected).max())


@pytest.mark.parametrize("equalize", [False, True])
def test_colour_steps_equal_torchvision_too(equalize):
    pytest.importorskip("torchvision")
    cfg = PreprocessConfig(input_size=32, color_constancy="shades_of_gray", equalize=equalize)
    for seed, (height, width) in enumerate(IMAGE_SIZES[:4]):
        image = random_photo(height, width, seed)
        assert np.array_equal(preprocess_image(image, cfg), torchvision_eval(cfg, image))


def test_torch_transform_and_overlay_use_the_same_pixels():
    torch = pytest.importorskip("torch")
    cfg = PreprocessConfig(input_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    image = random_photo(48, 64, 0)
    tensor = build_eval_transform(cfg)(image)
    assert tensor.dtype == torch.float32
    assert np.array_equal(tensor.numpy(), preprocess_image(image, cfg))
    assert np.array_equal(display_image(image, cfg).transpose(2, 0, 1) / np.float32(255),
                          preprocess_image(image, cfg))
