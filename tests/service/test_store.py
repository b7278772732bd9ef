"""The feedback store on SQLite and on a real PostgreSQL server: the same operations, the same
guarantees (ownership, erasure, append-only audit, key rotation, retention, migrations)."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from PIL import Image

from skinedge.errors import ConfigError, NotFoundError
from skinedge.service.store import Prediction, Store

CLASSES = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


def prediction(top: str = "mel") -> Prediction:
    probs = [0.1] * len(CLASSES)
    probs[CLASSES.index(top)] = 0.4
    return Prediction(CLASSES, probs, top, top == "mel", 0.6, "onnx-fp32", "test", "a" * 64, 3.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        _reset(url)
    store = Store.open(url, tmp_path / "data")
    yield store
    store.close()


def _reset(url: str) -> None:
    """A clean schema for each test on the session's PostgreSQL server."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


def actors(store):
    a = store.actor_for_token(store.add_user("dr-a"), "10.0.0.1")
    b = store.actor_for_token(store.add_user("dr-b"), "10.0.0.2")
    return a, b


def test_cases_reviews_and_ownership(store):
    a, b = actors(store)
    case = store.create_case(a, png(1), 64, 48, prediction(), patient_ref="P-1")
    assert store.get_case(a, case.id).patient_ref == "P-1"
    with pytest.raises(NotFoundError):
        store.get_case(b, case.id)
    with pytest.raises(NotFoundError):
        store.review_case(b, case.id, "verify")
    reviewed = store.review_case(a, case.id, "correct", "nv", "benign pattern")
    assert (reviewed.status, reviewed.review_label, reviewed.review_note, reviewed.reviewer) == (
        "corrected", "nv", "benign pattern", "dr-a")
    with pytest.raises(ConfigError, match="not one of the model's classes"):
        store.review_case(a, case.id, "correct", "zebra")
    views, total = store.list_cases(a, label="nv")
    assert total == 1 and views[0].id == case.id
    assert store.list_cases(b)[1] == 0


def test_same_image_is_stored_once_per_clinician(store):
    a, b = actors(store)
    first = store.create_case(a, png(2), 64, 48, prediction())
    second = store.create_case(a, png(2), 64, 48, prediction())
    theirs = store.create_case(b, png(2), 64, 48, prediction())
    assert first.image_id == second.image_id != theirs.image_id
    assert len(store.files.ids()) == 2
    store.erase_case(a, first.id)  # the second case still shows the image
    assert store.case_image(a, second.id) == png(2)
    store.erase_case(a, second.id)
    assert sorted(store.files.ids()) == [theirs.image_id]


def test_erasure_keeps_an_audit_row_without_patient_data(store):
    a, _ = actors(store)
    case = store.create_case(a, png(3), 64, 48, prediction(), patient_ref="SECRET-REF")
    store.case_overlay(a, case.id, lambda image: png(99))
    store.erase_case(a, case.id)
    assert store.files.ids() == []
    rows, _ = store.audit_page(per_page=500)
    mine = [r for r in rows if r["case_id"] == case.id]
    assert [r["action"] for r in reversed(mine)] == ["case.create", "case.overlay", "case.erase"]
    assert "SECRET-REF" not in str(rows)
    with pytest.raises(NotFoundError):
        store.get_case(a, case.id)


def test_audit_refuses_updates_and_deletes(store):
    from sqlalchemy import text
    from sqlalchemy.exc import DatabaseError

    a, _ = actors(store)
    store.create_case(a, png(4), 64, 48, prediction())
    for statement in ("DELETE FROM audit", "UPDATE audit SET actor = 'x'"):
        with pytest.raises(DatabaseError, match="append-only"):
            with store.engine.begin() as connection:
                connection.execute(text(statement))


def test_key_rotation_rewrites_every_value_and_drops_the_old_key(store):
    a, _ = actors(store)
    case = store.create_case(a, png(5), 64, 48, prediction(), patient_ref="P-5",
                             body_site="back")
    store.review_case(a, case.id, "correct", "bkl", "seborrhoeic")
    old_key = store.key_file.read_text()
    old_bytes = store.files.read(case.image_id)
    assert store.rotate_keys() == 4  # image, patient_ref, body_site, note
    assert store.key_file.read_text() != old_key and store.key_file.stat().st_mode & 0o077 == 0
    assert store.files.read(case.image_id) != old_bytes
    fresh = Store.open(store.url, store.data_dir)  # a new process reads the new key only
    view = fresh.get_case(a, case.id)
    assert (view.patient_ref, view.body_site, view.review_note) == ("P-5", "back", "seborrhoeic")
    assert fresh.case_image(a, case.id) == png(5)
    again = fresh.create_case(a, png(5), 64, 48, prediction())  # dedup digests were rehashed
    assert again.image_id == case.image_id
    fresh.close()


def test_rotation_refuses_to_run_under_a_live_server(store, tmp_path):
    from skinedge.service.store.db import StoreBusyError

    server = Store.open(store.url, store.data_dir)
    server.hold_shared_lock()
    with pytest.raises(StoreBusyError, match="stop it before rotating"):
        store.rotate_keys()
    server.close()


def test_retention_purge_erases_old_cases_only(store):
    a, _ = actors(store)
    old = store.create_case(a, png(6), 64, 48, prediction())
    new = store.create_case(a, png(7), 64, 48, prediction())
    from skinedge.service.store.db import now

    later = now() + timedelta(days=40)
    assert store.purge(30, at=later) == 2
    assert store.purge(30) == 0
    store2_old = store.create_case(a, png(8), 64, 48, prediction())
    assert store.purge(30, at=now() + timedelta(days=31)) == 1
    with pytest.raises(NotFoundError):
        store.get_case(a, store2_old.id)
    assert {old.id, new.id}.isdisjoint(v.id for v in store.list_cases(a)[0])


def test_orphan_files_from_a_killed_write_are_swept(store):
    a, _ = actors(store)
    case = store.create_case(a, png(9), 64, 48, prediction())
    store.files.write("b_" + "0" * 32, b"left by a killed server")
    assert store.sweep_orphans(min_age_s=0) == 1
    assert store.files.ids() == [case.image_id]


def test_wrong_key_is_a_clear_error(store, tmp_path):
    from skinedge.service.store import StoreKeyError
    from skinedge.service.store.crypto import new_key, write_key_file

    a, _ = actors(store)
    case = store.create_case(a, png(10), 64, 48, prediction())
    other = tmp_path / "other.key"
    write_key_file(other, [new_key()])
    stranger = Store.open(store.url, store.data_dir, key_file=other)
    with pytest.raises(StoreKeyError, match="not in .*other.key"):
        stranger.case_image(a, case.id)
    stranger.close()


def test_migrations_create_exactly_the_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from skinedge.service.store.schema import Base

    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path):
    from sqlalchemy import text

    store = Store.open(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "d")
    with store.engine.connect() as connection:
        pragma = {name: connection.execute(text(f"PRAGMA {name}")).scalar()
                  for name in ("journal_mode", "foreign_keys", "synchronous", "secure_delete")}
    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "synchronous": 2,
                      "secure_delete": 1}
    assert store.integrity_check() == "ok"
    store.close()


def test_key_file_readable_by_others_is_refused(tmp_path):
    from skinedge.service.store import StoreKeyError

    Store.open(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "d").close()
    (tmp_path / "d" / "store.key").chmod(0o644)
    with pytest.raises(StoreKeyError, match="chmod 600"):
        Store.open(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "d")
