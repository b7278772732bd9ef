"""``evaluate_checkpoint``: a checkpoint and a manifest split, or a labelled folder, to metrics."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from skinedge.data import (
    DataProblem,
    LesionDataset,
    build_eval_transform,
    load_manifest,
    read_dataset,
    write_problem_report,
)
from skinedge.data.manifest import check_classes
from skinedge.errors import ConfigError, DataError
from skinedge.evaluate.metrics import bootstrap_intervals, compute_metrics
from skinedge.evaluate.predict import predict_probs
from skinedge.evaluate.report import write_report
from skinedge.models import load_checkpoint
from skinedge.utils.device import resolve_device
from skinedge.utils.io import atomic_write_text


@dataclass
class EvaluationResult:
    metrics: dict
    images: list[str]
    probs: np.ndarray  # (N, C)
    targets: np.ndarray  # (N,)
    source: str  # "manifest.json:test" or the folder
    skipped: list[DataProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings about what the figures mean
    files: dict[str, Path] = field(default_factory=dict)


def evaluate_checkpoint(
    checkpoint: Path | str,
    *,
    manifest: Path | str | None = None,
    split: str = "test",
    data: Path | str | None = None,
    layout: str | None = None,
    skip_bad: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    threads: int | None = None,
    device: str = "auto",
    tta: str = "none",
    out_dir: Path | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Evaluate a checkpoint on a manifest split or on every image of a labelled folder.

    Args:
        checkpoint: Checkpoint folder (``runs/NAME/best``).
        manifest: Split manifest; evaluates ``split`` of it.
        split: ``train``, ``val``, ``test`` or ``all`` (with ``manifest``).
        data: A dataset folder in any supported layout, evaluated whole (instead of a manifest);
            its labels must belong to the model's class vocabulary.
        layout: Layout of ``data`` when detection is not wanted.
        skip_bad: Leave bad rows of ``data`` out, with a report, instead of failing.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``.
        tta: Test-time augmentation, ``none`` or ``flips`` (see :func:`predict_probs`).
        out_dir: When given, writes ``metrics.json``, ``metrics.md``,
            ``metrics_confusion.png``, ``predictions.csv`` (and ``skipped.csv``) there.

    Raises:
        ConfigError: neither or both of manifest/data.
        DataError: classes or labels the model does not know, or no images to evaluate.
    """
    if (manifest is None) == (data is None):
        raise ConfigError("evaluate on either a manifest split (--manifest) or a folder (--data)")
    if threads:
        torch.set_num_threads(threads)
    model, card = load_checkpoint(checkpoint)
    torch_device = resolve_device(device)
    model.to(torch_device, memory_format=torch.channels_last)
    transform = build_eval_transform(card.preprocess)
    skipped: list[DataProblem] = []
    notes: list[str] = []
    if manifest is not None:
        man = load_manifest(manifest)
        check_classes(man, card.classes, manifest)
        dataset = LesionDataset.from_manifest(man, split, transform)
        source = f"{manifest}:{split}"
        if card.data.split_hash and man.split_hash != card.data.split_hash:
            notes.append(
                f"the model was trained on split {card.data.split_hash[:12]}, not on this "
                f"manifest's {man.split_hash[:12]}: its {split} images may include training images")
    else:
        ds = read_dataset(data, layout=layout, classes=card.vocabulary, skip_bad=skip_bad)
        skipped = ds.skipped
        dataset = LesionDataset(ds.root, [r.image for r in ds.records],
                                [card.classes.index(r.label) for r in ds.records], transform)
        source = str(data)
    if not len(dataset):
        raise DataError(f"{source}: no images to evaluate")
    probs, targets = predict_probs(model, dataset, batch_size=batch_size,
                                   num_workers=num_workers, device=torch_device, tta=tta,
                                   progress=progress)
    metrics = compute_metrics(targets, probs, card.classes, melanoma_class=card.positive_class)
    metrics["confidence_intervals"] = bootstrap_intervals(
        targets, probs, card.classes, melanoma_class=card.positive_class)
    result = EvaluationResult(metrics, dataset.images, probs, targets, source, skipped, notes)
    if out_dir is not None:
        out = Path(out_dir)
        result.files = write_report(
            {**metrics, "checkpoint": str(checkpoint), "source": source, "tta": tta,
             "notes": notes},
            out, title=f"Evaluation of {Path(checkpoint)} on {source}",
            class_names=card.class_names)
        result.files["predictions"] = _write_predictions(result, card.classes, out / "predictions.csv")
        if skipped:
            result.files["skipped"] = write_problem_report(skipped, out / "skipped.csv")
    return result


def _write_predictions(result: EvaluationResult, classes: list[str], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "label", "predicted", *[f"p_{c}" for c in classes]])
    for image, target, row in zip(result.images, result.targets, result.probs):
        writer.writerow([image, classes[target], classes[int(row.argmax())],
                         *[f"{p:.6f}" for p in row]])
    return atomic_write_text(path, buffer.getvalue())
