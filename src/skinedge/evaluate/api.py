"""``evaluate_checkpoint``: a checkpoint and a manifest split, or a labelled folder, to metrics."""

from __future__ import annotations

import csv
import io
import json
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
from skinedge.data.classes import NOT_POSITIVE_LABEL, VOCABULARIES, get_vocabulary
from skinedge.data.manifest import check_classes
from skinedge.data.reading import Dataset, count_labels, vocabulary_of
from skinedge.data.sources import source_of
from skinedge.errors import ConfigError, DataError
from skinedge.evaluate.calibration import (
    expected_calibration_error,
    plot_reliability,
    reliability_bins,
)
from skinedge.evaluate.metrics import (
    bootstrap_intervals,
    compute_metrics,
    compute_partial_metrics,
    melanoma_detection_metrics,
)
from skinedge.evaluate.predict import predict_logits, predict_probs, probs_from_logits
from skinedge.evaluate.report import write_report
from skinedge.evaluate.robustness import RobustnessResult, render_robustness, robustness_rows
from skinedge.models import load_checkpoint
from skinedge.utils.device import resolve_device
from skinedge.utils.io import atomic_write_text


@dataclass
class EvaluationResult:
    metrics: dict
    images: list[str]
    probs: np.ndarray  # (N, C), the model's classes
    targets: np.ndarray  # (N,), indices into label_classes
    source: str  # "manifest.json:test" or the folder
    skipped: list[DataProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings about what the figures mean
    files: dict[str, Path] = field(default_factory=dict)
    #: Classes of ``targets``: the model's, or ``["benign", "mel"]`` for melanoma detection.
    label_classes: list[str] = field(default_factory=list)
    task: str = "classification"  # or "melanoma-detection"
    robustness: RobustnessResult | None = None  # evaluate_checkpoint(robustness=True)


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
    allow_outside_root: bool = False,
    robustness: bool = False,
    presentation_progress: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Evaluate a checkpoint on a manifest split or on every image of a labelled folder.

    Args:
        checkpoint: Checkpoint folder (``runs/NAME/best``).
        manifest: Split manifest; evaluates ``split`` of it.
        split: ``train``, ``val``, ``test`` or ``all`` (with ``manifest``).
        data: A dataset folder in any supported layout, evaluated whole (instead of a manifest);
            its labels must belong to the model's class vocabulary, or be melanoma vs benign
            (ISIC 2020 style) for a model with a melanoma class: that is scored as melanoma
            detection (see :func:`~skinedge.evaluate.metrics.melanoma_detection_metrics`).
        layout: Layout of ``data`` when detection is not wanted.
        skip_bad: Leave bad rows of ``data`` out, with a report, instead of failing.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``.
        tta: Test-time augmentation, ``none`` or ``flips`` (see :func:`predict_probs`).
        out_dir: When given, writes ``metrics.json``, ``metrics.md``,
            ``metrics_confusion.png``, ``predictions.csv`` (and ``skipped.csv``) there; when
            ``data`` has bad rows, ``problems.csv`` lists every one.
        allow_outside_root: Accept image paths of ``data`` that lead outside the folder.
        robustness: Also score the images as a phone and its apps present them
            (:mod:`skinedge.evaluate.robustness`); written to ``robustness.json`` and
            ``robustness.md``. The model's own classes only (not melanoma detection).
        presentation_progress: Called with each presentation's name before it runs.

    Raises:
        ConfigError: neither or both of manifest/data.
        DataError: classes or labels the model does not know, or no images to evaluate.
    """
    if (manifest is None) == (data is None):
        raise ConfigError("evaluate on either a manifest split (--manifest) or a folder (--data)")
    if threads:
        torch.set_num_threads(threads)
    model, card = load_checkpoint(checkpoint)
    torch_device = resolve_device(device, option="--device")
    model.to(torch_device, memory_format=torch.channels_last)
    transform = build_eval_transform(card.preprocess)
    skipped: list[DataProblem] = []
    notes: list[str] = []
    row_sources: list[str] = []
    detection_sources: set[str] = set()
    label_classes, task = list(card.classes), "classification"
    if manifest is not None:
        man = load_manifest(manifest)
        check_classes(man, card.classes, manifest)
        dataset = LesionDataset.from_manifest(man, split, transform)
        source = f"{manifest}:{split}"
        row_sources = [r.source for r in man.subset(split)]
        detection_sources = {s.name for s in man.sources if s.classes == "melanoma"}
        trained_on = source_of(man, card.data.split_hash)
        if trained_on is not None:
            own = next(s for s in man.sources if s.name == trained_on)
            changed = (f", but for {own.moved} image(s) moved to follow copies in an earlier "
                       f"source (some may be its training images)" if own.moved else "")
            notes.append(
                f"the model was trained on {trained_on} split on its own (split "
                f"{card.data.split_hash[:12]}): this manifest's {split} images of {trained_on} "
                f"are that split's{changed}; the other sources are external to the model")
        elif card.data.split_hash and man.split_hash != card.data.split_hash:
            notes.append(
                f"the model was trained on split {card.data.split_hash[:12]}, not on this "
                f"manifest's {man.split_hash[:12]}: its {split} images may include training images")
    else:
        ds, task = _read_folder(
            Path(data), card, checkpoint, layout=layout, skip_bad=skip_bad,
            allow_outside_root=allow_outside_root,
            problems_report=Path(out_dir) / "problems.csv" if out_dir is not None else None)
        skipped = ds.skipped
        label_classes = list(ds.vocabulary.codes)
        dataset = LesionDataset(ds.root, [r.image for r in ds.records],
                                [label_classes.index(r.label) for r in ds.records], transform)
        source = str(data)
        if task == "melanoma-detection":
            notes.append(
                f"{data} is labelled melanoma vs benign, not with the model's classes: scored "
                f"as melanoma detection, P({card.positive_class}) for the AUC and sensitivity "
                f"at fixed specificity, '{card.positive_class} is the top-1 class' for "
                "sensitivity and specificity")
    if not len(dataset):
        raise DataError(f"{source}: no images to evaluate")
    if robustness and task != "classification":
        raise ConfigError(f"--robustness scores the model's own classes; {source} is labelled "
                          "melanoma vs benign: leave --robustness out for it")
    logits, targets = predict_logits(model, dataset, batch_size=batch_size,
                                     num_workers=num_workers, device=torch_device, tta=tta,
                                     progress=progress)
    probs = probs_from_logits(logits, card.temperature)
    if task == "melanoma-detection":
        metrics = melanoma_detection_metrics(targets, probs, card.classes,
                                             melanoma_class=card.positive_class)
        mel = card.classes.index(card.positive_class)
        metrics["confidence_intervals"] = bootstrap_intervals(
            targets, np.stack([1.0 - probs[:, mel], probs[:, mel]], axis=1), label_classes,
            melanoma_class="mel", y_pred=(probs.argmax(axis=1) == mel).astype(np.int64))
        class_names = dict(VOCABULARIES["melanoma"].names)
    else:
        metrics = compute_partial_metrics(targets, probs, card.classes,
                                          melanoma_class=card.positive_class)
        exact = targets >= 0
        metrics["confidence_intervals"] = bootstrap_intervals(
            targets[exact], probs[exact], card.classes, melanoma_class=card.positive_class)
        if not exact.all() and card.positive_class in card.classes:
            # the melanoma AUC is over every row (partial ones are non-melanomas): so its interval
            mel = card.classes.index(card.positive_class)
            metrics["confidence_intervals"]["melanoma_auc"] = bootstrap_intervals(
                (targets == mel).astype(np.int64), np.stack([1 - probs[:, mel], probs[:, mel]], 1),
                ["benign", "mel"], melanoma_class="mel")["melanoma_auc"]
        if metrics.get("partial_rows"):
            notes.append(
                f"{metrics['partial_rows']} image(s) of {source} are labelled only melanoma vs "
                "benign: they count in the melanoma AUC and sensitivity (as non-melanomas), not "
                "in the class figures, which are over the other "
                f"{len(targets) - metrics['partial_rows']}")
        class_names = card.class_names
        absent = [c for k, c in enumerate(card.classes) if not (targets == k).any()]
        if absent:  # e.g. ISIC 2019 mapped into the 7 classes, or a folder of a few classes
            metrics["classes_absent"] = absent
            notes.append(f"{source} has no image of {', '.join(absent)}: balanced accuracy is "
                         f"the mean recall over the {len(card.classes) - len(absent)} classes "
                         "present, and the absent classes have no AUC")
    if len(set(row_sources)) > 1:
        metrics["per_source"] = per_source_metrics(row_sources, targets, probs, card,
                                                   detection=detection_sources)
    metrics["calibration"] = calibration_summary(logits, targets, card, task)
    if card.ood is not None:
        metrics["lesion_check"] = lesion_check_summary(model, card, logits[0], targets,
                                                       label_classes, device=torch_device)
    result = EvaluationResult(metrics, dataset.images, probs, targets, source, skipped, notes,
                              label_classes=label_classes, task=task)
    if out_dir is not None:
        out = Path(out_dir)
        result.files = write_report(
            {**metrics, "checkpoint": str(checkpoint), "source": source, "tta": tta,
             "notes": notes},
            out, title=f"Evaluation of {Path(checkpoint)} on {source}",
            class_names=class_names)
        result.files["predictions"] = _write_predictions(result, card.classes,
                                                         out / "predictions.csv")
        if task == "classification":
            exact = targets >= 0
            result.files["reliability"] = plot_reliability(
                reliability_bins(probs_from_logits(logits)[exact], targets[exact]),
                reliability_bins(probs[exact], targets[exact]), out / "reliability.png",
                title=f"{Path(checkpoint)} on {source}", temperature=card.temperature,
                ece_before=metrics["calibration"]["ece_uncalibrated"], ece_after=metrics["ece"])
        if skipped:
            result.files["skipped"] = write_problem_report(skipped, out / "skipped.csv")
    if robustness:
        # The class figures: rows labelled only melanoma vs benign are left out.
        kept = np.flatnonzero(targets >= 0)
        images = [dataset.images[i] for i in kept]

        def predict(transform):
            if transform.name == "as-stored":  # what was just scored
                return probs[kept], targets[kept]
            presented = LesionDataset(dataset.root, images, targets[kept].tolist(), transform)
            return predict_probs(model, presented, batch_size=batch_size,
                                 num_workers=num_workers, device=torch_device, tta=tta,
                                 temperature=card.temperature, progress=progress)

        rows = robustness_rows(predict, transform, card.classes, card.positive_class,
                               progress=presentation_progress)
        result.robustness = RobustnessResult(source, len(kept), rows)
        if out_dir is not None:
            out = Path(out_dir)
            result.robustness.files = {"json": out / "robustness.json",
                                       "markdown": out / "robustness.md"}
            atomic_write_text(result.robustness.files["json"],
                              json.dumps(result.robustness.to_dict(), indent=2) + "\n")
            atomic_write_text(result.robustness.files["markdown"], render_robustness(
                result.robustness, f"Robustness of {Path(checkpoint)} on {source}"))
    return result


def calibration_summary(logits: np.ndarray, targets: np.ndarray, card, task: str) -> dict:
    """The model's temperature, where it was fitted, and the top-1 ECE on these images without
    it (``ece_uncalibrated``; the metrics' ``ece`` is with it). Melanoma detection scores
    P(melanoma) as two classes, so its uncalibrated ECE is taken the same way."""
    raw = probs_from_logits(logits)
    exact = targets >= 0  # "not melanoma" rows have no top-1 class to be right about
    raw, targets = raw[exact], targets[exact]
    if task == "melanoma-detection":
        mel = card.classes.index(card.positive_class)
        raw = np.stack([1.0 - raw[:, mel], raw[:, mel]], axis=1)
    fitted = card.calibration or {}
    return {"temperature": card.temperature, "fitted_on": fitted.get("source"),
            "fitted_images": fitted.get("images"),
            "ece_uncalibrated": expected_calibration_error(raw, targets)}


def per_source_metrics(sources: list[str], targets: np.ndarray, probs: np.ndarray, card, *,
                       detection: set[str] = frozenset()) -> dict[str, dict]:
    """Each source's figures in a multi-source split: the class figures (over the classes it
    has), or melanoma detection for the sources in ``detection`` (labelled melanoma vs benign,
    whichever of the two its rows hold); with bootstrap intervals of balanced accuracy and
    melanoma AUC."""
    sources_arr = np.asarray(sources)
    mel = card.classes.index(card.positive_class) if card.positive_class in card.classes else None
    out = {}
    for name in dict.fromkeys(sources):
        rows = sources_arr == name
        y, p = targets[rows], probs[rows]
        if name not in detection and (y >= 0).all():
            metrics = compute_metrics(y, p, card.classes, melanoma_class=card.positive_class)
            metrics["confidence_intervals"] = bootstrap_intervals(
                y, p, card.classes, melanoma_class=card.positive_class)
            metrics["classes_absent"] = [c for k, c in enumerate(card.classes)
                                         if not (y == k).any()]
        elif mel is not None:
            is_mel = (y == mel).astype(np.int64)
            metrics = melanoma_detection_metrics(is_mel, p, card.classes,
                                                 melanoma_class=card.positive_class)
            metrics["confidence_intervals"] = bootstrap_intervals(
                is_mel, np.stack([1.0 - p[:, mel], p[:, mel]], axis=1), ["benign", "mel"],
                melanoma_class="mel", y_pred=(p.argmax(axis=1) == mel).astype(np.int64))
        else:
            continue
        out[name] = metrics
    return out


def lesion_check_summary(model, card, logits: np.ndarray, targets: np.ndarray,
                         label_classes: list[str], *, device: str = "cpu") -> dict:
    """The card's lesion check on these images (all lesions: every refusal is a false one,
    per labelled class too) and on the non-lesion images held out from its choice."""
    from skinedge.evaluate.ood import held_out, non_lesion_images, non_lesion_logits
    from skinedge.models.ood_score import ood_scores

    check = card.ood
    refused = ood_scores(logits, card.temperature, check.method) > check.threshold
    others = [i for i in non_lesion_images() if held_out(i.group)]
    caught = ood_scores(non_lesion_logits(model, card.preprocess, others, device=device),
                        card.temperature, check.method) > check.threshold
    by_class = {label: float(refused[targets == k].mean())
                for k, label in enumerate(label_classes) if (targets == k).any()}
    groups = np.array([i.group for i in others])
    by_group = {g: float(caught[groups == g].mean()) for g in sorted(set(groups))}
    return {"method": check.method, "threshold": check.threshold,
            "false_rejection": float(refused.mean()), "false_rejection_by_class": by_class,
            "detection_held_out": float(caught.mean()), "non_lesion_held_out": len(others),
            "detection_held_out_by_group": by_group, "chosen_on": check.fit.get("source")}


def _read_folder(
    data: Path, card, checkpoint, *, layout: str | None, skip_bad: bool,
    allow_outside_root: bool, problems_report: Path | None,
) -> tuple[Dataset, str]:
    """Read ``data`` for the model of ``card``: (dataset, task).

    A folder labelled with another vocabulary than the model's is caught from its labels file
    alone, before any image is decoded, with one message instead of a line per row.
    Melanoma-vs-benign labels (ISIC 2020) on a model with a melanoma class are read with the
    ``melanoma`` vocabulary, for melanoma detection.

    Raises:
        DataError: labels the model has no output for (unless ``skip_bad``).
        DataValidationError: bad rows or images.
    """
    model_vocab = get_vocabulary(card.vocabulary)
    labels = count_labels(data, layout=layout, allow_outside_root=allow_outside_root)
    # Labels some vocabulary knows but the model's does not (typos stay per-row problems).
    foreign = {label: n for label, n in labels.items() if model_vocab.normalize(label) is None
               and any(v.normalize(label) is not None for v in VOCABULARIES.values())}
    try:
        folder_vocab = vocabulary_of(labels) if labels else model_vocab
    except DataError:  # no label known anywhere: every row is reported below
        folder_vocab = model_vocab
    task, classes = "classification", card.vocabulary
    if foreign and folder_vocab.name == "melanoma":
        positive = card.positive_class
        if positive not in card.classes:
            raise DataError(
                f"{data} is labelled melanoma vs benign, but {checkpoint} has no melanoma class "
                f"to score (its classes: {', '.join(card.classes)}); evaluate it on a folder "
                "labelled with those classes")
        task, classes = "melanoma-detection", "melanoma"
    elif foreign and not skip_bad:
        rows = sum(foreign.values())
        listed = ", ".join(f"{label!r} ({n} row(s))" for label, n in sorted(foreign.items()))
        what = (f"the {folder_vocab.name} classes" if folder_vocab is not model_vocab
                else "labels of another class vocabulary")
        raise DataError(
            f"{data} is labelled with {what}, but {checkpoint} "
            f"predicts the {model_vocab.name} classes ({', '.join(model_vocab.codes)}): "
            f"{rows} row(s) carry labels it has no output for: {listed}. Evaluate it on a "
            "folder labelled with the model's classes, or rerun with --skip-bad to score only "
            "the rows it can (the others are listed in skipped.csv)")
    dataset = read_dataset(
        data, layout=layout, classes=classes, skip_bad=skip_bad,
        allow_outside_root=allow_outside_root, problems_report=problems_report,
        label_hint="fix the row (the model can only be scored on its own classes)")
    return dataset, task


def _write_predictions(result: EvaluationResult, classes: list[str], path: Path) -> Path:
    """One row per image: its label, the model's top-1 class and every class probability."""
    labels = result.label_classes or classes
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "label", "predicted", *[f"p_{c}" for c in classes]])
    for image, target, row in zip(result.images, result.targets, result.probs):
        label = labels[target] if target >= 0 else NOT_POSITIVE_LABEL
        writer.writerow([image, label, classes[int(row.argmax())],
                         *[f"{p:.6f}" for p in row]])
    return atomic_write_text(path, buffer.getvalue())
