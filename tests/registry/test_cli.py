"""``skinedge registry ...`` through typer's CliRunner: every command, and bad input with its
message and exit code."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from skinedge.cli.main import app
from skinedge.registry import Registry

runner = CliRunner()
WIDE = {"COLUMNS": "300"}


def run(*args, env=None):
    result = runner.invoke(app, ["registry", *map(str, args)], env={**WIDE, **(env or {})})
    return result, " ".join(result.output.split())


@pytest.fixture
def reg_path(tmp_path):
    return tmp_path / "registry"


def test_add_list_show_promote_rollback_audit_verify(reg_path, workspace, tmp_path):
    ws0, ws1 = workspace(0), workspace(1)
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps({"passed": True, "checks": [{"name": "latency", "passed": True}]}))
    result, out = run("add", ws0["checkpoint"], "--artifact", ws0["onnx"], "--report",
                      f"eval={ws0['report']}", "--manifest", ws0["manifest"], "--metric",
                      "balanced_accuracy=0.81", "--gates", gates, "--notes", "baseline",
                      "--registry", reg_path)
    assert result.exit_code == 0, out
    assert "registered v0001" in out and "gates passed" in out
    result, out = run("add", ws1["checkpoint"], "--artifact", ws1["onnx"], "--parent", "v0001",
                      "--source", "retrain", "--registry", reg_path)
    assert result.exit_code == 0, out
    result, out = run("promote", "v0001", "--deployment", "server", "--reason", "launch",
                      "--registry", reg_path)
    assert result.exit_code == 0, out
    assert "server: nothing -> v0001 (artifacts/m_fp32.onnx)" in out

    result, out = run("list", "--registry", reg_path)
    assert result.exit_code == 0, out
    rows = {line.split()[1]: line for line in result.output.splitlines()
            if line.strip().startswith("│ v")}
    assert set(rows) == {"v0001", "v0002"}
    assert "balanced_accuracy 0.81" in rows["v0001"] and "passed" in rows["v0001"]
    assert "server" in rows["v0001"] and "server" not in rows["v0002"]
    assert "retrain" in rows["v0002"] and "v0001" in rows["v0002"].split("│")[4]
    result, _ = run("list", "--json", "--registry", reg_path)
    listed = json.loads(result.output)
    assert [(v["id"], v["deployments"]) for v in listed] == [("v0001", ["server"]),
                                                            ("v0002", [])]

    result, out = run("show", "v0002", "--registry", reg_path)
    assert result.exit_code == 0, out
    assert "parent: v0001" in out and "source: retrain" in out
    assert "test_efficientnet fp32, 32 px, classes mel, nv" in out
    result, _ = run("show", "v0001", "--json", "--registry", reg_path)
    assert json.loads(result.output)["reports"] == {"eval": "reports/eval.json"}

    result, out = run("promote", "v0002", "--deployment", "server", "--by", "dr-x",
                      "--registry", reg_path)
    assert "server: v0001 -> v0002" in out
    result, out = run("rollback", "--deployment", "server", "--reason", "drift",
                      "--registry", reg_path)
    assert result.exit_code == 0, out
    assert "server: v0002 -> v0001" in out

    result, out = run("verify", "v0001", "--registry", reg_path)
    assert result.exit_code == 0 and "every file as registered" in out
    (reg_path / "versions/v0001/data/manifest.json").write_text("{}")
    result, out = run("verify", "v0001", "--registry", reg_path)
    assert result.exit_code == 1, out
    assert "manifest.json: changed since registration" in out and "1 problem(s)" in out

    result, out = run("audit", "--registry", reg_path)
    assert result.exit_code == 0, out
    for words in ("register done v0001", "promote done v0001 server", "by dr-x",
                  "rollback done v0001 server (from v0002)", "reason drift"):
        assert words in out
    result, _ = run("audit", "--json", "--last", "2", "--registry", reg_path)
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [(e["action"], e["phase"]) for e in lines] == [("rollback", "started"),
                                                          ("rollback", "done")]


def test_env_var_names_the_registry(reg_path, workspace):
    ws = workspace()
    result, out = run("add", ws["checkpoint"], env={"SKINEDGE_REGISTRY": str(reg_path)})
    assert result.exit_code == 0, out
    result, out = run("list", env={"SKINEDGE_REGISTRY": str(reg_path)})
    assert result.exit_code == 0 and "v0001" in out


def test_failed_gates_refused_unless_forced_with_a_reason(reg_path, workspace, tmp_path):
    ws = workspace()
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps({"passed": False, "checks": [{"name": "parity",
                                                               "passed": False}]}))
    run("add", ws["checkpoint"], "--artifact", ws["onnx"], "--gates", gates,
        "--registry", reg_path)
    result, out = run("promote", "v0001", "--deployment", "server", "--registry", reg_path)
    assert result.exit_code == 2, out
    assert "error: v0001 failed its gates (failed: parity" in out and "--force" in out
    result, out = run("promote", "v0001", "--deployment", "server", "--force",
                      "--registry", reg_path)
    assert result.exit_code == 2 and "only with a --reason" in out
    result, out = run("promote", "v0001", "--deployment", "server", "--force", "--reason",
                      "signed off by the clinical lead", "--registry", reg_path)
    assert result.exit_code == 0, out
    assert "forced past failed gates" in out
    result, out = run("audit", "--registry", reg_path)
    assert out.count("promote refused") == 2 and "promote done forced v0001" in out


@pytest.mark.parametrize("args, message", [
    (["show", "v0007"], "error: no version 'v0007' in {reg}; known versions: v0001"),
    (["verify", "v12"], "error: no version 'v12' in {reg}; known versions: v0001"),
    (["promote", "v0009", "--deployment", "server"], "no version 'v0009'"),
    (["rollback", "--deployment", "android"],
     "error: no deployment 'android' in {reg}; known deployments: none yet"),
    (["promote", "v0001", "--deployment", "Bad Name"], "error: deployment 'Bad Name': use a"),
    (["add", "{ckpt}", "--report", "eval"], "error: --report 'eval': write NAME=VALUE"),
    (["add", "{ckpt}", "--metric", "auc=high"], "error: --metric 'auc=high': 'high' is not"),
    (["add", "{ckpt}", "--source", "magic"], "error: source 'magic': choose one of train,"),
    (["add", "{ckpt}", "--artifact", "{ckpt}/nope.onnx"], "nope.onnx: no such artifact"),
    (["add", "{ckpt}/missing"], "is not a skinedge checkpoint"),
])
def test_bad_input_is_a_clear_error(reg_path, workspace, args, message):
    ws = workspace()
    Registry(reg_path).register(ws["checkpoint"])
    fill = {"reg": reg_path, "ckpt": ws["checkpoint"]}
    result, out = run(*[a.format(**fill) for a in args], "--registry", reg_path)
    assert result.exit_code == 2, out
    assert message.format(**fill) in out
    assert "Traceback" not in out


def test_missing_registry(tmp_path):
    result, out = run("list", "--registry", tmp_path / "nowhere")
    assert result.exit_code == 2, out
    assert f"error: model registry {tmp_path / 'nowhere'} does not exist" in out
    assert "--registry or SKINEDGE_REGISTRY" in out
    result, out = run("list", env={"SKINEDGE_REGISTRY": ""})
    assert result.exit_code == 2 and "Missing option '--registry'" in out


def test_torn_audit_line_is_shown_not_raised(reg_path, workspace):
    Registry(reg_path).register(workspace()["checkpoint"])
    with open(reg_path / "audit.jsonl", "a") as f:
        f.write('{"action": "prom')
    result, out = run("audit", "--registry", reg_path)
    assert result.exit_code == 0, out
    assert "unreadable line (torn by an interrupted write)" in out and "audit.jsonl:3" in out
