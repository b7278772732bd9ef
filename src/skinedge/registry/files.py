"""Copying into a version: each file copied, hashed and fsync'd in one pass; and the files
an exported artifact needs beside it to load (its export report and what the report lists,
an OpenVINO ``.bin``, a TensorRT card sidecar and build script).

The rules here read files only (no runtime is imported: the registry sits beside the runtimes):
an artifact's ``<stem>.<target>.export.json`` report lists every file ``skinedge export`` wrote
for it, and :func:`skinedge.runtimes.load_runtime` checks the artifact against that report when
it lies beside it, so the report and its files travel together.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from skinedge.errors import NotFoundError
from skinedge.registry.version import RegistryError
from skinedge.utils.io import fsync_path

REPORT_SUFFIX = ".export.json"
#: Files beside an artifact that it needs when no export report lists them.
_COMPANIONS = {".xml": (".bin",), ".engine": (".card.json", ".trtexec.sh", ".trt.onnx"),
               ".plan": (".card.json", ".trtexec.sh", ".trt.onnx")}
_CHUNK = 1 << 20


def copy_hashed(source: Path, dest: Path) -> dict[Path, str]:
    """Copy a file or a folder (every file under it) to ``dest``, fsync each copy; returns
    each copied file's path -> sha256 (of the bytes written)."""
    if source.is_dir():
        hashes: dict[Path, str] = {}
        dest.mkdir(parents=True, exist_ok=True)
        for child in sorted(source.iterdir()):
            hashes.update(copy_hashed(child, dest / child.name))
        fsync_path(dest)
        return hashes
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(dest, "xb") as out:
        while block := src.read(_CHUNK):
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return {dest: digest.hexdigest()}


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def artifact_bundle(artifact: Path) -> list[Path]:
    """The artifact and every file beside it that it needs to load (the artifact first).

    Raises:
        NotFoundError: ``artifact`` does not exist.
        RegistryError: its export report says it failed verification, or lists a file that is
            not there.
    """
    if not artifact.exists():
        raise NotFoundError(f"{artifact}: no such artifact; give a file written by "
                            "`skinedge export` (.onnx, .xml, .tflite, .mlpackage, .engine)")
    bundle = [artifact]
    for report in sorted(artifact.parent.glob(f"*{REPORT_SUFFIX}")):
        listed = _listed_files(report)
        if listed is None or artifact.name not in listed:
            continue
        _check_verification(report, artifact)
        bundle.append(report)
        for name in listed:
            part = artifact.parent / name
            if not part.exists():
                raise RegistryError(f"{report} lists {name} as part of {artifact.name}, but "
                                    f"{part} is missing; export the artifact again with "
                                    "`skinedge export`")
            bundle.append(part)
    for ending in _COMPANIONS.get(artifact.suffix, ()):
        part = artifact.with_name(artifact.name[: -len(artifact.suffix)] + ending)
        if part.exists():
            bundle.append(part)
    return list(dict.fromkeys(bundle))


def _listed_files(report: Path) -> list[str] | None:
    """The file names a report lists; None for a file that is not an export report."""
    try:
        files = json.loads(report.read_text(encoding="utf-8"))["files"]
        return [Path(entry["path"]).name for entry in files]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


def _check_verification(report: Path, artifact: Path) -> None:
    try:
        status = json.loads(report.read_text(encoding="utf-8"))["verification"]["status"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return
    if status == "failed":
        raise RegistryError(f"{artifact}: its export failed verification ({report}): it "
                            "drifts from its checkpoint; export it again (or with another "
                            "precision) and register that")
