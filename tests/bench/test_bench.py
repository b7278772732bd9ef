"""The benchmark harness and its CI gate, on the tiny checkpoint and two exported artifacts."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from skinedge.bench.gates import Gates, check_gates, load_gates
from skinedge.bench.harness import BenchSettings, run_bench
from skinedge.bench.report import write_outputs
from skinedge.bench.rows import BenchRow

FAST = BenchSettings(threads=1, warmup=1, iterations=5)


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoint, tmp_path_factory):
    from skinedge.export import export_checkpoint

    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    out = tmp_path_factory.mktemp("bench-exports")
    onnx = export_checkpoint(tiny_checkpoint, "onnx", out_dir=out, verify_images=14).path
    ov = export_checkpoint(tiny_checkpoint, "openvino", precision="int8", out_dir=out,
                           calibration_images=40, verify_images=14).path
    return onnx, ov


@pytest.fixture(scope="module")
def bench(tiny_checkpoint, artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return run_bench([tiny_checkpoint, *artifacts], exports=[("tensorrt", "fp16")],
                     out_dir=out, settings=FAST), out


@pytest.mark.slow
def test_rows_measure_latency_memory_and_parity(bench) -> None:
    result, _ = bench
    rows = {r.label: r for r in result.rows}
    assert list(rows) == ["torch-fp32", "onnx-fp32", "openvino-int8", "tensorrt-fp16"]
    for label in ("torch-fp32", "onnx-fp32", "openvino-int8"):
        row = rows[label]
        assert row.status == "ok", row
        assert 0 < row.p50_ms <= row.p95_ms <= row.p99_ms
        assert row.cold_ms > 0 and row.load_s > 0 and row.peak_rss_mb > 0
        assert row.size_mb > 0 and row.threads == 1
        assert 0 <= row.balanced_accuracy <= 1
    assert rows["torch-fp32"].reference and rows["torch-fp32"].export is None
    assert rows["onnx-fp32"].export.status == "passed"  # read from its .export.json
    assert rows["onnx-fp32"].flip_rate == 0
    assert abs(rows["onnx-fp32"].balanced_accuracy_drop) < 1e-9
    assert rows["tensorrt-fp16"].status in ("skipped", "ok")
    assert result.test["images"] == 14  # the tiny manifest's test split


@pytest.mark.slow
def test_outputs_json_markdown_junit_chart(bench) -> None:
    result, out = bench
    checks = check_gates(Gates(rules=[{"match": "*", "p95_ms": 1e6, "allow_skipped": True}]),
                         result.rows)
    files = write_outputs(result, out, checks, command="skinedge bench ...")
    doc = json.loads(files["json"].read_text())
    assert doc["rows"] == [r.to_dict() for r in result.rows]
    assert {"p50_ms", "flip_rate", "balanced_accuracy_drop", "export"} <= set(doc["rows"][1])
    assert "onnxruntime" in doc["versions"]
    md = files["markdown"].read_text()
    assert "| openvino-int8 | ok |" in md and "Gate: " in md
    suite = ET.parse(files["junit"]).getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(checks)
    assert files["chart"].stat().st_size > 1000


@pytest.mark.slow
def test_gate_passes_and_fails_with_readable_reasons(bench, tmp_path) -> None:
    result, _ = bench
    passing = tmp_path / "pass.yaml"
    passing.write_text("require: [onnx-fp32, openvino-int8]\nrules:\n"
                       "  - match: '*-fp32'\n    max_flip_rate: 0\n    p95_ms: 60000\n"
                       "  - match: '*'\n    allow_skipped: true\n")
    assert all(c.passed for c in check_gates(load_gates(passing), result.rows))
    failing = tmp_path / "fail.yaml"
    failing.write_text("require: [tflite-int8]\nrules:\n  - match: openvino-int8\n"
                       "    p95_ms: 0.0001\n  - match: tensorrt-*\n    p95_ms: 5\n")
    failed = [c for c in check_gates(load_gates(failing), result.rows) if not c.passed]
    messages = " | ".join(c.message for c in failed)
    assert "tflite-int8: required but not benchmarked" in messages
    assert "openvino-int8: p95_ms" in messages and "> 0.0001ms" in messages
    if result.rows[-1].status == "skipped":  # TensorRT off a GPU fails unless allowed
        assert "tensorrt-fp16: skipped" in messages


def test_gate_file_typos_are_refused(tmp_path) -> None:
    bad = tmp_path / "gates.yaml"
    bad.write_text("rules:\n  - match: '*'\n    p95: 10\n")
    with pytest.raises(ValueError, match="rules.0.p95"):
        load_gates(bad)


@pytest.mark.slow
def test_cli_gate_exits_nonzero_when_a_budget_is_missed(tiny_checkpoint, artifacts, tmp_path) -> None:
    from skinedge.cli.main import app

    gate = tmp_path / "gates.yaml"
    gate.write_text("rules:\n  - match: onnx-fp32\n    p95_ms: 0.0001\n")
    runner = CliRunner()
    args = ["bench", str(tiny_checkpoint), str(artifacts[0]), "--out", str(tmp_path / "b"),
            "--iterations", "3", "--warmup", "1", "--gate", str(gate)]
    failed = runner.invoke(app, args)
    assert failed.exit_code == 1, failed.output
    assert "gate failed" in failed.output and "onnx-fp32: p95_ms" in failed.output
    assert (tmp_path / "b" / "junit.xml").is_file()
    gate.write_text("rules:\n  - match: onnx-fp32\n    p95_ms: 60000\n    max_flip_rate: 0\n")
    passed = runner.invoke(app, args)
    assert passed.exit_code == 0, passed.output
    assert "gate passed" in passed.output


def test_profiles_are_checked_against_this_machine(tmp_path) -> None:
    import os

    from skinedge.bench.profiles import load_profile

    assert load_profile("single-core") == {"threads": 1, "cpus": [0]}
    with pytest.raises(ValueError, match="no profile"):
        load_profile("pixel-99")
    custom = tmp_path / "p.yaml"
    custom.write_text(f"huge:\n  threads: 2\n  cpus: [{max(os.sched_getaffinity(0)) + 1000}]\n")
    with pytest.raises(ValueError, match="may only use"):
        load_profile(f"{custom}:huge")


def test_shipped_example_gates_load() -> None:
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "examples" / "gates").glob("*.yaml")):
        gates = load_gates(path)
        assert gates.rules and gates.require, path


def test_required_rows_must_be_ok_not_just_present() -> None:
    rows = [BenchRow("tflite-int8", None, "failed parity", "11% flips")]
    checks = check_gates(Gates(require=["tflite-int8"]), rows)
    assert [c.passed for c in checks] == [False]
    assert "tflite-int8: failed parity (11% flips)" in checks[0].message


@pytest.mark.slow
def test_an_export_that_fails_parity_is_still_measured(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    from skinedge.export import TARGETS, Tolerance

    if TARGETS["onnx"].missing_backend("int8"):
        pytest.skip("onnx/nncf not installed")
    monkeypatch.setitem(TARGETS["onnx"].tolerances, "int8", Tolerance(0.0, 0.0))
    result = run_bench([tiny_checkpoint], exports=[("onnx", "int8")], out_dir=tmp_path,
                       settings=FAST, calibration_images=20)
    row = result.rows[1]
    assert row.label == "onnx-int8" and row.status == "failed parity"
    assert "rejected" in str(row.model) and row.p50_ms > 0 and row.flip_rate is not None
    assert "probabilities differ" in row.reason and row.export.status == "failed"


@pytest.mark.slow
def test_a_requested_export_that_fails_makes_bench_exit_1_with_its_hint(
        tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """The reports are written, the row says why, and the install hint keeps its brackets."""
    import skinedge.export
    from skinedge.cli.main import app
    from skinedge.errors import MissingBackendError

    def export_checkpoint(*args, **kwargs):
        raise MissingBackendError("litert_torch is not installed; pip install 'skinedge[tflite]'")

    monkeypatch.setattr(skinedge.export, "export_checkpoint", export_checkpoint)
    out = tmp_path / "b"
    result = CliRunner().invoke(app, ["bench", str(tiny_checkpoint), "--export", "tflite:int8",
                                      "--out", str(out), "--iterations", "3", "--warmup", "1",
                                      "--limit", "8"])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "error: tflite-int8 could not be measured" in output
    assert "pip install 'skinedge[tflite]'" in output
    rows = {r["label"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert rows["tflite-int8"]["status"] == "failed" and rows["torch-fp32"]["status"] == "ok"
