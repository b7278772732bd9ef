"""``skinedge registry``: model versions, their deployments' current pointers, promotion and
rollback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from skinedge.errors import ConfigError, NotFoundError

app = typer.Typer(help="Model versions and what each deployment serves: list, show, add, "
                  "promote, rollback.", no_args_is_help=True)

RegistryOpt = Annotated[Path, typer.Option(
    "--registry", envvar="SKINEDGE_REGISTRY", show_envvar=True,
    help="The registry folder (versions/, deployments/, audit.jsonl).")]
DeploymentOpt = Annotated[str, typer.Option(
    help="The deployment whose pointer moves: server, android, ios, ...")]
ByOpt = Annotated[str | None, typer.Option(help="Who does it, for the audit log (default: "
                                                 "the user running this).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

#: Metrics shown in the list's "key metric" column, the first one a version has.
KEY_METRICS = ("test_balanced_accuracy", "balanced_accuracy", "val_balanced_accuracy", "accuracy", "val_accuracy",
               "auc", "melanoma_auc")


def _open(registry: Path):
    from skinedge.registry import Registry

    return Registry(registry)


def _stdout():
    from rich.console import Console

    return Console(soft_wrap=True)


@app.command("list")
def registry_list(registry: RegistryOpt, as_json: JsonOpt = False) -> None:
    """Every version, oldest first, with its key metric, gates and the deployments on it."""
    from rich.markup import escape
    from rich.table import Table

    reg = _open(registry)
    versions, deployments = reg.versions(), reg.deployments()
    serving: dict[str, list[str]] = {}
    for name, pointer in deployments.items():
        serving.setdefault(pointer["version"], []).append(name)
    if as_json:
        typer.echo(json.dumps([{**v.to_dict(), "deployments": serving.get(v.id, [])}
                               for v in versions], indent=2))
        return
    table = Table(title=f"model registry {registry}")
    for column in ("id", "created", "source", "parent", "key metric", "gates", "deployments"):
        table.add_column(column)
    for v in versions:
        cells = (v.id, v.created, v.source, v.parent or "-", key_metric(v), gates_text(v.gates),
                 ", ".join(sorted(serving.get(v.id, []))) or "-")
        table.add_row(*map(escape, cells))
    _stdout().print(table)
    if not versions:
        _stdout().print("no versions yet: `skinedge registry add CHECKPOINT --artifact FILE`")


def key_metric(version) -> str:
    metrics = version.metrics or (version.card or {}).get("metrics", {})
    for name in (*KEY_METRICS, *metrics):
        value = metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return f"{name} {value:.4g}"
    return "-"


def gates_text(gates: dict | None) -> str:
    if gates is None:
        return "-"
    return "passed" if gates.get("passed") else "FAILED"


@app.command("show")
def registry_show(
    version: Annotated[str, typer.Argument(help="Version id, e.g. v0003.")],
    registry: RegistryOpt, as_json: JsonOpt = False,
) -> None:
    """One version: where it came from, its card, artifacts, reports, gates and files."""
    reg = _open(registry)
    v = reg.get(version)
    serving = sorted(name for name, p in reg.deployments().items() if p["version"] == v.id)
    doc = {**v.to_dict(), "path": str(v.path), "deployments": serving}
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    card = v.card or {}
    lines = [f"{v.id}  {v.path}"]
    lines += [f"  {key}: {doc[key] if doc[key] not in (None, '') else '-'}"
              for key in ("created", "source", "parent", "by", "notes")]
    if card:
        lines.append(f"  checkpoint: {card.get('architecture')} {card.get('precision')}, "
                     f"{card.get('input_size')} px, classes {', '.join(card.get('classes', []))}"
                     f", weights sha256 {str(card.get('weights_sha256'))[:12]}")
    lines += [f"  artifacts: {', '.join(doc['artifacts']) or '-'}",
              f"  reports: {', '.join(doc['reports'].values()) or '-'}",
              f"  manifest: {doc['manifest'] or '-'}",
              f"  metrics: {json.dumps(v.metrics) if v.metrics else '-'}",
              f"  gates: {gates_text(v.gates)}" + (f" {json.dumps(v.gates)}" if v.gates else ""),
              f"  deployments: {', '.join(serving) or '-'}",
              f"  files: {len(v.files)} (sha256 each; `skinedge registry verify {v.id}`)"]
    out = _stdout()
    for line in lines:
        out.print(line, markup=False, highlight=False)


@app.command("add")
def registry_add(
    registry: RegistryOpt,
    checkpoint: Annotated[Path | None, typer.Argument(help="Checkpoint folder (model.safetensors + card.json).")] = None,
    artifact: Annotated[list[Path] | None, typer.Option(help="Exported artifact; its export report and sidecar files come with it (repeatable).")] = None,
    report: Annotated[list[str] | None, typer.Option(help="NAME=PATH of an evaluation, bench or gate report (repeatable).")] = None,
    manifest: Annotated[Path | None, typer.Option(help="The split manifest the model was trained from.")] = None,
    source: Annotated[str, typer.Option(help="train, retrain, federated or import.")] = "train",
    parent: Annotated[str | None, typer.Option(help="The version this one was made from.")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="NAME=NUMBER key figure shown by `list` (repeatable).")] = None,
    gates: Annotated[Path | None, typer.Option(help='JSON file of the gates that ran: {"passed": bool, "checks": [...]}.')] = None,
    notes: Annotated[str, typer.Option(help="Free text kept with the version.")] = "",
    by: ByOpt = None,
) -> None:
    """Register a version: copy the checkpoint, artifacts, reports and manifest in, hashed."""
    from skinedge.cli.progress import console

    v = _open(registry).register(
        checkpoint, artifact or [], reports=parse_pairs(report or [], "--report", Path),
        manifest=manifest, parent=parent, source=source,
        metrics=parse_pairs(metric or [], "--metric", _number), gates=read_gates(gates),
        notes=notes, by=by)
    console.print(f"registered {v.id} in {registry}: {len(v.artifacts)} artifact(s), "
                  f"{len(v.files)} file(s)" + (f", gates {gates_text(v.gates)}"
                                               if v.gates is not None else ""),
                  markup=False)
    typer.echo(v.id)


def parse_pairs(items: list[str], option: str, convert) -> dict[str, Any]:
    """``["a=1"]`` -> ``{"a": convert("1")}``.

    Raises:
        ConfigError: an item that is not NAME=VALUE (names ``option``).
    """
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{option} {item!r}: write NAME=VALUE, e.g. {option} "
                              + ("eval=runs/x/eval.json" if option == "--report"
                                 else "balanced_accuracy=0.81"))
        try:
            pairs[name] = convert(value)
        except ValueError:
            raise ConfigError(f"{option} {item!r}: {value!r} is not a number") from None
    return pairs


def _number(value: str) -> float:
    return float(value)


def read_gates(path: Path | None) -> dict | None:
    if path is None:
        return None
    if not path.is_file():
        raise NotFoundError(f"--gates {path}: no such file")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--gates {path}: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("passed"), bool):
        raise ConfigError(f'--gates {path}: expected an object with "passed": true or false')
    return doc


@app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="Version id, e.g. v0003.")],
    registry: RegistryOpt,
    deployment: DeploymentOpt,
    artifact: Annotated[str | None, typer.Option(help="Which artifact the deployment serves (its name, or 'checkpoint'); default: the only one, or the one the deployment's name calls for.")] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log (required with --force).")] = "",
    force: Annotated[bool, typer.Option(help="Promote a version whose gates failed (needs --reason).")] = False,
    by: ByOpt = None,
) -> None:
    """Point a deployment at a version (atomic, audited); refused when its files changed or
    its gates failed (unless --force with --reason)."""
    from skinedge.cli.progress import console

    pointer = _open(registry).promote(version, deployment, artifact=artifact, by=by,
                                      reason=reason, force=force)
    before = pointer["history"][0]["version"] if pointer["history"] else "nothing"
    console.print(f"{deployment}: {before} -> {pointer['version']} ({pointer['artifact']})"
                  + (" (forced past failed gates)" if pointer["forced"] else ""), markup=False)


@app.command("rollback")
def registry_rollback(
    registry: RegistryOpt,
    deployment: DeploymentOpt,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
    by: ByOpt = None,
) -> None:
    """Point a deployment back at the version it served before the current one."""
    from skinedge.cli.progress import console

    pointer = _open(registry).rollback(deployment, by=by, reason=reason)
    console.print(f"{deployment}: {pointer['rolled_back_from']} -> {pointer['version']} "
                  f"({pointer['artifact']})", markup=False)


@app.command("audit")
def registry_audit(
    registry: RegistryOpt, as_json: JsonOpt = False,
    last: Annotated[int | None, typer.Option(help="Only the last N entries.")] = None,
) -> None:
    """The audit log: every register, promote, rollback and refusal, oldest first."""
    from rich.markup import escape

    entries = _open(registry).audit()
    if last is not None:
        entries = entries[-last:] if last > 0 else []
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(entry))
        return
    out = _stdout()
    for e in entries:
        if "unreadable" in e:
            out.print(f"[yellow]unreadable line (torn by an interrupted write): "
                      f"{escape(e['unreadable'])}[/]")
            continue
        what = " ".join(str(e[k]) for k in ("version", "deployment") if e.get(k))
        if e.get("from"):
            what += f" (from {e['from']})"
        extra = "".join(f"; {k} {e[k]}" for k in ("reason", "error") if e.get(k))
        forced = " forced" if e.get("forced") else ""
        out.print(escape(f"{e.get('at', '?')}  {e.get('action', '?')} {e.get('phase', '')}"
                         f"{forced}  {what}  by {e.get('by', '?')}{extra}"))


@app.command("verify")
def registry_verify(
    version: Annotated[str, typer.Argument(help="Version id, e.g. v0003.")],
    registry: RegistryOpt,
) -> None:
    """Re-hash a version's files against its version.json; exit 1 when any differ."""
    from skinedge.cli.progress import console

    problems = _open(registry).verify(version)
    for problem in problems:
        typer.echo(problem)  # paths may hold brackets: plain text, not rich markup
    if problems:
        console.print(f"[red]{len(problems)} problem(s)[/]: the version's files are not as "
                      "registered; restore them from a backup, or register the model again")
        raise typer.Exit(1)
    console.print(f"{version}: every file as registered", markup=False)
