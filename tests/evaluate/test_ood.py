"""The lesion check: a score on calibrated logits, a threshold chosen on validation lesions,
non-lesion images from installed packages and drawings, carried by the card into every runtime."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from skinedge.evaluate.ood import fit_ood, held_out, make_non_lesion_images, non_lesion_images
from skinedge.models.ood_score import NOT_A_LESION, ood_scores
from tests.conftest import manifest_of


def test_scores_rise_as_the_logits_flatten() -> None:
    sure, unsure = [8.0, 0.0, 0.0], [0.1, 0.0, 0.0]
    for method in ("energy", "msp"):
        scores = ood_scores(np.array([sure, unsure]), 1.0, method)
        assert scores[1] > scores[0]
    np.testing.assert_allclose(ood_scores(np.array([[0.0, 0.0]]), 1.0, "msp"), [-0.5])
    np.testing.assert_allclose(ood_scores(np.array([[0.0, 0.0]]), 1.0, "energy"), [-np.log(2)])
    # msp reads probabilities' logs as well as logits; energy does not
    shifted = np.array([sure]) + 5.0
    np.testing.assert_allclose(ood_scores(shifted, 2.0, "msp"), ood_scores(np.array([sure]), 2.0,
                                                                           "msp"))
    assert ood_scores(shifted, 2.0, "energy")[0] != ood_scores(np.array([sure]), 2.0, "energy")[0]
    with pytest.raises(ValueError, match="one of energy, msp"):
        ood_scores(np.array([sure]), 1.0, "mahalanobis")


def test_the_threshold_rejects_at_most_the_allowed_share_of_lesions() -> None:
    rng = np.random.default_rng(0)
    lesions = rng.normal(0, 1, (400, 7))
    lesions[np.arange(400), rng.integers(0, 7, 400)] += 6.0  # confident
    others = rng.normal(0, 1, (200, 7))  # flat: no class stands out
    mask = np.arange(200) % 2 == 1
    fit = fit_ood(lesions, 1.0, others, mask, max_false_rejection=0.05, source="val")
    assert fit.method in ("energy", "msp") and fit.false_rejection <= 0.05
    assert fit.detection > 0.9 and fit.detection_held_out > 0.9
    assert (fit.non_lesion_images, fit.non_lesion_held_out, fit.lesion_images) == (100, 100, 400)
    scores = ood_scores(lesions, 1.0, fit.method)
    assert np.mean(scores > fit.threshold) == pytest.approx(fit.false_rejection)
    assert fit.methods[fit.method]["detection"] == max(m["detection"] for m in fit.methods.values())
    with pytest.raises(ValueError, match="on both sides of the split"):
        fit_ood(lesions, 1.0, others, np.zeros(200, dtype=bool))


def test_the_non_lesion_set_is_photographs_and_patterns_split_by_source() -> None:
    items = make_non_lesion_images(crops_per_photo=1, patterns_per_kind=2, size=64)
    again = make_non_lesion_images(crops_per_photo=1, patterns_per_kind=2, size=64)
    assert [i.name for i in items] == [i.name for i in again]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image))
               for a, b in zip(items, again, strict=True))  # the same seed, the same images
    groups = {i.group for i in items}
    assert any(g.startswith("photo:skimage/") for g in groups)  # scikit-image is a train dep
    assert {"pattern:skin", "pattern:text", "pattern:checkerboard"} <= groups
    assert all(i.image.mode == "RGB" and min(i.image.size) == 64 for i in items)
    halves = {held_out(g) for g in groups}
    assert halves == {True, False}
    for group in groups:  # a photograph and its crops stay on one side
        assert len({held_out(i.group) for i in items if i.group == group}) == 1


@pytest.fixture(scope="module")
def checked(tiny_checkpoint, tmp_path_factory):
    """A copy of the tiny checkpoint calibrated with its lesion check, on its 14 val images."""
    from skinedge.evaluate.calibration import calibrate_on_split

    copy = shutil.copytree(tiny_checkpoint, tmp_path_factory.mktemp("ood") / "best")
    calibrate_on_split(copy, manifest_of(tiny_checkpoint), min_images=1)
    return copy


def test_calibrating_chooses_the_check_and_seals_it_in_the_card(checked) -> None:
    import json

    from skinedge.errors import ModelError
    from skinedge.models import load_card

    card = load_card(checked)
    assert card.ood is not None and card.ood.method in ("energy", "msp")
    assert card.ood.fit["lesion_images"] == 14 and card.ood.fit["false_rejection"] <= 0.05
    assert card.ood.fit["non_lesion_images"] + card.ood.fit["non_lesion_held_out"] == len(
        non_lesion_images())
    doc = json.loads((checked / "card.json").read_text())
    doc["ood"]["threshold"] += 1.0
    edited = checked.parent / "edited"
    shutil.copytree(checked, edited)
    (edited / "card.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="changed after it was written"):
        load_card(edited)


def test_the_runtime_answers_not_a_lesion_above_the_threshold(checked, tiny_dataset) -> None:
    """The runtime's scores are the card's method on the torch model's own logits divided by
    the card's temperature, and its verdicts follow the card's threshold."""
    import torch

    from skinedge.models import load_checkpoint
    from skinedge.runtimes import load_runtime

    runtime = load_runtime(checked)
    model, card = load_checkpoint(checked)
    lesions = sorted((tiny_dataset / "images").glob("*.jpg"))[:6]
    photos = [i.image for i in non_lesion_images()[:12]]
    x = runtime.preprocess([*lesions, *photos])
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).double().numpy()
    expected = ood_scores(logits, card.temperature, card.ood.method)
    assessment = runtime.assess_array(x)
    np.testing.assert_allclose(assessment.ood_scores, expected, atol=1e-6)
    np.testing.assert_allclose(assessment.probabilities, runtime.predict_array(x))
    lesion = expected <= card.ood.threshold
    near = np.abs(expected - card.ood.threshold) < 1e-6  # too close to call either way
    np.testing.assert_array_equal(assessment.lesion[~near], lesion[~near])
    verdicts = assessment.verdicts(card.classes)
    for verdict, ok, row in zip(verdicts, assessment.lesion, assessment.probabilities,
                                strict=True):
        assert verdict == (card.classes[int(row.argmax())] if ok else NOT_A_LESION)


def test_a_card_without_a_check_calls_everything_a_lesion(tiny_checkpoint, tiny_dataset) -> None:
    from skinedge.runtimes import load_runtime

    runtime = load_runtime(tiny_checkpoint)
    assessment = runtime.assess(sorted((tiny_dataset / "images").glob("*.jpg"))[:3])
    assert assessment.ood_scores is None and assessment.lesion.all()


@pytest.mark.slow
def test_an_onnx_export_carries_the_check_and_agrees(checked, tiny_dataset, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from skinedge.export import export_checkpoint
    from skinedge.runtimes import load_runtime

    result = export_checkpoint(checked, "onnx", out_dir=tmp_path,
                               manifest=_run_manifest(checked), verify_images=8)
    artifact, reference = load_runtime(result.path), load_runtime(checked)
    assert artifact.card.ood == reference.card.ood
    images = [*sorted((tiny_dataset / "images").glob("*.jpg"))[:4],
              *[i.image for i in non_lesion_images()[:8]]]
    a, r = artifact.assess(images), reference.assess(images)
    np.testing.assert_allclose(a.ood_scores, r.ood_scores, atol=1e-4)
    assert (a.lesion == r.lesion).mean() >= 0.9  # scores within 1e-4 of the threshold may flip


def test_evaluate_reports_refused_lesions_and_caught_non_lesions(checked, tmp_path) -> None:
    from skinedge.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checked, manifest=_run_manifest(checked), split="test",
                                 out_dir=tmp_path / "eval")
    check = result.metrics["lesion_check"]
    assert 0.0 <= check["false_rejection"] <= 1.0 and check["non_lesion_held_out"] > 10
    assert set(check["false_rejection_by_class"]) <= set(result.label_classes)
    by_group = check["detection_held_out_by_group"]
    assert by_group and all(held_out(group) for group in by_group)
    sizes = Counter(i.group for i in non_lesion_images() if held_out(i.group))
    assert sum(rate * sizes[g] for g, rate in by_group.items()) == pytest.approx(
        check["detection_held_out"] * check["non_lesion_held_out"])
    markdown = (tmp_path / "eval" / "metrics.md").read_text()
    assert "Lesions refused as not a lesion image" in markdown
    assert "Non-lesion images refused" in markdown


def _run_manifest(checkpoint):
    from skinedge.models import load_card

    return load_card(checkpoint).data.manifest


def test_an_energy_check_on_probability_outputs_is_refused_by_name(checked) -> None:
    """Core ML artifacts output probabilities, whose logs have lost the scale energy reads."""
    from skinedge.errors import ModelError
    from skinedge.models.card import ArtifactInfo, LesionCheck, TensorSpec
    from skinedge.runtimes import load_runtime

    runtime = load_runtime(checked)
    runtime.check_lesion_check()  # a checkpoint outputs logits
    spec = TensorSpec(name="x", shape=[1, 7], layout="NC", dtype="float32",
                      kind="probabilities")
    runtime.card = runtime.card.model_copy(update={
        "ood": LesionCheck(method="energy", threshold=0.0),
        "artifact": ArtifactInfo(target="coreml", precision="fp32", source_checkpoint="x",
                                 source_weights_sha256=None, input=spec, output=spec)})
    with pytest.raises(ModelError, match="needs the logits"):
        runtime.check_lesion_check()
    with pytest.raises(ModelError, match="needs the logits"):
        runtime.assess_array(np.zeros((1, 3, 32, 32), dtype=np.float32))


def test_results_renders_lesion_checks_side_by_side(checked, tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from typer.testing import CliRunner

    from skinedge.cli.main import app

    out = tmp_path / "eval-test"
    result = CliRunner().invoke(app, ["evaluate", str(checked), "--manifest",
                                      str(_run_manifest(checked)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = tmp_path / "RESULTS.md"
    results.write_text("# Measured results\n\nkept\n")
    subprocess.run([sys.executable, "scripts/results.py", "--update", "--lesion-check", str(out),
                    "--out", str(results)], check=True, cwd=Path(__file__).parents[2])
    text = results.read_text()
    assert "kept" in text and "<!-- section: lesion-check -->" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| `{tmp_path.name}/"))
    graded = [i.group for i in non_lesion_images() if held_out(i.group)]
    assert "| none |" in row and f"of {len(graded)} |" in row  # no outlier exposure
    assert all(f"| {group} |" in text for group in set(graded))
