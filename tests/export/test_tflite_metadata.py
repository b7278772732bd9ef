"""The standard TFLite Model Metadata of ``.tflite`` exports: MediaPipe Tasks' ImageClassifier
loads the file as it is and agrees with ``load_runtime`` on the same images, resized once as the
card says (MediaPipe then runs at the input size, so both see the same pixels)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinedge.data.transforms import resize_for_eval
from skinedge.export import TARGETS, export_checkpoint
from skinedge.export.records import ExportOptions
from skinedge.runtimes import load_runtime, read_artifact_card
from skinedge.runtimes.base import softmax

pytestmark = pytest.mark.slow


def _mediapipe():
    pytest.importorskip("mediapipe", reason="mediapipe not installed: pip install "
                                            "'skinedge[mediapipe]'")
    from mediapipe.tasks.python import vision

    return vision


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """``(precision, quantizer)`` -> the exported ``.tflite`` path, each made once."""
    if reason := TARGETS["tflite"].missing_backend("int8"):
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("tflite-metadata")
    cache: dict = {}

    def get(precision: str = "fp32", quantizer: str | None = None,
            float_first: int | None = None) -> Path:
        key = precision, quantizer, float_first
        if key not in cache:  # int8 parity is test_targets' business
            verify = precision != "int8"
            options = ExportOptions(quantizer=quantizer, **(
                {} if float_first is None else {"float_first": float_first}))
            result = export_checkpoint(tiny_checkpoint, "tflite", precision=precision,
                                       out_dir=out / f"{precision}-{quantizer}-{float_first}",
                                       calibration_images=20, verify_images=14, verify=verify,
                                       options=options)
            assert result.verification.status == ("passed" if verify else "skipped")
            cache[key] = result.path
        return cache[key]

    return get


def _resized(paths: list[Path], card, folder: Path) -> list[Path]:
    """Each image resized (and cropped) to the input size as the card says, saved as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        target = folder / f"{path.stem}.png"
        resize_for_eval(Image.open(path).convert("RGB"), card.preprocess).save(target)
        out.append(target)
    return out


def _mediapipe_logits(model: Path, images: list[Path]) -> tuple[np.ndarray, list]:
    """(N, C) scores in class-index order from MediaPipe's ImageClassifier, and the first
    image's categories."""
    vision = _mediapipe()
    import mediapipe as mp

    options = vision.ImageClassifierOptions(
        base_options=mp.tasks.BaseOptions(model_asset_path=str(model)), max_results=-1)
    rows, first = [], None
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            pixels = np.asarray(Image.open(image).convert("RGB"))
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
            categories = result.classifications[0].categories
            first = first or categories
            row = np.full(len(categories), np.nan)
            for category in categories:
                row[category.index] = category.score
            rows.append(row)
    return np.stack(rows), first


def _images(request, tiny_dataset) -> list[Path]:
    if request.param == "tiny":
        return sorted((tiny_dataset / "images").glob("*.jpg"))[::3]  # 24, every class
    shared = request.getfixturevalue("shared_data")
    return sorted((shared / "ham10000-sample" / "images").glob("*.jpg"))[:24]


@pytest.fixture(params=["tiny", pytest.param("isic", marks=pytest.mark.realdata)])
def images(request, tiny_dataset) -> list[Path]:
    """The tiny dataset's colour-coded images, or 24 real HAM10000 images where present."""
    return _images(request, tiny_dataset)


def test_standard_metadata_reads_back_with_the_schema(exported) -> None:
    _mediapipe()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    from skinedge.export.targets.tflite import STANDARD_METADATA_KEY
    from skinedge.runtimes.litert import read_metadata

    path = exported()
    card = read_artifact_card(path)  # skinedge's own card is still there
    data = path.read_bytes()
    buffer = read_metadata(data, STANDARD_METADATA_KEY)
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    meta = schema.ModelMetadata.GetRootAs(buffer, 0)
    assert meta.Name().decode() == f"skinedge {card.architecture} fp32"
    assert meta.Version().decode().startswith("weights sha256 " + card.weights_sha256[:16])
    assert card.data.licence in meta.License().decode() and meta.Author()
    assert meta.MinParserVersion().decode() == "1.0.0"
    image = meta.SubgraphMetadata(0).InputTensorMetadata(0)
    unit = image.ProcessUnits(0)
    assert unit.OptionsType() == schema.ProcessUnitOptions.NormalizationOptions
    norm = schema.NormalizationOptions()
    norm.Init(unit.Options().Bytes, unit.Options().Pos)
    np.testing.assert_allclose(norm.MeanAsNumpy(), np.asarray(card.preprocess.mean) * 255,
                               rtol=1e-6)
    np.testing.assert_allclose(norm.StdAsNumpy(), np.asarray(card.preprocess.std) * 255,
                               rtol=1e-6)
    assert image.Content().ContentPropertiesType() == schema.ContentProperties.ImageProperties
    logits = meta.SubgraphMetadata(0).OutputTensorMetadata(0)
    files = {logits.AssociatedFiles(i).Name().decode(): logits.AssociatedFiles(i)
             for i in range(logits.AssociatedFilesLength())}
    assert files["labels_en.txt"].Locale().decode() == "en"
    assert {f.Type() for f in files.values()} == {schema.AssociatedFileType.TENSOR_AXIS_LABELS}
    with zipfile.ZipFile(io.BytesIO(data)) as packed:  # labels zipped after the flatbuffer
        assert packed.read("labels.txt").decode().split() == card.classes
        names = packed.read("labels_en.txt").decode().splitlines()
    assert names == [card.class_names[c] for c in card.classes]
    assert card.artifact.details["tflite_metadata"]["mediapipe_differs"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_mediapipe_classifier_agrees_with_load_runtime(exported, images, precision,
                                                       tmp_path) -> None:
    _mediapipe()
    path = exported(precision)
    runtime = load_runtime(path, threads=1)
    card = runtime.card
    resized = _resized(images, card, tmp_path)
    expected = runtime.predict(resized)  # probabilities, columns card.classes
    logits, categories = _mediapipe_logits(path, resized)
    got = softmax(logits)  # MediaPipe reports the output tensor as it is: logits
    assert {c.category_name for c in categories} == set(card.classes)
    assert {c.display_name for c in categories} == set(card.class_names.values())
    assert all(card.classes[c.index] == c.category_name for c in categories)
    agreement = (got.argmax(1) == expected.argmax(1)).mean()
    max_diff = np.abs(got - expected).max()
    print(f"{precision}: top-1 agreement {agreement:.3f} on {len(images)} images, "
          f"max |prob diff| {max_diff:.2e}")
    assert agreement == 1.0
    assert max_diff < 1e-4


@pytest.mark.parametrize("quantizer", ["pt2e", "aeq"])
def test_int8_with_float_first_layers_loads_in_mediapipe(exported, images, tmp_path,
                                                         quantizer) -> None:
    """INT8 keeps its first convolutions in float by default (FLOAT_FIRST), so its input
    is float32 and MediaPipe's ImageClassifier takes the file and agrees with load_runtime."""
    _mediapipe()
    path = exported("int8", quantizer)
    runtime = load_runtime(path, threads=1)
    assert runtime.card.artifact.input.dtype == "float32"
    assert runtime.card.artifact.details["float_first"] > 0
    assert not any("int8" in note for note in runtime.card.artifact.details["tflite_metadata"]
                   ["mediapipe_differs"])
    resized = _resized(images, runtime.card, tmp_path)
    expected = runtime.predict(resized)
    logits, _ = _mediapipe_logits(path, resized)
    got = softmax(logits)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("quantizer", ["pt2e", "aeq"])
def test_int8_input_is_named_and_mediapipe_refuses_it(exported, quantizer) -> None:
    """Full-integer files (float_first=0) take int8 input, which MediaPipe refuses."""
    vision = _mediapipe()
    import mediapipe as mp

    path = exported("int8", quantizer, 0)
    card = read_artifact_card(path)
    assert any("int8" in note for note in card.artifact.details["tflite_metadata"]
               ["mediapipe_differs"])
    load_runtime(path, threads=1)  # skinedge still loads it
    options = vision.ImageClassifierOptions(
        base_options=mp.tasks.BaseOptions(model_asset_path=str(path)))
    with pytest.raises((RuntimeError, ValueError)):
        vision.ImageClassifier.create_from_options(options)



def test_what_mediapipe_cannot_do_is_named(tiny_checkpoint) -> None:
    from skinedge.export.targets.tflite import mediapipe_differences
    from skinedge.models.checkpoint import load_card

    card = load_card(tiny_checkpoint)
    approximations, wrong, refused = mediapipe_differences(card, np.dtype("float32"))
    assert wrong == refused == [] and "centred square crop" in approximations[0]
    imagenet = card.preprocess.model_copy(update={
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "color_constancy": "shades_of_gray", "resize_mode": "squash"})
    approximations, wrong, refused = mediapipe_differences(
        card.model_copy(update={"preprocess": imagenet}), np.dtype("int8"))
    assert "crop" not in approximations[0]
    assert wrong == ["shades_of_gray colour constancy is not applied"]
    assert "per-channel" in refused[0] and "int8" in refused[1]
