"""``run_bench``: latency, memory and accuracy parity of every artifact, measured side by side.

Each model runs in a worker process of its own (same threads, same CPU pinning, same inputs):
load time, first (cold) inference, warm latency percentiles at batch 1, peak memory, and
probabilities for every test image. Accuracy, balanced accuracy and melanoma AUC come from
those probabilities; the deltas and the top-1 flip rate are against the reference model (the
source checkpoint run by PyTorch), measured in the same run.

Latency is the model call through the runtime (including its input quantization and layout
change), not JPEG decoding and resizing, which are the same for every format.

With ``devices`` (:mod:`skinedge.bench.device`: a board over ssh, a phone over adb), every
torch-free artifact is measured there too, as a row of its own (``onnx-fp32 @ ssh:pi@board``).
The test images go to a device only with ``device_images=True``; otherwise the device makes
random inputs and its rows have latency and memory only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from skinedge.bench.device import Device, LocalDevice
from skinedge.bench.rows import (
    CONFIDENT_MARGIN,
    DROP_FIELDS,
    SCORE_FIELDS,
    WORKER_FIELDS,
    BenchRow,
)
from skinedge.errors import ConfigError, ModelError
from skinedge.models.card import ModelCard
from skinedge.utils.cpu import cpu_info
from skinedge.utils.io import check_writable, path_size, writing


@dataclass
class BenchSettings:
    threads: int | None = 1
    cpus: list[int] | None = None
    warmup: int = 10
    iterations: int = 100
    profile: str | None = None
    timeout_s: float = 1800


@dataclass
class BenchResult:
    rows: list[BenchRow]
    reference: str  # label of the reference row
    test: dict  # source, images, classes
    settings: BenchSettings
    labels: np.ndarray | None = None  # (N,) test labels
    probs: dict[str, np.ndarray] | None = None  # row label -> (N, C) probabilities
    cpu: dict = field(default_factory=cpu_info)  # the machine that timed the rows (cpu_info)
    #: device name -> its description (``Device.describe``) and ``inputs``: what it ran on
    devices: dict[str, dict] = field(default_factory=dict)


def _log(log, message: str) -> None:
    if log:
        log(message)


def _model_size_mb(path: Path) -> float:
    """What ships: a checkpoint's weights, an IR's .xml + .bin, a package folder, a file."""
    if path.is_dir() and (path / "model.safetensors").is_file():
        return path_size(path / "model.safetensors") / 2**20
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return (path_size(path) + (path_size(weights) if weights and weights.is_file() else 0)) / 2**20


def _unique(label: str, taken: set[str], path: Path) -> str:
    if label not in taken:
        return label
    candidate = f"{label}@{path.parent.name}/{path.name}" if path.is_dir() else f"{label}@{path.name}"
    return candidate if candidate not in taken else f"{candidate}#{len(taken)}"


def export_for_bench(reference: Path, targets: list[tuple], out: Path, *, manifest,
                     calibration_images: int, threads: int | None, log,
                     float_first: int | None = None) -> list[BenchRow]:
    """Export the reference checkpoint to each (target, precision[, quantizer]); a row each.
    ``float_first``: :attr:`~skinedge.export.records.ExportOptions.float_first` (None: its
    default)."""
    from skinedge.export import ExportError, ExportOptions, export_checkpoint, get_target
    from skinedge.export.base import VerificationFailed
    from skinedge.export.targets.tensorrt import TensorRTUnavailable
    from skinedge.runtimes.base import artifact_label
    from skinedge.utils.backends import MissingBackendError

    extra = {} if float_first is None else {"float_first": float_first}
    rows: list[BenchRow] = []
    for target, precision, *variant in targets:
        spec = get_target(target)
        precision = precision or spec.default_precision
        quantizer = variant[0] if variant and variant[0] else None
        variant = spec.variant(quantizer)
        label = f"{target}-{precision}" + (f"-{variant}" if variant else "")  # as artifact_label
        try:
            result = export_checkpoint(reference, target, precision=precision, out_dir=out,
                                       manifest=manifest, calibration_images=calibration_images,
                                       threads=threads, log=log,
                                       options=ExportOptions(quantizer=quantizer, **extra))
            rows.append(BenchRow(artifact_label(result.card), result.path,
                                 export=result.verification))
        except MissingBackendError as exc:
            rows.append(BenchRow(label, None, "failed", str(exc)))
        except VerificationFailed as exc:  # exported, but drifted: still measured
            check = exc.result.verification
            rows.append(BenchRow(artifact_label(exc.result.card), exc.result.path,
                                 "failed parity", check.reason, export=check))
        except TensorRTUnavailable as exc:  # not a failure of the model: no TensorRT/GPU here
            rows.append(BenchRow(label, None, "skipped", str(exc).splitlines()[0]))
        except ExportError as exc:
            rows.append(BenchRow(label, None, "failed", str(exc).splitlines()[0]))
        except Exception as exc:  # a converter crash is a result, not the end of the benchmark
            rows.append(BenchRow(label, None, "failed",
                                 f"{type(exc).__name__}: {exc}".splitlines()[0]))
        _log(log, f"{label}: {rows[-1].status}" + (f" ({rows[-1].reason})"
                                                   if rows[-1].reason else ""))
    return rows


def _given_row(label: str, path: Path, card: ModelCard) -> BenchRow:
    """A given model's row; an artifact's verification comes from the report ``skinedge export``
    wrote beside it: one that failed it (kept under ``rejected/``) is "failed parity"."""
    from skinedge.export.records import VerificationResult
    from skinedge.runtimes.registry import export_reports

    row = BenchRow(label, path)
    if card.artifact is None:
        return row
    for report in export_reports(path)[:1]:  # the report listing it (matched by its files)
        try:
            doc = json.loads(report.read_text()).get("verification")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise ModelError(f"{report}: not a readable export report ({exc}); export "
                             "the artifact again") from exc
        if doc is None:
            return row
        try:
            check = VerificationResult.from_dict(doc)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{report}: unreadable verification section: {exc}") from exc
        if check.status == "failed":
            return replace(row, status="failed parity", reason=check.reason, export=check)
        return replace(row, export=check)
    return row


#: The last line of a --data folder's validation error (bench has no --skip-bad).
DATA_HINT = ("Fix these rows or files of the folder (or remove them from its labels file), or "
             "benchmark on a manifest split with --manifest instead.")


def load_test_arrays(card: ModelCard, *, manifest=None, split: str = "test", data=None,
                     limit: int | None = None, log=None, layout: str | None = None,
                     allow_outside_root: bool = False,
                     problems_report: Path | str | None = None):
    """The test images, preprocessed with ``card.preprocess``.

    Args:
        layout: Layout of ``data`` (detected when None).
        allow_outside_root: Take image paths of ``data`` that lead outside the folder.
        problems_report: Where every bad row of ``data`` is listed (CSV) when there are any.

    Raises:
        DataValidationError: bad rows or images in ``data`` (every one listed in
            ``problems_report``).
    """
    from skinedge.data.arrays import load_arrays, manifest_arrays
    from skinedge.data.manifest import check_classes, load_manifest
    from skinedge.data.reading import read_dataset

    if (manifest is None) == (data is None):
        raise ConfigError("benchmark on either a manifest split (--manifest) or a folder (--data)")
    if manifest is not None:
        man = load_manifest(manifest)
        check_classes(man, card.classes, manifest)
        _log(log, f"preprocessing {manifest}:{split}")
        return manifest_arrays(man, split, card.preprocess, limit=limit,
                               source=f"{manifest}:{split}")
    ds = read_dataset(data, layout=layout, classes=card.vocabulary,
                      allow_outside_root=allow_outside_root,
                      problems_report=problems_report,
                      label_hint="fix the row (the model can only be scored on its own classes)",
                      hint=DATA_HINT)
    records = ds.records[:limit] if limit else ds.records
    _log(log, f"preprocessing {len(records)} images of {data}")
    return load_arrays(ds.root, [r.image for r in records],
                       [card.classes.index(r.label) for r in records], card.preprocess,
                       source=str(data))


def run_worker(model: Path, inputs: Path, probs: Path, settings: BenchSettings) -> dict:
    """Measure one model in a fresh process; returns the worker's JSON (or ``{"error": ...}``)."""
    return LocalDevice().measure(model, settings, inputs=inputs, probs_out=probs)


def _scores(probs: np.ndarray, labels: np.ndarray, card: ModelCard) -> dict:
    from skinedge.evaluate.metrics import compute_partial_metrics

    m = compute_partial_metrics(labels, probs, card.classes, melanoma_class=card.positive_class)
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
            "melanoma_auc": m["melanoma_auc"]}


_MODEL_ERROR = "ModelError: "  # how the worker reports a ModelError (bench/worker.py)


def _figures(measured: dict) -> dict:
    """A worker's JSON as BenchRow fields."""
    figures = {key: measured.get(key) for key in WORKER_FIELDS}
    figures["cpus"] = None if figures["cpus"] is None else tuple(figures["cpus"])
    return figures


def _test_inputs(card: ModelCard, ref_card: ModelCard, test, inputs: dict[str, Path], out: Path,
                 **load) -> Path:
    """The .npy of the test images preprocessed as ``card`` says, written once per
    preprocessing into ``inputs`` (removed by run_bench when done)."""
    key = hashlib.sha256(card.preprocess.model_dump_json().encode()).hexdigest()[:12]
    if key not in inputs:
        arrays = test if card.preprocess == ref_card.preprocess else load_test_arrays(
            card, problems_report=out / "problems.csv", **load)
        inputs[key] = out / f"inputs-{key}.npy"
        with writing(inputs[key]):  # a full disk: np.save's OSError carries no errno
            np.save(inputs[key], arrays.x)
    return inputs[key]


def _device_rows(rows: list[BenchRow]) -> list[BenchRow]:
    """The rows whose artifact goes to devices: every artifact (not the reference checkpoint)."""
    return [row for row in rows if row.model is not None and not row.reference]


def _measure_on_devices(devices: Sequence[Device], rows: list[BenchRow], ref_card: ModelCard,
                        test, inputs: dict[str, Path], out: Path, settings: BenchSettings, *,
                        send_images: bool, log, cards: dict[Path, ModelCard], **load
                        ) -> tuple[list[BenchRow], dict[str, np.ndarray]]:
    """Each artifact's row on each device (``LABEL @ DEVICE``); with ``send_images`` the test
    images go there and come back as probabilities, else the device makes random inputs."""
    from skinedge.runtimes import read_artifact_card

    device_rows: list[BenchRow] = []
    probs_by_label: dict[str, np.ndarray] = {}
    for device in devices:
        for row in _device_rows(rows):
            model = Path(row.model)
            label = f"{row.label} @ {device.name}"
            base = BenchRow(label, model, "failed parity" if row.status == "failed parity"
                            else "ok", device=device.name, size_mb=row.size_mb, export=row.export)
            if reason := device.cannot_run(model):
                device_rows.append(replace(base, status="skipped", reason=reason))
                continue
            card = cards.get(model) or read_artifact_card(model)
            sent = _test_inputs(card, ref_card, test, inputs, out, **load) if send_images \
                else None
            _log(log, f"measuring {label}")
            probs_path = out / ("probs-" + re.sub(r"[^A-Za-z0-9_.@-]+", "_", label) + ".npy")
            measured = device.measure(
                model, settings, inputs=sent, probs_out=probs_path if sent else None,
                shape=(3, card.preprocess.input_size, card.preprocess.input_size))
            if "error" in measured:
                device_rows.append(replace(base, status="failed", reason=measured["error"]))
                continue
            scores = {}
            if sent is None:
                base = replace(base, reason="latency only: random inputs made on the device, "
                                            "no image sent")
            elif measured.get("backend") == "benchmark_model":
                base = replace(base, reason="latency only: benchmark_model makes its own "
                                            "random inputs")
            elif measured.get("latency_only"):  # a device that times without images
                base = replace(base, reason=f"latency only: {measured['latency_only']}")
            else:
                probs_by_label[label] = np.load(probs_path)
                scores = _scores(probs_by_label[label], test.labels, ref_card)
            device_rows.append(replace(base, **_figures(measured), **scores))
    return device_rows, probs_by_label


def _measure_rows(rows: list[BenchRow], ref_card: ModelCard, test, inputs: dict[str, Path],
                  out: Path, settings: BenchSettings, *, manifest, split, data, limit, log,
                  cards: dict[Path, ModelCard] | None = None, layout: str | None = None,
                  allow_outside_root: bool = False
                  ) -> tuple[list[BenchRow], dict[str, np.ndarray], dict | None]:
    """Run the worker for every row with a model; returns the rows with their measurements,
    every measured row's probabilities by label, and the reference's scores."""
    from skinedge.export import get_target
    from skinedge.runtimes import read_artifact_card

    probs_by_label: dict[str, np.ndarray] = {}
    ref_scores = None
    measured_rows = []
    for row in rows:
        if row.model is None:
            measured_rows.append(row)
            continue
        model = Path(row.model)
        known = (cards or {}).get(model)  # given artifacts' cards, read once by run_bench
        card = ref_card if row.reference else known or read_artifact_card(model)
        row = replace(row, model=model, size_mb=_model_size_mb(model))
        if card.artifact is not None and row.status == "ok":
            if reason := get_target(card.artifact.target).runs_here():
                measured_rows.append(replace(row, status="skipped", reason=reason))
                continue
        inputs_path = _test_inputs(card, ref_card, test, inputs, out, manifest=manifest,
                                   split=split, data=data, limit=limit, layout=layout,
                                   allow_outside_root=allow_outside_root)
        _log(log, f"measuring {row.label} ({settings.threads or 'default'} threads)")
        probs_path = out / f"probs-{row.label.replace('/', '_')}.npy"
        measured = run_worker(model, inputs_path, probs_path, settings)
        if "error" in measured:
            error = measured["error"]
            if model in (cards or {}) and error.startswith(_MODEL_ERROR):
                # A model the user gave that its runtime refuses (unreadable, damaged): the
                # input is wrong, so the run stops with the message instead of a failed row.
                raise ModelError(error[len(_MODEL_ERROR):])
            measured_rows.append(replace(row, status="failed", reason=error))
            continue
        probs_by_label[row.label] = np.load(probs_path)
        scores = _scores(probs_by_label[row.label], test.labels, ref_card)
        measured_rows.append(replace(row, **_figures(measured), **scores))
        if row.reference:
            ref_scores = scores
    return measured_rows, probs_by_label, ref_scores


def run_bench(
    models: list[Path | str],
    *,
    reference: Path | str | None = None,
    exports: list[tuple] = (),
    manifest: Path | str | None = None,
    split: str = "test",
    data: Path | str | None = None,
    limit: int | None = None,
    out_dir: Path | str = "bench",
    settings: BenchSettings | None = None,
    calibration_images: int = 300,
    float_first: int | None = None,
    log: Callable[[str], None] | None = None,
    layout: str | None = None,
    allow_outside_root: bool = False,
    devices: Sequence[Device] = (),
    device_images: bool = False,
) -> BenchResult:
    """Benchmark a reference checkpoint and artifacts (given, or exported first) on one test set.

    Args:
        models: Checkpoint folders and/or artifacts to measure.
        reference: The checkpoint every row is compared with; default: the first checkpoint
            folder in ``models``, else the source checkpoint recorded in the first artifact's card.
        exports: (target, precision[, quantizer]) to export from the reference first.
        float_first: Leading convolutions that the calibrated INT8 ``exports`` keep in float
            (:class:`~skinedge.export.records.ExportOptions`; None: its default).
        manifest/split or data: the test images (a manifest split, or a labelled folder);
            default: the reference's recorded manifest, ``test`` split.
        limit: Use only the first N test images (quick checks; the report says so).
        layout: Layout of ``data`` (see ``skinedge.data.layouts.LAYOUTS``); detected when None.
        allow_outside_root: Take image paths of ``data`` that lead outside the folder (a
            folder the user trusts); by default each is a problem.
        devices: Devices (:mod:`skinedge.bench.device`) that measure every torch-free
            artifact too, each as its own row ``LABEL @ DEVICE``; each is described first
            (CPU, OS, runtime versions), so an unreachable one stops the run before exporting.
        device_images: Send the preprocessed test images to the devices for accuracy parity;
            by default no image leaves this machine (random inputs there, latency only).

    Raises:
        ModelError: a given model that is damaged, before anything is measured: an artifact
            whose files differ from the sha256 in the export report beside it, one its backend
            cannot parse, an OpenVINO ``.bin`` shorter than its ``.xml`` says, an edited card
            (:func:`skinedge.runtimes.registry.verify_artifact`); or one whose runtime refuses
            it when its worker loads it. Exports made here that fail are rows, not errors.
        WriteError: ``out_dir`` is not writable or its disk is full: checked before anything
            is exported or measured (and met while writing, as when the disk fills up).
        DataValidationError: bad rows of ``data``, all listed in ``out_dir/problems.csv``.
        ConfigError: a device that cannot be reached, or lacks Python, skinedge or the runtime
            package an artifact needs (the message names the device and what to install).
    """
    from skinedge.runtimes import read_artifact_card, verify_artifact
    from skinedge.runtimes.base import artifact_label

    settings = settings or BenchSettings()
    out = check_writable(Path(out_dir))  # not after minutes of exporting and measuring
    described = {}
    for device in devices:  # an unreachable device stops the run before anything is made
        _log(log, f"describing {device.name}")
        described[device.name] = device.describe()
    models = [Path(m) for m in models]
    cards = {m: verify_artifact(m) for m in models}
    if reference is None:
        checkpoints = [m for m in models if cards[m].artifact is None]
        if checkpoints:
            reference = checkpoints[0]
        elif models:
            reference = Path(cards[models[0]].artifact.source_checkpoint)
        else:
            raise ConfigError("nothing to benchmark: give a checkpoint, artifacts, or --export")
    reference = Path(reference)
    ref_card = cards.get(reference) or read_artifact_card(reference)
    if ref_card.artifact is not None:
        raise ConfigError(f"{reference}: the reference must be a checkpoint folder (PyTorch), "
                         f"not an exported artifact")
    if manifest is None and data is None:
        from skinedge.models.card import resolve_manifest

        manifest = resolve_manifest(None, ref_card, reference)
    given = [BenchRow("torch-fp32", reference, reference=True)]
    given += [_given_row(artifact_label(cards[m]), m, cards[m])
              for m in models if m.resolve() != reference.resolve()]
    given += export_for_bench(reference, list(exports), out / "exports", manifest=manifest,
                              calibration_images=calibration_images, threads=settings.threads,
                              log=log, float_first=float_first)
    taken: set[str] = set()
    rows = []
    for row in given:
        rows.append(replace(row, label=_unique(row.label, taken, Path(row.model or "."))))
        taken.add(rows[-1].label)
    test = load_test_arrays(ref_card, manifest=manifest, split=split, data=data, limit=limit,
                            log=log, layout=layout, allow_outside_root=allow_outside_root,
                            problems_report=out / "problems.csv")
    for device in devices:  # a missing runtime package there: said before measuring
        for row in _device_rows(rows):
            if device.cannot_run(Path(row.model)) is None:
                device.check_can_run(Path(row.model))
        described[device.name]["inputs"] = (
            f"{len(test)} test images sent to the device" if device_images else
            "no image sent: random inputs made on the device, latency only")
        _log(log, f"{device.name}: {described[device.name]['inputs']}")
    inputs: dict[str, Path] = {}
    load = {"manifest": manifest, "split": split, "data": data, "limit": limit,
            "layout": layout, "allow_outside_root": allow_outside_root}
    try:
        rows, probs, ref_scores = _measure_rows(rows, ref_card, test, inputs, out, settings,
                                                log=log, cards=cards, **load)
        device_rows, device_probs = _measure_on_devices(
            devices, rows, ref_card, test, inputs, out, settings, send_images=device_images,
            log=log, cards=cards, **load)
    finally:
        for path in inputs.values():
            path.unlink(missing_ok=True)  # hundreds of MB; the probabilities stay
    if ref_scores is None:
        # As before the error type existed: the reference the user named cannot be run here
        # (its row's reason says why), reported as a message, not a traceback.
        raise ModelError(f"the reference {reference} could not be measured: {rows[0].reason}")
    reference = probs[rows[0].label]
    probs.update(device_probs)
    rows = [_against_reference(row, probs.get(row.label), reference, ref_scores)
            for row in [*rows, *device_rows]]
    test_info = {"source": test.source, "images": len(test), "classes": ref_card.classes,
                 "limited_to": limit}
    return BenchResult(rows, rows[0].label, test_info, settings, test.labels, probs,
                       cpu=cpu_info(), devices=described)


def _against_reference(row: BenchRow, probs: np.ndarray | None, reference: np.ndarray,
                       ref_scores: dict) -> BenchRow:
    """The row with its top-1 flip rates and score drops against the reference's
    probabilities (if it ran)."""
    if probs is None:
        return row
    drops = {drop: ref_scores[key] - getattr(row, key)
             for key, drop in zip(SCORE_FIELDS, DROP_FIELDS)
             if getattr(row, key) is not None and ref_scores.get(key) is not None}
    flips = probs.argmax(1) != reference.argmax(1)
    top2 = np.sort(reference, axis=1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) >= CONFIDENT_MARGIN
    return replace(row, flip_rate=float(flips.mean()), **drops,
                   confident_flip_rate=float(flips[confident].mean()) if confident.any() else None)
