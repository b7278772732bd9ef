"""A registered version as read from its ``version.json``, and the registry's error."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skinedge.errors import ConfigError

VERSION_SCHEMA = "skinedge.registry-version/1"
VERSION_FILE = "version.json"
#: Version ids: ``v`` and four or more digits, given in order of registration.
VERSION_ID = re.compile(r"^v(\d{4,})$")
SOURCES = ("train", "retrain", "federated", "import")


class RegistryError(ConfigError):
    """A registry request that cannot be done as asked: an unknown version or deployment, a
    missing registry, a version whose files changed or whose gates failed, a pointer with no
    history to roll back to. The message names the registry, the version or deployment, and
    what to do (a user's mistake: exit code 2, HTTP 400)."""


def version_id(number: int) -> str:
    """``1`` -> ``v0001``."""
    return f"v{number:04d}"


def version_number(name: str) -> int | None:
    """``v0012`` -> ``12``; None for anything else (staging folders, stray files)."""
    match = VERSION_ID.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Version:
    """One registered version (immutable once registered). Paths are absolute, under
    ``path`` (``REGISTRY/versions/vNNNN``); ``files`` maps each file's path relative to
    ``path`` to its sha256 (every file but ``version.json``)."""

    id: str
    created: str
    parent: str | None
    source: str
    path: Path
    checkpoint: Path | None
    artifacts: list[Path]
    reports: dict[str, Path]
    manifest: Path | None
    files: dict[str, str]
    metrics: dict
    gates: dict | None
    notes: str
    by: str | None
    card: dict | None

    @property
    def gates_passed(self) -> bool | None:
        """True or False as the recorded gates say; None when no gate ran."""
        if self.gates is None:
            return None
        return bool(self.gates.get("passed"))

    def relative(self, path: Path) -> str:
        """A path of this version as ``version.json`` writes it (``artifacts/x.onnx``)."""
        return Path(path).relative_to(self.path).as_posix()

    @classmethod
    def read(cls, folder: Path) -> Version:
        """The version in ``folder`` (``REGISTRY/versions/vNNNN``).

        Raises:
            RegistryError: no ``version.json``, or one that is not a version record.
        """
        file = folder / VERSION_FILE
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
            return cls.from_dict(doc, folder)
        except FileNotFoundError:
            raise RegistryError(f"{folder}: not a registered version (no {VERSION_FILE}); "
                                "versions are made by `skinedge registry add`, never by hand: "
                                "move this folder out of versions/") from None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{file}: not a readable version record ({exc}); restore it "
                                "from a backup of the registry (versions are immutable)") from exc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], folder: Path) -> Version:
        if doc.get("schema") != VERSION_SCHEMA:
            raise ValueError(f"schema {doc.get('schema')!r}, expected {VERSION_SCHEMA!r}")

        def at(rel: str | None) -> Path | None:
            return None if rel is None else folder / rel

        return cls(
            id=doc["id"], created=doc["created"], parent=doc.get("parent"),
            source=doc["source"], path=folder, checkpoint=at(doc.get("checkpoint")),
            artifacts=[folder / a for a in doc.get("artifacts", [])],
            reports={name: folder / rel for name, rel in doc.get("reports", {}).items()},
            manifest=at(doc.get("manifest")), files=dict(doc["files"]),
            metrics=dict(doc.get("metrics", {})), gates=doc.get("gates"),
            notes=doc.get("notes", ""), by=doc.get("by"), card=doc.get("card"))

    def to_dict(self) -> dict[str, Any]:
        """The ``version.json`` record (paths relative to the version folder)."""
        return {
            "schema": VERSION_SCHEMA, "id": self.id, "created": self.created,
            "parent": self.parent, "source": self.source,
            "checkpoint": None if self.checkpoint is None else self.relative(self.checkpoint),
            "artifacts": [self.relative(a) for a in self.artifacts],
            "reports": {name: self.relative(p) for name, p in self.reports.items()},
            "manifest": None if self.manifest is None else self.relative(self.manifest),
            "metrics": self.metrics, "gates": self.gates, "notes": self.notes, "by": self.by,
            "card": self.card, "files": self.files,
        }
