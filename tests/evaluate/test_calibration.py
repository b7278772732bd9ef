"""Temperature scaling: fitted on validation, stored in the card, applied by every runtime,
folded into every export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skinedge.evaluate.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    scaled_softmax,
)
from tests.conftest import TINY_TEMPERATURE, manifest_of

runner = CliRunner()


def overconfident(n: int = 4000, classes: int = 7, true_temperature: float = 2.5, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / true_temperature): a model that is
    too sure of itself by exactly that factor."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, classes))
    probs = scaled_softmax(logits, true_temperature)
    targets = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, targets


def test_fit_recovers_the_temperature_and_lowers_ece_and_nll() -> None:
    logits, targets = overconfident()
    fit = fit_temperature(logits, targets, source="synthetic")
    assert fit.temperature == pytest.approx(2.5, rel=0.08)
    assert fit.nll_after < fit.nll_before
    assert fit.ece_after < 0.03 < 0.1 < fit.ece_before
    # the minimum: a step either way costs likelihood
    for t in (fit.temperature * 0.9, fit.temperature * 1.1):
        assert negative_log_likelihood(logits, targets, t) > fit.nll_after
    # log-probabilities fit the same temperature as the logits they came from
    shifted = fit_temperature(np.log(scaled_softmax(logits)), targets)
    assert shifted.temperature == pytest.approx(fit.temperature, rel=1e-4)


def test_an_underconfident_model_gets_a_temperature_below_one() -> None:
    logits, targets = overconfident(true_temperature=0.5, seed=1)
    assert fit_temperature(logits, targets).temperature == pytest.approx(0.5, rel=0.08)


def test_ece_matches_the_metrics_module() -> None:
    from skinedge.evaluate.metrics import compute_metrics

    logits, targets = overconfident(n=500)
    probs = scaled_softmax(logits)
    metrics = compute_metrics(targets, probs, ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"])
    assert expected_calibration_error(probs, targets) == pytest.approx(metrics["ece"])


def test_fold_puts_the_temperature_in_the_head_or_wraps_the_model() -> None:
    from skinedge.models import create_classifier
    from skinedge.models.temperature import TemperatureScaled, fold_temperature, split_temperature

    model, _ = create_classifier("test_efficientnet", 7, pretrained="none")
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    folded = fold_temperature(model, 2.0)
    assert not isinstance(folded, TemperatureScaled)  # no extra op in an exported graph
    torch.testing.assert_close(folded(x), model(x) / 2.0)
    assert fold_temperature(model, 1.0) is model
    ensemble_like = torch.nn.Sequential(model)  # no get_classifier(): wrapped
    wrapped = fold_temperature(ensemble_like, 2.0)
    assert isinstance(wrapped, TemperatureScaled)
    torch.testing.assert_close(wrapped(x), model(x) / 2.0)
    assert split_temperature(wrapped) == (ensemble_like, 2.0)


def test_the_runtime_applies_the_card_temperature(tiny_checkpoint, tiny_dataset) -> None:
    from skinedge.models import load_checkpoint
    from skinedge.runtimes import load_runtime

    model, card = load_checkpoint(tiny_checkpoint)
    assert card.temperature == TINY_TEMPERATURE
    runtime = load_runtime(tiny_checkpoint)
    x = runtime.preprocess(sorted((tiny_dataset / "images").glob("*.jpg"))[:6])
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runtime.predict_array(x), scaled_softmax(logits, TINY_TEMPERATURE),
                               atol=1e-6)


def test_an_edited_temperature_is_refused(tiny_checkpoint, tmp_path) -> None:
    from skinedge.errors import ModelError
    from skinedge.models import load_card

    copy = shutil.copytree(tiny_checkpoint, tmp_path / "best")
    doc = json.loads((copy / "card.json").read_text())
    doc["temperature"] = 1.0
    (copy / "card.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="changed after it was written"):
        load_card(copy)


@pytest.mark.slow
def test_onnx_export_carries_the_temperature_inside(tiny_checkpoint, tiny_dataset,
                                                    tmp_path) -> None:
    """An app's own softmax of the artifact's outputs (MediaPipe, Core ML, the web page) gives
    the calibrated probabilities: the temperature is in the graph, and the card says so."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from skinedge.export import export_checkpoint
    from skinedge.runtimes import load_runtime

    result = export_checkpoint(tiny_checkpoint, "onnx", out_dir=tmp_path,
                               manifest=manifest_of(tiny_checkpoint), verify_images=8)
    assert result.verification.status == "passed"
    assert result.card.artifact.output.temperature == TINY_TEMPERATURE
    reference = load_runtime(tiny_checkpoint)
    x = reference.preprocess(sorted((tiny_dataset / "images").glob("*.jpg"))[:6])
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    raw = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 1]})[0]
                          for i in range(len(x))])
    expected = reference.predict_array(x)
    np.testing.assert_allclose(scaled_softmax(raw), expected, atol=1e-4)
    artifact = load_runtime(result.path)
    assert artifact.temperature == 1.0  # nothing left to apply
    np.testing.assert_allclose(artifact.predict_array(x), expected, atol=1e-4)


def test_calibrate_command_fits_on_val_and_refuses_test(tiny_checkpoint, tmp_path) -> None:
    from skinedge.cli.main import app
    from skinedge.models import load_card

    copy = shutil.copytree(tiny_checkpoint, tmp_path / "best")
    manifest = str(manifest_of(tiny_checkpoint))
    refused = runner.invoke(app, ["calibrate", str(copy), "--manifest", manifest,
                                  "--split", "test"])
    assert refused.exit_code != 0 and "never on the test split" in refused.output
    too_few = runner.invoke(app, ["calibrate", str(copy), "--manifest", manifest])
    assert too_few.exit_code != 0 and "too few to fit a temperature" in too_few.output
    result = runner.invoke(app, ["calibrate", str(copy), "--manifest", manifest,
                                 "--min-images", "1"])
    assert result.exit_code == 0, result.output
    card = load_card(copy)  # sealed again: loads
    assert card.calibration["source"].endswith(":val") and card.calibration["images"] == 14
    assert card.temperature == pytest.approx(card.calibration["temperature"])
    assert card.calibration["nll_after"] <= card.calibration["nll_before"] + 1e-9


def test_evaluate_reports_ece_with_and_without_the_temperature(tiny_checkpoint, tmp_path) -> None:
    from skinedge.evaluate import evaluate_checkpoint

    out = tmp_path / "eval"
    result = evaluate_checkpoint(tiny_checkpoint, manifest=manifest_of(tiny_checkpoint),
                                 split="test", out_dir=out)
    calibration = result.metrics["calibration"]
    assert calibration["temperature"] == TINY_TEMPERATURE
    assert calibration["ece_uncalibrated"] != pytest.approx(result.metrics["ece"])
    assert (out / "reliability.png").stat().st_size > 1000
    markdown = (out / "metrics.md").read_text()
    assert "uncalibrated (T = 1)" in markdown and "temperature 1.7" in markdown


def test_training_ends_by_calibrating_best_on_val(tmp_path) -> None:
    """A validation split large enough to fit on: best/ comes out of training calibrated."""
    from skinedge.data import make_manifest, read_dataset
    from skinedge.models import load_card
    from skinedge.train.config import load_train_config
    from skinedge.train.trainer import train_classifier
    from tests.conftest import TINY, make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "data", per_class=100, size=(32, 32))
    manifest = tmp_path / "manifest.json"
    make_manifest(read_dataset(data)).save(manifest)
    cfg = load_train_config(None, [*TINY, "epochs=1", "max_batches_per_epoch=4",
                                   f"data.manifest={manifest}"])
    result = train_classifier(cfg, tmp_path / "train")
    card = load_card(result.best_dir)
    assert result.calibration is not None and result.calibration.images >= 100
    assert card.temperature == pytest.approx(result.calibration.temperature)
    assert card.calibration["source"] == f"{manifest}:val"
    assert result.calibration.nll_after <= result.calibration.nll_before + 1e-9


def test_an_ensemble_is_fitted_anew_once(tiny_checkpoint, tmp_path) -> None:
    """The members' temperatures do not carry over to the mean of their probabilities; a new
    ensemble is fitted on val, a too-small val leaves it at T = 1, and a rerun keeps the fit."""
    from skinedge.evaluate.calibration import calibrate_on_split
    from skinedge.models import create_ensemble, load_card
    from skinedge.train.ensemble import calibrate_ensemble

    members = [shutil.copytree(tiny_checkpoint, tmp_path / f"m{k}") for k in range(2)]
    calibrate_on_split(members[0], manifest_of(tiny_checkpoint), min_images=1)
    assert load_card(members[0]).ood is not None
    ensemble = create_ensemble(members, tmp_path / "ensemble")
    fresh = load_card(ensemble)  # nothing of member 0's fit carries over
    assert (fresh.temperature, fresh.calibration, fresh.ood) == (1.0, None, None)
    calibrate_ensemble(ensemble, manifest_of(tiny_checkpoint))  # 14 val images: too few
    assert load_card(ensemble).calibration is None
    calibrate_ensemble(ensemble, manifest_of(tiny_checkpoint), min_images=1)
    fitted = load_card(ensemble)
    assert fitted.calibration["images"] == 14 and fitted.temperature != 1.0
    assert fitted.ood.method == "msp" and set(fitted.ood.fit["methods"]) == {"msp"}
    calibrate_ensemble(ensemble, manifest_of(tiny_checkpoint), min_images=1)
    assert load_card(ensemble).integrity == fitted.integrity
