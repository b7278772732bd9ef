"""``skinedge pipeline CONFIG.yaml``: data folder to gated phone artifacts, every stage cached."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinedge.cli.common import SetOpt, print_error

app = typer.Typer()


@app.command()
def pipeline(
    config: Annotated[str, typer.Argument(
        help="Pipeline YAML, or a packaged one: pipeline-ham10000-cpu.yaml, "
             "pipeline-ham10000-gpu.yaml (under torchrun), pipeline-quickstart.yaml (what "
             "`skinedge quickstart` runs).")],
    data: Annotated[list[Path] | None, typer.Option(
        help="Labelled dataset folder (instead of the config's data:; default "
             "$SKINEDGE_DATA/ham10000-sample). Repeat it for several sources in one split, "
             "as `skinedge data split A B C` makes.")] = None,
    out: Annotated[Path, typer.Option(help="Run folder; its cache/ keeps every stage's result.")
                   ] = Path("runs/pipeline"),
    overrides: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the stages, which are cached and which would run; run none.")
    ] = False,
) -> None:
    """Split, GAN, ensemble members, ensemble, distillation, export to every target and the
    bench with its gate, in one command. Each stage is cached under a key of its settings and
    inputs: a changed setting reruns that stage and what depends on it, a kill resumes where
    it stopped. Exit 1 when the gate fails. Under `torchrun --nproc_per_node N` the training
    stages train with DDP on every process; rank 0 runs the others and reports."""
    from rich.table import Table

    from skinedge.cli.progress import RichReporter, console
    from skinedge.pipelines.pipeline import plan_pipeline, run_pipeline
    from skinedge.pipelines.pipeline_config import load_pipeline_config
    from skinedge.pipelines.quickstart import find_data
    from skinedge.utils.provenance import command_line

    cfg = load_pipeline_config(config, list(overrides or []), data=list(data) if data else None)
    if cfg.data is None:
        cfg.data = find_data(None).resolve()
    if dry_run:
        table = Table("stage", "key", "status", "reads", title=f"pipeline plan in {out}")
        for stage in plan_pipeline(cfg, out, dry_run=True):
            colour = {"cached": "green", "partial": "yellow"}.get(stage.status, "red")
            status = {"cached": "cached", "partial": "continues (cut off before)",
                      "runs": "runs"}[stage.status]
            table.add_row(stage.name, stage.key[:16], f"[{colour}]{status}[/]",
                          ", ".join(stage.inputs))
        console.print(table)
        return
    result = run_pipeline(cfg, out, reporter=RichReporter(), command=command_line())
    if not result.main:  # a torchrun rank other than 0: rank 0 reports
        return
    ran = [s["name"] for s in result.stages if s["status"] == "ran"]
    console.print(f"{len(ran)} of {len(result.stages)} stages ran"
                  + (f" ({', '.join(ran)})" if ran else "; every result came from the cache"))
    console.print(f"report: {result.html} (and pipeline.md); final artifacts in {out}/export-*")
    for name, reason in result.failures.items():
        print_error(f"{name} failed: {reason}")
    if result.gate is None:
        console.print("no gate (set bench.gate in the config)")
    elif result.gate["passed"]:
        console.print(f"[green]gate passed[/] ({result.gate['checks']} checks)")
    else:
        console.print(f"[bold red]gate failed[/] ({len(result.gate['failed'])} of "
                      f"{result.gate['checks']} checks):")
        for message in result.gate["failed"]:
            console.print(f"  {message}", soft_wrap=True, markup=False)
    if not result.passed:
        raise typer.Exit(1)
