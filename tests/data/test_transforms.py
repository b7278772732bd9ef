"""Preprocessing: colour constancy, luminance equalisation, geometry, seeded augmentation."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from skinedge.data import (
    AugmentConfig,
    PreprocessConfig,
    build_eval_transform,
    build_train_transform,
)
from skinedge.data.transforms import equalize_luminance, shades_of_gray


def _grey_patches_with_cast(cast=(1.0, 0.55, 0.45)) -> Image.Image:
    """A 48x64 chart of grey patches (40..220) photographed under a strong red light."""
    levels = np.linspace(40, 220, 12)
    grey = np.repeat(np.repeat(levels.reshape(3, 4), 16, axis=0), 16, axis=1)  # (48, 64)
    pixels = grey[..., None] * np.asarray(cast)[None, None, :]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _channel_means(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_shades_of_gray_removes_a_colour_cast():
    image = _grey_patches_with_cast()
    before = _channel_means(image)
    assert before.max() - before.min() > 50  # the premise: a strong red cast

    after = _channel_means(shades_of_gray(image, p=6))

    assert after.max() - after.min() < 2
    assert shades_of_gray(image).size == image.size


def test_shades_of_gray_leaves_a_neutral_image_neutral():
    image = _grey_patches_with_cast(cast=(1.0, 1.0, 1.0))

    out = np.asarray(shades_of_gray(image), dtype=np.int16)

    assert np.abs(out - np.asarray(image, dtype=np.int16)).max() <= 1


def _low_contrast_skin() -> Image.Image:
    """48x64 skin-coloured image whose brightness only varies by about +-8%."""
    rng = np.random.default_rng(0)
    wave = 0.08 * np.sin(np.linspace(0, 3 * np.pi, 64))[None, :]
    shade = 1.0 + wave + rng.normal(0, 0.01, (48, 64))
    pixels = np.asarray((180, 120, 95), dtype=np.float64)[None, None, :] * shade[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _hue_of_mean(image: Image.Image) -> float:
    r, g, b = _channel_means(image) / 255
    return colorsys.rgb_to_hsv(r, g, b)[0]


def test_equalize_luminance_spreads_y_and_keeps_hue():
    image = _low_contrast_skin()
    y_before = np.asarray(image.convert("YCbCr"))[..., 0].astype(np.float64)

    out = equalize_luminance(image)
    y_after = np.asarray(out.convert("YCbCr"))[..., 0].astype(np.float64)

    assert np.ptp(y_before) < 40
    assert np.ptp(y_after) > 200
    assert y_after.std() > 3 * y_before.std()
    # Brightness order of the pixels is kept (equalisation is monotone).
    assert np.corrcoef(y_before.ravel(), y_after.ravel())[0, 1] > 0.9
    # Chroma untouched: the mean colour's hue barely moves (hue is on a 0..1 circle).
    assert abs(_hue_of_mean(out) - _hue_of_mean(image)) < 0.03


def _four_by_three_with_red_left_edge() -> Image.Image:
    """64x48 (4:3) grey frame whose 4 leftmost columns are pure red."""
    pixels = np.full((48, 64, 3), 128, np.uint8)
    pixels[:, :4] = (255, 0, 0)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("mode", ["crop", "squash"])
@pytest.mark.parametrize("size", [16, 32])
def test_eval_transform_gives_a_square_tensor(mode, size):
    cfg = PreprocessConfig(input_size=size, resize_mode=mode)

    tensor = build_eval_transform(cfg)(_four_by_three_with_red_left_edge())

    assert tensor.shape == (3, size, size)
    assert tensor.dtype == torch.float32


def test_crop_keeps_the_aspect_ratio_and_trims_the_sides():
    image = _four_by_three_with_red_left_edge()
    crop = build_eval_transform(PreprocessConfig(input_size=32, resize_mode="crop"))(image)
    squash = build_eval_transform(PreprocessConfig(input_size=32, resize_mode="squash"))(image)

    def redness(tensor: torch.Tensor) -> float:  # R minus G of the left column, in [-2, 2]
        return float((tensor[0, :, 0] - tensor[1, :, 0]).mean())

    assert redness(squash) > 1.5  # squash keeps the whole width, red edge included
    assert abs(redness(crop)) < 0.1  # crop trims the sides of a 4:3 frame
    # The grey middle is untouched either way (mean 0.5, std 0.5: grey 128 ~ 0).
    assert crop[:, :, 12:20].abs().max() < 0.05


def test_eval_transform_applies_colour_constancy():
    cfg = PreprocessConfig(input_size=32, resize_mode="squash", color_constancy="shades_of_gray")

    tensor = build_eval_transform(cfg)(_grey_patches_with_cast())

    means = tensor.mean(dim=(1, 2))
    assert float(means.max() - means.min()) < 0.03


def test_train_transform_is_random_but_seeded():
    cfg = PreprocessConfig(input_size=32)
    transform = build_train_transform(cfg, AugmentConfig(hue=0.05))
    image = _low_contrast_skin()

    torch.manual_seed(0)
    first, second = transform(image), transform(image)
    torch.manual_seed(0)
    again = transform(image)
    torch.manual_seed(1)
    other = transform(image)

    assert first.shape == (3, 32, 32)
    assert not torch.equal(first, second)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_disabled_augmentation_is_the_eval_transform():
    cfg = PreprocessConfig(input_size=32)
    image = _low_contrast_skin()

    torch.manual_seed(0)
    train = build_train_transform(cfg, AugmentConfig(enabled=False))(image)

    assert torch.equal(train, build_eval_transform(cfg)(image))


def test_rot90_augmentation_draws_all_four_quarter_turns():
    from skinedge.data.transforms import _RandomRot90

    # An image whose only bright pixel is top-left: each quarter turn moves it to another corner.
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[0, 0] = 255
    image = Image.fromarray(pixels)
    torch.manual_seed(0)
    corners = set()
    for _ in range(40):
        turned = np.asarray(_RandomRot90()(image))[..., 0]
        corners.add(tuple(int(v) for v in np.argwhere(turned == 255)[0]))
    assert corners == {(0, 0), (0, 7), (7, 0), (7, 7)}


def test_preprocess_turns_a_phone_photo_upright_whoever_opened_it(tmp_path):
    """A caller (a runtime's user, the app) may hand over ``Image.open(path)`` itself: the
    preprocessing applies the EXIF orientation that load_rgb would have applied."""
    from skinedge.data import load_rgb, preprocess_image
    from skinedge.data.transforms import display_image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[:, :16] = (220, 40, 40)  # a red band on the left of the stored (sideways) pixels
    pixels[:, 16:] = (40, 40, 220)
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    cfg = PreprocessConfig(input_size=32, resize_mode="squash")

    with Image.open(path) as raw:
        opened = raw.convert("RGB")  # convert keeps the orientation tag
    from_caller = preprocess_image(opened, cfg)
    from_loader = preprocess_image(load_rgb(path), cfg)

    assert np.array_equal(from_caller, from_loader)
    # Upright, the red band runs along the top: the top rows are red, the bottom ones blue.
    shown = display_image(opened, cfg)
    assert shown[0, :, 0].mean() > 150 and shown[-1, :, 2].mean() > 150
    assert torch.equal(build_eval_transform(cfg)(opened), torch.from_numpy(from_loader))


def test_white_balance_augmentation_moves_red_against_blue_within_its_bound():
    from skinedge.data.transforms import _RandomWhiteBalance

    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    torch.manual_seed(0)
    ratios = []
    for _ in range(200):
        r, g, b = _channel_means(_RandomWhiteBalance(0.15)(grey))
        assert g == 128 and abs(r - 128) <= 0.15 * 128 + 1 and abs((r - 128) + (b - 128)) <= 1
        ratios.append(r / b)
    assert min(ratios) < 0.8 and max(ratios) > 1.25  # both warm and cool, near the bound


def test_phone_copy_augmentation_is_a_smaller_jpeg_copy_drawn_with_its_probability():
    from skinedge.data.transforms import _RandomPhoneCopy

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    torch.manual_seed(0)
    copies = [_RandomPhoneCopy(0.5)(image) for _ in range(100)]
    changed = [c for c in copies if c is not image]
    assert 30 < len(changed) < 70
    assert all(c.width <= 128 and c.width / c.height == pytest.approx(4 / 3, rel=0.1)
               for c in changed)
    assert all(_RandomPhoneCopy(0.0)(image) is image for _ in range(10))


def test_train_transform_takes_the_phone_augmentations_and_checks_the_ratio():
    aug = AugmentConfig(aspect_ratio=(0.5625, 1.7778), white_balance=0.1, phone_copy=0.3)
    transform = build_train_transform(PreprocessConfig(input_size=32), aug)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), np.uint8))
    assert transform(image).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="aspect_ratio"):
        AugmentConfig(aspect_ratio=(2.0, 1.0))


def test_zoom_out_shrinks_the_picture_onto_its_own_border_colours_with_its_probability():
    from skinedge.data.transforms import _RandomZoomOut

    # A dark square lesion in the middle of beige skin that is redder on the left.
    pixels = np.zeros((80, 100, 3), np.uint8)
    pixels[:] = (200, 170, 150)
    pixels[:, :50, 0] = 230
    pixels[30:50, 40:60] = (60, 30, 20)
    image = Image.fromarray(pixels)
    torch.manual_seed(0)
    views = [_RandomZoomOut(0.5, (0.5, 0.5))(image) for _ in range(100)]
    zoomed = [v for v in views if v is not image]
    assert 30 < len(zoomed) < 70
    for view in zoomed:
        out = np.asarray(view, dtype=np.float32)
        assert out.shape == pixels.shape
        lesion = (out.sum(axis=2) < 300).sum()
        assert 0.15 * 400 < lesion < 0.4 * 400  # a quarter of its area, give or take the feather
        # No second lesion: every dark pixel lies in one 12x12 box (the lesion shrunk to 10x10).
        rows, cols = np.nonzero(out.sum(axis=2) < 300)
        assert np.ptp(rows) <= 12 and np.ptp(cols) <= 12
        # The surround keeps the skin's colours: redder on the left than on the right.
        assert out[:, :5, 0].mean() > out[:, -5:, 0].mean() + 10
        assert np.abs(out[:3, :, 1].mean() - 170) < 10
    assert all(_RandomZoomOut(0.0, (0.5, 1.0))(image) is image for _ in range(10))
    # A camera original is worked on at a short side of MAX_SIDE (the crop shrinks it anyway).
    big = Image.new("RGB", (3000, 2000), (200, 170, 150))
    assert _RandomZoomOut(1.0, (0.5, 0.5))(big).size == (1536, 1024)


def test_train_transform_takes_zoom_out_and_checks_its_range():
    aug = AugmentConfig(zoom_out=1.0, zoom_out_size=(0.5, 0.8))
    transform = build_train_transform(PreprocessConfig(input_size=32), aug)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), np.uint8))
    assert transform(image).shape == (3, 32, 32)
    for bad in [(0.1, 0.5), (0.8, 0.5), (0.5, 1.2)]:
        with pytest.raises(ValueError, match="zoom_out_size"):
            AugmentConfig(zoom_out_size=bad)

