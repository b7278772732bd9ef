"""``quantize_checkpoint``: a trained FP32 checkpoint to verified INT8 artifacts.

Three modes, in increasing cost:

- ``ptq``: NNCF post-training quantization of each target's graph on training images;
- ``qac``: the same with accuracy control (OpenVINO: layers go back to float until top-1
  agreement with the FP32 model on validation images drops by at most ``max_drop``);
- ``qat``: quantization-aware fine-tuning in PyTorch (optionally distilling from a teacher),
  then the fine-tuned INT8 checkpoint exported as it is;
- ``auto``: ``ptq``, and ``qat`` only when a PTQ artifact fails its verification bound.

Every artifact is verified against its source right after export (see ``export_checkpoint``)
and carries its card: precision, calibration set hash, the measured drift.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinedge.errors import ConfigError, ModelError

MODES = ("ptq", "qac", "qat", "auto")


@dataclass
class QuantizeOutcome:
    mode: str  # the mode that produced ``artifacts``
    artifacts: list[Any] = field(default_factory=list)  # ExportResult of each target
    failed: list[str] = field(default_factory=list)  # "target: reason" of artifacts that failed
    attempts: list[dict] = field(default_factory=list)  # every mode tried, with its results
    qat_checkpoint: Path | None = None
    against_fp32: dict | None = None  # qat: the INT8 checkpoint against the FP32 one, on val


def qat_config(checkpoint: Path, *, manifest: Path | None = None, teacher: Path | None = None,
               overrides: Sequence[str] = ()):
    """A QAT config derived from the FP32 checkpoint's card and its training config: same
    architecture, preprocessing, loss, outlier exposure and data; a short, low learning-rate
    fine-tune."""
    from skinedge.compress.qat import QATConfig
    from skinedge.models import load_card
    from skinedge.models.card import resolve_manifest
    from skinedge.models.checkpoint import WEIGHTS, checkpoint_dir
    from skinedge.utils.config import apply_overrides, validate_config

    directory = checkpoint_dir(Path(checkpoint))
    card = load_card(directory)
    if card.members:
        raise ModelError(f"{checkpoint} is an ensemble: distil it into one student first "
                         "(`skinedge compress distill`), then quantize the student")
    if card.precision != "fp32":
        raise ModelError(f"{checkpoint} is already {card.precision}; quantize the FP32 "
                         "checkpoint it came from")
    trained = dict(card.training.get("config") or {})
    doc: dict[str, Any] = {
        "data": {"manifest": str(resolve_manifest(manifest, card, directory))},
        # Every stage trains: the stem and first blocks are the most sensitive to INT8.
        "model": {**trained.get("model", {}), "arch": card.architecture, "freeze_stages": 0,
                  "pretrained": str(directory / WEIGHTS), "drop_rate": card.drop_rate},
        "preprocess": card.preprocess.model_dump(mode="json"),
        "augment": trained.get("augment", {}),
        "loss": trained.get("loss", {}),
        "optim": {"optimizer": "adamw", "lr": 5e-5, "weight_decay": 1e-4, "scheduler": "cosine",
                  "warmup_epochs": 0},
        "epochs": 3, "early_stopping_patience": 0,
        "batch_size": trained.get("batch_size", 32), "num_workers": trained.get("num_workers", 2),
        "monitor": trained.get("monitor", "balanced_accuracy"), "seed": trained.get("seed", 0),
    }
    # A model taught to refuse non-lesion pictures keeps that lesson through the fine-tune.
    outliers = trained.get("outliers") or {}
    if outliers.get("weight"):
        doc["outliers"] = outliers
    distill = trained.get("distill")
    if teacher is not None or distill:
        doc["distill"] = {**(distill or {}), **({"teacher": str(teacher)} if teacher else {})}
    doc["model"].pop("head_init_std", None)
    doc = apply_overrides(doc, list(overrides))
    return validate_config(QATConfig, doc, f"QAT fine-tune config of {checkpoint} (--set)")


def quantize_checkpoint(
    checkpoint: Path | str,
    out_dir: Path | str,
    *,
    mode: str = "auto",
    targets: Sequence[str] = ("openvino",),
    manifest: Path | str | None = None,
    calibration_images: int = 300,
    max_drop: float = 0.01,
    overflow_fix: str = "auto",
    teacher: Path | str | None = None,
    qat_overrides: Sequence[str] = (),
    resume: bool = False,
    threads: int | None = None,
    callbacks=None,
    log: Callable[[str], None] | None = None,
) -> QuantizeOutcome:
    """INT8 artifacts of ``checkpoint`` for each target, by ``mode`` (see the module doc).

    Args:
        targets: Export targets that take NNCF INT8 (``openvino``, ``onnx``).
        max_drop: ``qac``: allowed drop of top-1 agreement with the FP32 model.
        teacher: ``qat``: distil from this teacher while fine-tuning (default: the teacher the
            student was distilled from, if any).
        qat_overrides: ``--set`` overrides of the QAT training config (e.g. ``epochs=2``).
        resume: ``qat``: continue an interrupted fine-tune in ``out_dir/qat``.
    """
    from skinedge.compress.quantize import resolve_overflow_fix
    from skinedge.export import ExportError, ExportOptions, VerificationFailed, export_checkpoint

    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {MODES}")
    out = Path(out_dir)
    outcome = QuantizeOutcome(mode)

    def export_all(source: Path, tried: str, quantizer: str | None) -> dict:
        attempt = {"mode": tried, "source": str(source), "artifacts": [], "failed": [],
                   "missed_bound": False}
        for target in targets:
            try:
                result = export_checkpoint(
                    source, target, precision="int8", out_dir=out, manifest=manifest,
                    calibration_images=calibration_images, threads=threads, log=log,
                    options=ExportOptions(quantizer=quantizer, max_drop=max_drop,
                                          overflow_fix=overflow_fix))
                attempt["artifacts"].append(result)
            except ExportError as exc:
                attempt["failed"].append(f"{target}: {exc}")
                attempt["missed_bound"] |= isinstance(exc, VerificationFailed)
        outcome.attempts.append(attempt)
        return attempt

    if mode in ("ptq", "qac", "auto"):
        attempt = export_all(Path(checkpoint), "qac" if mode == "qac" else "ptq",
                             "qac" if mode == "qac" else None)
        # Only a missed bound calls for QAT; a conversion error would fail the same way again.
        if mode != "auto" or not attempt["missed_bound"]:
            outcome.mode = attempt["mode"]
            outcome.artifacts, outcome.failed = attempt["artifacts"], attempt["failed"]
            return outcome
        if log:
            log(f"post-training INT8 missed its bound ({'; '.join(attempt['failed'])}); "
                "falling back to quantization-aware training")
    from skinedge.compress.qat import prepare_qat
    from skinedge.train.config import load_data_manifest
    from skinedge.train.trainer import train_classifier

    cfg = qat_config(Path(checkpoint), manifest=Path(manifest) if manifest else None,
                     teacher=Path(teacher) if teacher else None,
                     overrides=[f"quantize.calibration_images={calibration_images}",
                                # resolved now, so a resume elsewhere keeps the same scales
                                f"quantize.overflow_fix={resolve_overflow_fix(overflow_fix)}",
                                *qat_overrides])
    man = load_data_manifest(cfg)
    objective = prepare_qat(cfg, man)
    result = train_classifier(cfg, out / "qat", resume=resume, callbacks=callbacks,
                              objective=objective, manifest=man)
    outcome.qat_checkpoint = result.best_dir
    outcome.against_fp32 = compare_on_val(Path(checkpoint), result.best_dir, man)
    _record_drop(result.best_dir, outcome.against_fp32)  # so every export's card carries it
    if log:
        a = outcome.against_fp32
        log(f"QAT checkpoint against the FP32 one on val: top-1 agreement {a['agreement']:.1%}, "
            f"balanced accuracy {a['int8_balanced_accuracy']:.3f} vs {a['fp32_balanced_accuracy']:.3f}")
    attempt = export_all(result.best_dir, "qat", None)
    outcome.mode = "qat"
    outcome.artifacts, outcome.failed = attempt["artifacts"], attempt["failed"]
    return outcome


def compare_on_val(fp32: Path, int8: Path, man) -> dict[str, float]:
    """Top-1 agreement and balanced accuracy of an INT8 checkpoint against its FP32 source on
    the validation split: QAT moves weights, so its exports are verified against the INT8
    checkpoint, and this is the drop from the FP32 model."""
    from skinedge.data import LesionDataset, build_eval_transform
    from skinedge.evaluate.metrics import compute_partial_metrics
    from skinedge.evaluate.predict import predict_probs
    from skinedge.models import load_checkpoint

    result: dict[str, float] = {}
    top1 = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        model, card = load_checkpoint(path)
        val = LesionDataset.from_manifest(man, "val", build_eval_transform(card.preprocess))
        probs, targets = predict_probs(model, val)
        top1[name] = probs.argmax(1)
        result[f"{name}_balanced_accuracy"] = compute_partial_metrics(
            targets, probs, card.classes, melanoma_class=card.positive_class)["balanced_accuracy"]
    result["agreement"] = float((top1["fp32"] == top1["int8"]).mean())
    result["images"] = len(top1["fp32"])
    return result


def _record_drop(checkpoint: Path, against_fp32: dict) -> None:
    """Write the measured drop from the FP32 model into the INT8 checkpoint's card."""
    from skinedge.models import load_card
    from skinedge.models.card import CARD
    from skinedge.utils.io import atomic_write_text

    card = load_card(checkpoint)
    training = dict(card.training)
    training["quantization"] = {**training.get("quantization", {}), "against_fp32": against_fp32}
    atomic_write_text(Path(checkpoint) / CARD, card.model_copy(update={"training": training}).sealed().to_json())
