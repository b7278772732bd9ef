"""The registry's library API: register, list, show, verify, promote, rollback, audit."""

from __future__ import annotations

import json
import sys

import pytest

from skinedge.errors import ConfigError, NotFoundError
from skinedge.registry import Registry, RegistryError, Version
from skinedge.utils.io import sha256_file


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


def actions(reg: Registry) -> list[tuple]:
    return [(e.get("action"), e.get("phase"), e.get("version"), e.get("deployment"))
            for e in reg.audit()]


def test_register_copies_hashes_and_summarises(reg, workspace):
    ws = workspace()
    v = reg.register(ws["checkpoint"], [ws["onnx"], ws["xml"]], reports={"eval": ws["report"]},
                     manifest=ws["manifest"], metrics={"balanced_accuracy": 0.8}, notes="first")
    assert isinstance(v, Version) and v.id == "v0001"
    assert v.path == reg.path / "versions" / "v0001" and v.source == "train"
    assert v.checkpoint == v.path / "checkpoint"
    assert v.artifacts == [v.path / "artifacts/m_fp32.onnx", v.path / "artifacts/m_fp32.xml"]
    assert v.reports == {"eval": v.path / "reports/eval.json"}
    assert v.manifest == v.path / "data/manifest.json"
    # Each artifact brings what it needs to load: its export report and the files it lists.
    assert set(v.files) == {
        "checkpoint/card.json", "checkpoint/model.safetensors", "artifacts/m_fp32.onnx",
        "artifacts/m_fp32.onnx.export.json", "artifacts/m_fp32.xml", "artifacts/m_fp32.bin",
        "artifacts/m_fp32.openvino.export.json", "reports/eval.json", "data/manifest.json"}
    for rel, sha in v.files.items():
        assert sha256_file(v.path / rel) == sha
    assert sha256_file(v.path / "artifacts/m_fp32.bin") == sha256_file(
        ws["xml"].with_suffix(".bin"))
    assert v.card["architecture"] == "test_efficientnet" and v.card["input_size"] == 32
    assert v.card["classes"] == ["mel", "nv"] and len(v.card["weights_sha256"]) == 64
    assert reg.get("v0001") == v == reg.get("1") and reg.versions() == [v]
    assert not list((reg.path / "versions").glob(".staging-*"))
    assert actions(reg) == [("register", "started", "v0001", None),
                            ("register", "done", "v0001", None)]


def test_copied_export_report_still_checks_the_artifact(reg, workspace):
    """load_runtime's hash check finds the copied report beside the copied artifact."""
    from skinedge.runtimes.registry import check_artifact_files

    ws = workspace()
    v = reg.register(None, [ws["xml"]])
    assert check_artifact_files(v.artifacts[0]) == [v.path / "artifacts/m_fp32.openvino.export.json"]


def test_ids_grow_and_parent_is_checked(reg, workspace):
    first = reg.register(workspace(0)["checkpoint"])
    second = reg.register(workspace(1)["checkpoint"], parent="v0001", source="retrain")
    assert (first.id, second.id, second.parent, second.source) == (
        "v0001", "v0002", "v0001", "retrain")
    with pytest.raises(RegistryError, match=r"no version 'v0009'.*known versions: v0001, v0002"):
        reg.register(workspace(2)["checkpoint"], parent="v0009")
    assert [v.id for v in reg.versions()] == ["v0001", "v0002"]
    assert ("register", "refused", None, None) in actions(reg)


@pytest.mark.parametrize("bad, message", [
    ({"source": "magic"}, "source 'magic'"),
    ({"checkpoint": None}, "nothing to register"),
    ({"reports": {"../x": "eval.json"}}, "plain file name"),
])
def test_bad_register_input_is_refused(reg, workspace, bad, message):
    ws = workspace()
    kwargs = {"checkpoint": ws["checkpoint"], **bad}
    if "reports" in bad:
        kwargs["reports"] = {name: ws["report"] for name in bad["reports"]}
    with pytest.raises(RegistryError, match=message):
        reg.register(**kwargs)
    assert not (reg.path / "versions").exists() or not reg.versions()


def test_artifact_that_failed_export_verification_is_refused(reg, tmp_path):
    from tests.registry.conftest import make_export

    bad = make_export(tmp_path / "rejected", "m", "onnx", {".onnx": b"x"}, status="failed")
    with pytest.raises(RegistryError, match="failed verification"):
        reg.register(None, [bad])
    (tmp_path / "rejected" / "m.onnx").unlink()
    with pytest.raises(NotFoundError, match="no such artifact"):
        reg.register(None, [bad])


def test_missing_file_listed_by_the_export_report_is_refused(reg, workspace):
    ws = workspace()
    ws["xml"].with_suffix(".bin").unlink()
    with pytest.raises(RegistryError, match=r"lists m_fp32.bin .* missing"):
        reg.register(None, [ws["xml"]])


def test_unknown_version_lists_known_ids(reg, workspace):
    reg.register(workspace()["checkpoint"])
    with pytest.raises(RegistryError, match="no version 'v0042'.*known versions: v0001"):
        reg.get("v0042")


def test_missing_registry_is_named(tmp_path):
    missing = Registry(tmp_path / "nowhere")
    for call in (missing.versions, lambda: missing.get("v0001"), missing.audit,
                 lambda: missing.promote("v0001", "server"), missing.deployments):
        with pytest.raises(RegistryError, match=f"model registry {tmp_path / 'nowhere'} does "
                                                "not exist"):
            call()
    assert issubclass(RegistryError, ConfigError) and RegistryError.exit_code == 2


def test_verify_finds_changed_missing_and_added_files(reg, workspace):
    v = reg.register(workspace()["checkpoint"], [workspace(1)["onnx"]])
    assert reg.verify(v.id) == []
    (v.path / "artifacts/m_fp32.onnx").write_bytes(b"tampered")
    (v.path / "checkpoint/card.json").unlink()
    (v.path / "reports").mkdir()
    (v.path / "reports/extra.txt").write_text("x")
    problems = reg.verify(v.id)
    assert len(problems) == 3, problems
    assert any("m_fp32.onnx: changed" in p for p in problems)
    assert any("card.json: missing" in p for p in problems)
    assert any("extra.txt: not part" in p for p in problems)


def test_promote_and_rollback_keep_history(reg, workspace):
    ids = []
    for seed in range(3):
        ws = workspace(seed)
        ids.append(reg.register(ws["checkpoint"], [ws["onnx"]]).id)
    assert reg.current("server") is None and reg.deployments() == {}
    reg.promote(ids[0], "server", by="alice", reason="first")
    reg.promote(ids[1], "server", by="bob")
    pointer = reg.promote(ids[2], "server")
    assert pointer["version"] == "v0003" and pointer["artifact"] == "artifacts/m_fp32.onnx"
    assert [h["version"] for h in pointer["history"]] == ["v0002", "v0001"]
    assert "history" not in pointer["history"][0]
    assert reg.pointer("server") == pointer and reg.current("server").id == "v0003"
    assert reg.artifact_path(pointer) == reg.get("v0003").artifacts[0]
    back = reg.rollback("server", by="carol", reason="bad night")
    assert back["version"] == "v0002" and back["rolled_back_from"] == "v0003"
    assert [h["version"] for h in back["history"]] == ["v0001"]
    assert reg.rollback("server")["version"] == "v0001"
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("server")
    with pytest.raises(RegistryError, match=r"no deployment 'android'.*known deployments: "
                                            r"server"):
        reg.rollback("android")
    with pytest.raises(RegistryError, match="already serves v0001"):
        reg.promote("v0001", "server")
    log = [a for a in actions(reg) if a[0] != "register"]
    assert log == [
        ("promote", "started", "v0001", "server"), ("promote", "done", "v0001", "server"),
        ("promote", "started", "v0002", "server"), ("promote", "done", "v0002", "server"),
        ("promote", "started", "v0003", "server"), ("promote", "done", "v0003", "server"),
        ("rollback", "started", "v0002", "server"), ("rollback", "done", "v0002", "server"),
        ("rollback", "started", "v0001", "server"), ("rollback", "done", "v0001", "server"),
        ("rollback", "refused", None, "server"), ("rollback", "refused", None, "android"),
        ("promote", "refused", "v0001", "server")]
    done = [e for e in reg.audit() if e.get("phase") == "done" and e["action"] == "promote"]
    assert done[0]["by"] == "alice" and done[0]["reason"] == "first" and done[0]["from"] is None
    assert done[1]["from"] == "v0001"


def test_failed_gates_need_force_and_a_reason(reg, workspace):
    ws = workspace()
    gates = {"passed": False, "report": "reports/gates.json",
             "checks": [{"name": "test_split", "passed": False}]}
    v = reg.register(ws["checkpoint"], [ws["onnx"]], gates=gates)
    with pytest.raises(RegistryError, match=r"failed its gates \(failed: test_split"):
        reg.promote(v.id, "server")
    with pytest.raises(RegistryError, match="--reason"):
        reg.promote(v.id, "server", force=True)
    assert reg.pointer("server") is None
    pointer = reg.promote(v.id, "server", force=True, reason="clinic asked, signed off")
    assert pointer["forced"] is True
    refused = [e for e in reg.audit() if e.get("phase") == "refused"]
    assert len(refused) == 2 and all(e["version"] == v.id for e in refused)
    assert "failed its gates" in refused[0]["error"]
    done = reg.audit()[-1]
    assert done["phase"] == "done" and done["forced"] is True


def test_changed_version_is_not_promoted(reg, workspace):
    ws = workspace()
    v = reg.register(ws["checkpoint"], [ws["onnx"]])
    (v.path / "artifacts/m_fp32.onnx").unlink()
    with pytest.raises(RegistryError, match="files changed since registration.*missing"):
        reg.promote(v.id, "server")
    assert reg.pointer("server") is None
    assert reg.audit()[-1]["phase"] == "refused"


def test_artifact_choice(reg, workspace):
    ws = workspace()
    both = reg.register(ws["checkpoint"], [ws["onnx"], ws["xml"]])
    assert reg.promote(both.id, "server")["artifact"] == "artifacts/m_fp32.onnx"
    with pytest.raises(RegistryError, match=r"choose one with --artifact \(artifacts/"
                                            r"m_fp32.onnx, artifacts/m_fp32.xml\)"):
        reg.promote(both.id, "android")
    assert reg.promote(both.id, "edge", artifact="m_fp32.xml")["artifact"] == \
        "artifacts/m_fp32.xml"
    with pytest.raises(RegistryError, match="has no artifact 'nope.tflite'.*or --artifact "
                                            "checkpoint"):
        reg.promote(both.id, "edge", artifact="nope.tflite")
    only_checkpoint = reg.register(workspace(1)["checkpoint"])
    pointer = reg.promote(only_checkpoint.id, "lab")
    assert pointer["artifact"] == "checkpoint"
    assert reg.artifact_path(pointer) == only_checkpoint.checkpoint
    with pytest.raises(RegistryError, match="deployment 'Bad/Name'"):
        reg.promote(both.id, "Bad/Name")
    assert set(reg.deployments()) == {"server", "edge", "lab"}


def test_torn_audit_line_is_reported_and_the_next_line_is_whole(reg, workspace):
    v = reg.register(workspace()["checkpoint"])
    with open(reg.path / "audit.jsonl", "a") as f:
        f.write('{"action": "promote", "pha')  # a writer killed mid-append
    entries = reg.audit()
    assert entries[-1]["unreadable"].startswith(f"{reg.path / 'audit.jsonl'}:3:")
    reg.promote(v.id, "server")
    entries = reg.audit()
    assert [e.get("unreadable") is not None for e in entries] == [False, False, True, False,
                                                                  False]
    assert entries[-1]["phase"] == "done"


def test_leftover_staging_is_cleaned_by_the_next_writer(reg, workspace):
    reg.register(workspace(0)["checkpoint"])
    left = reg.path / "versions" / ".staging-deadbeef"
    (left / "checkpoint").mkdir(parents=True)
    (left / "checkpoint" / "model.safetensors").write_bytes(b"half")
    assert [v.id for v in reg.versions()] == ["v0001"]  # readers never see it
    reg.register(workspace(1)["checkpoint"])
    assert not left.exists()
    assert [v.id for v in reg.versions()] == ["v0001", "v0002"]


def test_version_json_is_the_record(reg, workspace):
    v = reg.register(workspace()["checkpoint"], gates={"passed": True})
    doc = json.loads((v.path / "version.json").read_text())
    assert doc["schema"] == "skinedge.registry-version/1" and doc["gates"] == {"passed": True}
    assert Version.from_dict(doc, v.path) == v and v.to_dict() == doc
    assert v.gates_passed is True


NO_TORCH = """
import pathlib, sys, tempfile
from skinedge.registry import Registry
reg = Registry(pathlib.Path(tempfile.mkdtemp()) / "r")
v = reg.register(pathlib.Path(sys.argv[1]))
reg.promote(v.id, "server"); reg.verify(v.id); reg.audit(); reg.versions()
assert "torch" not in sys.modules, "torch imported"
"""


def test_registry_use_imports_no_torch(workspace):
    """The service and a runtime-only install use the registry: no torch at import or use."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", NO_TORCH, str(workspace()["checkpoint"])],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_concurrent_writers_get_distinct_versions(reg, workspace):
    """Writers serialise on the lock: four registering at once get four whole versions."""
    from concurrent.futures import ThreadPoolExecutor

    sources = [workspace(seed) for seed in range(4)]
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda ws: reg.register(ws["checkpoint"], [ws["onnx"]]), sources))
    assert sorted(v.id for v in made) == ["v0001", "v0002", "v0003", "v0004"]
    assert all(reg.verify(v.id) == [] for v in made)
    weights = {v.card["weights_sha256"] for v in made}
    assert len(weights) == 4


def test_a_file_in_the_checkpoint_names_its_folder(reg, workspace):
    ws = workspace()
    v = reg.register(ws["checkpoint"] / "card.json")
    assert {"checkpoint/card.json", "checkpoint/model.safetensors"} <= set(v.files)
