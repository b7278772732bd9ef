"""``skinedge evaluate`` and ``skinedge explain``: how good a checkpoint is, and where it looks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinedge.errors import ConfigError

app = typer.Typer()


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
    allow_outside_root: Annotated[bool, typer.Option(
        "--allow-outside-root", help="Accept image paths of --data that lead outside the folder (a folder you trust).")] = False,
    batch_size: int = 64,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    tta: Annotated[str, typer.Option(
        help="Test-time augmentation: none, or flips (mean of 4 flipped views; 4x compute).")] = "none",
    robustness: Annotated[bool, typer.Option(
        "--robustness", help="Also score the images as phones and apps present them (cropped, "
        "squashed, letterboxed, recompressed, other white balance, portrait): robustness.md; "
        "8x compute.")] = False,
) -> None:
    """Accuracy, balanced accuracy, per-class scores and AUCs, melanoma AUC and sensitivity at
    80%/90% specificity, ECE and the confusion matrix, as JSON, Markdown and PNG. A --data folder
    labelled melanoma vs benign (ISIC 2020) is scored as melanoma detection."""
    from skinedge.cli.progress import CountProgress, console, make_progress
    from skinedge.evaluate import evaluate_checkpoint
    from skinedge.utils.provenance import now, record_command

    if data is not None and subset != "all":
        raise ConfigError("--subset only takes 'all' with --data (use a manifest for splits)")
    if data is not None and split != "test":
        raise ConfigError("--split picks a split of --manifest; with --data every image is evaluated")
    started = now()
    with make_progress() as progress:
        result = evaluate_checkpoint(
            checkpoint, manifest=manifest, split=split, data=data, layout=layout,
            skip_bad=skip_bad, batch_size=batch_size, threads=threads, device=device, tta=tta, out_dir=out,
            progress=CountProgress(progress, "predicting"), allow_outside_root=allow_outside_root,
            robustness=robustness,
            presentation_progress=lambda name: console.print(f"presentation: {name}"))
    record_command(out, started=started, finished=now())
    m = result.metrics
    console.print(result.files["markdown"].read_text())
    for note in result.notes:
        console.print(f"[yellow]note: {note}[/]")
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} row(s) skipped: {result.files['skipped']}[/]")
    if result.robustness is not None:
        console.print(result.robustness.files["markdown"].read_text())
    console.print(f"balanced accuracy {m['balanced_accuracy']:.4f}, melanoma AUC "
                  f"{m['melanoma_auc'] if m['melanoma_auc'] is None else round(m['melanoma_auc'], 4)}"
                  f"; reports in {out}")


@app.command()
def calibrate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder, e.g. runs/NAME/best (or an ensemble).")],
    manifest: Annotated[Path | None, typer.Option(help="Split manifest; default: the one the card records.")] = None,
    split: Annotated[str, typer.Option(help="Split to fit on: val (never test, which grades it).")] = "val",
    min_images: Annotated[int, typer.Option(
        help="Refuse to fit on fewer images (a fit on a handful follows them, not the model).")] = 100,
    batch_size: int = 64,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Fit the checkpoint's temperature on the validation split and store it in its card: every
    runtime then divides the logits by it and every export folds it in. Then choose its lesion
    check (what a runtime answers 'not a dermoscopic lesion image' for) on the same images and
    on non-lesion pictures. Training does this by itself at its end (train config `calibrate`);
    use this for ensembles and older checkpoints. `skinedge evaluate` reports the ECE with and
    without it, draws reliability.png, and reports what the check refuses."""
    import torch

    from skinedge.cli.progress import console, lesion_check_line
    from skinedge.evaluate.calibration import calibrate_on_split
    from skinedge.models import load_card
    from skinedge.utils.device import resolve_device

    if threads:
        torch.set_num_threads(threads)
    fit = calibrate_on_split(checkpoint, manifest, split, batch_size=batch_size,
                             min_images=min_images, device=resolve_device(device, option="--device"))
    console.print(f"{checkpoint}: temperature {fit.temperature:.3f} fitted on {fit.images} images "
                  f"of {fit.source}; NLL {fit.nll_before:.3f} -> {fit.nll_after:.3f}, "
                  f"ECE {fit.ece_before:.3f} -> {fit.ece_after:.3f} (card.json updated)")
    check = load_card(checkpoint).ood
    if check is not None:
        console.print(lesion_check_line(check.fit))


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
    from skinedge.explain.api import explain_images
    from skinedge.models import load_card
    from skinedge.utils.provenance import now, record_command

    started = now()
    written = explain_images(checkpoint, images, out, target_class=target, method=method)
    classes = load_card(checkpoint).classes
    record_command(out, started=started, finished=now())
    for path, result in written:
        console.print(f"{path}  (predicted {classes[result.predicted_class]}, "
                      f"p={result.probabilities.max():.2f})")
