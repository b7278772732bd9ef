"""Explainer: a checkpoint loaded once, Grad-CAM of one image at a time, shared by threads."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from skinedge.data import load_rgb
from skinedge.errors import ConfigError
from skinedge.explain import Explainer, explain_images


@pytest.fixture(scope="module")
def explainer(tiny_checkpoint) -> Explainer:
    return Explainer(tiny_checkpoint)


@pytest.fixture(scope="module")
def wide_explainer(tiny_checkpoint, tmp_path_factory) -> Explainer:
    """The tiny checkpoint re-sealed to run at 96 px. At its own 32 px the last feature map is
    1 x 1, so every heatmap is flat (all zeros); at 96 px it is 3 x 3 and heatmaps differ by
    image and target class."""
    from skinedge.models import load_checkpoint, save_checkpoint

    model, card = load_checkpoint(tiny_checkpoint)
    preprocess = card.preprocess.model_copy(update={"input_size": 96})
    path = save_checkpoint(tmp_path_factory.mktemp("wide") / "best", model,
                           card.model_copy(update={"preprocess": preprocess}))
    return Explainer(path)


@pytest.fixture(scope="module")
def images(tiny_dataset) -> list[Image.Image]:
    """Four upright 64 x 48 RGB images of different classes."""
    return [load_rgb(tiny_dataset / "images" / f"{code}_000.jpg")
            for code in ("mel", "nv", "bcc", "vasc")]


def test_overlay_png_is_the_overlay_at_display_size(explainer, images):
    size = explainer.card.preprocess.input_size
    result = explainer.explain(images[0])

    png = explainer.overlay_png(images[0])

    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        assert decoded.size == (size, size)
        overlay = np.asarray(decoded)
    assert np.array_equal(overlay, result.overlay)
    # The heatmap is blended on: not the plain display image.
    from skinedge.data.transforms import display_image

    assert not np.array_equal(overlay, display_image(images[0], explainer.card.preprocess))


def test_probabilities_are_the_checkpoints_own_prediction(explainer, images, tiny_checkpoint):
    from skinedge.runtimes import load_runtime

    expected = load_runtime(tiny_checkpoint).predict(images)

    for image, probabilities in zip(images, expected):
        result = explainer.explain(image)
        np.testing.assert_allclose(result.probabilities, probabilities, atol=1e-5)
        assert result.predicted_class == result.target_class == int(probabilities.argmax())


@pytest.mark.parametrize("name", ["explainer", "wide_explainer"])
def test_target_class_is_explained_by_code(name, images, request):
    explainer = request.getfixturevalue(name)
    vasc = explainer.card.classes.index("vasc")
    result = explainer.explain(images[0], target_class="vasc")
    predicted = explainer.explain(images[0])

    assert result.target_class == vasc
    assert result.predicted_class == predicted.predicted_class
    assert predicted.target_class != vasc  # the premise: this image is not predicted vasc
    if name == "wide_explainer":  # flat heatmaps at 32 px (see wide_explainer)
        assert result.heatmap.max() > 0
        assert not np.allclose(result.heatmap, predicted.heatmap, atol=0.05)


def test_concurrent_calls_give_the_sequential_bytes(wide_explainer, images):
    explainer = wide_explainer
    jobs = [(image, target) for image in images for target in (None, "mel")]
    expected = [explainer.overlay_png(image, target) for image, target in jobs]
    got: dict[int, bytes] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(offset: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                for i in range(offset, len(jobs), 2):
                    png = explainer.overlay_png(*jobs[i])
                    assert got.setdefault(i, png) == png
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(offset,)) for offset in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    assert [got[i] for i in range(len(jobs))] == expected


def test_unknown_target_class_names_the_class(explainer, images):
    with pytest.raises(ConfigError) as info:
        explainer.overlay_png(images[0], target_class="xyz")

    assert "class 'xyz' is not one of the model's" in str(info.value)
    assert "'mel'" in str(info.value)  # and lists the ones it has


def test_unknown_method_fails_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="unknown CAM method 'lime'"):
        Explainer(tmp_path / "no-such-checkpoint", method="lime")


def test_an_image_that_is_not_rgb_is_refused(explainer, images):
    with pytest.raises(ValueError, match="must be a PIL RGB image .* got L"):
        explainer.explain(images[0].convert("L"))


def test_explain_images_writes_what_the_explainer_computes(
    explainer, tiny_checkpoint, tiny_dataset, images, tmp_path
):
    paths = [tiny_dataset / "images" / name for name in ("mel_000.jpg", "nv_000.jpg")]

    written = explain_images(tiny_checkpoint, paths, tmp_path, target_class="mel")

    assert [p.name for p, _ in written] == ["000_mel_000_gradcam.png", "001_nv_000_gradcam.png"]
    size = explainer.card.preprocess.input_size
    for (path, result), image in zip(written, images[:2]):
        alone = explainer.explain(image, target_class="mel")
        np.testing.assert_allclose(result.heatmap, alone.heatmap, atol=1e-5)
        np.testing.assert_allclose(result.probabilities, alone.probabilities, atol=1e-5)
        with Image.open(path) as saved:  # original | overlay, then the caption
            right = np.asarray(saved.convert("RGB"))[:size, size:2 * size]
        assert np.abs(right.astype(int) - alone.overlay.astype(int)).max() <= 1
