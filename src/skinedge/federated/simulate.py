"""``simulate_federation``: every site in one machine, through Flower's simulation engine (Ray).

The ServerApp and ClientApp are the same objects a deployment runs; only the transport
differs. A run folder that already holds finished rounds continues after the last one with
``resume=True`` (the per-round checkpoint), so a killed simulation loses at most one round.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skinedge.errors import ConfigError, SkinedgeError
from skinedge.federated.config import (
    FEDERATION_FILE,
    FederatedConfig,
    read_federation,
    write_federation,
)
from skinedge.federated.env import flower_environment
from skinedge.federated.outputs import SUMMARY, read_rounds, register_run


class FederatedRunError(SkinedgeError):
    """A federated run ended without its summary (a site or the server failed)."""


def prepare_run(cfg: FederatedConfig, out_dir: Path, *, resume: bool) -> Path:
    """Write (or, on resume, check) ``RUN/federation.json``; the path.

    Raises:
        ConfigError: no sites; a run already in ``out_dir`` without ``resume``; on resume, a
            config that differs from the one the run started with (more rounds allowed).
    """
    if len(cfg.sites) < 2:
        raise ConfigError(f"a federation needs at least 2 sites; the config has "
                          f"{len(cfg.sites)} (list them under `sites:` or pass --sites)")
    path = out_dir / FEDERATION_FILE
    if path.exists() and not resume:
        raise ConfigError(f"{out_dir} already holds a federated run; continue it with --resume "
                          "or choose another --out")
    if path.exists():
        def comparable(c: FederatedConfig) -> dict:
            doc = c.model_dump(mode="json", exclude={"rounds"})
            doc["sites"] = [[s.name, str(Path(s.data).resolve()), s.max_images] for s in c.sites]
            return doc

        before, now = comparable(read_federation(path)), comparable(cfg)
        if before != now:
            changed = sorted(k for k in now if now[k] != before.get(k))
            raise ConfigError(f"{path}: the run started with other settings ({', '.join(changed)});"
                              " resume with the same config, or choose another --out")
    (out_dir / SUMMARY).unlink(missing_ok=True)
    return write_federation(cfg, out_dir)


def finish_run(out_dir: Path, registry: Path | None) -> dict[str, Any]:
    """The run's summary, registered as a registry version when ``registry`` is given.

    Raises:
        FederatedRunError: the run wrote no summary.
    """
    path = out_dir / SUMMARY
    if not path.is_file():
        raise FederatedRunError(f"the federated run in {out_dir} ended without {SUMMARY}: a site "
                                "or the server failed (see the log above); rerun with --resume "
                                "to continue after the last finished round")
    summary = json.loads(path.read_text())
    if summary.get("rounds_without_sites"):
        raise FederatedRunError(
            f"rounds {summary['rounds_without_sites']} of the run in {out_dir} received no "
            "site's update (every site failed; see the log above): the model did not learn in "
            "them. Fix the cause, then start again with another --out")
    if registry is not None:
        version = register_run(out_dir, registry, summary=summary)
        summary["registry_version"] = version.id
        path.write_text(json.dumps(summary, indent=1))
    return summary


class RoundWatcher(threading.Thread):
    """Calls ``progress(record)`` for each new line of ``RUN/rounds.jsonl``."""

    def __init__(self, out_dir: Path, progress: Callable[[dict[str, Any]], None] | None):
        super().__init__(daemon=True)
        self.out_dir, self.progress = out_dir, progress
        self.seen = len(read_rounds(out_dir))
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.poll()

    def poll(self) -> None:
        records = read_rounds(self.out_dir)
        for record in records[self.seen:]:
            if self.progress is not None:
                self.progress(record)
        self.seen = max(self.seen, len(records))


def simulate_federation(cfg: FederatedConfig, out_dir: Path | str, *, resume: bool = False,
                        registry: Path | None = None, parallel: int = 2,
                        progress: Callable[[dict[str, Any]], None] | None = None,
                        ) -> dict[str, Any]:
    """Run the federation on this machine with Flower's simulation engine.

    Args:
        cfg: The federation (at least 2 sites).
        out_dir: Run folder (see :mod:`skinedge.federated.outputs`).
        resume: Continue a run in ``out_dir`` after its last finished round.
        registry: Register the final checkpoint there (source ``federated``).
        parallel: Sites trained at once (Ray CPUs; each site uses ``cfg.threads`` threads).
        progress: Called with each finished round's record.

    Returns:
        The run's ``summary.json`` (with ``registry_version`` when registered).

    Raises:
        ConfigError: see :func:`prepare_run`.
        FederatedRunError: the run ended without a summary.
        MissingBackendError: flwr / ray are not installed (``skinedge[federated]``).
    """
    from skinedge.utils.backends import require

    out_dir = Path(out_dir)
    federation = prepare_run(cfg, out_dir, resume=resume)
    flower_environment()
    # Flower's Ray backend sets PYTHONPATH to this process's sys.path for its workers and leaves
    # it set: restored afterwards, or every later subprocess (a fresh venv, a tool) would import
    # this environment's packages.
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "SKINEDGE_FEDERATION")}
    os.environ["SKINEDGE_FEDERATION"] = str(federation.resolve())
    require("ray", "federated")
    simulation = require("flwr.simulation", "federated")
    from skinedge.federated.client_app import app as client_app
    from skinedge.federated.server_app import app as server_app

    watcher = RoundWatcher(out_dir, progress)
    watcher.start()
    try:
        simulation.run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=len(cfg.sites),
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                            "init_args": {"num_cpus": max(parallel, 1),
                                          "include_dashboard": False,
                                          "log_to_driver": False}})
    finally:
        watcher.stop.set()
        watcher.join()
        watcher.poll()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return finish_run(out_dir, registry)
