"""A gate that checks nothing must not pass: empty gates, budget-less rules and rules whose
glob matches no row are refused or fail (rows built directly: no benchmark runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from skinedge.bench.gates import Gates, check_gates, load_gates
from skinedge.bench.rows import BenchRow
from skinedge.errors import ConfigError

ROWS = [BenchRow("torch-fp32", Path("ckpt"), reference=True, p95_ms=20.0),
        BenchRow("onnx-fp32", Path("m.onnx"), p95_ms=12.0, flip_rate=0.0)]


@pytest.mark.parametrize("text", ["", "{}\n", "require: []\nrules: []\n"])
def test_an_empty_gate_file_is_refused(tmp_path, text) -> None:
    gate = tmp_path / "gate.yaml"
    gate.write_text(text)
    with pytest.raises(ConfigError, match=rf"{gate}: .*the gate checks nothing"):
        load_gates(gate)


def test_a_rule_without_a_budget_is_refused(tmp_path) -> None:
    gate = tmp_path / "gate.yaml"
    gate.write_text("rules:\n  - match: 'onnx-*'\n")
    with pytest.raises(ConfigError, match=r"rule 'onnx-\*' sets no budget: add one of p50_ms"):
        load_gates(gate)


def test_a_rule_that_matches_no_row_fails() -> None:
    checks = check_gates(Gates(rules=[{"match": "onxn-*", "p95_ms": 100}]), ROWS)
    assert [(c.label, c.check, c.passed) for c in checks] == [("onxn-*", "matches", False)]
    assert "matches no benchmarked row (rows: onnx-fp32, torch-fp32)" in checks[0].message


def test_rules_that_match_still_check_their_budgets() -> None:
    checks = check_gates(Gates(rules=[{"match": "*-fp32", "p95_ms": 15}]), ROWS)
    assert {(c.label, c.passed) for c in checks} == {("torch-fp32", False), ("onnx-fp32", True)}


def test_a_device_row_without_scores_fails_an_accuracy_budget_saying_why() -> None:
    row = BenchRow("onnx-fp32@ssh:pi@board", Path("m.onnx"), p95_ms=30.0, device="ssh:pi@board")
    checks = check_gates(Gates(rules=[{"match": "*", "p95_ms": 50, "max_flip_rate": 0.03}]),
                         [row])
    assert {c.check: c.passed for c in checks} == {"p95_ms": True, "max_flip_rate": False}
    message = next(c.message for c in checks if not c.passed)
    assert "flip_rate was not measured (the device ran random inputs" in message
    assert "--device-images" in message


def test_only_allow_skipped_is_a_rule() -> None:
    gates = Gates(require=["onnx-fp32"], rules=[{"match": "*", "allow_skipped": True}])
    assert all(c.passed for c in check_gates(gates, ROWS))


def test_the_cli_refuses_an_empty_gate_before_benchmarking(tmp_path) -> None:
    from skinedge.cli.main import app

    gate = tmp_path / "gate.yaml"
    gate.write_text("")
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "absent"), "--gate", str(gate),
                                      "--out", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert "the gate checks nothing" in " ".join(result.output.split())
    assert not (tmp_path / "b").exists()


def test_a_gate_can_bound_the_flips_of_confident_answers_apart() -> None:
    """Near-ties moving (flip_rate 4%) pass a rule on confident answers that none of changed."""
    rows = [BenchRow("tflite-int8", Path("m.tflite"), p95_ms=5.0, flip_rate=0.04,
                     confident_flip_rate=0.0),
            BenchRow("tflite-int8-aeq", Path("a.tflite"), p95_ms=5.0, flip_rate=0.05,
                     confident_flip_rate=0.02)]
    checks = check_gates(Gates(rules=[{"match": "*-int8*", "max_confident_flip_rate": 0.01}]),
                         rows)
    assert [(c.label, c.passed) for c in checks] == [("tflite-int8", True),
                                                    ("tflite-int8-aeq", False)]
    assert "confident_flip_rate 0.02 > 0.01" in checks[1].message
