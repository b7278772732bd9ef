"""What a federated run writes: the per-round checkpoint (resume), ``rounds.jsonl`` (progress),
the final checkpoint with its card, ``summary.json``, and the registry version.

Run folder::

    RUN/federation.json      the resolved config every app reads
    RUN/rounds.jsonl         one line per finished round (metrics, bytes, epsilon so far)
    RUN/rounds/last/         global model after the last finished round + trainer_state.pt
    RUN/checkpoint/          the final model (save_checkpoint, card notes federated training)
    RUN/summary.json         rounds, strategy, DP epsilon, bytes, wall time
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from skinedge.federated.config import FederatedConfig
from skinedge.utils.io import atomic_write_text, package_versions

ROUNDS_LOG = "rounds.jsonl"
LAST_ROUND = "rounds/last"
CHECKPOINT = "checkpoint"
SUMMARY = "summary.json"


def federation_card(cfg: FederatedConfig, provenance: str, *, rounds_done: int,
                    metrics: dict[str, Any], privacy: dict[str, Any] | None,
                    bytes_per_round: dict[str, float] | None = None):
    """The model card of a federated model: the federation's classes and preprocessing, and in
    ``training`` that it was trained federated (strategy, rounds, sites, DP epsilon, SecAgg+)."""
    from skinedge.data.classes import get_vocabulary
    from skinedge.federated.sites import FEDERATION_VOCABULARY
    from skinedge.models import DataInfo, ModelCard

    vocab = get_vocabulary(FEDERATION_VOCABULARY)
    training = {
        "federated": True, "framework": "flower", "strategy": cfg.strategy,
        "proximal_mu": cfg.proximal_mu if cfg.strategy == "fedprox" else None,
        "rounds": rounds_done, "local_epochs": cfg.local_epochs, "fraction": cfg.fraction,
        "sites": [s.name for s in cfg.sites], "secure_aggregation": cfg.secagg.enabled,
        "differential_privacy": privacy, "bytes_per_round": bytes_per_round,
        "config": cfg.model_dump(mode="json"),
    }
    return ModelCard(
        architecture=cfg.model.arch, classes=list(vocab.codes), class_names=vocab.names,
        vocabulary=vocab.name, positive_class=vocab.positive, preprocess=cfg.preprocess,
        drop_rate=cfg.model.drop_rate, pretrained=provenance,
        data=DataInfo(manifest=None, layout="federated",
                      licence="each site's own (the data stayed at the sites)"),
        metrics={"split": "sites' val (federated evaluation)", **metrics},
        training=training, versions=package_versions(("flwr", "ray")),
    )


def save_round(out_dir: Path, model, card, *, round_done: int,
               history: list[dict[str, Any]]) -> None:
    """The global model after ``round_done`` rounds, resumable (``rounds/last``), and the log."""
    from skinedge.models import save_checkpoint

    save_checkpoint(out_dir / LAST_ROUND, model, card,
                    {"round": round_done, "history": history})
    atomic_write_text(out_dir / ROUNDS_LOG, "".join(json.dumps(r) + "\n" for r in history))


def load_last_round(out_dir: Path, model) -> tuple[int, list[dict[str, Any]]]:
    """Restore ``rounds/last`` into ``model``: (rounds done, history); (0, []) without one."""
    from skinedge.models.checkpoint import load_checkpoint_weights, load_trainer_state

    state = load_trainer_state(out_dir / LAST_ROUND) if (out_dir / LAST_ROUND).exists() else None
    if not state:
        return 0, []
    model.load_state_dict(load_checkpoint_weights(out_dir / LAST_ROUND))
    return int(state["round"]), list(state["history"])


def read_rounds(out_dir: Path) -> list[dict[str, Any]]:
    """The finished rounds' records (empty before the first)."""
    path = Path(out_dir) / ROUNDS_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def arrays_nbytes(arrays) -> int:
    """Bytes of the raw array data in a list/dict of arrays."""
    values = arrays.values() if isinstance(arrays, dict) else arrays
    return int(sum(np.asarray(a).nbytes for a in values))


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    return atomic_write_text(Path(out_dir) / SUMMARY, json.dumps(summary, indent=1))


def register_run(out_dir: Path, registry: Path, *, summary: dict[str, Any], by: str | None = None):
    """Register ``RUN/checkpoint`` as a registry version (source ``federated``) with the run's
    summary as a report; returns the :class:`skinedge.registry.Version`."""
    from skinedge.registry import Registry

    metrics = {k: summary[k] for k in ("rounds", "strategy", "epsilon") if summary.get(k) is not None}
    metrics.update({k: v for k, v in summary.get("final_metrics", {}).items()
                    if isinstance(v, (int, float))})
    return Registry(registry).register(
        checkpoint=out_dir / CHECKPOINT, reports={"federated-summary.json": out_dir / SUMMARY},
        source="federated", metrics=metrics, by=by,
        notes=f"federated {summary.get('strategy')} over {summary.get('sites')} for "
              f"{summary.get('rounds')} rounds; DP epsilon {summary.get('epsilon')}")
