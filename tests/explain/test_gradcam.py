"""Grad-CAM through pytorch_grad_cam: localisation on a hand-wired CNN, timm EfficientNet-Lite."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from skinedge.explain.gradcam import CamResult, explain_batch, find_target_layer
from skinedge.explain.overlays import save_explanation

SIZE = 32


class RedDetector(nn.Module):
    """Class-1 logit = 10 * mean of a conv channel that fires only on red pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            conv = self.features[0]
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, :, 1, 1] = torch.tensor([1.0, -1.0, -1.0])  # R - G - B - 0.5
            conv.bias[0] = -0.5
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[1, 0] = 10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def red_square(top: int, left: int) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 white-ish skin image with an 8 px pure red square."""
    image = np.full((SIZE, SIZE, 3), 200, dtype=np.uint8)
    image[top : top + 8, left : left + 8] = (255, 0, 0)
    return image


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def quadrant_mass(heatmap: np.ndarray) -> np.ndarray:
    """(2, 2) share of heatmap mass per quadrant: [[top-left, top-right], [bottom-left, ...]]."""
    h, w = heatmap.shape
    mass = heatmap.reshape(2, h // 2, 2, w // 2).sum(axis=(1, 3))
    return mass / mass.sum()


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("tf_efficientnet_lite0", num_classes=3).eval()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_heatmap_follows_the_red_square(method: str) -> None:
    model = RedDetector().train()
    images = [red_square(4, 4), red_square(20, 20)]
    top_left, bottom_right = explain_batch(
        model, to_tensor(images), images, target_classes=[1, 1], method=method
    )

    assert quadrant_mass(top_left.heatmap)[0, 0] > 0.9
    assert max(np.unravel_index(top_left.heatmap.argmax(), top_left.heatmap.shape)) < 16
    assert quadrant_mass(bottom_right.heatmap)[1, 1] > 0.9
    peak = np.unravel_index(bottom_right.heatmap.argmax(), bottom_right.heatmap.shape)
    assert min(peak) >= 16
    assert top_left.predicted_class == 1
    # Left as promised: eval mode, no parameter gradients, requires_grad untouched.
    assert not model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_existing_gradients_and_frozen_flags_are_restored() -> None:
    model = RedDetector()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.features[0].bias.requires_grad_(False)
    images = [red_square(4, 4)]
    explain_batch(model, to_tensor(images), images)
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight))
    assert model.features[0].weight.grad is None
    assert not model.features[0].bias.requires_grad
    assert model.features[0].weight.requires_grad


def test_find_target_layer_probes_generic_models() -> None:
    model = RedDetector()
    assert find_target_layer(model) is model.features
    with pytest.raises(ValueError, match="no submodule producing a spatial"):
        flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
        find_target_layer(flat, input_size=(3, 8, 8))


def test_efficientnet_lite_head_block_and_output_shapes(lite0: nn.Module) -> None:
    assert find_target_layer(lite0) is lite0.bn2
    # The hook probe reaches the same block when the model is wrapped.
    assert find_target_layer(nn.Sequential(lite0)) is lite0.bn2

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    results = explain_batch(lite0, to_tensor(images) * 2 - 1, images)

    assert len(results) == 2
    for result in results:
        assert isinstance(result, CamResult)
        assert result.heatmap.shape == (64, 64) and result.heatmap.dtype == np.float32
        assert 0.0 <= result.heatmap.min() and result.heatmap.max() <= 1.0
        assert result.heatmap.max() > 0.5  # min-max scaled, not all zero
        assert result.overlay.shape == (64, 64, 3) and result.overlay.dtype == np.uint8
        assert result.probabilities.shape == (3,)
        assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert result.target_class == result.predicted_class == result.probabilities.argmax()


def test_eigencam_runs_on_efficientnet_lite(lite0: nn.Module) -> None:
    images = [np.full((64, 64, 3), 128, dtype=np.uint8)]
    (result,) = explain_batch(lite0, to_tensor(images), images, method="eigencam")
    assert result.heatmap.shape == (64, 64)
    assert 0.0 <= result.heatmap.min() and result.heatmap.max() <= 1.0


def test_target_classes_are_honoured() -> None:
    model = RedDetector()
    images = [red_square(4, 4), red_square(20, 20)]
    results = explain_batch(model, to_tensor(images), images, target_classes=[0, 1])
    assert [r.target_class for r in results] == [0, 1]
    assert [r.predicted_class for r in results] == [1, 1]
    with pytest.raises(ValueError, match="out of range"):
        explain_batch(model, to_tensor(images), images, target_classes=[1, 5])
    with pytest.raises(ValueError, match="2 target classes for 1 images"):
        explain_batch(model, to_tensor(images[:1]), images[:1], target_classes=[0, 1])


def test_bad_method_and_display_images_raise() -> None:
    model = RedDetector()
    images = [red_square(4, 4)]
    with pytest.raises(ValueError, match="unknown CAM method 'scorecam'"):
        explain_batch(model, to_tensor(images), images, method="scorecam")
    with pytest.raises(ValueError, match="display image 0 must be uint8"):
        explain_batch(model, to_tensor(images), [images[0].astype(np.float32)])


def test_save_explanation_writes_side_by_side_png(tmp_path) -> None:
    model = RedDetector()
    image = red_square(4, 4)
    (result,) = explain_batch(model, to_tensor([image]), [image])
    path = save_explanation(
        result, image, tmp_path / "out" / "lesion.png", class_names=["nv", "mel"], title="ISIC_1"
    )

    assert path == tmp_path / "out" / "lesion.png"
    assert [p.name for p in path.parent.iterdir()] == ["lesion.png"]  # no temporary left
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.width == 2 * SIZE and png.height > SIZE
        pixels = np.asarray(png.convert("RGB"))
    np.testing.assert_array_equal(pixels[:SIZE, :SIZE], image)
    np.testing.assert_array_equal(pixels[:SIZE, SIZE:], result.overlay)
    assert (pixels[SIZE:] < 128).any()  # caption text drawn below the images

    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        save_explanation(result, image, tmp_path / "x.png", class_names=["a", "b", "c"])
