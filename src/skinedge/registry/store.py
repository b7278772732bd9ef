"""``Registry(path)``: versions, deployment pointers, promotion, rollback and the audit log.

Writers take the lock (:mod:`skinedge.registry.lock`); readers never do. Every change is
audited (:mod:`skinedge.registry.audit`), refusals too.
"""

from __future__ import annotations

import getpass
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skinedge.errors import SkinedgeError
from skinedge.registry import pointers
from skinedge.registry.audit import append_audit, now, read_audit
from skinedge.registry.files import hash_file
from skinedge.registry.lock import writer_lock
from skinedge.registry.register import (
    VERSIONS,
    check_inputs,
    clean_staging,
    created_now,
    next_id,
    publish,
    stage_version,
)
from skinedge.registry.version import VERSION_FILE, RegistryError, Version, version_number


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no such user in a container's passwd
        return "unknown"


class Registry:
    """A model registry in the folder ``path`` (made by the first :meth:`register`); the
    layout is in :mod:`skinedge.registry`."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r})"

    # ------------------------------------------------------------------ reading

    def _require(self) -> None:
        if not (self.path / VERSIONS).is_dir():
            what = "does not exist" if not self.path.exists() else "holds no registry " \
                "(no versions/ folder)"
            raise RegistryError(f"model registry {self.path} {what}; give the folder of an "
                                "existing registry (--registry or SKINEDGE_REGISTRY), or "
                                "register a first version into it with `skinedge registry add`")

    def versions(self) -> list[Version]:
        """Every registered version, oldest first (staging folders are not versions)."""
        self._require()
        folders = [(n, p) for p in (self.path / VERSIONS).iterdir()
                   if (n := version_number(p.name)) is not None and p.is_dir()]
        return [Version.read(p) for _, p in sorted(folders)]

    def ids(self) -> list[str]:
        self._require()
        return sorted((p.name for p in (self.path / VERSIONS).iterdir()
                       if version_number(p.name) is not None), key=version_number)

    def get(self, version_id: str) -> Version:
        """The version ``version_id`` (``v0003``; ``3`` is taken as ``v0003``).

        Raises:
            RegistryError: no such version (the message lists the known ids).
        """
        self._require()
        wanted = version_id if version_id.startswith("v") or not version_id.isdigit() \
            else f"v{int(version_id):04d}"
        folder = self.path / VERSIONS / wanted
        if version_number(wanted) is None or not (folder / VERSION_FILE).is_file():
            known = ", ".join(self.ids()) or "none yet"
            raise RegistryError(f"no version {version_id!r} in {self.path}; known versions: "
                                f"{known}")
        return Version.read(folder)

    def verify(self, version_id: str) -> list[str]:
        """Problems with a version's files: missing, changed (sha256) or not recorded; []
        when every file is as registered."""
        version = self.get(version_id)
        problems = []
        for rel, sha in sorted(version.files.items()):
            file = version.path / rel
            if not file.is_file():
                problems.append(f"{file}: missing")
            elif hash_file(file) != sha:
                problems.append(f"{file}: changed since registration (sha256 differs)")
        for file in sorted(p for p in version.path.rglob("*") if p.is_file()):
            rel = file.relative_to(version.path).as_posix()
            if rel != VERSION_FILE and rel not in version.files:
                problems.append(f"{file}: not part of the registered version (added since)")
        return problems

    def pointer(self, deployment: str) -> dict[str, Any] | None:
        """The deployment's pointer file's content; None when nothing was promoted to it."""
        self._require()
        return pointers.read_pointer(self.path, deployment)

    def current(self, deployment: str) -> Version | None:
        pointer = self.pointer(deployment)
        return None if pointer is None else self.get(pointer["version"])

    def deployments(self) -> dict[str, dict[str, Any]]:
        self._require()
        return pointers.list_pointers(self.path)

    def artifact_path(self, pointer: Mapping[str, Any]) -> Path:
        """The absolute path of what a pointer serves."""
        return pointers.artifact_path(self.get(pointer["version"]), pointer["artifact"])

    def audit(self) -> list[dict[str, Any]]:
        """Every audit entry, oldest first (torn lines as ``{"unreadable": ...}`` entries)."""
        self._require()
        return read_audit(self.path)

    # ------------------------------------------------------------------ writing

    def register(self, checkpoint: Path | None = None, artifacts: Sequence[Path] = (),
                 reports: Mapping[str, Path] | None = None, manifest: Path | None = None,
                 parent: str | None = None, source: str = "train",
                 metrics: Mapping[str, Any] | None = None,
                 gates: Mapping[str, Any] | None = None, notes: str = "",
                 by: str | None = None) -> Version:
        """Copy a checkpoint folder, exported artifacts (with the files each needs to load),
        reports and the training manifest into a new immutable version.

        Args:
            checkpoint: Checkpoint folder (``model.safetensors`` + ``card.json``).
            artifacts: Exported artifacts; each brings its export report and the files the
                report lists (OpenVINO ``.bin``, TensorRT card and script).
            reports: ``{name: path}`` evaluation, bench, gate or retrain reports.
            manifest: The split manifest the model was trained from.
            parent: The version this one was made from (retrain, federated rounds).
            source: ``train``, ``retrain``, ``federated`` or ``import``.
            metrics: Key figures shown by ``skinedge registry list``.
            gates: ``{"passed": bool, "report": "reports/NAME", "checks": [...]}`` when a
                gate ran; a version whose gates did not pass is promoted only with force.
            notes: Free text.
            by: Who registers it (default: the user running this).

        Raises:
            NotFoundError: a named file is missing.
            ModelError: the checkpoint's card is unreadable or was edited.
            RegistryError: bad input (the message says which); an unknown parent.
            WriteError: the registry folder cannot be written (nothing half-made stays).
        """
        reports = dict(reports or {})
        by = by or current_user()
        try:
            checkpoint, card, bundles = check_inputs(checkpoint, list(map(Path, artifacts)),
                                                     reports, manifest, source)
            if parent is not None:
                parent = self.get(parent).id
        except SkinedgeError as exc:
            if (self.path / VERSIONS).is_dir():  # an existing registry records the refusal
                with writer_lock(self.path):
                    append_audit(self.path, {"action": "register", "phase": "refused",
                                             "by": by, "source": source, "error": str(exc)})
            raise
        with writer_lock(self.path):
            (self.path / VERSIONS).mkdir(exist_ok=True)
            clean_staging(self.path)
            record = {"id": next_id(self.path), "created": created_now(), "parent": parent,
                      "source": source, "metrics": dict(metrics or {}),
                      "gates": None if gates is None else dict(gates), "notes": notes,
                      "by": by, "card": card}
            op = _op()
            append_audit(self.path, {"op": op, "action": "register", "phase": "started",
                                     "version": record["id"], "by": by, "source": source})
            try:
                staging, doc = stage_version(self.path, checkpoint=checkpoint,
                                             bundles=bundles, reports=reports,
                                             manifest=manifest, record=record)
                version = publish(self.path, staging, doc)
            except BaseException as exc:
                append_audit(self.path, {"op": op, "action": "register", "phase": "failed",
                                         "version": record["id"], "by": by,
                                         "error": f"{type(exc).__name__}: {exc}"})
                raise
            append_audit(self.path, {"op": op, "action": "register", "phase": "done",
                                     "version": version.id, "by": by, "source": source,
                                     "parent": parent, "files": len(version.files),
                                     "gates_passed": version.gates_passed})
        return version

    def promote(self, version_id: str, deployment: str, *, artifact: str | None = None,
                by: str | None = None, reason: str = "", force: bool = False) -> dict[str, Any]:
        """Point ``deployment`` at a version; returns the new pointer.

        Refused (and audited) when the version fails :meth:`verify`, when its recorded gates
        did not pass (unless ``force``, which needs a ``reason``), or when it is already what
        the deployment serves.

        Raises:
            RegistryError: refused, or an unknown version or artifact.
        """
        by = by or current_user()
        pointers.check_deployment_name(deployment)
        self._require()
        with writer_lock(self.path):
            entry = {"action": "promote", "deployment": deployment, "version": version_id,
                     "by": by, "reason": reason, "forced": force}
            try:
                version = self.get(version_id)
                entry["version"] = version.id
                chosen = pointers.choose_artifact(version, deployment, artifact)
                self._check_promotable(version, force, reason)
                old = pointers.read_pointer(self.path, deployment)
                if old and old["version"] == version.id and old["artifact"] == chosen:
                    raise RegistryError(f"{deployment} already serves {version.id} "
                                        f"({chosen}); nothing to promote")
            except RegistryError as exc:
                append_audit(self.path, {**entry, "phase": "refused", "error": str(exc)})
                raise
            pointer = {"deployment": deployment, "version": version.id, "artifact": chosen,
                       "promoted_at": now(), "by": by, "reason": reason, "forced": force,
                       "history": _history(old)}
            return self._replace(pointer, {**entry, "artifact": chosen,
                                           "from": old["version"] if old else None})

    def rollback(self, deployment: str, *, by: str | None = None,
                 reason: str = "") -> dict[str, Any]:
        """Point ``deployment`` back at the version it served before (``history[0]``); that
        entry leaves the history, so a second rollback goes one further back.

        Raises:
            RegistryError: an unknown deployment, no earlier version, or one whose files
                changed since (audited).
        """
        by = by or current_user()
        pointers.check_deployment_name(deployment)
        self._require()
        with writer_lock(self.path):
            entry = {"action": "rollback", "deployment": deployment, "by": by,
                     "reason": reason}
            try:
                old = pointers.read_pointer(self.path, deployment)
                if old is None:
                    known = ", ".join(pointers.list_pointers(self.path)) or "none yet"
                    raise RegistryError(f"no deployment {deployment!r} in {self.path}; known "
                                        f"deployments: {known}")
                if not old.get("history"):
                    raise RegistryError(f"{deployment} has no earlier version to roll back "
                                        f"to (it has only ever served {old['version']})")
                back = old["history"][0]
                entry["version"] = back["version"]
                version = self.get(back["version"])
                if problems := self.verify(version.id):
                    raise RegistryError(f"cannot roll {deployment} back to {version.id}: its "
                                        f"files changed since registration: "
                                        f"{'; '.join(problems[:5])}")
            except RegistryError as exc:
                append_audit(self.path, {**entry, "phase": "refused", "error": str(exc)})
                raise
            pointer = {"deployment": deployment, "version": version.id,
                       "artifact": back["artifact"], "promoted_at": now(), "by": by,
                       "reason": reason, "forced": False, "rolled_back_from": old["version"],
                       "history": old["history"][1:]}
            return self._replace(pointer, {**entry, "artifact": back["artifact"],
                                           "from": old["version"]})

    def _check_promotable(self, version: Version, force: bool, reason: str) -> None:
        if problems := self.verify(version.id):
            raise RegistryError(f"{version.id} cannot be promoted: its files changed since "
                                f"registration: {'; '.join(problems[:5])}; register it again "
                                f"(`skinedge registry verify {version.id}` lists them all)")
        if version.gates_passed is False:
            if not force:
                raise RegistryError(f"{version.id} failed its gates "
                                    f"({_gate_summary(version.gates)}); promote it anyway "
                                    "only with --force and --reason")
            if not reason.strip():
                raise RegistryError(f"--force promotes {version.id} past its failed gates "
                                    "only with a --reason, for the audit log")

    def _replace(self, pointer: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        """Write ``pointer`` between a started and a done (or failed) audit line."""
        op = _op()
        append_audit(self.path, {"op": op, **entry, "phase": "started"})
        try:
            pointers.write_pointer(self.path, pointer)
        except BaseException as exc:
            append_audit(self.path, {"op": op, **entry, "phase": "failed", "error": str(exc)})
            raise
        append_audit(self.path, {"op": op, **entry, "phase": "done"})
        return pointer


def _op() -> str:
    return secrets.token_hex(6)


def _history(old: dict[str, Any] | None) -> list[dict[str, Any]]:
    if old is None:
        return []
    return [{k: v for k, v in old.items() if k != "history"}, *old.get("history", [])]


def _gate_summary(gates: Mapping[str, Any] | None) -> str:
    if not gates:
        return "no details"
    failed = [c.get("name", "?") for c in gates.get("checks", [])
              if isinstance(c, dict) and not c.get("passed", True)]
    where = f"report {gates['report']}" if gates.get("report") else "no report"
    return (f"failed: {', '.join(failed)}; " if failed else "") + where
