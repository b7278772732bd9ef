"""The compression report on tiny models: every row measured at every thread count in one run,
the issue's targets checked, JSON and Markdown written."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from skinedge.models import load_card  # noqa: E402
from skinedge.pipelines.compression_report import (  # noqa: E402
    best_member,
    build_compression_report,
    count_params_and_macs,
)


def test_best_member_is_chosen_on_validation(teacher):
    card = load_card(teacher)
    scores = [m.metrics["balanced_accuracy"] for m in card.members]
    assert best_member(teacher) == teacher / card.members[scores.index(max(scores))].path


def test_ensemble_costs_the_sum_of_its_members(teacher):
    params, macs = count_params_and_macs(teacher)
    members = [count_params_and_macs(teacher / m.path) for m in load_card(teacher).members]
    assert params == sum(p for p, _ in members) and macs == sum(m for _, m in members) > 0


def test_report_measures_every_model_at_every_thread_count(teacher, tiny_checkpoint, tmp_path):
    from skinedge.export import export_checkpoint

    student = teacher / "members" / "01"
    fp32 = export_checkpoint(student, "openvino", out_dir=tmp_path / "x", verify_images=0).path
    int8 = export_checkpoint(student, "openvino", precision="int8", out_dir=tmp_path / "x",
                             calibration_images=24, verify_images=0).path
    report = build_compression_report(teacher, student, [int8], fp32=[fp32], threads=(1, 2),
                                      warmup=1, iterations=3, out_dir=tmp_path / "report")
    roles = [r["role"] for r in report.rows]
    assert roles == ["teacher ensemble", "best single teacher", "student fp32", "student fp32",
                     "student int8"]
    for row in report.rows:
        assert row["status"] == "ok", row
        assert set(row["latency"]) == {"1", "2"}
        assert all(v["p50_ms"] > 0 for v in row["latency"].values())
        assert set(row["recall"]) == set(load_card(student).classes)
        assert 0 <= row["ece"] <= 1 and row["params"] > 0
    assert report.rows[0]["agreement"] == 1.0
    targets = [c["target"] for c in report.checks]
    assert len(targets) == 5 and sum("faster" in t for t in targets) == 2
    doc = json.loads(report.files["json"].read_text())
    assert [r["label"] for r in doc["rows"]] == [r["label"] for r in report.rows]
    markdown = report.files["markdown"].read_text()
    assert "p50 ms (2 thr)" in markdown and "Recall per class" in markdown
    verdicts = [line.rsplit("|", 2)[-2].strip() for line in markdown.splitlines()
                if line.startswith(f"| {report.rows[-1]['label']} |") and line.endswith(("yes |", "NO |"))]
    assert verdicts == ["yes" if c["ok"] else "NO" for c in report.checks]
