"""``skinedge federated``: train across sites with Flower; only parameters leave a site."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from skinedge.cli.common import ConfigOpt, SetOpt

app = typer.Typer(help="Federated training with Flower: simulate sites, or run a server and "
                  "clients.", no_args_is_help=True)


class Strategy(StrEnum):
    fedavg = "fedavg"
    fedprox = "fedprox"


OutOpt = Annotated[Path, typer.Option(
    help="Run folder: federation.json, rounds.jsonl, rounds/last/, checkpoint/, summary.json.")]
SitesOpt = Annotated[Path | None, typer.Option(
    help="YAML with a `sites:` list (name, data: labels.csv folder or manifest, max_images). "
         "Default: the experiment's sites made from --data.")]
DataOpt = Annotated[Path | None, typer.Option(
    help="Folder holding ham10000-sample/, isic2019-sample/, isic2020-sample/ for the default "
         "sites (default: SKINEDGE_DATA or ../shared/data).")]
StrategyOpt = Annotated[Strategy | None, typer.Option(help="Aggregation strategy.")]
RoundsOpt = Annotated[int | None, typer.Option(min=1, help="Federated rounds.")]
EpochsOpt = Annotated[int | None, typer.Option(min=1, help="Local epochs per round.")]
FractionOpt = Annotated[float | None, typer.Option(
    min=0.01, max=1.0, help="Fraction of the sites trained each round (at least 2).")]
MuOpt = Annotated[float | None, typer.Option(help="FedProx proximal weight mu.")]
DpOpt = Annotated[bool | None, typer.Option(
    "--dp/--no-dp", help="Site-level DP: clip each site's update, add Gaussian noise; "
    "epsilon is reported.")]
SecaggOpt = Annotated[bool | None, typer.Option(
    "--secagg/--no-secagg", help="Secure aggregation (Flower's SecAgg+).")]
RegistryOpt = Annotated[Path | None, typer.Option(
    "--registry", envvar="SKINEDGE_REGISTRY", help="Register the final checkpoint as a "
    "version of this registry (source federated).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue the run in --out after its last "
                                              "finished round.")]


def _config(config: Path | None, overrides: list[str] | None, sites: Path | None,
            data: Path | None, out: Path, options: dict[str, Any]):
    """The run's config: --config, then --sites (or the experiment's sites), --set, options."""
    from skinedge.federated import load_federated_config
    from skinedge.utils.config import read_yaml_mapping

    sets = [f"{key}={value}" for key, value in options.items() if value is not None]
    cfg = load_federated_config(config, [*(overrides or []), *sets])
    if sites is not None:
        doc = read_yaml_mapping(sites, "sites file", "sites:\n  - name: clinic-a\n    data: "
                                "data/clinic-a")
        cfg = type(cfg).model_validate({**cfg.model_dump(), "sites": doc.get("sites", [])})
    if not cfg.sites:
        from skinedge.federated import experiment_sites

        root = data or Path(os.environ.get("SKINEDGE_DATA", "../shared/data"))
        made, _, _ = experiment_sites(root, out / "sites", seed=cfg.seed)
        cfg = cfg.model_copy(update={"sites": made})
    return cfg


def _print_round(record: dict) -> None:
    from skinedge.cli.common import print_log

    evaluation = record.get("evaluation") or {}
    parts = [f"round {record['round']}: {record.get('sites', 0)} sites, {record['seconds']} s"]
    if "val-loss" in evaluation:
        parts.append(f"sites' val loss {evaluation['val-loss']:.3f}")
    if record.get("upload_bytes") is not None:
        parts.append(f"{record['upload_bytes'] / 1e6:.2f} MB sent by the sites")
    if record.get("privacy"):
        parts.append(f"epsilon {record['privacy']['epsilon']:.2f}")
    print_log(", ".join(parts))


def _print_summary(summary: dict) -> None:
    from skinedge.cli.progress import console

    eps = summary.get("epsilon")
    console.print(f"{summary['rounds']} rounds of {summary['strategy']} over "
                  f"{len(summary['sites'])} sites"
                  + (f", DP epsilon {eps:.2f} (delta {summary['dp']['delta']:g})" if eps else "")
                  + (", SecAgg+" if summary.get("secure_aggregation") else "")
                  + f"\ncheckpoint: {summary['checkpoint']}"
                  + (f"\nregistry version: {summary['registry_version']}"
                     if summary.get("registry_version") else ""))


@app.command()
def simulate(
    out: OutOpt,
    config: ConfigOpt = None,
    sites: SitesOpt = None,
    data: DataOpt = None,
    strategy: StrategyOpt = None,
    rounds: RoundsOpt = None,
    local_epochs: EpochsOpt = None,
    fraction: FractionOpt = None,
    proximal_mu: MuOpt = None,
    dp: DpOpt = None,
    secagg: SecaggOpt = None,
    overrides: SetOpt = None,
    registry: RegistryOpt = None,
    resume: ResumeOpt = False,
    parallel: Annotated[int, typer.Option(min=1, help="Sites trained at once.")] = 2,
) -> None:
    """Run every site on this machine with Flower's simulation engine (Ray)."""
    from skinedge.federated import simulate_federation

    cfg = _config(config, overrides, sites, data, out, _options(
        strategy, rounds, local_epochs, fraction, proximal_mu, dp, secagg))
    summary = simulate_federation(cfg, out, resume=resume, registry=registry,
                                  parallel=parallel, progress=_print_round)
    _print_summary(summary)


@app.command()
def deploy(
    out: OutOpt,
    config: ConfigOpt = None,
    sites: SitesOpt = None,
    data: DataOpt = None,
    strategy: StrategyOpt = None,
    rounds: RoundsOpt = None,
    local_epochs: EpochsOpt = None,
    fraction: FractionOpt = None,
    proximal_mu: MuOpt = None,
    dp: DpOpt = None,
    secagg: SecaggOpt = None,
    overrides: SetOpt = None,
    registry: RegistryOpt = None,
    resume: ResumeOpt = False,
    port: Annotated[int | None, typer.Option(help="SuperLink port on 127.0.0.1 (default: a "
                                                  "free one).")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600,
) -> None:
    """Run the sites as real processes: a SuperLink and one SuperNode per site on loopback.

    Insecure (loopback only); the run is submitted with `flwr run`, the processes are stopped
    when it ends. Logs: OUT/logs/.
    """
    from skinedge.federated import deploy_federation

    cfg = _config(config, overrides, sites, data, out, _options(
        strategy, rounds, local_epochs, fraction, proximal_mu, dp, secagg))
    summary = deploy_federation(cfg, out, resume=resume, registry=registry, timeout=timeout,
                                progress=_print_round, superlink_port=port)
    _print_summary(summary)


def _options(strategy, rounds, local_epochs, fraction, proximal_mu, dp, secagg) -> dict:
    return {"strategy": strategy.value if strategy else None, "rounds": rounds,
            "local_epochs": local_epochs, "fraction": fraction, "proximal_mu": proximal_mu,
            "dp.enabled": None if dp is None else str(dp).lower(),
            "secagg.enabled": None if secagg is None else str(secagg).lower()}
