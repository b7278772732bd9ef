"""The ``skinedge`` command: thin doors onto the library (parse, call, print).

Heavy imports (torch, timm) happen inside the commands, so ``skinedge --help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from skinedge.cli.data import data_app

app = typer.Typer(
    help="skinedge: skin-lesion classifiers from a GPU server to a phone.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML training config.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config value, e.g. --set optim.lr=3e-4 (repeatable).")]


def fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    from skinedge.cli.progress import console

    # Escaped: messages quote rows like "labels.csv:3: [missing-file] ...", which rich would
    # otherwise take for style tags and silently drop.
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def load_run_config(out: Path, config: Path | None, overrides: list[str] | None, resume: bool,
                    shortcuts: dict[str, object], config_class=None):
    """The config of a training-like command: ``--config``, or the run's own ``config.yaml``
    when resuming without one; then ``--set`` overrides; then options that are shortcuts for
    a key (``{"data.manifest": --manifest}``, unset ones skipped)."""
    from skinedge.train.config import TrainConfig, load_train_config

    items = [*(overrides or []), *(f"{k}={v}" for k, v in shortcuts.items() if v is not None)]
    if resume and config is None and (out / "config.yaml").is_file():
        config = out / "config.yaml"
    return load_train_config(config, items, config_class=config_class or TrainConfig)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Run folder: config.yaml, metrics.jsonl, last/, best/.")],
    config: ConfigOpt = None,
    manifest: Annotated[Path | None, typer.Option(
        help="Split manifest from `skinedge data split` (same as --set data.manifest=...).")] = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out after a stop.")] = False,
) -> None:
    """Train a classifier on a manifest's train split, validating every epoch on its val split.

    Runs unchanged under `torchrun --nproc_per_node N` (DDP; NCCL on GPUs, gloo on CPUs).
    """
    from skinedge.cli.progress import RichTrainCallbacks, console, make_progress
    from skinedge.train.trainer import train_classifier

    try:
        cfg = load_run_config(out, config, overrides, resume, {"data.manifest": manifest})
        rank0 = int(os.environ.get("RANK", "0")) == 0
        with make_progress() as progress:
            callbacks = RichTrainCallbacks(progress) if rank0 else None
            result = train_classifier(cfg, out, resume=resume, callbacks=callbacks)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        fail(str(exc))
    if rank0:
        note = " (stopped early)" if result.stopped_early else ""
        console.print(f"best epoch {result.best_epoch}: val {cfg.monitor} "
                      f"{result.best_metric:.4f}{note}\ncheckpoint: {result.best_dir}")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder, e.g. runs/NAME/best.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json/.md, confusion PNG, predictions.csv.")],
    manifest: Annotated[Path | None, typer.Option(help="Split manifest to evaluate on.")] = None,
    split: Annotated[str, typer.Option(help="Split of the manifest: train, val, test, all.")] = "test",
    data: Annotated[Path | None, typer.Option(help="Labelled folder (any layout) instead of a manifest.")] = None,
    subset: Annotated[str, typer.Option(help="With --data: 'all' evaluates every image.")] = "all",
    layout: Annotated[str | None, typer.Option(help="Layout of --data; detected when omitted.")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Leave bad rows of --data out (written to skipped.csv).")] = False,
    batch_size: int = 64,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    tta: Annotated[str, typer.Option(
        help="Test-time augmentation: none, or flips (mean of 4 flipped views; 4x compute).")] = "none",
) -> None:
    """Accuracy, balanced accuracy, per-class scores and AUCs, melanoma AUC and sensitivity at
    80%/90% specificity, ECE and the confusion matrix, as JSON, Markdown and PNG."""
    from skinedge.cli.progress import CountProgress, console, make_progress
    from skinedge.evaluate import evaluate_checkpoint
    from skinedge.utils.provenance import now, record_command

    if data is not None and subset != "all":
        fail("--subset only takes 'all' with --data (use a manifest for splits)")
    if data is not None and split != "test":
        fail("--split picks a split of --manifest; with --data every image is evaluated")
    started = now()
    try:
        with make_progress() as progress:
            result = evaluate_checkpoint(
                checkpoint, manifest=manifest, split=split, data=data, layout=layout,
                skip_bad=skip_bad, batch_size=batch_size, threads=threads, device=device, tta=tta, out_dir=out,
                progress=CountProgress(progress, "predicting"))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    record_command(out, started=started, finished=now())
    m = result.metrics
    console.print(result.files["markdown"].read_text())
    for note in result.notes:
        console.print(f"[yellow]note: {note}[/]")
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} row(s) skipped: {result.files['skipped']}[/]")
    console.print(f"balanced accuracy {m['balanced_accuracy']:.4f}, melanoma AUC "
                  f"{m['melanoma_auc'] if m['melanoma_auc'] is None else round(m['melanoma_auc'], 4)}"
                  f"; reports in {out}")


@app.command()
def explain(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files to explain.")],
    out: Annotated[Path, typer.Option(help="Folder for the overlay PNGs.")] = Path("explanations"),
    target: Annotated[str | None, typer.Option(
        "--class", help="Class code to explain (e.g. mel); the predicted class by default.")] = None,
    method: Annotated[str, typer.Option(help="gradcam, gradcam++ or eigencam.")] = "gradcam",
) -> None:
    """Grad-CAM heatmap overlays: where in the image the evidence for a class lies."""
    from skinedge.cli.progress import console
    from skinedge.data import ImageError
    from skinedge.explain.overlays import explain_images
    from skinedge.models import load_card
    from skinedge.utils.provenance import now, record_command

    started = now()
    try:
        written = explain_images(checkpoint, images, out, target_class=target, method=method)
        classes = load_card(checkpoint).classes
    except (ValueError, FileNotFoundError, ImageError) as exc:
        fail(str(exc))
    record_command(out, started=started, finished=now())
    for path, result in written:
        console.print(f"{path}  (predicted {classes[result.predicted_class]}, "
                      f"p={result.probabilities.max():.2f})")


@app.command()
def quickstart(
    data: Annotated[Path | None, typer.Option(
        help="Labelled dataset folder; default $SKINEDGE_DATA/ham10000-sample.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/quickstart"),
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted quickstart.")] = False,
) -> None:
    """The main job end to end: split by lesion, train, evaluate on the test split, explain."""
    from skinedge.cli.progress import RichReporter, console
    from skinedge.pipelines.quickstart import run_quickstart

    try:
        summary = run_quickstart(data, out, config, list(overrides or []), resume=resume,
                                 reporter=RichReporter())
    except (ValueError, FileNotFoundError, ImportError) as exc:
        fail(str(exc))
    console.print(summary)


from skinedge.cli import compress, deploy, experiment, gan  # noqa: E402,F401  (register their commands)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
