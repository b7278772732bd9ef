"""``skinedge serve``, ``skinedge users`` and ``skinedge feedback``: the clinician service, its
accounts, and its store of reviewed cases."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from skinedge.errors import ConfigError

app = typer.Typer()
users = typer.Typer(help="Clinician and admin accounts of the service (API tokens).",
                    no_args_is_help=True)
feedback = typer.Typer(help="The service's store of cases: export reviewed cases for "
                       "training, purge old ones, rotate the encryption key, check it.",
                       no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="Service YAML (keys as in ServeSettings; SKINEDGE_* variables too).")]
DataDirOpt = Annotated[Path | None, typer.Option(
    help="The service's data folder (database, encrypted images, key); default skinedge-service.")]
DatabaseOpt = Annotated[str | None, typer.Option(
    help="SQLAlchemy URL of the database (postgresql://...); default DATA_DIR/skinedge.db.")]


@contextmanager
def _store(config: Path | None, data_dir: Path | None, database_url: str | None,
           settings=None):
    """The service's store, as the config, SKINEDGE_* variables and options name it (or as
    ``settings`` already loaded from them say)."""
    from skinedge.service.app import open_store
    from skinedge.service.settings import load_settings

    settings = settings or load_settings(config, data_dir=data_dir, database_url=database_url)
    store = open_store(settings)
    try:
        yield store
    finally:
        store.close()


@app.command()
def serve(
    model: Annotated[Path | None, typer.Option(help="Exported artifact to serve (.xml, .tflite, .onnx, ...).")] = None,
    explain: Annotated[Path | None, typer.Option(help="Checkpoint the artifact was exported from, for Grad-CAM.")] = None,
    registry: Annotated[Path | None, typer.Option(help="Model registry to serve from instead of --model: the current version of --deployment, reloaded when it is promoted.")] = None,
    deployment: Annotated[str | None, typer.Option(help="The registry deployment to serve (default server).")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1; TLS belongs to a reverse proxy).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1).")] = None,
) -> None:
    """The clinician service: API under /api/v1 and the web page at /, on an exported model
    (--model) or a registry deployment's current version (--registry, --deployment)."""
    import uvicorn

    from skinedge.cli.progress import console
    from skinedge.service.app import SETTINGS_ENV, create_app, open_store
    from skinedge.service.reload import load_model
    from skinedge.service.settings import load_settings

    settings = load_settings(config, model=model, explain=explain, registry=registry,
                             deployment=deployment, data_dir=data_dir,
                             database_url=database_url, host=host, port=port, workers=workers)
    if settings.model is None and settings.registry is None:
        raise ConfigError("give --model ARTIFACT: the exported model to serve "
                          "(e.g. exports/tf_efficientnet_lite0_int8.xml), or --registry REG "
                          "--deployment NAME to serve a registry's current version")
    open_store(settings).close()  # creates or migrates the database once, before any worker
    served = load_model(settings)  # a bad artifact or checkpoint stops here, with its message
    what = (f"{served.version} of deployment {settings.deployment} in {settings.registry} "
            f"({served.settings.model.name}, reloaded when promoted)" if settings.registry
            else str(settings.model))
    console.print(f"serving {what} ({served.label}) on "
                  f"http://{settings.host}:{settings.port}; cases in {settings.data_dir}")
    # Behind a reverse proxy, uvicorn takes the client's address from X-Forwarded-For, but only
    # on connections from forwarded_allow_ips; without them no proxy header is believed.
    proxy = {"proxy_headers": settings.forwarded_allow_ips is not None,
             "forwarded_allow_ips": settings.forwarded_allow_ips}
    if settings.workers == 1:
        uvicorn.run(create_app(settings, served), host=settings.host, port=settings.port,
                    log_level="info", **proxy)
        return
    del served  # each worker loads its own
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    if settings.store_key is not None:  # model_dump_json hides secrets
        doc = json.loads(os.environ[SETTINGS_ENV])
        doc["store_key"] = settings.store_key.get_secret_value()
        os.environ[SETTINGS_ENV] = json.dumps(doc)
    uvicorn.run("skinedge.service.app:create_app_from_environment", factory=True,
                host=settings.host, port=settings.port, workers=settings.workers,
                log_level="info", **proxy)


@users.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Login name, e.g. dr-okafor.")],
    role: Annotated[str, typer.Option(help="clinician or admin.")] = "clinician",
    config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DatabaseOpt = None,
) -> None:
    """Create an account; its API token is printed once (only a hash is kept)."""
    from skinedge.cli.progress import console

    with _store(config, data_dir, database_url) as store:
        token = store.add_user(name, role)
    console.print(f"{role} {name} added; the token (shown once, give it to {name} privately):")
    typer.echo(token)


@users.command("revoke")
def users_revoke(
    name: Annotated[str, typer.Argument(help="Login name.")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DatabaseOpt = None,
) -> None:
    """Revoke an account's token at once; its cases stay."""
    from skinedge.cli.progress import console

    with _store(config, data_dir, database_url) as store:
        store.revoke_user(name)
    console.print(f"{name}'s token is revoked")


@users.command("list")
def users_list(config: ConfigOpt = None, data_dir: DataDirOpt = None,
               database_url: DatabaseOpt = None) -> None:
    """The accounts, with their roles and when they were made or revoked."""
    with _store(config, data_dir, database_url) as store:
        for user in store.users():
            revoked = f"  revoked {user['revoked_at']:%Y-%m-%d}" if user["revoked_at"] else ""
            typer.echo(f"{user['name']}\t{user['role']}\tcreated "
                       f"{user['created_at']:%Y-%m-%d}{revoked}")


@feedback.command("purge")
def feedback_purge(
    older_than_days: Annotated[int | None, typer.Option(help="Erase cases created more than this many days ago (default: retention_days of the config).")] = None,
    config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DatabaseOpt = None,
) -> None:
    """Apply the retention policy: erase old cases (images, overlays, notes), keep the audit."""
    from skinedge.cli.progress import console
    from skinedge.service.settings import load_settings

    settings = load_settings(config, data_dir=data_dir, database_url=database_url)
    days = older_than_days if older_than_days is not None else settings.retention_days
    if days is None:
        raise ConfigError("give --older-than-days N, or set retention_days in the config")
    if days < 1:
        raise ConfigError(f"--older-than-days {days}: give a whole number of days, 1 or more")
    with _store(config, data_dir, database_url, settings) as store:
        erased = store.purge(days)
        swept = store.sweep_orphans()
    console.print(f"erased {erased} case(s) older than {days} days"
                  + (f"; removed {swept} unreferenced encrypted file(s)" if swept else ""))


@feedback.command("rotate-key")
def feedback_rotate_key(config: ConfigOpt = None, data_dir: DataDirOpt = None,
                        database_url: DatabaseOpt = None) -> None:
    """Re-encrypt every stored image and field with a new key (stop the service first)."""
    from skinedge.cli.progress import console

    with _store(config, data_dir, database_url) as store:
        count = store.rotate_keys()
    console.print(f"re-encrypted {count} value(s) with a new key in {store.key_file}; back "
                  "the key file up (the old key is gone from it)")


@feedback.command("check")
def feedback_check(config: ConfigOpt = None, data_dir: DataDirOpt = None,
                   database_url: DatabaseOpt = None) -> None:
    """Check the database (SQLite's integrity_check) and that every stored file decrypts."""
    from skinedge.cli.progress import console

    with _store(config, data_dir, database_url) as store:
        result = store.integrity_check()
        unreadable = store.check_files()
    if result != "ok" or unreadable:
        console.print(f"database: {result}; unreadable files: {len(unreadable)}")
        for line in unreadable[:20]:
            console.print(f"  {line}")
        raise typer.Exit(1)
    console.print("database ok; every stored file decrypts")


@feedback.command("export")
def feedback_export(
    store_dir: Annotated[Path, typer.Argument(metavar="STORE", help="The service's data folder (as --data-dir of serve).")],
    out: Annotated[Path, typer.Option(help="Folder to write: images/, labels.csv, README.txt.")],
    include_unreviewed: Annotated[bool, typer.Option(help="Also cases nobody reviewed, labelled with the model's answer.")] = False,
    config: ConfigOpt = None, database_url: DatabaseOpt = None,
) -> None:
    """Reviewed cases as a labels.csv dataset folder that `skinedge data split` and
    `skinedge train` read as they are (grouped by a patient pseudonym)."""
    from skinedge.cli.progress import CountProgress, console, make_progress
    from skinedge.service.store.export import export_reviewed

    if not store_dir.is_dir():
        raise ConfigError(f"STORE {store_dir}: no such folder; give the data folder of "
                          "`skinedge serve` (its --data-dir, default skinedge-service)")
    with _store(config, store_dir, database_url) as store:
        with make_progress() as progress:
            summary = export_reviewed(store, out, include_unreviewed=include_unreviewed,
                                      progress=CountProgress(progress, "exporting"))
    counts = ", ".join(f"{code} {n}" for code, n in sorted(summary.per_class.items()))
    console.print(f"wrote {summary.written} case(s) to {summary.folder} ({counts}); "
                  f"{summary.skipped_unreviewed} unreviewed left out")


@feedback.command("dicom")
def feedback_dicom(
    case_id: Annotated[str, typer.Argument(help="The case id (c_...).")],
    out: Annotated[Path, typer.Option(help="File to write (.dcm), or a folder for CASE_ID.dcm.")],
    user: Annotated[str, typer.Option(help="The clinician who owns the case (only they may export it).")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DatabaseOpt = None,
) -> None:
    """A reviewed case as a DICOM Structured Report, for the hospital archive."""
    from skinedge.cli.progress import console
    from skinedge.service.store.dicom import actor_named, case_to_sr

    with _store(config, data_dir, database_url) as store:
        path = case_to_sr(store, actor_named(store, user), case_id, out)
    console.print(f"wrote {path}")


@users.command("rotate-token")
def users_rotate_token(
    name: Annotated[str, typer.Argument(help="Login name.")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DatabaseOpt = None,
) -> None:
    """A new token for an account (a lost or leaked one stops working at once); the account
    keeps its cases."""
    from skinedge.cli.progress import console

    with _store(config, data_dir, database_url) as store:
        token = store.rotate_token(name)
    console.print(f"{name}'s new token (shown once; the old one no longer works):")
    typer.echo(token)


@feedback.command("erase")
def feedback_erase(
    case_ids: Annotated[list[str], typer.Argument(metavar="CASE_ID...", help="Case ids (c_...).")],
    config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DatabaseOpt = None,
) -> None:
    """Erase cases by id for an administrator serving an erasure request (GDPR art. 17), also
    those of a revoked account; audited as the system."""
    from skinedge.cli.progress import console
    from skinedge.service.store.db import SYSTEM

    with _store(config, data_dir, database_url) as store:
        for case_id in case_ids:
            store.erase_case(SYSTEM, case_id, action="case.erase-admin")
            console.print(f"erased {case_id}")
