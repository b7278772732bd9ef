"""``BenchRow``: one model's line in a benchmark, as the harness measures it and the gates, the
renderers and the compression report read it; ``to_dict`` is its entry in ``bench.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from skinedge.export.records import VerificationResult

#: ``ok``: measured; ``failed parity``: exported but drifted beyond its tolerance (still
#: measured); ``skipped``: cannot run here (Core ML off macOS, TensorRT without a GPU);
#: ``failed``: not exported, or its worker failed (``reason`` says which).
BenchStatus = Literal["ok", "failed parity", "skipped", "failed"]

#: What the worker measures (see ``bench/worker.py``), in its order.
WORKER_FIELDS = ("backend", "threads", "cpus", "execution", "load_s", "cold_ms", "p50_ms",
                 "p95_ms", "p99_ms", "mean_ms", "iterations", "warmup", "peak_rss_mb",
                 "model_rss_mb")
SCORE_FIELDS = ("accuracy", "balanced_accuracy", "melanoma_auc")
DROP_FIELDS = tuple(f"{key}_drop" for key in SCORE_FIELDS)
#: A reference answer is confident when its top-1 probability leads the second by this much.
CONFIDENT_MARGIN = 0.2


@dataclass(frozen=True)
class BenchRow:
    """One model in a benchmark.

    The worker's figures, the scores and ``flip_rate`` are set together once the model has run
    (``measured``); a ``*_drop`` is set when both the row's and the reference's score exist.

    Attributes:
        label: ``target-precision[-quantizer]``, ``torch-fp32`` for checkpoints; unique in a run.
        model: The checkpoint folder or artifact; None when no artifact was made.
        reference: The source checkpoint every other row is compared with.
        export: The artifact's verification when it was exported (read from its report).
        size_mb: What ships: weights, IR .xml + .bin, the package folder or the file.
        backend, threads, cpus: The runtime and how it ran.
        execution: What the runtime chose on this CPU (``Runtime.execution``: ONNX Runtime's
            provider, OpenVINO's inference precision and kernels, LiteRT's XNNPACK delegate).
        load_s, cold_ms: Load time and first inference; ``p50_ms``, ``p95_ms``, ``p99_ms``,
            ``mean_ms``: warm latency at batch 1 over ``iterations`` runs after ``warmup``.
        peak_rss_mb: Peak memory of the worker; ``model_rss_mb``: what the model added.
        accuracy, balanced_accuracy, melanoma_auc: On the test images (AUC None without a
            melanoma class).
        flip_rate: Share of test images whose top-1 class differs from the reference's.
        confident_flip_rate: The same among the images the reference answers confidently (its
            top-1 probability leads its second by ``CONFIDENT_MARGIN`` or more): a flip there
            changes an answer the model was sure of, not a near-tie.
        accuracy_drop, balanced_accuracy_drop, melanoma_auc_drop: Reference minus this row.
        device: The device that measured the row (``ssh:user@host``, ``adb:SERIAL``); None:
            this machine. A device row without scores ran on random inputs (latency only).
    """

    label: str
    model: Path | None
    status: BenchStatus = "ok"
    reason: str | None = None
    reference: bool = False
    export: VerificationResult | None = None
    size_mb: float | None = None
    backend: str | None = None
    threads: int | None = None
    cpus: tuple[int, ...] | None = None
    execution: dict[str, Any] | None = None
    load_s: float | None = None
    cold_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    iterations: int | None = None
    warmup: int | None = None
    peak_rss_mb: float | None = None
    model_rss_mb: float | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    melanoma_auc: float | None = None
    flip_rate: float | None = None
    confident_flip_rate: float | None = None
    accuracy_drop: float | None = None
    balanced_accuracy_drop: float | None = None
    melanoma_auc_drop: float | None = None
    device: str | None = None

    @property
    def measured(self) -> bool:
        """Whether the worker ran the model (its figures, the scores and flips are set)."""
        return self.backend is not None

    def to_dict(self) -> dict[str, Any]:
        """The row in ``bench.json``: keys of what was measured only, ``model`` as a string."""
        doc: dict[str, Any] = {"label": self.label,
                               "model": None if self.model is None else str(self.model),
                               "status": self.status}
        if self.reason is not None:
            doc["reason"] = self.reason
        if self.reference:
            doc["reference"] = True
        if self.device is not None:
            doc["device"] = self.device
        if self.export is not None:
            doc["export"] = self.export.to_dict()
        if self.size_mb is not None:
            doc["size_mb"] = self.size_mb
        if self.measured:
            doc.update({key: getattr(self, key) for key in (*WORKER_FIELDS, *SCORE_FIELDS,
                                                            "flip_rate")})
            doc["cpus"] = None if self.cpus is None else list(self.cpus)
        doc.update({key: value for key in ("confident_flip_rate", *DROP_FIELDS)
                    if (value := getattr(self, key)) is not None})
        return doc
