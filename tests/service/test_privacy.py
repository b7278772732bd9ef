"""Privacy by design, checked on the real thing: who can see what, what erasure removes, what
the files on disk and the server's log hold."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from tests.service.test_api import jpeg, upload

SECRET_REF = "PATIENT-Ada-Lovelace-1815"
SECRET_NOTE = "note-mentions-Ada-Lovelace"
SECRET_EXIF = "ClinicPhone-SN-778899"


def exif_jpeg(colour=(150, 80, 70)) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = SECRET_EXIF  # Make
    exif[0x0131] = SECRET_EXIF  # Software
    return jpeg(colour, exif=exif.tobytes())


def api_operations(api) -> list[tuple[str, str, bool]]:
    """(method, path, declares bearer auth) of every /api/v1 operation of the spec."""
    spec = api.get("/api/v1/openapi.json").json()
    return [(method.upper(), path.replace("{case_id}", "c_0"), bool(operation.get("security")))
            for path, item in spec["paths"].items() if path.startswith("/api/v1/")
            and not path.endswith("openapi.json") for method, operation in item.items()]


def test_every_patient_data_endpoint_needs_a_token(api):
    operations = api_operations(api)
    assert [(m, p) for m, p, secured in operations if not secured] == []
    assert {(m, p) for m, p, _ in operations} >= {
        ("POST", "/api/v1/cases"), ("GET", "/api/v1/cases"), ("GET", "/api/v1/cases/c_0"),
        ("DELETE", "/api/v1/cases/c_0"), ("GET", "/api/v1/cases/c_0/image"),
        ("GET", "/api/v1/cases/c_0/overlay"), ("POST", "/api/v1/cases/c_0/review"),
        ("GET", "/api/v1/audit")}
    for method, path, _ in operations:
        for headers in ({}, {"Authorization": "Bearer sk_made-up"},
                        {"Authorization": "Basic ZHI6YQ=="}):
            response = api.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert "token" in response.json()["detail"] or "sign in" in response.json()["detail"]


def test_another_clinicians_case_is_not_found(api):
    case = upload(api, exif_jpeg()).json()
    other = api.accounts.auth(api.accounts.other_token)
    for method, suffix, body in [("GET", "", None), ("GET", "/image", None),
                                 ("GET", "/overlay", None), ("DELETE", "", None),
                                 ("POST", "/review", {"action": "verify"})]:
        response = api.request(method, f"/api/v1/cases/{case['id']}{suffix}", headers=other,
                               json=body)
        assert response.status_code == 404, (method, suffix, response.text)
        assert response.json()["detail"] == f"no case '{case['id']}' among yours"
    assert api.get("/api/v1/cases", headers=other).json()["total"] == 0
    audit = api.get("/api/v1/audit", headers=api.accounts.auth(api.accounts.admin_token)).json()
    refused = [r for r in audit["items"] if r["actor"] == "dr-b" and r["case_id"] == case["id"]]
    assert len(refused) == 5 and {r["outcome"] for r in refused} == {"not-found"}
    mine = api.get(f"/api/v1/cases/{case['id']}", headers=api.accounts.auth()).json()
    assert mine["status"] == "unreviewed"  # dr-b's review attempt changed nothing


def test_revoked_token_is_refused_at_once(api):
    from skinedge.service.app import open_store

    assert api.get("/api/v1/me", headers=api.accounts.auth(api.accounts.other_token)) \
        .status_code == 200
    store = open_store(api.settings)
    store.revoke_user("dr-b")
    store.close()
    response = api.get("/api/v1/me", headers=api.accounts.auth(api.accounts.other_token))
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_erased_case_is_gone_from_database_and_image_store(api):
    keep = upload(api, exif_jpeg((60, 160, 60))).json()
    case = upload(api, exif_jpeg(), patient_ref=SECRET_REF, body_site="scalp").json()
    api.get(f"/api/v1/cases/{case['id']}/overlay", headers=api.accounts.auth())
    api.post(f"/api/v1/cases/{case['id']}/review", headers=api.accounts.auth(),
             json={"action": "correct", "label": "nv", "note": SECRET_NOTE})
    blobs = api.settings.data_dir / "blobs"
    before = {p.name for p in blobs.glob("*/b_*")}
    assert len(before) == 3  # two images, one overlay

    assert api.delete(f"/api/v1/cases/{case['id']}", headers=api.accounts.auth()).status_code \
        == 204
    db = sqlite3.connect(api.settings.data_dir / "skinedge.db")
    assert db.execute("select count(*) from cases where id = ?", (case["id"],)).fetchone() == (0,)
    kept_blob = db.execute("select image_id from cases where id = ?", (keep["id"],)).fetchone()[0]
    assert {row[0] for row in db.execute("select id from blobs")} == {kept_blob}
    assert {p.name for p in blobs.glob("*/b_*")} == {kept_blob}
    actions = [row[0] for row in db.execute(
        "select action from audit where case_id = ? order by id", (case["id"],))]
    assert actions[0] == "case.create" and actions[-1] == "case.erase"
    db.close()
    assert api.get(f"/api/v1/cases/{case['id']}/image", headers=api.accounts.auth()) \
        .status_code == 404


def test_files_on_disk_hold_no_image_bytes_exif_or_patient_fields(api):
    for colour in ((150, 80, 70), (90, 60, 140)):
        case = upload(api, exif_jpeg(colour), patient_ref=SECRET_REF, body_site="left forearm")
        api.get(f"/api/v1/cases/{case.json()['id']}/overlay", headers=api.accounts.auth())
        api.post(f"/api/v1/cases/{case.json()['id']}/review", headers=api.accounts.auth(),
                 json={"action": "correct", "label": "mel", "note": SECRET_NOTE})
    files = [p for p in api.settings.data_dir.rglob("*") if p.is_file()
             and p.name != "store.key"]
    assert any(p.name == "skinedge.db" for p in files) and len(list(
        (api.settings.data_dir / "blobs").glob("*/b_*"))) == 4
    forbidden = {
        "JPEG start of image + APPn": [b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"\xff\xd8\xff\xdb"],
        "PNG signature": [b"\x89PNG\r\n\x1a\n"],
        "EXIF block": [b"Exif\x00\x00"],
        "EXIF camera text": [SECRET_EXIF.encode()],
        "patient reference": [SECRET_REF.encode()],
        "review note": [SECRET_NOTE.encode()],
        "body site": [b"left forearm"],
    }
    for path in files:
        content = path.read_bytes()
        for what, needles in forbidden.items():
            assert not any(n in content for n in needles), f"{path} holds a {what}"


def test_audit_is_admin_only_append_only_and_free_of_patient_data(api):
    case = upload(api, exif_jpeg(), patient_ref=SECRET_REF).json()
    api.get(f"/api/v1/cases/{case['id']}", headers=api.accounts.auth())
    assert api.get("/api/v1/audit", headers=api.accounts.auth()).status_code == 403
    page = api.get("/api/v1/audit", headers=api.accounts.auth(api.accounts.admin_token)).json()
    rows = [r for r in page["items"] if r["case_id"] == case["id"]]
    assert [r["action"] for r in reversed(rows)] == ["case.create", "case.read"]
    assert all(r["actor"] == "dr-a" and r["address"] for r in rows)
    assert SECRET_REF not in str(page)
    db = sqlite3.connect(api.settings.data_dir / "skinedge.db")
    for statement in ("delete from audit", "update audit set actor = 'nobody'"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
    db.close()


def test_server_log_holds_no_image_bytes_or_patient_fields(live_server):
    auth = live_server.auth()
    with httpx.Client(base_url=live_server.url, headers=auth, timeout=60) as client:
        created = client.post("/api/v1/cases", files={"image": (f"{SECRET_REF}.jpg",
                                                                exif_jpeg(), "image/jpeg")},
                              data={"patient_ref": SECRET_REF, "body_site": "left forearm"})
        assert created.status_code == 201, created.text
        case_id = created.json()["id"]
        client.post(f"/api/v1/cases/{case_id}/review",
                    json={"action": "correct", "label": "nv", "note": SECRET_NOTE})
        client.get(f"/api/v1/cases/{case_id}/overlay")
        bad = client.post("/api/v1/cases", files={"image": (f"{SECRET_REF}.jpg", b"junk",
                                                            "image/jpeg")},
                          data={"patient_ref": SECRET_REF})
        assert bad.status_code == 422 and SECRET_REF not in bad.text
    log = live_server.log.read_bytes()
    assert b"POST /api/v1/cases" in log  # the log is the server's, and it did log requests
    for needle in (SECRET_REF.encode(), SECRET_NOTE.encode(), SECRET_EXIF.encode(),
                   b"left forearm", b"\xff\xd8\xff", b"\x89PNG"):
        assert needle not in log, f"the server log holds {needle!r}"


def test_a_large_upload_stays_in_memory(api, monkeypatch):
    """Starlette spools uploads over 1 MB to a temporary file: an unencrypted patient image
    on disk. The app raises the spool size to its upload limit, so it never rolls over."""
    import io
    import tempfile

    import numpy as np
    import starlette.formparsers
    from PIL import Image

    rolled = []

    class Watched(tempfile.SpooledTemporaryFile):
        def rollover(self):
            rolled.append(self._max_size)
            super().rollover()

    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", Watched)
    pixels = np.random.default_rng(0).integers(0, 255, (900, 1200, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    assert len(out.getvalue()) > 2 * 1024 * 1024
    response = api.post("/api/v1/cases", headers=api.accounts.auth(),
                        files={"image": ("big.png", out.getvalue(), "image/png")})
    assert response.status_code == 201, response.text
    assert rolled == []
