"""The ServerApp: sample sites, send the global arrays, aggregate, checkpoint every round.

Strategies are Flower's, configured: ``FedAvg`` or ``FedProx`` (``proximal_mu`` goes to the
sites in the train config), wrapped in ``DifferentialPrivacyClientSideFixedClipping`` for DP
(sites then weigh equally: ``unit-weight``, so one site's influence is bounded by the clipping
norm). With SecAgg+ the run goes through Flower's workflow API (``LegacyContext`` +
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``), the only way Flower 1.42 provides
secure aggregation. After every round the global model is saved to ``RUN/rounds/last`` and a
line appended to ``RUN/rounds.jsonl``; a run started again on the same folder continues after
the last finished round.
"""

from __future__ import annotations

from skinedge.federated.env import flower_environment

flower_environment()  # before flwr is imported

import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import (  # noqa: E402
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedProx,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords  # noqa: E402

from skinedge.federated import outputs, task  # noqa: E402
from skinedge.federated.client_app import federation_path  # noqa: E402
from skinedge.federated.config import FederatedConfig, read_federation  # noqa: E402
from skinedge.federated.privacy import gaussian_epsilon  # noqa: E402

app = ServerApp()


class RoundRecorder:
    """Checkpoints the global model after every round and keeps the run's history."""

    def __init__(self, cfg: FederatedConfig, out_dir: Path, model, provenance: str,
                 start_round: int, history: list[dict[str, Any]]):
        self.cfg, self.out_dir, self.model, self.provenance = cfg, out_dir, model, provenance
        self.offset, self.history = start_round, history
        self.keys = task.exchanged_keys(model, cfg)
        self.down_bytes = outputs.arrays_nbytes(task.exchanged_state(model, cfg))
        self.pending: dict[str, Any] = {}
        self.started = time.perf_counter()

    def privacy(self, rounds: int) -> dict[str, Any] | None:
        if not self.cfg.dp.enabled:
            return None
        spent = gaussian_epsilon(self.cfg.dp.noise_multiplier, rounds, self.cfg.dp.delta)
        return {**spent.as_dict(), "clipping_norm": self.cfg.dp.clipping_norm}

    def train_metrics(self, records: list, weight_key: str) -> MetricRecord:
        """Flower's weighted average of the sites' train metrics, plus the bytes they sent."""
        up = sum(outputs.arrays_nbytes(rec.to_numpy_ndarrays())
                 for content in records for rec in content.array_records.values())
        norms = [float(next(iter(c.metric_records.values()))["update-norm"]) for c in records]
        self.pending = {"sites": len(records), "upload_bytes": up,
                        "download_bytes": self.down_bytes * len(records),
                        "update_norms": norms}
        return aggregate_metricrecords(records, weight_key)

    def evaluate_metrics(self, records: list, weight_key: str) -> MetricRecord:
        metrics = aggregate_metricrecords(records, "num-examples")
        self.pending["evaluation"] = dict(metrics)
        return metrics

    def after_round(self, server_round: int, arrays: dict) -> None:
        """Called with the new global arrays after each round (0: the initial model)."""
        if server_round == 0:
            return
        done = server_round + self.offset
        task.load_exchanged_state(self.model, arrays)
        record = {"round": done, "seconds": round(time.perf_counter() - self.started, 1),
                  "sites": 0, **self.pending, "privacy": self.privacy(done)}
        self.history.append(record)
        self.pending = {}
        self.started = time.perf_counter()
        card = outputs.federation_card(self.cfg, self.provenance, rounds_done=done,
                                       metrics=record.get("evaluation", {}),
                                       privacy=record["privacy"])
        outputs.save_round(self.out_dir, self.model, card, round_done=done,
                           history=self.history)


def _strategy(cfg: FederatedConfig, recorder: RoundRecorder):
    n, m = len(cfg.sites), cfg.sampled_sites()
    common = dict(fraction_train=cfg.fraction, fraction_evaluate=1.0, min_train_nodes=m,
                  min_evaluate_nodes=n, min_available_nodes=n,
                  weighted_by_key="unit-weight" if cfg.dp.enabled else "num-examples",
                  train_metrics_aggr_fn=recorder.train_metrics,
                  evaluate_metrics_aggr_fn=recorder.evaluate_metrics)
    strategy = (FedProx(**common, proximal_mu=cfg.proximal_mu) if cfg.strategy == "fedprox"
                else FedAvg(**common))
    if cfg.dp.enabled:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=cfg.dp.noise_multiplier,
            clipping_norm=cfg.dp.clipping_norm, num_sampled_clients=m)
    return strategy


def _prepare(context: Context) -> tuple[FederatedConfig, Path, RoundRecorder]:
    path = federation_path(context)
    cfg = read_federation(path)
    out_dir = path.parent
    model, provenance = task.build_model(cfg)
    done, history = outputs.load_last_round(out_dir, model)
    return cfg, out_dir, RoundRecorder(cfg, out_dir, model, provenance, done, history)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the remaining rounds, then write the final checkpoint and summary."""
    cfg, out_dir, recorder = _prepare(context)
    remaining = cfg.rounds - recorder.offset
    started = time.perf_counter()
    if remaining > 0 and cfg.secagg.enabled:
        _run_secagg(grid, context, cfg, recorder, remaining)
    elif remaining > 0:
        state = task.exchanged_state(recorder.model, cfg)
        _strategy(cfg, recorder).start(
            grid=grid, initial_arrays=ArrayRecord({k: Array(v) for k, v in state.items()}),
            num_rounds=remaining, train_config=ConfigRecord({"round-offset": recorder.offset}),
            evaluate_fn=lambda rnd, arrays: recorder.after_round(
                rnd, dict(zip(arrays.keys(), arrays.to_numpy_ndarrays()))))
    _finish(cfg, out_dir, recorder, time.perf_counter() - started)


def _run_secagg(grid: Grid, context: Context, cfg: FederatedConfig, recorder: RoundRecorder,
                remaining: int) -> None:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as WorkflowFedAvg
    from flwr.server.strategy import FedProx as WorkflowFedProx
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    n, m = len(cfg.sites), cfg.sampled_sites()
    state = task.exchanged_state(recorder.model, cfg)
    keys = recorder.keys

    def evaluate_fn(server_round, ndarrays, config):
        recorder.after_round(server_round, dict(zip(keys, ndarrays)))
        return None

    common = dict(fraction_fit=cfg.fraction, fraction_evaluate=1.0, min_fit_clients=m,
                  min_evaluate_clients=n, min_available_clients=n,
                  initial_parameters=ndarrays_to_parameters([state[k] for k in keys]),
                  evaluate_fn=evaluate_fn,
                  on_fit_config_fn=lambda rnd: {"round-offset": recorder.offset},
                  fit_metrics_aggregation_fn=lambda pairs: _record_secagg(recorder, pairs),
                  evaluate_metrics_aggregation_fn=lambda pairs: _weighted(recorder, pairs))
    strategy = (WorkflowFedProx(**common, proximal_mu=cfg.proximal_mu)
                if cfg.strategy == "fedprox" else WorkflowFedAvg(**common))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=remaining),
                           strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=min(cfg.secagg.num_shares, m), reconstruction_threshold=min(
            cfg.secagg.reconstruction_threshold, m - 1),
        max_weight=cfg.secagg.max_weight, clipping_range=cfg.secagg.clipping_range))
    workflow(grid, legacy)


def _record_secagg(recorder: RoundRecorder, pairs) -> dict:
    # Under SecAgg+ the server never sees one site's arrays or metrics: only the sum.
    recorder.pending = {"sites": len(pairs), "upload_bytes": None,
                        "download_bytes": recorder.down_bytes * max(len(pairs), 1),
                        "secure_aggregation": True}
    return {}


def _weighted(recorder: RoundRecorder, pairs) -> dict:
    total = sum(n for n, _ in pairs) or 1
    keys = {k for _, metrics in pairs for k in metrics}
    out = {k: sum(n * metrics.get(k, 0.0) for n, metrics in pairs) / total for k in keys}
    # The workflow evaluates on the sites after the round was recorded: attach it there.
    if recorder.history and "evaluation" not in recorder.history[-1]:
        recorder.history[-1]["evaluation"] = out
    return out


def _finish(cfg: FederatedConfig, out_dir: Path, recorder: RoundRecorder, seconds: float) -> None:
    from skinedge.models import save_checkpoint

    history = recorder.history
    done = history[-1]["round"] if history else 0
    final = history[-1].get("evaluation", {}) if history else {}
    uploads = [r["upload_bytes"] for r in history if r.get("upload_bytes") is not None]
    downloads = [r["download_bytes"] for r in history if r.get("download_bytes") is not None]
    per_round = {"upload": sum(uploads) / len(uploads) if uploads else None,
                 "download": sum(downloads) / len(downloads) if downloads else None}
    privacy = recorder.privacy(done)
    card = outputs.federation_card(cfg, recorder.provenance, rounds_done=done, metrics=final,
                                   privacy=privacy, bytes_per_round=per_round)
    save_checkpoint(out_dir / outputs.CHECKPOINT, recorder.model, card)
    outputs.write_summary(out_dir, {
        "rounds": done, "strategy": cfg.strategy, "sites": [s.name for s in cfg.sites],
        "secure_aggregation": cfg.secagg.enabled, "dp": privacy,
        "epsilon": privacy["epsilon"] if privacy else None,
        "bytes_per_round": per_round, "parameters_bytes": recorder.down_bytes,
        "exchanged_arrays": len(recorder.keys), "final_metrics": final,
        "rounds_without_sites": [r["round"] for r in history if not r.get("sites")],
        "seconds_this_session": round(seconds, 1),
        "seconds_all_rounds": round(sum(r["seconds"] for r in history), 1),
        "checkpoint": str(out_dir / outputs.CHECKPOINT),
    })
