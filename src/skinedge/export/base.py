"""The export target registry: what each format is, which extra it needs, how close it must stay.

A target is registered by name with :func:`register_target`; the CLI, the parity contract test
and the benchmark iterate over :data:`TARGETS`, so a new format is covered everywhere by
registering it. Tolerances are data on the target, per precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from skinedge.errors import ConfigError, SkinedgeError
from skinedge.models.card import ArtifactInfo, ModelCard
from skinedge.utils.backends import missing

if TYPE_CHECKING:
    from skinedge.data.arrays import ImageArrays
    from skinedge.export.records import AccuracyControl, Calibration, ExportOptions

PRECISIONS = ("fp32", "fp16", "int8")
#: The PT2E targets' fallback INT8 method: calibration, then quantization-aware distillation.
PT2E_QAT = "pt2e-qat"


class ExportError(SkinedgeError, RuntimeError):
    """An export could not be made, or was made but failed verification: the job ran and said
    no, so the CLI exits 1, as on a missed gate."""

    exit_code = 1
    http_status = 422

    files: list | tuple = ()  # what was written anyway (TensorRT: the ONNX and the trtexec script)
    report: Path | None = None  # the .export.json written for this attempt


class VerificationFailed(ExportError):
    """The artifact was exported but drifts from the checkpoint; ``result`` has the numbers and
    the artifact's place under ``rejected/``."""

    def __init__(self, message: str, result):
        super().__init__(message)
        self.result = result
        self.files = result.files
        self.report = result.report


@dataclass(frozen=True)
class Tolerance:
    """How far an artifact may drift from the source model on verification images.

    ``max_prob_diff``: largest absolute difference of any class probability on any image;
    ``max_mean_prob_diff``: mean absolute difference over images and classes;
    ``max_flip_rate``: share of images whose top-1 class differs.
    """

    max_prob_diff: float
    max_flip_rate: float
    max_mean_prob_diff: float = 1.0


# Defaults per precision. FP32 runtimes differ from torch only by kernel rounding; FP16 by half
# precision (about 3 decimal digits). INT8 is bounded on average and by flips, not per image:
# one borderline lesion may legitimately move, a broken calibration moves many.
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(max_prob_diff=1e-3, max_flip_rate=0.0),
    "fp16": Tolerance(max_prob_diff=2e-2, max_flip_rate=0.02),
    "int8": Tolerance(max_prob_diff=1.0, max_mean_prob_diff=0.05, max_flip_rate=0.05),
}


@dataclass
class ExportJob:
    """Everything an exporter needs. ``model`` is the source classifier (eval mode, CPU, fp32),
    its calibration temperature folded in: its outputs are the logits the card's probabilities
    are the softmax of."""

    model: nn.Module
    card: ModelCard
    source: str  # the checkpoint path as given
    precision: str
    workdir: Path  # empty folder: the exporter writes here, the caller moves the result
    stem: str  # file name without suffix
    calibration: Calibration | None  # INT8: training images and their provenance, else None
    options: ExportOptions  # quantizer, accuracy-control budget, overflow fix
    control: AccuracyControl | None = None  # qac: validation images and the float model's top-1
    batch_size: int = 1
    distill: ImageArrays | None = None  # pt2e-qat: the training split it is fine-tuned on
    log: Callable[[str], None] | None = None  # progress of long exports

    def qat(self, *, channels_last: bool = False):
        """The quantization-aware distillation of a ``pt2e-qat`` export
        (:class:`~skinedge.compress.pt2e.DistillQAT`), None for any other quantizer."""
        if self.options.quantizer != PT2E_QAT:
            return None
        if self.distill is None:
            raise ExportError(f"{self.stem}: pt2e-qat needs the training images it is "
                              f"fine-tuned on (export_checkpoint loads them)")
        from skinedge.compress.pt2e import DistillQAT

        return DistillQAT(self.distill.x, channels_last=channels_last,
                          epochs=self.options.qat_epochs, log=self.log)

    def qat_details(self, graph) -> dict[str, Any]:
        """The card details of a ``pt2e-qat`` graph: its ``qat`` record and ``variant`` ({}
        for any other graph)."""
        from skinedge.compress.pt2e import QAT_RECORD

        record = graph.meta.get(QAT_RECORD)
        if record is None:
            return {}
        return {"qat": {**record, "images_source": self.distill.source,
                        "images_sha256": self.distill.fingerprint,
                        "note": "fallback: post-training INT8 calibration, then fine-tuned"},
                "variant": PT2E_QAT}

    def card_for(self, artifact: ArtifactInfo) -> ModelCard:
        """The source card with the artifact's section and precision, sealed
        (:meth:`ModelCard.sealed`): every exporter embeds this card. A calibrated card's
        temperature is inside ``model`` (folded by ``export_checkpoint``), which the output's
        ``temperature`` records, so runtimes do not apply it twice."""
        if self.card.temperature != 1.0:
            output = artifact.output.model_copy(update={"temperature": self.card.temperature})
            artifact = artifact.model_copy(update={"output": output})
        return self.card.model_copy(
            update={"artifact": artifact, "precision": self.precision}).sealed()

    @property
    def calibration_info(self) -> dict[str, Any] | None:
        """The card's ``artifact.calibration`` section (None without calibration)."""
        return None if self.calibration is None else self.calibration.provenance()

    @property
    def example(self):
        import torch

        size = self.card.preprocess.input_size
        return torch.zeros(self.batch_size, 3, size, size)


@dataclass
class Exported:
    """What an exporter made: the main file (or package folder), every path it wrote, its card."""

    path: Path
    files: list[Path]
    card: ModelCard
    # INT8 made in torch (PT2E): per-layer SQNR against float, for the export report
    # (skinedge.compress.int8_diagnosis.layer_sqnr)
    int8_layers: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExportTarget:
    """A registered export format."""

    name: str
    suffix: str  # of the main file: .onnx, .xml, .tflite, .mlpackage, .engine
    extra: str  # pip extra needed to export (TensorRT: only ONNX; the engine is built on the device)
    requires: tuple[str, ...]  # the modules of that extra, checked without importing them
    precisions: tuple[str, ...]
    default_precision: str
    export: Callable[[ExportJob], Exported]
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    description: str = ""
    int8_extra: str | None = "quantize"  # INT8 calibration backend (NNCF), None: the target's own
    int8_requires: tuple[str, ...] = ("nncf", "onnx", "onnxscript", "onnxruntime")  # its modules
    int8_calibrated: bool = True  # False: INT8 weights only (Core ML), no calibration images
    quantizers: tuple[str, ...] = ()  # INT8 methods to choose from; the first is the default
    from_qat: bool = False  # exports INT8 checkpoints (NNCF quantization-aware training) as is
    # Raised when the exporter makes a different artifact from the same checkpoint and options
    # (a fixed quantizer): part of the pipeline's cache key, so a cached export of the old
    # exporter is made again, and only that export and what depends on it.
    revision: int = 1
    # Why this machine cannot run the exported artifact (None: it can). CoreML predicts on
    # macOS only; TensorRT needs its wheel and a CUDA GPU.
    runs_here: Callable[[], str | None] = lambda: None
    # Why files the exporter needs beyond Python modules are missing (None: they are here),
    # with how to get them: ONNX Runtime Web's files for the web page.
    assets_missing: Callable[[], str | None] = lambda: None

    def missing_backend(self, precision: str) -> str | None:
        """Why this machine cannot export ``precision`` (None: it can)."""
        problem = missing(self.requires, self.extra)
        if precision == "int8" and self.int8_extra:
            problem = problem or missing(self.int8_requires, self.int8_extra)
        return problem or self.assets_missing()

    def variant(self, quantizer: str | None) -> str | None:
        """The quantizer named in file names and labels: None for the default one."""
        return quantizer if quantizer and quantizer != (self.quantizers or (None,))[0] else None

    def tolerance(self, precision: str) -> Tolerance:
        return self.tolerances[precision]


TARGETS: dict[str, ExportTarget] = {}


def register_target(**spec) -> Callable[[Callable[[ExportJob], Exported]], Callable]:
    """Decorator: register the function as the exporter of a new target."""

    def wrap(fn: Callable[[ExportJob], Exported]) -> Callable[[ExportJob], Exported]:
        target = ExportTarget(export=fn, **spec)
        if target.name in TARGETS:
            raise ValueError(f"export target {target.name!r} is registered twice")
        bad = set(target.precisions) - set(PRECISIONS)
        if bad or target.default_precision not in target.precisions:
            raise ValueError(f"target {target.name}: bad precisions {target.precisions}")
        TARGETS[target.name] = target
        return fn

    return wrap


def get_target(name: str) -> ExportTarget:
    from skinedge.export import targets  # noqa: F401  (registers every built-in target)

    if name not in TARGETS:
        raise ConfigError(f"unknown export target {name!r}; choose one of {sorted(TARGETS)}")
    return TARGETS[name]
