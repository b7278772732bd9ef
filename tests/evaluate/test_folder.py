"""``skinedge evaluate --data FOLDER``: folders labelled with another vocabulary than the model's,
bad rows, and image paths that lead outside the folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import make_image, make_tiny_dataset

runner = CliRunner()


def _evaluate(checkpoint: Path, data: Path, out: Path, *options: str):
    from skinedge.cli.main import app

    result = runner.invoke(app, ["evaluate", str(checkpoint), "--data", str(data),
                                 "--subset", "all", "--out", str(out), *options])
    return result, " ".join(result.output.split())


def _add_row(root: Path, image: str, dx: str) -> str:
    lines = (root / "labels.csv").read_text().splitlines()
    with (root / "labels.csv").open("a", newline="") as f:
        csv.writer(f).writerow([image, f"L_extra_{len(lines)}", dx])
    return f"labels.csv:{len(lines) + 1}"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_melanoma_vs_benign_folder_is_scored_as_melanoma_detection(tiny_checkpoint, tmp_path):
    """The ISIC 2020 case: mel/benign labels on the 7-class model. Before, every benign row was
    an error ending "choose another --classes", an option evaluate does not have."""
    data = make_tiny_dataset(tmp_path / "isic2020-like", per_class=8, codes=("mel", "benign"))
    out = tmp_path / "out"

    result, output = _evaluate(tiny_checkpoint, data, out)

    assert result.exit_code == 0, output
    assert "--classes" not in output
    assert "scored as melanoma detection" in output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "melanoma-detection"
    assert metrics["classes"] == ["benign", "mel"] and metrics["n"] == 16
    assert metrics["melanoma_auc"] is not None
    # Sensitivity and specificity are those of "mel is the top-1 class", per image.
    rows = _csv_rows(out / "predictions.csv")
    mel = [r for r in rows if r["label"] == "mel"]
    benign = [r for r in rows if r["label"] == "benign"]
    assert len(mel) == len(benign) == 8
    assert metrics["sensitivity"] == pytest.approx(
        sum(r["predicted"] == "mel" for r in mel) / 8)
    assert metrics["specificity"] == pytest.approx(
        sum(r["predicted"] != "mel" for r in benign) / 8)
    assert "Sensitivity (melanoma is the top-1 class)" in (out / "metrics.md").read_text()


def test_a_folder_of_some_classes_is_scored_over_the_classes_present(tiny_checkpoint, tmp_path):
    """A subset of the model's classes (ISIC 2019 mapped into the 7, a clinic's own folder):
    balanced accuracy is the mean recall over the classes present, and the report says so."""
    import numpy as np

    data = make_tiny_dataset(tmp_path / "subset", per_class=6, codes=("mel", "nv", "bkl"))
    out = tmp_path / "out"

    result, output = _evaluate(tiny_checkpoint, data, out)

    assert result.exit_code == 0, output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes_absent"] == ["bcc", "akiec", "df", "vasc"]
    recalls = [metrics["per_class"][c]["recall"] for c in ("mel", "nv", "bkl")]
    assert metrics["balanced_accuracy"] == pytest.approx(float(np.mean(recalls)))
    note = "balanced accuracy is the mean recall over the 3 classes present"
    assert note in output and note in " ".join((out / "metrics.md").read_text().split())


def test_folder_of_another_vocabulary_is_one_error_with_a_way_out(tiny_checkpoint, tmp_path):
    """ISIC 2019 labels (scc) on the ISIC 2018 model: one message, not a line per row."""
    data = make_tiny_dataset(tmp_path / "isic2019-like", per_class=6, codes=("mel", "nv", "scc"))
    out = tmp_path / "out"

    result, output = _evaluate(tiny_checkpoint, data, out)

    assert result.exit_code == 2, output
    assert "is labelled with the isic2019 classes" in output
    assert "predicts the isic2018 classes (mel, nv, bcc, akiec, bkl, df, vasc)" in output
    assert "'scc' (6 row(s))" in output
    assert "rerun with --skip-bad to score only the rows it can" in output
    assert "--classes" not in output
    assert "labels.csv:" not in output  # one message about the folder, not a line per row
    assert not (out / "metrics.json").exists()

    # The way out it names works: the scc rows are skipped and listed.
    result, output = _evaluate(tiny_checkpoint, data, out, "--skip-bad")

    assert result.exit_code == 0, output
    assert json.loads((out / "metrics.json").read_text())["n"] == 12
    assert {r["kind"] for r in _csv_rows(out / "skipped.csv")} == {"unknown-label"}
    assert len(_csv_rows(out / "skipped.csv")) == 6


def test_bad_rows_are_listed_in_problems_csv_inside_out(tiny_checkpoint, tmp_path):
    data = make_tiny_dataset(tmp_path / "data", per_class=2, codes=("mel", "nv"))
    make_image((70, 40, 30), (48, 64), seed=5).save(data / "images/extra.jpg")
    typo = _add_row(data, "images/extra.jpg", "melanocytic")
    missing = _add_row(data, "images/ghost.jpg", "nv")
    out = tmp_path / "out"

    result, output = _evaluate(tiny_checkpoint, data, out)

    assert result.exit_code == 2, output
    assert f"{typo}: [unknown-label] label 'melanocytic'" in output
    assert "fix the row" in output and "--skip-bad" in output
    assert "--classes" not in output  # evaluate has no such option
    assert f"{missing}: [missing-file]" in output
    report = out / "problems.csv"
    assert f"Every problem is listed in {report}" in output
    assert {r["source"]: r["kind"] for r in _csv_rows(report)} == {
        typo: "unknown-label", missing: "missing-file"}


def test_image_outside_the_folder_needs_the_flag(tiny_checkpoint, tmp_path):
    data = make_tiny_dataset(tmp_path / "data", per_class=2, codes=("mel", "nv"))
    outside = tmp_path / "elsewhere.jpg"
    make_image((160, 110, 80), (48, 64), seed=3).save(outside)
    source = _add_row(data, str(outside), "nv")

    result, output = _evaluate(tiny_checkpoint, data, tmp_path / "out")

    assert result.exit_code == 2, output
    assert f"{source}: [outside-root]" in output
    assert "outside the dataset folder" in output and "--allow-outside-root" in output
    assert (tmp_path / "out/problems.csv").is_file()

    result, output = _evaluate(tiny_checkpoint, data, tmp_path / "out", "--allow-outside-root")

    assert result.exit_code == 0, output
    assert json.loads((tmp_path / "out/metrics.json").read_text())["n"] == 5
    assert not (tmp_path / "out/problems.csv").exists()  # the failed run's list is gone
