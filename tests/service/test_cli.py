"""`skinedge serve`, `skinedge users` and `skinedge feedback` as a user types them."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from skinedge.cli.main import app
from tests.service.test_api import jpeg, upload

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_users_add_list_revoke(tmp_path):
    data = tmp_path / "svc"
    added = run("users", "add", "dr-okafor", "--data-dir", data)
    assert added.exit_code == 0, added.output
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("sk_") and len(token) > 40
    assert token not in (data / "skinedge.db").read_bytes().decode("latin-1")  # only a hash
    admin = run("users", "add", "ops", "--role", "admin", "--data-dir", data)
    assert admin.exit_code == 0
    listed = run("users", "list", "--data-dir", data)
    assert "dr-okafor\tclinician" in listed.stdout and "ops\tadmin" in listed.stdout
    again = run("users", "add", "dr-okafor", "--data-dir", data)
    assert again.exit_code == 2 and "exists" in again.output \
        and "users rotate-token dr-okafor" in again.output
    rotated = run("users", "rotate-token", "dr-okafor", "--data-dir", data)
    new_token = rotated.stdout.strip().splitlines()[-1]
    assert rotated.exit_code == 0 and new_token.startswith("sk_") and new_token != token
    from skinedge.service.app import open_store
    from skinedge.service.settings import ServeSettings

    store = open_store(ServeSettings(data_dir=data))
    assert store.actor_for_token(token, None) is None
    assert store.actor_for_token(new_token, None).name == "dr-okafor"
    store.close()
    assert run("users", "revoke", "dr-okafor", "--data-dir", data).exit_code == 0
    missing = run("users", "revoke", "dr-nobody", "--data-dir", data)
    assert missing.exit_code == 2 and "users list" in missing.output
    bad_role = run("users", "add", "x", "--role", "root", "--data-dir", data)
    assert bad_role.exit_code == 2 and "clinician, admin" in bad_role.output


def test_serve_without_a_model_or_with_a_missing_one_says_what_to_give(tmp_path):
    none = run("serve", "--data-dir", tmp_path / "svc")
    assert none.exit_code == 2 and "--model ARTIFACT" in none.output
    missing = run("serve", "--model", tmp_path / "nope.onnx", "--data-dir", tmp_path / "svc")
    assert missing.exit_code == 2 and "nope.onnx" in missing.output


def test_serve_refuses_a_grad_cam_checkpoint_of_another_model(served_onnx, teacher, tmp_path):
    result = run("serve", "--model", served_onnx, "--explain", teacher, "--data-dir",
                 tmp_path / "svc")
    assert result.exit_code == 2, result.output
    assert "not the ones the served model was exported from" in result.output \
        and "--explain" in result.output


def test_serve_config_with_an_unknown_key_names_it(tmp_path, served_onnx):
    config = tmp_path / "serve.yaml"
    config.write_text(f"model: {served_onnx}\nmax_upload: 5\n")
    result = run("serve", "--config", config)
    assert result.exit_code == 2 and "max_upload: unknown key" in result.output \
        and "max_upload_mb" in result.output


def test_feedback_export_check_rotate_purge_and_dicom(api, tmp_path):
    first = upload(api, jpeg((200, 50, 50)), patient_ref="P-1").json()
    second = upload(api, jpeg((50, 200, 50))).json()
    upload(api, jpeg((50, 50, 200)))  # never reviewed
    api.post(f"/api/v1/cases/{first['id']}/review", headers=api.accounts.auth(),
             json={"action": "correct", "label": "nv", "note": "n"})
    api.post(f"/api/v1/cases/{second['id']}/review", headers=api.accounts.auth(),
             json={"action": "verify"})
    data = api.settings.data_dir
    out = tmp_path / "feedback"
    exported = run("feedback", "export", data, "--out", out)
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert {r["image"]: r["dx"] for r in rows} == {
        f"images/{first['id']}.jpg": "nv", f"images/{second['id']}.jpg": second["prediction"]}
    assert "P-1" not in (out / "labels.csv").read_text()
    from skinedge.data import read_dataset

    assert sorted(r.label for r in read_dataset(out).records) == sorted(["nv",
                                                                         second["prediction"]])

    dicom = run("feedback", "dicom", first["id"], "--out", tmp_path / "case.dcm", "--user",
                "dr-a", "--data-dir", data)
    assert dicom.exit_code == 0, dicom.output
    assert (tmp_path / "case.dcm").read_bytes()[128:132] == b"DICM"
    theirs = run("feedback", "dicom", first["id"], "--out", tmp_path / "x.dcm", "--user", "dr-b",
                 "--data-dir", data)
    assert theirs.exit_code == 2 and not (tmp_path / "x.dcm").exists()

    checked = run("feedback", "check", "--data-dir", data)
    assert checked.exit_code == 0 and "every stored file decrypts" in checked.output
    busy = run("feedback", "rotate-key", "--data-dir", data)  # the TestClient app holds it
    assert busy.exit_code == 2 and "stop it before rotating" in busy.output

    erased = run("feedback", "erase", second["id"], "--data-dir", data)
    assert erased.exit_code == 0 and f"erased {second['id']}" in erased.output
    assert api.get(f"/api/v1/cases/{second['id']}", headers=api.accounts.auth()).status_code \
        == 404
    unknown = run("feedback", "erase", "c_nope", "--data-dir", data)
    assert unknown.exit_code == 2 and "c_nope" in unknown.output

    no_days = run("feedback", "purge", "--data-dir", data)
    assert no_days.exit_code == 2 and "--older-than-days" in no_days.output
    kept = run("feedback", "purge", "--older-than-days", "30", "--data-dir", data)
    assert kept.exit_code == 0 and "erased 0 case(s)" in kept.output


def test_rotate_key_with_the_service_stopped(make_settings, tmp_path):
    from skinedge.service.app import open_store
    from skinedge.service.store import Prediction

    settings = make_settings()
    store = open_store(settings)
    actor = store.actor_for_token(store.add_user("dr-a"), None)
    case = store.create_case(actor, b"\x89PNG-not-really", 1, 1,
                             Prediction(["mel"], [1.0], "mel", True, 1.0, "x", "y", "z", 1.0),
                             patient_ref="P-9")
    store.close()
    before = (settings.data_dir / "store.key").read_text()
    result = run("feedback", "rotate-key", "--data-dir", settings.data_dir)
    assert result.exit_code == 0 and "re-encrypted 2 value(s)" in result.output
    assert (settings.data_dir / "store.key").read_text() != before
    store = open_store(settings)
    assert store.get_case(actor, case.id).patient_ref == "P-9"
    store.close()


@pytest.mark.parametrize("args, words", [
    (("feedback", "export", "no-such-folder", "--out", "x"), "no such folder"),
    (("feedback", "purge", "--older-than-days", "0"), "1 or more"),
])
def test_feedback_mistakes_name_the_option(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert result.exit_code == 2 and words in result.output


@pytest.mark.slow
def test_serve_with_two_workers_shares_one_store(served_onnx, tiny_checkpoint, tmp_path):
    """--workers 2: uvicorn's worker processes build the app from the settings serve resolved
    (SKINEDGE_SERVE_SETTINGS_JSON), each loads the model, and both write one database."""
    import httpx

    from tests.service.conftest import start_live_server, stop

    server = start_live_server(tmp_path, served_onnx, tiny_checkpoint, extra=["--workers", "2"])
    try:
        ids = []
        with httpx.Client(base_url=server.url, headers=server.auth(), timeout=60) as client:
            for colour in ((200, 60, 60), (60, 200, 60), (60, 60, 200), (120, 120, 40)):
                created = client.post("/api/v1/cases",
                                      files={"image": ("a.jpg", jpeg(colour), "image/jpeg")})
                assert created.status_code == 201, created.text
                ids.append(created.json()["id"])
            listed = client.get("/api/v1/cases").json()
        assert sorted(c["id"] for c in listed["items"]) == sorted(ids)
    finally:
        stop(server)
    log = server.log.read_text()
    assert log.count("Application startup complete") == 2, log[-3000:]
