"""``skinedge evaluate --robustness``: the same images cropped, squashed, letterboxed,
recompressed, under other white balance and upright, each scored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skinedge.evaluate.robustness import PRESENTATIONS, SQUASHED_SIDE
from tests.conftest import make_image, make_tiny_dataset, manifest_of

runner = CliRunner()


@pytest.fixture
def landscape():
    """A 4:3 image as dermatoscopes store them (64 wide, 48 high)."""
    return make_image((180, 120, 100), (48, 64), seed=0)


def test_each_presentation_changes_what_it_names(landscape) -> None:
    shown = {name: present(landscape) for name, present in PRESENTATIONS.items()}
    assert shown["as-stored"] is landscape
    assert shown["centre-crop"].size == (48, 48)
    assert shown["squashed"].size == (SQUASHED_SIDE, SQUASHED_SIDE)
    assert shown["portrait"].size == (48, 64)
    assert shown["half-jpeg"].size == (32, 24)
    width, height = shown["letterbox-16x9"].size
    assert height == 48 and abs(width / height - 16 / 9) < 0.02
    frame = np.asarray(shown["letterbox-16x9"])
    left = (width - 64) // 2
    assert not frame[:, :left].any() and not frame[:, left + 64:].any()  # black bars
    assert np.array_equal(frame[:, left:left + 64], np.asarray(landscape))
    source = np.asarray(landscape, dtype=float).mean((0, 1))
    warm = np.asarray(shown["warm"], dtype=float).mean((0, 1))
    cool = np.asarray(shown["cool"], dtype=float).mean((0, 1))
    assert warm[0] > source[0] > cool[0] and warm[2] < source[2] < cool[2]
    assert warm[1] == pytest.approx(source[1], abs=0.6)
    recompressed = np.asarray(shown["half-jpeg"].resize((64, 48)), dtype=float)
    assert 0 < np.abs(recompressed - np.asarray(landscape, dtype=float)).mean() < 20


def test_evaluate_scores_every_presentation(tiny_checkpoint, tmp_path) -> None:
    """The tiny model tells its classes apart by colour: the report has a row per presentation,
    the first being the plain evaluation, and its spread is best minus worst."""
    from skinedge.cli.main import app

    out = tmp_path / "out"
    result = runner.invoke(app, ["evaluate", str(tiny_checkpoint), "--manifest",
                                 str(manifest_of(tiny_checkpoint)), "--out", str(out),
                                 "--robustness"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "robustness.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    rows = report["rows"]
    assert [row["presentation"] for row in rows] == list(PRESENTATIONS)
    assert rows[0]["balanced_accuracy"] == metrics["balanced_accuracy"]
    assert rows[0]["agreement"] == 1.0
    scores = [row["balanced_accuracy"] for row in rows]
    assert report["spread"] == pytest.approx(max(scores) - min(scores))
    for row in rows:
        lo, hi = row["balanced_accuracy_ci"]
        assert 0 <= lo <= hi <= 1 and 0 <= row["agreement"] <= 1
    table = (out / "robustness.md").read_text()
    assert all(f"| {name} |" in table for name in PRESENTATIONS)
    assert "Spread (best minus worst balanced accuracy)" in " ".join(result.output.split())
    # docs/RESULTS.md gets it as a section of its own, with the command that made it.
    results = tmp_path / "RESULTS.md"
    results.write_text("# Measured results\n\nkept\n")
    subprocess.run([sys.executable, "scripts/results.py", "--update", "--robustness", str(out),
                    "--out", str(results)], check=True, cwd=Path(__file__).parents[2])
    text = results.read_text()
    assert "kept" in text and f"<!-- section: robustness-{tmp_path.name}-out -->" in text
    assert "- command: `" in text and "| cool |" in text
    # Two side by side render a named comparison; the earlier comparison is kept.
    for name in ("first", "second"):
        subprocess.run([sys.executable, "scripts/results.py", "--update", "--robustness", str(out),
                        "--robustness", str(out), "--comparison-name", name, "--out",
                        str(results)], check=True, cwd=Path(__file__).parents[2])
    text = results.read_text()
    assert all(f"<!-- section: robustness-comparison-{n} -->" in text for n in ("first", "second"))
    row = next(line for line in text.splitlines() if line.startswith("| `") and "| - |" in line)
    assert f"{report['spread']:.3f} |" in row  # trained without outliers or a weight average


def test_robustness_is_refused_for_melanoma_detection(tiny_checkpoint, tmp_path) -> None:
    from skinedge.cli.main import app

    data = make_tiny_dataset(tmp_path / "isic2020-like", per_class=4, codes=("mel", "benign"))
    result = runner.invoke(app, ["evaluate", str(tiny_checkpoint), "--data", str(data),
                                 "--out", str(tmp_path / "out"), "--robustness"])
    output = " ".join(result.output.split())
    assert result.exit_code != 0
    assert "labelled melanoma vs benign: leave --robustness out" in output
