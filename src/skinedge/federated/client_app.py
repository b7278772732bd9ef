"""The ClientApp: one site's side of the federation (Flower 1.42 Message API).

A site receives the global arrays, trains on its own images (:func:`task.train_local`) and
replies with its new arrays and scalar metrics; it evaluates the global model on its own val
rows. Images never leave: only the arrays of :func:`task.exchanged_state` and a few numbers.

Which site this node is: ``node_config["site"]`` (a site name of the federation, what a real
``flower-supernode --node-config 'site="clinic-a"'`` says), else ``partition-id`` (what the
simulation engine and ``skinedge federated deploy`` set). The federation comes from
``run_config["federation"]`` (the run folder's ``federation.json``; ``flwr run --run-config``)
or the ``SKINEDGE_FEDERATION`` environment variable (the simulation).

Mods: Flower's ``fixedclipping_mod`` runs when the server asks for clipping (its DP wrapper
puts the clipping norm in the train config), ``secaggplus_mod`` when the server runs SecAgg+;
SecAgg+ messages come in Flower's legacy ``fitins`` layout, which :func:`train` also reads.
"""

from __future__ import annotations

import os

from skinedge.federated.env import flower_environment

flower_environment()  # before flwr is imported

from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, NamedTuple  # noqa: E402

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.mod import fixedclipping_mod  # noqa: E402

from skinedge.federated import task  # noqa: E402
from skinedge.federated.config import FederatedConfig, read_federation  # noqa: E402
from skinedge.federated.sites import SiteData, load_site  # noqa: E402

if TYPE_CHECKING:
    from torch import nn

#: Config key Flower's DP wrapper sets for the clipping mod.
CLIPPING_KEY = "clipping_norm"
#: Config record SecAgg+ messages carry.
SECAGG_RECORD = "secaggplus_configs"
LEGACY_FIT = "fitins"
LEGACY_EVAL = "evaluateins"


def federation_path(context: Context) -> Path:
    """Where the federation file is: the run config, else ``SKINEDGE_FEDERATION``."""
    value = context.run_config.get("federation") or os.environ.get("SKINEDGE_FEDERATION", "")
    if not value:
        raise RuntimeError("no federation file: pass --run-config 'federation=\"RUN/federation"
                           ".json\"' or set SKINEDGE_FEDERATION")
    return Path(str(value))


@lru_cache(maxsize=4)
def _federation(path: str) -> FederatedConfig:
    return read_federation(path)


@lru_cache(maxsize=4)
def _site(path: str, name: str) -> SiteData:
    cfg = _federation(path)
    spec = next(s for s in cfg.sites if s.name == name)
    return load_site(spec, cfg)


def site_name(context: Context, cfg: FederatedConfig) -> str:
    """This node's site, from its node config."""
    names = [s.name for s in cfg.sites]
    if "site" in context.node_config:
        name = str(context.node_config["site"])
        if name not in names:
            raise RuntimeError(f"node_config site={name!r} is not one of the federation's "
                               f"sites {names}")
        return name
    index = int(context.node_config.get("partition-id", -1))
    if not 0 <= index < len(names):
        raise RuntimeError(f"node has partition-id {index}; the federation has {len(names)} "
                           "sites: give each supernode --node-config 'site=\"NAME\"'")
    return names[index]


def _setup(context: Context) -> tuple[FederatedConfig, SiteData]:
    path = str(federation_path(context))
    cfg = _federation(path)
    return cfg, _site(path, site_name(context, cfg))


def _arrays_of(record: ArrayRecord, keys: list[str]) -> dict:
    arrays = record.to_numpy_ndarrays()
    if len(arrays) != len(keys):
        raise ValueError(f"received {len(arrays)} arrays, the model exchanges {len(keys)}")
    return dict(zip(keys, arrays))


class Received(NamedTuple):
    """What a train or evaluate message gives a site: its setup and the global model."""

    cfg: FederatedConfig
    site: SiteData
    model: nn.Module  # with the received global arrays loaded
    keys: list[str]  # the arrays' names, in the order a reply sends them
    legacy: bool  # Flower's legacy layout (SecAgg+): ``PREFIX.parameters``, a bare array list


def _receive(msg: Message, context: Context, legacy_prefix: str) -> Received:
    """This node's federation and site, and the model with the message's arrays loaded.

    Args:
        msg: A train or evaluate message: its arrays under ``"arrays"`` (named), or in the legacy
            layout under ``f"{legacy_prefix}.parameters"`` (unnamed, in
            :func:`task.exchanged_keys` order).
        context: The node's context (which federation, which site).
        legacy_prefix: :data:`LEGACY_FIT` or :data:`LEGACY_EVAL`.
    """
    cfg, site = _setup(context)
    model, _ = task.build_model(cfg)
    legacy = f"{legacy_prefix}.parameters" in msg.content.array_records
    record = msg.content.array_records[f"{legacy_prefix}.parameters" if legacy else "arrays"]
    if legacy:
        keys = task.exchanged_keys(model, cfg)
        arrays = _arrays_of(record, keys)
    else:
        keys = list(record.keys())
        arrays = dict(zip(keys, record.to_numpy_ndarrays()))
    task.load_exchanged_state(model, arrays)
    return Received(cfg, site, model, keys, legacy)


def _when_asked(mod, asked):
    """Run ``mod`` only on messages for which ``asked(msg)`` is true."""
    def wrapped(msg: Message, ctxt: Context, call_next):
        return mod(msg, ctxt, call_next) if asked(msg) else call_next(msg, ctxt)
    wrapped.__name__ = f"{mod.__name__}_when_asked"
    return wrapped


def _asks_clipping(msg: Message) -> bool:
    return any(CLIPPING_KEY in rec for rec in msg.content.config_records.values())


def _asks_secagg(msg: Message) -> bool:
    return SECAGG_RECORD in msg.content.config_records


def _secaggplus_mod(msg, ctxt, call_next):
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, ctxt, call_next)


_secaggplus_mod.__name__ = "secaggplus_mod"

app = ClientApp(mods=[_when_asked(_secaggplus_mod, _asks_secagg),
                      _when_asked(fixedclipping_mod, _asks_clipping)])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this site's images; reply arrays + metrics."""
    cfg, site, model, keys, legacy = _receive(msg, context, LEGACY_FIT)
    config = (msg.content.config_records.get(f"{LEGACY_FIT}.config", ConfigRecord()) if legacy
              else msg.content.config_records["config"])
    server_round = int(config.get("server-round", 1)) + int(config.get("round-offset", 0))
    result = task.train_local(model, site, cfg, server_round=server_round,
                              proximal_mu=float(config.get("proximal-mu", 0.0)))
    arrays = task.exchanged_state(model, cfg)
    metrics = {"train-loss": result.loss, "num-examples": result.examples,
               "unit-weight": 1, "update-norm": result.update_norm}
    if legacy:
        return _legacy_fit_reply(msg, [arrays[k] for k in keys], result.examples, metrics)
    content = RecordDict({"arrays": ArrayRecord({k: Array(arrays[k]) for k in keys}),
                          "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global model on this site's val rows; reply metrics only."""
    cfg, site, model, _, legacy = _receive(msg, context, LEGACY_EVAL)
    result = task.evaluate_local(model, site, cfg)
    metrics = {"val-loss": result.loss, "num-examples": result.examples, "unit-weight": 1}
    if result.accuracy == result.accuracy:  # not nan
        metrics["val-accuracy"] = result.accuracy
    if legacy:
        return _legacy_evaluate_reply(msg, result.loss, result.examples, metrics)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _legacy_fit_reply(msg: Message, arrays: list, examples: int, metrics: dict) -> Message:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), examples, metrics)
    return Message(content=fitres_to_recorddict(res, keep_input=False), reply_to=msg)


def _legacy_evaluate_reply(msg: Message, loss: float, examples: int, metrics: dict) -> Message:
    from flwr.common import Code, EvaluateRes, Status
    from flwr.compat.common.recorddict_compat import evaluateres_to_recorddict

    res = EvaluateRes(Status(Code.OK, ""), loss, examples, metrics)
    return Message(content=evaluateres_to_recorddict(res), reply_to=msg)
