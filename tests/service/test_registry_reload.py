"""The service on a model registry: it serves the deployment's current version, swaps in a
promoted one without a restart (requests in flight finish on the old model), keeps serving
when a promoted version cannot be loaded, and follows a rollback."""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image

from skinedge.registry import Registry

pytest.importorskip("onnxruntime")


@pytest.fixture
def registry(tmp_path, served_onnx, tiny_checkpoint) -> Registry:
    """v0001: the ONNX export with its checkpoint; v0002: the checkpoint alone (served by the
    torch runtime); v0003: an .onnx that is no model (registers, verifies, cannot load)."""
    reg = Registry(tmp_path / "registry")
    reg.register(tiny_checkpoint, [served_onnx])
    reg.register(tiny_checkpoint, source="retrain", parent="v0001")
    broken = tmp_path / "broken" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an onnx graph")
    reg.register(None, [broken], source="import")
    reg.promote("v0001", "server")
    return reg


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 48), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def reloads(client, outcome: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'skinedge_model_reloads_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_promotion_is_served_without_restart(registry, make_settings):
    from fastapi.testclient import TestClient

    from skinedge.service import create_app
    from tests.service.conftest import add_accounts

    settings = make_settings(model=None, explain=None, registry=registry.path,
                             deployment="server", registry_poll_seconds=0.05)
    accounts = add_accounts(settings)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        assert ready == {"status": "ready", "model": "onnx-fp32",
                         "registry_version": "v0001", "deployment": "server"}
        info = client.get("/api/v1/model", headers=accounts.auth()).json()
        assert (info["registry_version"], info["deployment"], info["explain"]) == (
            "v0001", "server", True)

        # A request in flight on v0001 while v0002 is promoted and swapped in.
        old = client.app.state.model
        entered, release = threading.Event(), threading.Event()
        predict = old.predict

        def slow_predict(image):
            entered.set()
            release.wait(60)
            return predict(image)

        old.predict = slow_predict
        answers = {}
        upload = threading.Thread(target=lambda: answers.setdefault("case", client.post(
            "/api/v1/cases", files={"image": ("x.png", png(), "image/png")},
            headers=accounts.auth())))
        upload.start()
        assert entered.wait(30)
        registry.promote("v0002", "server", reason="retrained")
        wait_for(lambda: client.get("/readyz").json()["registry_version"] == "v0002")
        assert client.app.state.model is not old
        release.set()
        upload.join(30)
        case = answers["case"]
        assert case.status_code == 201, case.text
        assert case.json()["model"]["label"] == "onnx-fp32"  # finished on the old model
        new_case = client.post("/api/v1/cases", files={"image": ("y.png", png(), "image/png")},
                               headers=accounts.auth())
        assert new_case.json()["model"]["label"] == "torch-fp32"
        assert reloads(client, "ok") == 1

        # A version that cannot be loaded is not swapped in; the old one keeps serving.
        registry.promote("v0003", "server")
        wait_for(lambda: reloads(client, "failed") == 1)
        assert client.get("/readyz").json()["registry_version"] == "v0002"
        again = client.post("/api/v1/cases", files={"image": ("z.png", png(), "image/png")},
                            headers=accounts.auth())
        assert again.status_code == 201 and again.json()["model"]["label"] == "torch-fp32"

        # Rolling back: to v0002 (already served), then to v0001 (swapped back).
        assert registry.rollback("server")["version"] == "v0002"
        assert registry.rollback("server")["version"] == "v0001"
        wait_for(lambda: client.get("/readyz").json()["registry_version"] == "v0001")
        info = client.get("/api/v1/model", headers=accounts.auth()).json()
        assert info["registry_version"] == "v0001" and info["label"] == "onnx-fp32"
        assert reloads(client, "ok") == 2 and reloads(client, "failed") == 1


def test_a_version_with_a_missing_file_is_not_loaded(registry, make_settings):
    """Files are checked against the registry's hashes before a version is loaded."""
    from skinedge.registry import RegistryError
    from skinedge.service.reload import load_model

    settings = make_settings(model=None, explain=None, registry=registry.path)
    assert load_model(settings).version == "v0001"
    (registry.get("v0001").artifacts[0]).unlink()
    with pytest.raises(RegistryError, match=r"v0001 in .* is not as registered: "
                                            r".*test_efficientnet_fp32.onnx: missing"):
        load_model(settings)


def test_settings_take_a_model_or_a_registry(tmp_path, monkeypatch):
    from skinedge.errors import ConfigError
    from skinedge.service.settings import load_settings

    with pytest.raises(ConfigError, match="registry: give a model .* or a registry .*not both"):
        load_settings(model=tmp_path / "m.onnx", registry=tmp_path / "reg")
    with pytest.raises(ConfigError, match="leave out --explain"):
        load_settings(registry=tmp_path / "reg", explain=tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="deployment"):
        load_settings(registry=tmp_path / "reg", deployment="Not A Name")
    # The command line's choice wins over the environment's.
    monkeypatch.setenv("SKINEDGE_REGISTRY", str(tmp_path / "reg"))
    settings = load_settings(model=tmp_path / "m.onnx")
    assert settings.registry is None and settings.model == tmp_path / "m.onnx"
    monkeypatch.setenv("SKINEDGE_MODEL", str(tmp_path / "m.onnx"))
    monkeypatch.delenv("SKINEDGE_REGISTRY")
    settings = load_settings(registry=tmp_path / "reg", deployment="android")
    assert settings.model is None and settings.deployment == "android"
    assert settings.registry_poll_seconds == 2.0


def test_serve_without_a_current_version_says_how_to_promote(registry, tmp_path):
    from typer.testing import CliRunner

    from skinedge.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--registry", str(registry.path), "--deployment",
                                      "android", "--data-dir", str(tmp_path / "svc")],
                                env={"COLUMNS": "300"})
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "deployment 'android'" in out and "serves no version yet (deployments: server)" in out
    assert "skinedge registry promote VERSION --deployment android" in out
