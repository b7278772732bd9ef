"""Registering a version: staged in ``versions/.staging-<random>``, renamed into place.

Under the writer lock: staging folders left by a killed writer are removed first; the files are
copied in (each hashed and fsync'd as it is written); ``version.json`` is written last and
fsync'd; the staging folder is renamed to ``versions/vNNNN`` and ``versions/`` fsync'd. A
reader lists only ``vNNNN`` folders, so a killed register leaves nothing visible.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skinedge.errors import NotFoundError
from skinedge.registry.files import artifact_bundle, copy_hashed
from skinedge.registry.version import (
    SOURCES,
    VERSION_FILE,
    VERSION_SCHEMA,
    RegistryError,
    Version,
    version_id,
    version_number,
)
from skinedge.utils.io import fsync_path

VERSIONS = "versions"
STAGING_PREFIX = ".staging-"


def check_inputs(checkpoint: Path | None, artifacts: Sequence[Path],
                 reports: Mapping[str, Path], manifest: Path | None, source: str,
                 ) -> tuple[Path | None, dict | None, list[list[Path]]]:
    """The checkpoint folder (a file in it names it too), its card summary and each
    artifact's bundle, after checking every input.

    Raises:
        NotFoundError: a named file is missing.
        ModelError: the checkpoint's card is unreadable or was edited.
        RegistryError: an unknown source, nothing to register, a name given twice.
    """
    if source not in SOURCES:
        raise RegistryError(f"source {source!r}: choose one of {', '.join(SOURCES)}")
    if checkpoint is None and not artifacts:
        raise RegistryError("nothing to register: give a checkpoint folder, an artifact "
                            "(--artifact), or both")
    card = None
    if checkpoint is not None:
        from skinedge.models.card import checkpoint_dir, load_card  # no torch: the card alone

        checkpoint = checkpoint_dir(Path(checkpoint))
        card = summarize_card(load_card(checkpoint))
    bundles = [artifact_bundle(Path(a)) for a in artifacts]
    names: dict[str, Path] = {}
    for bundle in bundles:
        for part in bundle:
            if part.name in names and names[part.name] != part:
                raise RegistryError(f"two files named {part.name} ({names[part.name]} and "
                                    f"{part}): artifacts sit side by side in a version; "
                                    "register them in two versions, or rename one export")
            names[part.name] = part
    for name, path in reports.items():
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise RegistryError(f"report name {name!r}: give a plain file name (NAME=PATH, "
                                "e.g. eval=runs/x/eval.json)")
        if not Path(path).exists():
            raise NotFoundError(f"report {name}: {path} does not exist")
    if manifest is not None and not Path(manifest).is_file():
        raise NotFoundError(f"manifest {manifest} does not exist; give the split manifest the "
                            "model was trained from (manifest.json)")
    return checkpoint, card, bundles


def summarize_card(card) -> dict[str, Any]:
    """What a version records of its checkpoint's card."""
    return {"architecture": card.architecture, "classes": list(card.classes),
            "input_size": card.preprocess.input_size, "precision": card.precision,
            "weights_sha256": card.weights_sha256, "integrity": card.integrity,
            "created": card.created, "metrics": dict(card.metrics),
            "data_split_hash": card.data.split_hash}


def clean_staging(root: Path) -> list[Path]:
    """Remove staging folders of killed writers; call under the writer lock."""
    folder = root / VERSIONS
    left = sorted(folder.glob(f"{STAGING_PREFIX}*")) if folder.is_dir() else []
    for path in left:
        shutil.rmtree(path, ignore_errors=True)
    return left


def next_id(root: Path) -> str:
    folder = root / VERSIONS
    numbers = [n for p in folder.iterdir() if (n := version_number(p.name)) is not None] \
        if folder.is_dir() else []
    return version_id(max(numbers, default=0) + 1)


def stage_version(root: Path, *, checkpoint: Path | None, bundles: list[list[Path]],
                  reports: Mapping[str, Path], manifest: Path | None, record: dict[str, Any],
                  ) -> tuple[Path, dict[str, Any]]:
    """Copy everything into a new staging folder and write ``version.json`` last; returns the
    folder and the record written. Call under the writer lock."""
    staging = root / VERSIONS / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
    staging.mkdir(parents=True)
    try:
        hashes: dict[Path, str] = {}
        if checkpoint is not None:
            hashes.update(copy_hashed(Path(checkpoint), staging / "checkpoint"))
        for bundle in bundles:
            for part in bundle:
                hashes.update(copy_hashed(part, staging / "artifacts" / part.name))
        report_paths = {}
        for name, path in reports.items():
            path = Path(path)
            target = name if Path(name).suffix or path.is_dir() else name + path.suffix
            hashes.update(copy_hashed(path, staging / "reports" / target))
            report_paths[name] = f"reports/{target}"
        if manifest is not None:
            hashes.update(copy_hashed(Path(manifest), staging / "data" / "manifest.json"))
        for sub in ("checkpoint", "artifacts", "reports", "data"):
            if (staging / sub).is_dir():
                fsync_path(staging / sub)
        doc = {
            "schema": VERSION_SCHEMA, **record,
            "checkpoint": "checkpoint" if checkpoint is not None else None,
            "artifacts": [f"artifacts/{bundle[0].name}" for bundle in bundles],
            "reports": report_paths,
            "manifest": "data/manifest.json" if manifest is not None else None,
            "files": {p.relative_to(staging).as_posix(): h for p, h in sorted(hashes.items())},
        }
        with open(staging / VERSION_FILE, "x", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_path(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging, doc


def publish(root: Path, staging: Path, doc: dict[str, Any]) -> Version:
    """Rename the staging folder to ``versions/<id>`` and make the rename durable."""
    final = root / VERSIONS / doc["id"]
    if final.exists():  # next_id ran under the same lock: only a hand-made folder gets here
        raise RegistryError(f"{final} already exists; versions are made by `skinedge registry "
                            "add` only: move the folder out of versions/")
    os.rename(staging, final)
    fsync_path(root / VERSIONS)
    return Version.from_dict(doc, final)


def created_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
