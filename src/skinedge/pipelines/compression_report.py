"""The compression report: teacher ensemble, best single teacher, student FP32, student INT8.

Every model is measured by the benchmark harness (one worker process each, the same test
images) at each thread count, in one run, so the latency ratios are side by side. Accuracy
figures, per-class recall, calibration (ECE) and the top-1 agreement with the teacher come
from the same probabilities; parameters and multiply-accumulates from the PyTorch source.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skinedge.utils.io import atomic_write_text, package_versions

if TYPE_CHECKING:
    from skinedge.bench.rows import BenchRow

#: What the issue asks of the INT8 student, against the teacher ensemble.
TARGETS = {"balanced_accuracy_drop": 0.015, "melanoma_auc_drop": 0.02, "agreement": 0.90}


@dataclass
class CompressionReport:
    rows: list[dict[str, Any]]  # one per model: role, label, sizes, accuracy, latency per threads
    checks: list[dict[str, Any]]  # the targets, each with measured value and ok
    test: dict[str, Any]
    settings: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "checks": self.checks, "test": self.test,
                "settings": self.settings, "versions": package_versions()}


def best_member(teacher: Path) -> Path | None:
    """The ensemble member with the best validation balanced accuracy (chosen on validation,
    never on test); None for a single-model teacher."""
    from skinedge.models import load_card

    card = load_card(teacher)
    if not card.members:
        return None
    best = max(card.members, key=lambda m: m.metrics.get("balanced_accuracy") or -1.0)
    return Path(teacher) / best.path


def count_params_and_macs(checkpoint: Path) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one image at the card's input size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from skinedge.models import load_checkpoint

    model, card = load_checkpoint(checkpoint)
    size = card.preprocess.input_size
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return params, counter.get_total_flops() // 2


def build_compression_report(
    teacher: Path | str,
    student: Path | str,
    int8: Sequence[Path | str],
    *,
    fp32: Sequence[Path | str] = (),
    best_single: Path | str | None = None,
    manifest: Path | str | None = None,
    split: str = "test",
    threads: Sequence[int] = (1, 2),
    warmup: int = 10,
    iterations: int = 100,
    out_dir: Path | str = "compression",
    log: Callable[[str], None] | None = None,
) -> CompressionReport:
    """Measure the teacher, its best member, the student and its INT8 artifacts side by side.

    Args:
        teacher: Teacher checkpoint (ensemble or single model): the reference of every delta.
        student: The distilled student's FP32 checkpoint.
        int8: INT8 artifacts of the student (e.g. OpenVINO IR, ONNX QDQ).
        fp32: FP32 artifacts of the student in the same runtimes, for a like-for-like speed-up.
        best_single: Default: the ensemble member with the best validation balanced accuracy.
        threads: Thread counts; every model is measured at each, in this one run.
    """
    from skinedge.bench.harness import BenchSettings, run_bench
    from skinedge.runtimes import read_artifact_card

    teacher, student, out = Path(teacher), Path(student), Path(out_dir)
    best_single = Path(best_single) if best_single else best_member(teacher)
    roles = [("teacher ensemble" if read_artifact_card(teacher).members else "teacher", teacher)]
    if best_single is not None:
        roles.append(("best single teacher", best_single))
    roles.append(("student fp32", student))
    roles += [("student fp32", Path(p)) for p in fp32]
    roles += [("student int8", Path(p)) for p in int8]

    rows: list[dict[str, Any]] = []
    test: dict[str, Any] = {}
    for n_threads in threads:
        settings = BenchSettings(threads=n_threads, warmup=warmup, iterations=iterations)
        result = run_bench([p for _, p in roles], reference=teacher, manifest=manifest,
                           split=split, out_dir=out / f"threads-{n_threads}", settings=settings,
                           log=log)
        test = result.test
        if not rows:
            rows = [_model_row(role, path, bench, result)
                    for (role, path), bench in zip(roles, result.rows)]
        for row, bench in zip(rows, result.rows):
            row["latency"][str(n_threads)] = {
                k: getattr(bench, k) for k in ("p50_ms", "p95_ms", "status", "reason")}
    report = CompressionReport(rows, _checks(rows, threads), test,
                               {"threads": list(threads), "warmup": warmup,
                                "iterations": iterations})
    out.mkdir(parents=True, exist_ok=True)
    report.files["json"] = atomic_write_text(out / "compression.json",
                                             json.dumps(report.as_dict(), indent=2, default=str))
    report.files["markdown"] = atomic_write_text(out / "compression.md", render_markdown(report))
    return report


def _model_row(role: str, path: Path, bench: BenchRow, result) -> dict[str, Any]:
    from skinedge.evaluate.metrics import compute_partial_metrics
    from skinedge.runtimes import read_artifact_card

    card = read_artifact_card(path)
    source = Path(card.artifact.source_checkpoint) if card.artifact else path
    params, macs = count_params_and_macs(source)
    row: dict[str, Any] = {
        "role": role, "label": bench.label, "model": str(path), "status": bench.status,
        "reason": bench.reason, "precision": card.artifact.precision if card.artifact
        else card.precision, "architecture": card.architecture,
        "params": params, "macs": macs, "size_mb": bench.size_mb, "latency": {},
    }
    probs = (result.probs or {}).get(bench.label)
    if probs is None:
        return row
    m = compute_partial_metrics(result.labels, probs, result.test["classes"],
                                melanoma_class=card.positive_class)
    row.update({
        "balanced_accuracy": m["balanced_accuracy"], "melanoma_auc": m["melanoma_auc"],
        "accuracy": m["accuracy"], "ece": m["ece"],
        "recall": {c: s["recall"] for c, s in m["per_class"].items()},
        "agreement": 1.0 - bench.flip_rate,  # bench's flips are against the teacher
    })
    return row


def _checks(rows: list[dict], threads: Sequence[int]) -> list[dict[str, Any]]:
    teacher = rows[0]
    fp32 = [r for r in rows if r["role"] == "student fp32" and r["latency"]]
    checks = []
    for row in (r for r in rows if r["role"] == "student int8"):
        if "balanced_accuracy" not in row:
            reason = " ".join(str(row.get("reason")).split()).replace("|", "/")
            checks.append({"model": row["label"], "target": "measured", "ok": False,
                           "value": reason})
            continue
        ba_drop = teacher["balanced_accuracy"] - row["balanced_accuracy"]
        checks.append({"model": row["label"], "target": "balanced accuracy within 1.5 points "
                       "of the teacher", "value": -100 * ba_drop, "unit": "points",
                       "ok": ba_drop <= TARGETS["balanced_accuracy_drop"]})
        if teacher.get("melanoma_auc") is not None:
            auc_drop = teacher["melanoma_auc"] - row["melanoma_auc"]
            checks.append({"model": row["label"], "target": "melanoma AUC within 0.02 of the "
                           "teacher", "value": -auc_drop,
                           "ok": auc_drop <= TARGETS["melanoma_auc_drop"]})
        checks.append({"model": row["label"], "target": "agrees with the teacher on >= 90% of "
                       "test images", "value": row["agreement"],
                       "ok": row["agreement"] >= TARGETS["agreement"]})
        for n in threads:
            mine = row["latency"].get(str(n), {}).get("p50_ms")
            others = [(r["latency"][str(n)]["p50_ms"], r["label"]) for r in fp32
                      if r["latency"].get(str(n), {}).get("p50_ms")]
            if mine is None or not others:  # a target that could not be measured is missed
                checks.append({"model": row["label"], "target": f"faster than the FP32 student "
                               f"at {n} thread(s)", "value": "not measured", "ok": False})
                continue
            fastest, label = min(others)
            checks.append({"model": row["label"], "target": f"faster than the fastest FP32 "
                           f"student ({label}) at {n} thread(s)", "value": fastest / mine,
                           "ok": mine < fastest})
    return checks


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(report: CompressionReport) -> str:
    threads = report.settings["threads"]
    classes = report.test.get("classes", [])
    head = ["model", "role", "params M", "MMACs", "size MB", "bal. acc", "mel AUC", "ECE",
            "agreement", *[f"p50 ms ({n} thr)" for n in threads]]
    lines = [f"Test set: `{report.test.get('source')}`, {report.test.get('images')} images; "
             f"reference: the first row. Latency: batch 1, median of "
             f"{report.settings['iterations']} runs, every model in its own process.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.rows:
        cells = [r["label"], r["role"], f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e6:.0f}",
                 _fmt(r.get("size_mb"), ".1f"), _fmt(r.get("balanced_accuracy"), ".3f"),
                 _fmt(r.get("melanoma_auc"), ".3f"), _fmt(r.get("ece"), ".3f"),
                 _fmt(r.get("agreement"), ".1%"),
                 *[_fmt(r["latency"].get(str(n), {}).get("p50_ms"), ".1f") for n in threads]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Recall per class:", "", "| model | " + " | ".join(classes) + " |",
              "|---|" + "---:|" * len(classes)]
    for r in report.rows:
        recall = r.get("recall") or {}
        lines.append(f"| {r['label']} | " + " | ".join(_fmt(recall.get(c), ".2f")
                                                      for c in classes) + " |")
    lines += ["", "| INT8 model | target | measured | met |", "|---|---|---:|---|"]
    for c in report.checks:
        value = c["value"]
        if not isinstance(value, float):
            shown = str(value)
        elif "agrees" in c["target"]:
            shown = f"{value:.1%}"
        elif "faster" in c["target"]:
            shown = f"{value:.2f}x"
        elif c.get("unit") == "points":
            shown = f"{value:+.1f} points"
        else:
            shown = f"{value:+.3f}"
        lines.append(f"| {c['model']} | {c['target']} | {shown} | {'yes' if c['ok'] else 'NO'} |")
    for r in report.rows:
        if r.get("reason"):
            reason = " ".join(str(r["reason"]).split()).replace("|", "/")
            lines.append(f"\n{r['label']}: {r['status']}: {reason}")
    return "\n".join(lines) + "\n"
