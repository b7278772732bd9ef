"""The feedback store on SQLite and on a real PostgreSQL server: the same operations, the same
guarantees (ownership, erasure, append-only audit, key rotation, retention, migrations)."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinedge.errors import DataError, NotFoundError
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
    with pytest.raises(DataError, match="not one of the model.s classes"):
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
    assert store.case_image(a, second.id) == (png(2), "image/png")
    store.erase_case(a, second.id)
    assert sorted(store.files.ids()) == [theirs.image_id]


def test_erasure_keeps_an_audit_row_without_patient_data(store):
    a, _ = actors(store)
    case = store.create_case(a, png(3), 64, 48, prediction(), patient_ref="SECRET-REF")
    store.case_overlay(a, case.id, lambda image, view: png(99))
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
    assert fresh.case_image(a, case.id)[0] == png(5)
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
    from skinedge.service.store.db import now

    a, _ = actors(store)
    old = store.create_case(a, png(6), 64, 48, prediction())
    young = store.create_case(a, png(7), 64, 48, prediction())
    with store.transaction() as session:  # make `young` 40 days younger than `old`
        from skinedge.service.store.schema import Case

        session.get(Case, young.id).created_at = now() + timedelta(days=40)
    assert store.purge(30, at=now() + timedelta(days=41)) == 1  # old is 41 days, young 1 day
    assert [v.id for v in store.list_cases(a)[0]] == [young.id]
    with pytest.raises(NotFoundError):
        store.get_case(a, old.id)
    assert store.files.ids() == [young.image_id]


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


def test_erasing_two_cases_of_one_image_at_once_removes_it(store):
    """Two erasures of cases that share a stored image, at the same moment: the image must
    go (each erasure counts the image's other users after the other one is done)."""
    import threading

    a, _ = actors(store)
    for round_ in range(3):
        cases = [store.create_case(a, png(20 + round_), 64, 48, prediction()) for _ in range(2)]
        assert cases[0].image_id == cases[1].image_id
        barrier = threading.Barrier(2)

        def erase(case_id, barrier=barrier):
            barrier.wait()
            store.erase_case(a, case_id)

        threads = [threading.Thread(target=erase, args=(c.id,)) for c in cases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with store.reading() as session:
            from sqlalchemy import func, select

            from skinedge.service.store.schema import Blob

            assert session.scalar(select(func.count()).select_from(Blob)) == 0
        assert store.files.ids() == []


def test_overlays_computed_at_once_keep_one(store):
    import threading

    a, _ = actors(store)
    case = store.create_case(a, png(30), 64, 48, prediction())
    barrier = threading.Barrier(3)
    results = []

    def overlay(n):
        def compute(image, view):
            barrier.wait()  # all three compute before any stores
            return png(100 + n)

        results.append(store.case_overlay(a, case.id, compute))

    threads = [threading.Thread(target=overlay, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    assert len(store.files.ids()) == 2  # the image and one overlay
    kept = store.case_overlay(a, case.id, lambda image, view: pytest.fail("recomputed"))
    assert kept in results
    store.erase_case(a, case.id)
    assert store.files.ids() == []


def test_a_store_with_data_never_gets_a_new_key(store, tmp_path):
    from skinedge.service.store import StoreKeyError

    a, _ = actors(store)
    store.create_case(a, png(40), 64, 48, prediction())
    with pytest.raises(StoreKeyError, match="restore the key file"):
        Store.open(store.url, store.data_dir, key_file=tmp_path / "typo.key")
    assert not (tmp_path / "typo.key").exists()


def test_rotation_after_an_interrupted_one_merges_the_same_image(store):
    """A rotation killed before its end, the server then storing the same image again under
    the new key, and the rotation run again: it finishes, keeping one copy."""
    from skinedge.service.store.crypto import KeyRing, encode_key, new_key, write_key_file

    a, _ = actors(store)
    first = store.create_case(a, png(50), 64, 48, prediction())
    old = KeyRing.from_file(store.key_file, create=False)
    write_key_file(store.key_file, [new_key(), *(encode_key(k) for k in old.keys)])  # killed
    server = Store.open(store.url, store.data_dir)
    second = server.create_case(a, png(50), 64, 48, prediction())
    server.close()
    assert second.image_id != first.image_id  # new key, new digest: stored again
    store.keys = KeyRing.from_file(store.key_file, create=False)
    store.rotate_keys()
    assert store.case_image(a, first.id)[0] == store.case_image(a, second.id)[0] == png(50)
    assert len(store.files.ids()) == 1



def test_erasure_leaves_nothing_in_the_write_ahead_log(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "d")
    a, _ = actors(store)
    case = store.create_case(a, png(60), 64, 48, prediction(), patient_ref="P-WAL")
    store.erase_case(a, case.id)
    wal = tmp_path / "s.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    store.close()


def test_a_lost_overlay_file_is_computed_again(store):
    a, _ = actors(store)
    case = store.create_case(a, png(61), 64, 48, prediction())
    first = store.case_overlay(a, case.id, lambda image, view: png(62))
    overlay_file = next(b for b in store.files.ids() if b != case.image_id)
    store.files.delete(overlay_file)
    assert store.case_overlay(a, case.id, lambda image, view: png(63)) == png(63) != first
    assert len(store.files.ids()) == 2 and overlay_file not in store.files.ids()
    store.erase_case(a, case.id)
    assert store.files.ids() == []


def test_migration_0002_adds_the_media_type_to_an_existing_store(tmp_path):
    """A store written at revision 0001 (PNG blobs only) upgrades in place."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from skinedge.service.store.db import make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(
        Path(__import__("skinedge.service.store.db", fromlist=["x"]).__file__).parent
        / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text(
            "INSERT INTO users (id, name, role, token_sha256, created_at) "
            "VALUES (1, 'dr-a', 'clinician', 'x', '2026-01-01')"))
        connection.execute(text(
            "INSERT INTO blobs (id, owner_id, kind, digest, size, created_at) "
            "VALUES ('b_" + "1" * 32 + "', 1, 'image', 'd', 3, '2026-01-01')"))
    engine.dispose()
    from skinedge.service.store.crypto import new_key, write_key_file

    (tmp_path / "d").mkdir()
    write_key_file(tmp_path / "d" / "store.key", [new_key()])  # the store's own key, kept
    store = Store.open(url, tmp_path / "d")  # migrates to head
    with store.reading() as session:
        assert session.execute(text("SELECT media_type FROM blobs")).scalar() == "image/png"
    store.close()


def test_migration_0003_marks_existing_cases_as_lesions(tmp_path):
    """Cases stored before the lesion check were all answered as lesions: the upgrade says so
    for them, new cases keep the check's answer, and a downgrade that would lose a refusal is
    refused."""
    from dataclasses import replace

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from skinedge.service.store import db

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = Config()
    config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))

    def downgrade(store) -> None:
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")

    store = Store.open(url, tmp_path / "data")
    a, _ = actors(store)
    older = store.create_case(a, png(1), 64, 48, prediction())
    downgrade(store)  # no refusals yet: allowed
    with store.reading() as session:
        columns = [row[1] for row in session.execute(text("PRAGMA table_info(cases)"))]
    assert "lesion" not in columns and "ood_score" not in columns
    store.close()
    store = Store.open(url, tmp_path / "data")  # upgrades the old rows to head
    assert store.get_case(a, older.id).lesion is True
    refused = store.create_case(a, png(2), 64, 48, replace(prediction(), lesion=False,
                                                            ood_score=-0.1))
    assert (store.get_case(a, refused.id).lesion, store.get_case(a, refused.id).ood_score) == (
        False, -0.1)
    from skinedge.service.store.export import export_reviewed

    summary = export_reviewed(store, tmp_path / "export", include_unreviewed=True)
    assert summary.skipped_unreviewed == 1 and sum(summary.per_class.values()) == 1  # no label
    with pytest.raises(RuntimeError, match="1 cases were refused"):
        downgrade(store)
    store.close()
