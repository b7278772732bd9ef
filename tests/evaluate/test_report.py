"""Tests for skinedge.evaluate.report: Markdown tables, confusion PNG, atomic report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from skinedge.evaluate.metrics import compute_metrics
from skinedge.evaluate.report import plot_confusion_matrix, render_markdown, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def metrics() -> dict:
    """Three classes, bcc absent from y_true (so its recall/F1/AUC are n/a)."""
    y_true = np.array([0, 0, 1, 1, 1, 0])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # mel -> mel
            [0.3, 0.6, 0.1],  # mel -> nv
            [0.1, 0.8, 0.1],  # nv  -> nv
            [0.2, 0.7, 0.1],  # nv  -> nv
            [0.6, 0.3, 0.1],  # nv  -> mel
            [0.9, 0.05, 0.05],  # mel -> mel
        ]
    )
    return compute_metrics(y_true, probs, ["mel", "nv", "bcc"])


def test_markdown_has_summary_per_class_and_confusion_tables(metrics):
    text = render_markdown(metrics, title="HAM10000 test split")
    assert text.startswith("# HAM10000 test split\n")
    assert "| Images (n) | 6 |" in text
    assert "| Accuracy | 0.667 |" in text
    assert "| Balanced accuracy (mean recall) | 0.667 |" in text
    assert f"| Melanoma AUC | {metrics['melanoma_auc']:.3f} |" in text
    assert "| Melanoma sensitivity at 80% specificity |" in text
    assert "| Melanoma sensitivity at 90% specificity |" in text
    assert f"| Expected calibration error (top-1) | {metrics['ece']:.3f} |" in text
    # Per class: precision, recall, F1, AUC, support. mel: 2 of 3 predicted mel are mel.
    mel = metrics["per_class"]["mel"]
    assert f"| mel | 0.667 | 0.667 | 0.667 | {mel['auc']:.3f} | 3 |" in text
    assert "| bcc | 0.000 | n/a | n/a | n/a | 0 |" in text
    # Confusion matrix rows: true class, then counts per predicted class.
    assert "| True \\ Predicted | mel | nv | bcc |" in text
    assert "| mel | 2 | 1 | 0 |" in text
    assert "| nv | 1 | 2 | 0 |" in text
    assert "| bcc | 0 | 0 | 0 |" in text


def test_markdown_uses_display_names_and_na_for_missing_values(metrics):
    missing = dict(metrics, melanoma_auc=None, macro_auc=None)
    text = render_markdown(missing, class_names={"mel": "Melanoma", "nv": "Nevus | benign"})
    assert "| Melanoma | 0.667 |" in text
    assert "| Nevus \\| benign | 0.667 |" in text  # a pipe in a name must not split the cell
    assert "| Melanoma AUC | n/a |" in text
    assert "| Macro AUC (one-vs-rest) | n/a |" in text
    assert "| bcc |" in text  # codes without a display name pass through


def test_markdown_rejects_a_dict_that_is_not_a_metrics_dict():
    with pytest.raises(ValueError, match="lacks.*compute_metrics"):
        render_markdown({"accuracy": 0.5})


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_png_is_a_valid_non_trivial_png(metrics, tmp_path, normalize):
    path = plot_confusion_matrix(metrics, tmp_path / "plots" / "cm.png", normalize=normalize)
    data = path.read_bytes()
    assert path == tmp_path / "plots" / "cm.png"
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"]  # no temporary file left


def test_write_report_writes_three_files_that_match_the_metrics(metrics, tmp_path):
    names = {"mel": "Melanoma"}
    paths = write_report(metrics, tmp_path / "eval", stem="test", title="Test", class_names=names)

    assert set(paths) == {"json", "markdown", "confusion_png"}
    assert paths["json"] == tmp_path / "eval" / "test.json"
    assert paths["markdown"] == tmp_path / "eval" / "test.md"
    assert paths["confusion_png"] == tmp_path / "eval" / "test_confusion.png"
    assert all(path.is_file() for path in paths.values())
    assert json.loads(paths["json"].read_text()) == metrics
    expected_md = render_markdown(metrics, title="Test", class_names=names)
    assert paths["markdown"].read_text(encoding="utf-8") == expected_md
    assert paths["confusion_png"].read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "test.json",
        "test.md",
        "test_confusion.png",
    ]


def test_write_report_overwrites_and_refuses_nan_without_writing(metrics, tmp_path):
    write_report(metrics, tmp_path)
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(ValueError):
        write_report(dict(metrics, ece=math.nan), tmp_path)
    assert (tmp_path / "metrics.json").read_text() == before
    assert not list(tmp_path.glob(".*.tmp"))
