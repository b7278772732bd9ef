"""Serving from a model registry: the deployment's current version, and a promotion (or
rollback) served without a restart.

:func:`load_model` loads what the settings name: ``model`` (a path), or the current version of
``deployment`` in ``registry`` (its files checked against the registry's hashes first; its
checkpoint, when it has one and torch is installed, explains with Grad-CAM).
:class:`PointerWatcher` runs in the app's lifespan: every ``registry_poll_seconds`` it stats the
deployment's pointer file and, when it changed and names another version or artifact, loads
that in a worker thread and swaps ``app.state.model``. A request holds the model object it
started with (routes read ``app.state.model`` once), so requests in flight finish on the old
model. A version that fails to load is logged and counted (``skinedge_model_reloads_total
{outcome="failed"}``) and the old model keeps serving; it is tried again when the pointer
changes again.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from typing import Any

from anyio import to_thread
from prometheus_client import CollectorRegistry, Counter

from skinedge.errors import SkinedgeError
from skinedge.registry import Registry, RegistryError
from skinedge.service.models import ServedModel
from skinedge.service.settings import ServeSettings

log = logging.getLogger("skinedge.service")


def load_model(settings: ServeSettings) -> ServedModel:
    """The model the settings name: ``model``, or the registry deployment's current version.

    Raises:
        ConfigError: neither ``model`` nor ``registry`` given.
        RegistryError: no such registry or deployment, or a version whose files changed.
        ModelError: an artifact that cannot be loaded (as :class:`ServedModel`).
    """
    if settings.registry is None:
        return ServedModel(settings)
    registry = Registry(settings.registry)
    pointer = registry.pointer(settings.deployment)
    if pointer is None:
        known = ", ".join(registry.deployments()) or "none yet"
        raise RegistryError(
            f"deployment {settings.deployment!r} of {settings.registry} serves no version yet "
            f"(deployments: {known}); promote one first: skinedge registry promote VERSION "
            f"--deployment {settings.deployment} --registry {settings.registry}")
    return load_pointer(settings, registry, pointer)


def load_pointer(settings: ServeSettings, registry: Registry,
                 pointer: dict[str, Any]) -> ServedModel:
    """A :class:`ServedModel` of the version and artifact a pointer names."""
    version = registry.get(pointer["version"])
    if problems := registry.verify(version.id):
        raise RegistryError(f"{version.id} in {registry.path} is not as registered: "
                            f"{'; '.join(problems[:5])}")
    artifact = registry.artifact_path(pointer)
    explain = version.checkpoint
    if explain is not None and importlib.util.find_spec("torch") is None:
        log.warning("%s has a checkpoint, but torch is not installed: no Grad-CAM overlays "
                    "(pip install 'skinedge[train]')", version.id)
        explain = None
    served = settings.model_copy(update={"model": artifact, "explain": explain})
    return ServedModel(served, version=version.id, deployment=settings.deployment)


def reload_counter(metrics: CollectorRegistry) -> Counter:
    """``skinedge_model_reloads_total{outcome="ok"|"failed"}`` in the app's metrics."""
    counter = Counter("skinedge_model_reloads", "Registry versions loaded after a pointer "
                      "change, by outcome.", ["outcome"], registry=metrics)
    for outcome in ("ok", "failed"):
        counter.labels(outcome)  # both series exist (at 0) from the start
    return counter


class PointerWatcher:
    """Watches a deployment's pointer file and swaps ``app.state.model`` on a change."""

    def __init__(self, settings: ServeSettings, serving: ServedModel,
                 reloads: Counter | None = None):
        """``reloads``: the :func:`reload_counter` to count loads in (none: not counted)."""
        self.settings = settings
        self.registry = Registry(settings.registry)
        self.file = self.registry.path / "deployments" / f"{settings.deployment}.json"
        self.serving = _key(serving.version, serving.settings.model)
        self._seen: tuple | None = None
        self.reloads = reloads

    async def run(self, app: Any) -> None:
        """Check every ``registry_poll_seconds`` until cancelled (at shutdown)."""
        while True:
            await asyncio.sleep(self.settings.registry_poll_seconds)
            try:
                await self.check(app)
            except Exception:  # an unreadable registry folder: log, keep serving and watching
                log.exception("checking the registry pointer %s failed; still serving %s",
                              self.file, self.serving[0])

    async def check(self, app: Any) -> bool:
        """Swap in the pointer's version if the pointer changed to another; True if swapped."""
        signature = _signature(self.file)
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            pointer = await to_thread.run_sync(self.registry.pointer, self.settings.deployment)
        except (SkinedgeError, OSError) as exc:
            log.error("registry pointer %s unreadable, still serving %s: %s", self.file,
                      self.serving[0], exc)
            return False
        if pointer is None:
            log.warning("registry pointer %s is gone; still serving %s", self.file,
                        self.serving[0])
            return False
        try:
            wanted = _key(pointer["version"], self.registry.artifact_path(pointer))
            if wanted == self.serving:
                return False
            log.info("deployment %s now points at %s: loading it", self.settings.deployment,
                     pointer["version"])
            model = await to_thread.run_sync(load_pointer, self.settings, self.registry,
                                             pointer)
        except Exception as exc:  # any failure to load: keep serving the old model
            self._count("failed")
            if isinstance(exc, SkinedgeError):
                log.error("could not load %s %s, still serving %s: %s", pointer["version"],
                          pointer.get("artifact"), self.serving[0], exc)
            else:
                log.exception("could not load %s %s (a bug), still serving %s",
                              pointer["version"], pointer.get("artifact"), self.serving[0])
            return False
        app.state.model = model
        self.serving = wanted
        self._count("ok")
        log.info("serving %s (%s) of deployment %s", model.version, model.label,
                 self.settings.deployment)
        return True

    def _count(self, outcome: str) -> None:
        if self.reloads is not None:
            self.reloads.labels(outcome).inc()


def _key(version: str | None, path: Path | str | None) -> tuple[str | None, str | None]:
    return version, None if path is None else str(Path(path).resolve())


def _signature(file: Path) -> tuple | None:
    try:
        st = file.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
