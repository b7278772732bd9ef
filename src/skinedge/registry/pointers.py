"""Deployment pointers: ``REGISTRY/deployments/<name>.json``, each replaced atomically.

A pointer names the version a deployment serves and which of its artifacts::

    {"deployment": "server", "version": "v0003", "artifact": "artifacts/m_fp32.onnx",
     "promoted_at": "...", "by": "...", "reason": "...", "forced": false,
     "history": [the pointers it replaced, newest first, without their own history]}

Written with :func:`skinedge.utils.io.atomic_write_text` (a synced temporary renamed over the
file, then the folder synced): a reader sees the old pointer or the new one, never half.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from skinedge.registry.version import RegistryError, Version
from skinedge.utils.io import atomic_write_text

DEPLOYMENTS = "deployments"
#: A deployment's name is a file name: lowercase letters, digits, ``-`` and ``_``.
DEPLOYMENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: The artifact a deployment takes by default, by its name: the first suffix with exactly one
#: match among the version's artifacts.
DEPLOYMENT_SUFFIXES = {"android": (".tflite",), "ios": (".mlpackage",),
                       "server": (".onnx", ".xml", ".engine", ".plan")}
CHECKPOINT = "checkpoint"


def check_deployment_name(name: str) -> str:
    if not DEPLOYMENT_NAME.match(name or ""):
        raise RegistryError(f"deployment {name!r}: use a short lowercase name (letters, digits, "
                            "- and _), e.g. server, android, ios")
    return name


def pointer_path(root: Path, deployment: str) -> Path:
    return root / DEPLOYMENTS / f"{check_deployment_name(deployment)}.json"


def read_pointer(root: Path, deployment: str) -> dict[str, Any] | None:
    """The deployment's pointer; None when it has none yet.

    Raises:
        RegistryError: a pointer file that is not a pointer (edited by hand).
    """
    path = pointer_path(root, deployment)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RegistryError(f"{path}: not a readable deployment pointer ({exc}); pointers are "
                            "written by `skinedge registry promote`: promote a version again "
                            "to replace it") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), str):
        raise RegistryError(f"{path}: not a deployment pointer (no 'version'); promote a "
                            "version again to replace it")
    return doc


def list_pointers(root: Path) -> dict[str, dict[str, Any]]:
    """Every deployment's pointer, by name (temporaries of a write in progress skipped)."""
    folder = root / DEPLOYMENTS
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.glob("*.json")):
        if DEPLOYMENT_NAME.match(path.stem):
            found[path.stem] = read_pointer(root, path.stem)
    return found


def write_pointer(root: Path, pointer: dict[str, Any]) -> Path:
    """Replace the deployment's pointer atomically (temporary, fsync, rename, fsync folder)."""
    path = pointer_path(root, pointer["deployment"])
    return atomic_write_text(path, json.dumps(pointer, indent=2) + "\n")


def choose_artifact(version: Version, deployment: str, artifact: str | None) -> str:
    """The artifact (path relative to the version) a deployment of ``version`` serves.

    ``artifact`` may be its name, its relative path or ``checkpoint`` (served through the torch
    runtime); by default the only artifact, else the one the deployment's name calls for
    (:data:`DEPLOYMENT_SUFFIXES`), else the checkpoint of a version without artifacts.

    Raises:
        RegistryError: no such artifact, or several that fit (the message lists them).
    """
    names = [version.relative(a) for a in version.artifacts]
    listing = ", ".join(names) or "none"
    if artifact is not None:
        if artifact == CHECKPOINT and version.checkpoint is not None:
            return CHECKPOINT
        for name in names:
            if artifact in (name, Path(name).name):
                return name
        raise RegistryError(f"{version.id} has no artifact {artifact!r}; its artifacts: "
                            f"{listing}" + ("; or --artifact checkpoint" if version.checkpoint
                                            else ""))
    if len(names) == 1:
        return names[0]
    if not names:
        if version.checkpoint is not None:
            return CHECKPOINT
        raise RegistryError(f"{version.id} has neither artifacts nor a checkpoint: nothing to "
                            "deploy; register a version with an exported artifact")
    for suffix in DEPLOYMENT_SUFFIXES.get(deployment, ()):
        matching = [n for n in names if n.endswith(suffix)]
        if len(matching) == 1:
            return matching[0]
    raise RegistryError(f"{version.id} has several artifacts and none is the obvious one for "
                        f"deployment {deployment!r}: choose one with --artifact ({listing})")


def artifact_path(version: Version, artifact: str) -> Path:
    """The absolute path of a pointer's ``artifact`` in ``version``."""
    if artifact == CHECKPOINT and version.checkpoint is not None:
        return version.checkpoint
    return version.path / artifact
