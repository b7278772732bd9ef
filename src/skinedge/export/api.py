"""``export_checkpoint``: checkpoint -> artifact with its card, verified against the checkpoint.

Steps: load the checkpoint; for INT8, preprocess calibration images from the manifest's
*training* split; run the target's exporter in a scratch folder; reload the artifact there
through its runtime and compare it with PyTorch on *validation* images; move the files into
place. An artifact that drifts beyond its target's tolerance goes to ``rejected/`` instead (an
earlier export in the folder stays as it was) and the export fails;
``<stem>.<target>.export.json`` beside the artifact records the verification either way.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from skinedge.errors import ConfigError
from skinedge.export.base import (
    PT2E_QAT,
    ExportError,
    ExportJob,
    Tolerance,
    VerificationFailed,
    get_target,
)
from skinedge.export.records import (
    AccuracyControl,
    Calibration,
    ExportOptions,
    VerificationResult,
    calibrates_int8,
)
from skinedge.models.card import ModelCard, resolve_manifest
from skinedge.utils.backends import MissingBackendError
from skinedge.utils.cpu import cpu_info, cpu_summary
from skinedge.utils.io import atomic_write_text, path_size, sha256_tree, writing

if TYPE_CHECKING:
    from skinedge.data.arrays import ImageArrays


@dataclass
class ExportResult:
    target: str
    precision: str
    path: Path | None  # None when the target refused here (TensorRT without a GPU)
    files: list[Path]
    card: ModelCard | None
    verification: VerificationResult
    report: Path
    notes: list[str] = field(default_factory=list)


def _log(log: Callable[[str], None] | None, message: str) -> None:
    if log:
        log(message)


def export_checkpoint(
    checkpoint: Path | str,
    target: str,
    *,
    precision: str | None = None,
    out_dir: Path | str = "exports",
    manifest: Path | str | None = None,
    calibration_images: int = 300,
    verify_images: int = 64,
    verify: bool = True,
    tolerance: Tolerance | None = None,
    threads: int | None = None,
    options: ExportOptions | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a checkpoint to one target and verify it.

    Args:
        checkpoint: Checkpoint folder (``runs/NAME/train/best``).
        target: Registered target name (``onnx``, ``openvino``, ``tflite``, ``coreml``, ``tensorrt``).
        precision: ``fp32``, ``fp16`` or ``int8`` (default: the target's).
        manifest: Split manifest for calibration (train) and verification (val) images; defaults
            to the one recorded in the model card.
        calibration_images: INT8 calibration images drawn (seeded) from the training split.
        verify_images: Validation images the artifact is compared on (0 or ``verify=False``:
            no verification, recorded as skipped).
        tolerance: Override the target's tolerance for this precision.
        threads: Threads of the runtime used for verification.
        options: The quantizer (TFLite INT8: ``pt2e`` or ``aeq``; OpenVINO INT8: ``ptq`` or
            ``qac``, accuracy control), the accuracy-control budget and the overflow fix; see
            :class:`~skinedge.export.records.ExportOptions` (default: the targets' defaults).

    Raises:
        MissingBackendError: the target's extra is not installed (the message names it).
        ExportError: conversion failed, the target cannot be built here (TensorRT: its ONNX,
            trtexec script and the engine's card are written anyway), or verification failed
            (the artifact and its report are then under ``out_dir/rejected/``; an earlier
            export of the same name in ``out_dir`` is left as it was). When conversion fails or
            the target cannot be built here, an earlier export of the same name and target in
            ``out_dir`` whose verification passed or was skipped is left as it was too: the
            attempt's report (``exc.report``) and its files go to ``out_dir/rejected/``.
        WriteError: a full disk, or an ``out_dir`` that is not writable (nothing is left
            half-written, an earlier export stays as it was).
    """
    from skinedge.compress.quantize import quantization_warnings
    from skinedge.models.checkpoint import load_card, load_checkpoint
    from skinedge.models.temperature import fold_temperature

    spec = get_target(target)
    options = options or ExportOptions()
    source_precision = load_card(checkpoint).precision
    if source_precision == "int8":
        precision = _qat_precision(spec, precision, checkpoint, options)
        options = replace(options, quantizer="qat")
    elif options.quantizer == "qat":
        raise ConfigError(f"--quantizer qat exports a checkpoint made by `skinedge compress "
                         f"quantize --mode qat`; {checkpoint} is {source_precision}: "
                         "quantize it with that command first")
    precision = precision or spec.default_precision
    if precision not in spec.precisions:
        raise ConfigError(f"target {target} exports {', '.join(spec.precisions)}, not {precision}")
    if reason := spec.missing_backend(precision):
        raise MissingBackendError(f"cannot export {target} {precision}: {reason}")
    quantizer = options.quantizer
    if quantizer is not None and quantizer not in (*spec.quantizers, "qat"):
        raise ConfigError(f"target {target} has no quantizer {quantizer!r}"
                         + (f"; choose one of {spec.quantizers}" if spec.quantizers else ""))
    if quantizer is not None and precision != "int8":
        raise ConfigError(f"a quantizer ({quantizer}) only applies to int8, not {precision}")
    checkpoint = Path(checkpoint)
    model, card = load_checkpoint(checkpoint)
    # The calibration temperature goes inside the artifact: an app's own softmax of its
    # outputs then gives the calibrated probabilities (ExportJob.card_for records it).
    model = fold_temperature(model.eval().float().cpu(), card.temperature)
    notes = quantization_warnings(model) if precision == "int8" else []
    for note in notes:
        _log(log, f"warning: {note}")
    cannot_run = spec.runs_here()  # Core ML off macOS, TensorRT without its GPU: no verification
    calibration, control, verification, distill = _prepare_images(
        spec, precision, model, card, checkpoint, manifest, options,
        calibration_images=calibration_images,
        verify_images=verify_images if verify and cannot_run is None else 0, log=log)
    out = Path(out_dir)
    variant = spec.variant(quantizer)
    stem = f"{card.architecture}_{precision}" + (f"_{variant}" if variant else "")
    workdir = out / f".{stem}.{target}.tmp"
    report = out / f"{stem}.{target}.export.json"
    started = time.perf_counter()
    try:
        # A full disk or an --out folder that is not writable: WriteError naming the artifact
        # and its folder (the exporters' own errors often name neither). The scratch folder
        # goes afterwards: the full-disk check needs what was written into it.
        with writing(out / f"{stem}{spec.suffix}"):
            out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            job = ExportJob(model=model, card=card, source=str(checkpoint.resolve()),
                            precision=precision, workdir=workdir, stem=stem,
                            calibration=calibration, options=options, control=control,
                            distill=distill, log=log)
            _log(log, f"exporting {checkpoint} to {target} {precision}")
            try:
                exported = spec.export(job)
            except ExportError as exc:
                # An earlier good export of this stem and target keeps its files and report
                # (load_runtime checks it against them): this attempt's report, and what it
                # wrote anyway, go to rejected/ instead of replacing them.
                folder = out
                if _earlier_export_stands(report):
                    folder = out / "rejected"
                    folder.mkdir(exist_ok=True)
                    _log(log, f"{report} (an earlier verified export) is kept; this attempt's "
                              f"report goes to {folder / report.name}")
                    report = folder / report.name
                kept = [_move(f, folder) for f in getattr(exc, "files", [])]
                _write_report(report, target, precision, checkpoint, None, kept,
                              VerificationResult("not built", str(exc)), notes,
                              time.perf_counter() - started)
                exc.files = kept
                exc.report = report
                raise
            if exported.int8_layers:
                from skinedge.compress.int8_diagnosis import describe

                _log(log, describe(exported.int8_layers))
            seconds = time.perf_counter() - started
            # Verified where it was made: an earlier export in out/ and its report stay in
            # place until this one has passed (a failed one goes to rejected/ with its report).
            execution = None
            if cannot_run:
                check = VerificationResult("skipped", cannot_run, images=0)
            elif verification is None:
                check = VerificationResult("skipped", "verification turned off", images=0)
            else:
                check, execution = _verify(exported.path, model, verification,
                                           tolerance or spec.tolerance(precision), threads, log)
            folder = out / "rejected" if check.status == "failed" else out
            folder.mkdir(exist_ok=True)
            report = folder / report.name
            # The files below replace any earlier export's there: its report no longer
            # describes them (load_runtime would refuse them against its hashes), so it goes
            # first; a kill before the new report is written leaves an artifact without one.
            report.unlink(missing_ok=True)
            files = [_move(f, folder) for f in exported.files]
            path = folder / exported.path.name
            _write_report(report, target, precision, checkpoint, exported.card, files, check,
                          notes, seconds, execution, exported.int8_layers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = ExportResult(target, precision, path, files, exported.card, check, report, notes)
    if check.status == "failed":
        raise VerificationFailed(f"{target} {precision} export failed verification: "
                                 f"{check.reason} (artifact moved to {folder}; details in "
                                 f"{report})", result)
    return result


def _qat_precision(spec, precision: str | None, checkpoint: Path | str,
                   options: ExportOptions) -> str:
    """An INT8 (quantization-aware trained) checkpoint is exported as it is (quantizer ``qat``),
    to a target that can carry its quantizers, with no calibration of its own."""
    if not spec.from_qat:
        from skinedge.export.base import TARGETS

        able = sorted(name for name, t in TARGETS.items() if t.from_qat)
        raise ConfigError(f"{checkpoint} is an INT8 checkpoint (NNCF quantization-aware "
                         f"training); {spec.name} cannot carry its quantizers: export it to "
                         f"{' or '.join(able)}, or export the FP32 checkpoint it came from")
    if precision not in (None, "int8"):
        raise ConfigError(f"{checkpoint} is already INT8; export it as int8, not {precision}")
    if options.quantizer not in (None, "qat"):
        raise ConfigError(f"{checkpoint} is already quantized; --quantizer "
                         f"{options.quantizer} does not apply")
    return "int8"


def _prepare_images(spec, precision: str, model, card: ModelCard, checkpoint: Path,
                    manifest: Path | str | None, options: ExportOptions, *,
                    calibration_images: int, verify_images: int, log,
                    ) -> tuple[Calibration | None, AccuracyControl | None, ImageArrays | None,
                               ImageArrays | None]:
    """Calibration images (training split), for accuracy-controlled INT8 the control images and
    the float model's top-1 on them, verification images (validation split), and for
    ``pt2e-qat`` the whole training split, as arrays preprocessed by the card."""
    import torch

    from skinedge.data.arrays import manifest_arrays
    from skinedge.data.manifest import load_manifest

    calibrate = calibrates_int8(spec.name, precision, options.quantizer,
                                source_precision=card.precision)  # the CLI's rule, too
    if not calibrate and verify_images <= 0:
        return None, None, None, None
    manifest_path = resolve_manifest(manifest, card, checkpoint)
    man = load_manifest(manifest_path)
    if list(man.vocabulary.codes) != card.classes:
        raise ExportError(f"{manifest_path} has classes {list(man.vocabulary.codes)}, the "
                          f"model predicts {card.classes}")
    calibration = control = verification = distill = None
    if calibrate:
        _log(log, f"calibration: {calibration_images} training images from {manifest_path}")
        train = manifest_arrays(man, "train", card.preprocess, limit=calibration_images,
                                source=f"{manifest_path}:train")
        calibration = Calibration(train.x, source=train.source, images_sha256=train.fingerprint,
                                  manifest_split_hash=man.split_hash)
    if verify_images > 0:
        verification = manifest_arrays(man, "val", card.preprocess, limit=verify_images,
                                       seed=1, source=f"{manifest_path}:val")
    if calibrate and options.quantizer == "qac":
        # Tuned on validation images the verification does not use, so it is not graded on them.
        tuning = manifest_arrays(man, "val", card.preprocess, limit=options.max_control,
                                 seed=2, source=f"{manifest_path}:val",
                                 exclude=set(verification.images) if verification else set())
        with torch.inference_mode():
            logits = torch.cat([model(torch.from_numpy(tuning.x[i:i + 64]))
                                for i in range(0, len(tuning), 64)])
        control = AccuracyControl(tuning.x, float_top1=logits.argmax(1).numpy())
    if calibrate and options.quantizer == PT2E_QAT:
        distill = manifest_arrays(man, "train", card.preprocess, source=f"{manifest_path}:train")
        _log(log, f"quantization-aware distillation: {len(distill)} training images, "
                  f"{options.qat_epochs} epochs")
    return calibration, control, verification, distill


def _earlier_export_stands(report: Path) -> bool:
    """Whether ``report`` is an earlier export's whose verification passed or was skipped and
    whose listed files are all still beside it (files are moved flat into its folder)."""
    try:
        doc = json.loads(report.read_text())
        files = [report.parent / Path(f["path"]).name for f in doc["files"]]
        status = doc["verification"]["status"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return False  # none, or unreadable: nothing there for load_runtime to check against
    return status in ("passed", "skipped") and bool(files) and all(f.exists() for f in files)


def _move(path: Path, folder: Path) -> Path:
    dest = folder / path.name
    if dest.is_dir():
        shutil.rmtree(dest)
    if path.is_dir():  # .mlpackage
        shutil.move(str(path), str(dest))
    else:
        path.replace(dest)
    return dest


def _verify(path: Path, model, images: ImageArrays, tol: Tolerance, threads: int | None,
            log) -> tuple[VerificationResult, dict | None]:
    """Compare the artifact's probabilities with the torch model's on validation images; an
    artifact its own runtime cannot load or run fails, with the error as the reason. Returns
    the result and what the runtime chose on this CPU (``Runtime.execution``; None when it
    could not load)."""
    import torch

    from skinedge.runtimes import load_runtime, softmax

    _log(log, f"verifying {path.name} on {len(images)} validation images")
    with torch.inference_mode():
        reference = softmax(model(torch.from_numpy(images.x)).numpy())
    execution = None
    try:
        runtime = load_runtime(path, threads=threads)
        execution = runtime.execution()
        probs = runtime.predict_array(images.x)
        runtime.close()
    except Exception as exc:  # any backend error: the artifact is not usable as exported
        return VerificationResult(
            "failed", f"its runtime could not run it: {type(exc).__name__}: {exc}",
            images=len(images)), execution
    diff = np.abs(probs - reference)
    flips = int((probs.argmax(1) != reference.argmax(1)).sum())
    max_diff, mean_diff, flip_rate = float(diff.max()), float(diff.mean()), flips / len(images)
    problems = []
    if max_diff > tol.max_prob_diff:
        problems.append(f"probabilities differ by up to {max_diff:.4g} "
                        f"(bound {tol.max_prob_diff:g})")
    if mean_diff > tol.max_mean_prob_diff:
        problems.append(f"probabilities differ by {mean_diff:.4g} on average "
                        f"(bound {tol.max_mean_prob_diff:g})")
    if flip_rate > tol.max_flip_rate:
        problems.append(f"top-1 differs on {flips}/{len(images)} images "
                        f"({flip_rate:.1%}, bound {tol.max_flip_rate:.1%})")
    return VerificationResult(
        "failed" if problems else "passed", "; ".join(problems), images=len(images),
        source=images.source, max_prob_diff=max_diff, mean_prob_diff=mean_diff, flips=flips,
        flip_rate=flip_rate,
        accuracy_reference=_top1_accuracy(reference, images.labels),
        accuracy_artifact=_top1_accuracy(probs, images.labels),
        tolerance=tol), execution


def _top1_accuracy(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy over the images with a class (-1: labelled only "not melanoma")."""
    labelled = np.asarray(labels) >= 0
    if not labelled.any():
        return None
    return float((probs[labelled].argmax(1) == np.asarray(labels)[labelled]).mean())


def _write_report(path: Path, target: str, precision: str, checkpoint: Path,
                  card: ModelCard | None, files: list[Path], verification: VerificationResult,
                  notes: list[str], seconds: float, execution: dict | None = None,
                  int8_layers: dict | None = None) -> None:
    """``<stem>.<target>.export.json``: what was exported, its files' hashes, the verification,
    and the machine that made and verified it (its CPU, and what the runtime chose there)."""
    cpu = cpu_info()
    doc = {
        "target": target, "precision": precision, "checkpoint": str(checkpoint),
        # load_runtime checks an artifact against these hashes when this report lies beside it
        "files": [{"path": str(f), "bytes": path_size(f), "sha256": sha256_tree(f)}
                  for f in files],
        "export_seconds": round(seconds, 2), "verification": verification.to_dict(),
        "notes": notes,
        # where INT8 error enters, layer by layer (PT2E targets; int8_diagnosis.layer_sqnr)
        "int8_layers": int8_layers,
        "machine": {"cpu_summary": cpu_summary(cpu), "cpu": cpu, "verification_execution":
                    execution},
        "card": None if card is None else json.loads(card.to_json()),
    }
    atomic_write_text(path, json.dumps(doc, indent=2))
