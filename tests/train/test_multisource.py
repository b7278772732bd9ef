"""Training and evaluating on a multi-source split: partial labels in the loss, figures per source."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from skinedge.data.classes import NOT_POSITIVE
from skinedge.data.sources import split_folders
from skinedge.errors import ConfigError
from skinedge.evaluate.api import evaluate_checkpoint
from skinedge.evaluate.metrics import compute_metrics, compute_partial_metrics
from skinedge.train.config import load_train_config
from skinedge.train.losses import PartialLabelLoss
from skinedge.train.sampler import balanced_weights
from skinedge.train.trainer import train_classifier
from tests.conftest import TINY, make_tiny_dataset


@pytest.fixture(scope="module")
def multi_manifest(tmp_path_factory):
    """ham/ (7 classes) and isic2020/ (mel vs benign) side by side, as one split."""
    root = tmp_path_factory.mktemp("multi") / "data"
    make_tiny_dataset(root / "ham", per_class=10)
    binary = make_tiny_dataset(root / "isic2020", per_class=10, size=(56, 64),
                               codes=("mel", "nv", "bkl"))
    path = binary / "labels.csv"
    rows = list(csv.reader(path.open()))
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *[[i, g, "mel" if dx == "mel" else "benign"]
                                            for i, g, dx in rows[1:]]])
    out = root.parent / "manifest.json"
    split_folders([root / "ham", binary], out, classes="isic2018")
    return out


def test_partial_metrics_score_classes_on_labelled_rows_and_melanoma_on_all():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=40)
    targets = rng.integers(0, 3, size=40)
    partial = targets.copy()
    partial[:10] = NOT_POSITIVE
    metrics = compute_partial_metrics(partial, probs, ["mel", "nv", "bcc"])
    labelled = compute_metrics(targets[10:], probs[10:], ["mel", "nv", "bcc"])
    assert metrics["balanced_accuracy"] == labelled["balanced_accuracy"]
    assert metrics["n"] == 40 and metrics["partial_rows"] == 10
    # the ten partial rows are non-melanomas for the melanoma AUC
    from sklearn.metrics import roc_auc_score
    assert metrics["melanoma_auc"] == pytest.approx(roc_auc_score(partial == 0, probs[:, 0]))
    assert compute_partial_metrics(targets, probs, ["mel", "nv", "bcc"]) == compute_metrics(
        targets, probs, ["mel", "nv", "bcc"])


def test_balanced_sampling_treats_partial_rows_as_a_stratum():
    weights = balanced_weights([0, 0, 1, NOT_POSITIVE, NOT_POSITIVE, NOT_POSITIVE], 2)
    assert weights == [0.5, 0.5, 1.0, 1 / 3, 1 / 3, 1 / 3]


def test_training_learns_from_partial_rows_and_evaluation_reports_each_source(
        multi_manifest, tmp_path):
    cfg = load_train_config(None, [*TINY, "epochs=2", f"data.manifest={multi_manifest}"])
    result = train_classifier(cfg, tmp_path / "train")

    from skinedge.train.trainer import _build_criterion
    assert isinstance(_build_criterion(cfg, [1] * 7, None, positive=0), PartialLabelLoss)
    card_counts = result.best_dir.joinpath("card.json").read_text()
    assert '"not-mel"' in card_counts  # the card's data counts show the partial rows

    evaluation = evaluate_checkpoint(result.best_dir, manifest=multi_manifest, split="all",
                                     device="cpu", out_dir=tmp_path / "eval")
    per_source = evaluation.metrics["per_source"]
    assert list(per_source) == ["ham", "isic2020"]
    assert per_source["ham"]["n"] == 70 and per_source["ham"]["balanced_accuracy"] is not None
    assert per_source["isic2020"]["task"] == "melanoma-detection"
    assert per_source["isic2020"]["n"] == 30
    assert evaluation.metrics["partial_rows"] == 20
    report = (tmp_path / "eval" / "metrics.md").read_text()
    assert "## Per source" in report and "| isic2020 | mel vs benign | 30 | 10 |" in report
    predictions = (tmp_path / "eval" / "predictions.csv").read_text()
    assert predictions.count(",not-mel,") == 20

    # the CLI's folder (with its command.json) renders into docs/RESULTS.md's sources section
    from typer.testing import CliRunner

    from skinedge.cli.main import app
    out = tmp_path / "eval-cli"
    invoked = CliRunner().invoke(app, ["evaluate", str(result.best_dir), "--manifest",
                                       str(multi_manifest), "--split", "all", "--out", str(out),
                                       "--device", "cpu"])
    assert invoked.exit_code == 0, invoked.output
    results = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, "scripts/results.py", "--update", "--sources", str(out),
                    "--out", str(results)], check=True, cwd=Path(__file__).parents[2])
    text = results.read_text()
    assert "<!-- section: sources -->" in text
    assert "| isic2020 | 30 | 10 | n/a (mel vs benign) |" in text and "): `" in text


def test_partial_rows_refuse_losses_that_have_no_partial_form(multi_manifest, tmp_path):
    cfg = load_train_config(None, [*TINY, "epochs=1", "loss.kind=focal",
                                   f"data.manifest={multi_manifest}"])
    with pytest.raises(ConfigError, match="loss.kind=ce"):
        train_classifier(cfg, tmp_path / "train")


def test_partial_label_loss_is_cross_entropy_on_labelled_rows():
    logits = torch.randn(6, 4)
    targets = torch.tensor([0, 1, 2, 3, 1, 2])
    loss = PartialLabelLoss(0)
    assert loss(logits, targets) == pytest.approx(
        torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)
    partial = torch.tensor([NOT_POSITIVE])
    expected = -torch.log(1 - torch.softmax(logits[:1], 1)[0, 0])
    assert loss(logits[:1], partial) == pytest.approx(expected.item(), rel=1e-5)
