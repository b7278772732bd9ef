"""Preprocessing and training augmentation, defined once.

:class:`PreprocessConfig` is written into every model card; evaluation, Grad-CAM and every
exported runtime rebuild the same pipeline from it, so preprocessing cannot drift between
training and the phone. The evaluation pipeline, :func:`preprocess_image`, is NumPy and PIL
only (a runtime installs without torch); :func:`build_eval_transform` wraps it as a torch
transform for training code, and only the training augmentation uses torchvision.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from pydantic import BaseModel, ConfigDict, Field, field_validator

from skinedge.data.images import exif_orientation


class PreprocessConfig(BaseModel):
    """Deterministic preprocessing, applied at training and inference time alike.

    Attributes:
        input_size: Square side fed to the network, in pixels.
        resize_mode: ``crop`` resizes the short side to ``input_size`` and centre-crops (keeps the
            aspect ratio, trims the edges of a 4:3 frame); ``squash`` resizes both sides.
        interpolation: Resampling filter.
        mean: Per-channel mean, on a 0-1 scale.
        std: Per-channel standard deviation, on a 0-1 scale.
        color_constancy: ``shades_of_gray`` normalises the illuminant (Finlayson & Trezzi 2004,
            Minkowski norm ``p``), as in the paper and several ISIC winners.
        shades_of_gray_p: Minkowski norm of Shades of Gray (6 is the usual choice).
        equalize: Histogram equalisation of the luminance (colour ratios kept).
    """

    model_config = ConfigDict(extra="forbid")

    input_size: int = Field(224, ge=16, le=1024)
    resize_mode: Literal["crop", "squash"] = "crop"
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    color_constancy: Literal["none", "shades_of_gray"] = "none"
    shades_of_gray_p: float = Field(6.0, gt=0)
    equalize: bool = False


class AugmentConfig(BaseModel):
    """Training-time augmentation (dermoscopy has no canonical orientation)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    crop_scale: tuple[float, float] = (0.6, 1.0)
    hflip: bool = True
    vflip: bool = True
    rot90: bool = False  # random multiple of 90 degrees (with the flips: all 8 dihedral views)
    rotation_degrees: float = Field(30.0, ge=0, le=180)
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.0, ge=0, le=0.5)  # PIL hue shifts cost as much as the rest together
    # What a phone and the apps around it do to a photo (skinedge.evaluate.robustness measures
    # the same). Aspect ratios of the random crop, each resized to a square: a 4:3 crop is
    # squashed as ISIC 2018's stored test images are; (9/16, 16/9) spans 16:9 frames.
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # White balance along the warm-cool axis: red x (1 + t), blue x (1 - t), |t| <= this.
    white_balance: float = Field(0.0, ge=0, lt=1)
    # Probability of a phone-grade copy: downscaled by 0.35-1, then JPEG at quality 35-90.
    phone_copy: float = Field(0.0, ge=0, le=1)
    # Probability of a zoomed-out view: the picture shrunk to a side fraction drawn from
    # zoom_out_size amid a smoothed continuation of its border, so a lesion fills less of the
    # frame (a photo from farther away; clinics whose dermoscope frames more skin, as MSK's in
    # ISIC 2017 do).
    zoom_out: float = Field(0.0, ge=0, le=1)
    zoom_out_size: tuple[float, float] = (0.5, 1.0)

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio_range(cls, ratio: tuple[float, float]) -> tuple[float, float]:
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"aspect_ratio must be (low, high) with 0 < low <= high, got {ratio}")
        return ratio

    @field_validator("zoom_out_size")
    @classmethod
    def _size_range(cls, size: tuple[float, float]) -> tuple[float, float]:
        if not 0.2 <= size[0] <= size[1] <= 1:
            raise ValueError(f"zoom_out_size must be (low, high) with 0.2 <= low <= high <= 1, "
                             f"got {size}")
        return size


def shades_of_gray(image: Image.Image, p: float = 6.0) -> Image.Image:
    """Shades-of-Gray colour constancy.

    Args:
        image: RGB image.
        p: Minkowski norm; 1 is Gray World, infinity is Max-RGB.

    Returns:
        RGB image whose estimated illuminant is neutral.
    """
    pixels = np.asarray(image, dtype=np.float32)
    illuminant = np.power(np.mean(np.power(pixels, p), axis=(0, 1)), 1.0 / p)
    illuminant = illuminant / max(float(np.linalg.norm(illuminant)), 1e-6)
    gains = 1.0 / (np.maximum(illuminant, 1e-6) * np.sqrt(3.0))
    return Image.fromarray(np.clip(pixels * gains, 0, 255).astype(np.uint8))


def equalize_luminance(image: Image.Image) -> Image.Image:
    """Histogram-equalise the Y channel of YCbCr, leaving chroma untouched."""
    y, cb, cr = image.convert("YCbCr").split()
    return Image.merge("YCbCr", (ImageOps.equalize(y), cb, cr)).convert("RGB")


class _Normalize:
    """EXIF orientation, colour constancy and equalisation as one picklable transform."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg

    def __call__(self, image: Image.Image) -> Image.Image:
        image = upright(image)
        if self.cfg.color_constancy == "shades_of_gray":
            image = shades_of_gray(image, self.cfg.shades_of_gray_p)
        if self.cfg.equalize:
            image = equalize_luminance(image)
        return image


class _RandomWhiteBalance:
    """Move the white balance along the warm-cool axis: red x (1 + t), blue x (1 - t), with
    t uniform in [-amount, amount] (torch RNG, so epochs stay seeded)."""

    def __init__(self, amount: float):
        self.amount = amount

    def __call__(self, image: Image.Image) -> Image.Image:
        import torch

        t = (2 * float(torch.rand(())) - 1) * self.amount
        pixels = np.asarray(image, dtype=np.float32) * np.array([1 + t, 1, 1 - t], np.float32)
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


class _RandomPhoneCopy:
    """With probability ``p``, the image as a messaging app passes it on: downscaled by a
    factor in [0.35, 1], then JPEG at quality 35-90 (torch RNG)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        import io

        import torch

        draws = torch.rand(3).tolist()
        if draws[0] >= self.p:
            return image
        scale = 0.35 + 0.65 * draws[1]
        size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
        small = image.resize(size, Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=35 + round(55 * draws[2]))
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")


class _RandomZoomOut:
    """With probability ``p``, the picture shrunk to a side fraction in ``size`` and laid on
    skin of its own border's colour, its edges feathered in: the lesion smaller, amid more skin
    (torch RNG). Mirroring the border instead would copy a lesion that reaches it; extending
    the border smears what touches it (a lesion's edge, a dermoscope's dark vignette) across
    the surround instead, smoothed. Pictures whose short side exceeds :attr:`MAX_SIDE` are
    first shrunk to it, which bounds the work per image."""

    MAX_SIDE = 1024

    def __init__(self, p: float, size: tuple[float, float]):
        self.p = p
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        import torch

        draws = torch.rand(4).tolist()
        if draws[0] >= self.p:
            return image
        fraction = self.size[0] + (self.size[1] - self.size[0]) * draws[1]
        image = image.convert("RGB")
        scale = self.MAX_SIDE / min(image.size)
        if scale < 1:  # a camera original: the random crop shrinks it anyway
            image = image.resize((round(image.width * scale), round(image.height * scale)),
                                 Image.Resampling.BILINEAR)
        width, height = image.size
        small_w, small_h = max(1, round(width * fraction)), max(1, round(height * fraction))
        if (small_w, small_h) == (width, height):
            return image
        small = image.resize((small_w, small_h), Image.Resampling.BILINEAR)
        left = round((width - small_w) * draws[2])
        top = round((height - small_h) * draws[3])
        # The surround continues the border's own colours outward, smoothed, with a little grain.
        pad = ((top, height - small_h - top), (left, width - small_w - left), (0, 0))
        surround = Image.fromarray(np.pad(np.asarray(small), pad, mode="edge"))
        surround = surround.filter(ImageFilter.GaussianBlur(0.08 * min(width, height)))
        canvas = np.asarray(surround, dtype=np.float32) + torch.randn(height, width, 1).numpy() * 2.0
        small = np.asarray(small, dtype=np.float32)
        # Alpha rises from 0 at the small picture's edge to 1 a tenth of its side inside.
        feather = max(1.0, 0.1 * min(small_w, small_h))
        ramp_x = np.minimum(np.arange(small_w) + 0.5, small_w - np.arange(small_w) - 0.5) / feather
        ramp_y = np.minimum(np.arange(small_h) + 0.5, small_h - np.arange(small_h) - 0.5) / feather
        alpha = np.clip(np.minimum(ramp_y[:, None], ramp_x[None, :]), 0, 1)[..., None]
        window = canvas[top:top + small_h, left:left + small_w]
        canvas[top:top + small_h, left:left + small_w] = alpha * small + (1 - alpha) * window
        return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))


class _RandomRot90:
    """Rotate a PIL image by 0, 90, 180 or 270 degrees (torch RNG, so epochs stay seeded)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        import torch

        turns = int(torch.randint(4, ()).item())
        return image.rotate(90 * turns) if turns else image


def _interpolation(cfg: PreprocessConfig):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode.BICUBIC if cfg.interpolation == "bicubic" else InterpolationMode.BILINEAR


_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resize_for_eval(image: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Resize (and centre-crop) to the input size, as ``resize_mode`` says.

    The same pixels as torchvision's ``Resize(S)`` + ``CenterCrop(S)`` (``crop``) or
    ``Resize((S, S))`` (``squash``) on a PIL image: the long side becomes
    ``int(S * long / short)`` and the crop offset ``round((side - S) / 2)``.

    Args:
        image: RGB image of any size.
        cfg: The card's preprocessing.

    Returns:
        RGB image of ``cfg.input_size`` x ``cfg.input_size``.
    """
    size = cfg.input_size
    width, height = image.size
    if cfg.resize_mode == "squash":
        target = (size, size)
    elif width <= height:
        target = (size, int(size * height / width))
    else:
        target = (int(size * width / height), size)
    if target != image.size:
        image = image.resize(target, _PIL_RESAMPLE[cfg.interpolation])
    if cfg.resize_mode == "crop":
        width, height = image.size
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    return image


def upright(image: Image.Image) -> Image.Image:
    """The image as a viewer shows it: turned by its EXIF orientation tag, if it has one.

    Images from :func:`skinedge.data.images.load_rgb` are upright already (the tag is gone);
    this catches a PIL image a caller opened itself (``Image.open`` keeps a phone photo
    sideways, and ``convert("RGB")`` keeps the tag).
    """
    if exif_orientation(image) == 1:
        return image
    return ImageOps.exif_transpose(image)


def preprocess_image(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """The evaluation pipeline without torch: PIL RGB image -> float32 array (3, S, S).

    EXIF orientation (:func:`upright`), colour constancy and equalisation,
    :func:`resize_for_eval`, scaling to 0-1 and per-channel normalisation; bit for bit what
    torchvision's ``ToTensor`` and ``Normalize`` give.
    """
    image = resize_for_eval(_Normalize(cfg)(upright(image).convert("RGB")), cfg)
    x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean = np.asarray(cfg.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.std, dtype=np.float32)[:, None, None]
    return (x - mean) / std


class EvalTransform:
    """:func:`preprocess_image` as a picklable torch transform: PIL image -> tensor (3, S, S)."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg

    def __call__(self, image: Image.Image):
        import torch

        return torch.from_numpy(preprocess_image(image, self.cfg))


def build_eval_transform(cfg: PreprocessConfig) -> EvalTransform:
    """PIL RGB image -> normalised float tensor (3, S, S), for datasets and training code."""
    return EvalTransform(cfg)


def build_train_transform(cfg: PreprocessConfig, aug: AugmentConfig):
    """Random geometry and colour on top of the eval pipeline; eval pipeline when disabled."""
    from torchvision import transforms as T

    if not aug.enabled:
        return build_eval_transform(cfg)
    size = cfg.input_size
    steps = [_Normalize(cfg)]
    if cfg.resize_mode == "squash":
        steps.append(T.Resize((size, size), interpolation=_interpolation(cfg)))
    if aug.zoom_out:
        steps.append(_RandomZoomOut(aug.zoom_out, aug.zoom_out_size))
    if aug.phone_copy:
        steps.append(_RandomPhoneCopy(aug.phone_copy))
    steps.append(T.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.aspect_ratio,
                                     interpolation=_interpolation(cfg)))
    if aug.hflip:
        steps.append(T.RandomHorizontalFlip())
    if aug.vflip:
        steps.append(T.RandomVerticalFlip())
    if aug.rot90:
        steps.append(_RandomRot90())
    if aug.rotation_degrees:
        steps.append(T.RandomRotation(aug.rotation_degrees, interpolation=T.InterpolationMode.BILINEAR))
    if any((aug.brightness, aug.contrast, aug.saturation, aug.hue)):
        steps.append(T.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue))
    if aug.white_balance:
        steps.append(_RandomWhiteBalance(aug.white_balance))
    steps += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(steps)


def display_image(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """The eval pipeline's geometry without normalisation: uint8 (S, S, 3), for overlays."""
    return np.asarray(resize_for_eval(upright(image), cfg).convert("RGB"), dtype=np.uint8)
