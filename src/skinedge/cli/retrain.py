"""``skinedge retrain``: a new version from clinicians' corrections, promoted only through the
gates."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from skinedge.cli.common import SetOpt
from skinedge.errors import ConfigError

app = typer.Typer()


@app.command()
def retrain(
    feedback: Annotated[str | None, typer.Option(
        metavar="DB_OR_FOLDER",
        help="Clinicians' reviewed cases: a labels.csv folder (`skinedge feedback export`), "
             "the service's data folder, or its database URL (postgresql://...).")] = None,
    base: Annotated[str | None, typer.Option(
        "--from", metavar="VERSION",
        help="Registry version to start from (v0003), or 'current' (the deployment's).")] = None,
    registry: Annotated[Path | None, typer.Option(
        envvar="SKINEDGE_REGISTRY", show_envvar=True, help="The model registry folder.")] = None,
    deployment: Annotated[str | None, typer.Option(
        help="The deployment promoted to when every gate passes (server, android, ...).")] = None,
    out: Annotated[Path, typer.Option(help="Run folder: one folder per stage, retrain.json/.md.")] = Path("runs/retrain"),
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Retrain YAML (keys of RetrainConfig: finetune, gates, bench, ...).")] = None,
    overrides: SetOpt = None,
    holdout_fraction: Annotated[float | None, typer.Option(
        help="Share of the feedback's patients/lesions held out for the 'better on corrected "
             "cases' gate (default 0.3).")] = None,
    gate: Annotated[Path | None, typer.Option(
        help="The deployment's budgets YAML (latency, parity); default: the one registered "
             "with the base version.")] = None,
    promote: Annotated[bool | None, typer.Option(
        "--promote/--no-promote", help="Promote the candidate when every gate passes (default "
                                       "on); it is registered either way.")] = None,
    gan: Annotated[Path | None, typer.Option(
        metavar="RUN", help="A GAN run of the base split to refresh on the corrections' rare "
                            "classes; the fine-tune trains on its selected images (same as "
                            "--set gan.run=RUN).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a stopped run in --out.")] = False,
    store_dir: Annotated[Path | None, typer.Option(
        help="With a database URL as --feedback: the service's data folder (encrypted images, "
             "key); default as `skinedge serve`.")] = None,
) -> None:
    """Fine-tune a registry version on clinicians' corrections (never on its val or test
    images), export and bench it as the base was, and promote it only when it passes the
    gates: no drop on the fixed test split beyond its bootstrap interval, better on held-out
    corrected cases, and the deployment's latency and parity budgets."""
    from skinedge.cli.progress import RichReporter, console
    from skinedge.pipelines.retrain import RetrainConfig, load_retrain_config, run_retrain
    from skinedge.utils.config import validate_config
    from skinedge.utils.provenance import command_line

    if resume and config is None and (out / "retrain.yaml").is_file():
        config = out / "retrain.yaml"
    cfg = load_retrain_config(config, list(overrides or []))
    export_feedback = None
    if feedback is not None:
        feedback, export_feedback = _feedback_source(feedback, store_dir)
    doc = cfg.model_dump()
    for key, value in (("feedback", feedback), ("base", base), ("registry", registry),
                       ("deployment", deployment), ("holdout_fraction", holdout_fraction),
                       ("promote", promote)):
        if value is not None:
            doc[key] = value
    if gate is not None:
        doc["bench"]["gate"] = gate
    if gan is not None:
        doc["gan"]["run"] = gan
    cfg = validate_config(RetrainConfig, doc, "retrain options")
    result = run_retrain(cfg, out, resume=resume, reporter=RichReporter(),
                         command=_redacted(command_line()), export_feedback=export_feedback)
    colour = "green" if result.promoted else ("yellow" if result.passed else "red")
    console.print(f"[bold {colour}]{'promoted' if result.promoted else 'not promoted'}[/]: "
                  f"{result.reason}", soft_wrap=True)
    console.print(f"candidate: {result.candidate} (parent {result.base})\n"
                  f"report:    {result.markdown}")


def _feedback_source(feedback: str, store_dir: Path | None):
    """(what the config records, the export to run or None) for ``--feedback``: a labels.csv
    folder is read as it is; a service data folder or a database URL is exported first."""
    if "://" in feedback:
        return _redacted(feedback), _store_export(store_dir, feedback)
    folder = Path(feedback)
    if folder.is_dir() and not (folder / "labels.csv").is_file() and (
            (folder / "skinedge.db").is_file() or (folder / "blobs").is_dir()):
        if store_dir is not None:
            raise ConfigError("--store-dir goes with a database URL as --feedback; --feedback "
                              f"{folder} is already the service's data folder")
        return str(folder), _store_export(folder, None)
    return str(folder), None


def _store_export(data_dir: Path | None, database_url: str | None):
    """The service store's export of reviewed cases into a folder, as a callable."""

    def export(folder: Path) -> None:
        from skinedge.service.app import open_store
        from skinedge.service.settings import load_settings
        from skinedge.service.store.export import export_reviewed

        store = open_store(load_settings(None, data_dir=data_dir, database_url=database_url))
        try:
            export_reviewed(store, folder)
        finally:
            store.close()

    return export


def _redacted(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)
