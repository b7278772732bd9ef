"""The typed records an export takes and gives: its options, its calibration and accuracy-control
images, and the verification of the artifact it made.

``ExportOptions`` is what a caller chooses; ``Calibration`` and ``AccuracyControl`` are what
``export_checkpoint`` prepares for the target's exporter; ``VerificationResult`` is what it
measured, written to ``<stem>.<target>.export.json`` by :meth:`VerificationResult.to_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np

from skinedge.compress.pt2e import QAT_EPOCHS
from skinedge.compress.quantize import OverflowFix
from skinedge.errors import ConfigError
from skinedge.export.base import Tolerance

#: A quantization-aware trained checkpoint is exported as it is: the one INT8 method every
#: target that can carry NNCF's quantizers (``ExportTarget.from_qat``) takes.
QAT = "qat"
VerificationStatus = Literal["passed", "failed", "skipped", "not built"]


def known_quantizers() -> tuple[str, ...]:
    """Every INT8 method some registered target offers (TFLite ``pt2e``/``aeq``, OpenVINO
    ``ptq``/``qac``, ...), and ``qat``.

    The words are data on each target (``ExportTarget.quantizers``), not a fixed Literal here,
    so that a new target with its own method is still one file.
    """
    from skinedge.export import targets  # noqa: F401  (registers the built-in targets)
    from skinedge.export.base import TARGETS

    words = sorted({q for target in TARGETS.values() for q in target.quantizers})
    return tuple(dict.fromkeys([*words, QAT]))


def check_export_choice(target: str, precision: str | None = None,
                        quantizer: str | None = None) -> str:
    """Refuse a target, precision or quantizer that no registered target offers, before any
    export or measurement starts (``export_checkpoint`` checks the same once it runs).

    Args:
        target: A registered target's name (``onnx``).
        precision: One of the target's precisions; None: its default (int8 for ``qat``).
        quantizer: One of the target's INT8 methods (or ``qat``); None: its default.

    Returns:
        The precision the export will have (the target's default when ``precision`` is None).

    Raises:
        ConfigError: an unknown target, a precision the target does not export, a quantizer it
            does not offer, or a quantizer with a precision other than int8; the message lists
            what the target takes.
    """
    from skinedge.export import targets  # noqa: F401  (registers the built-in targets)
    from skinedge.export.base import PRECISIONS, TARGETS

    spec = TARGETS.get(target)
    if spec is None:
        raise ConfigError(f"unknown export target {target!r}; choose one of "
                          f"{', '.join(sorted(TARGETS))}")
    # A QAT checkpoint is exported at int8, the precision it was trained at.
    chosen = precision or ("int8" if quantizer == QAT else spec.default_precision)
    if chosen not in PRECISIONS:
        raise ConfigError(f"{chosen!r} is not a precision (they are {', '.join(PRECISIONS)}); "
                          f"target {target} exports {', '.join(spec.precisions)}")
    if chosen not in spec.precisions:
        raise ConfigError(f"target {target} exports {', '.join(spec.precisions)}, not {chosen}")
    if quantizer is not None:
        qat = "qat only for a checkpoint made by `skinedge compress quantize --mode qat`"
        if quantizer not in (*spec.quantizers, QAT):
            if spec.quantizers:
                raise ConfigError(f"target {target} has no quantizer {quantizer!r}; choose one "
                                  f"of {', '.join(spec.quantizers)}, or leave it out for "
                                  f"{spec.quantizers[0]} ({qat})")
            raise ConfigError(f"target {target} has no quantizer {quantizer!r}: it has one INT8 "
                              f"method, so leave the quantizer out ({qat})")
        if chosen != "int8":
            raise ConfigError(f"a quantizer ({quantizer}) only applies to int8, not {chosen}")
    return chosen


def calibrates_int8(target: str, precision: str | None = None, quantizer: str | None = None,
                    *, source_precision: str | None = None) -> bool:
    """Whether an export calibrates INT8 on training images (and so needs at least one);
    these are also the exports that ``ExportOptions.float_first`` shapes.

    Only INT8 through a target whose INT8 is calibrated (``ExportTarget.int8_calibrated``;
    Core ML quantizes weights alone) calibrates; a quantization-aware trained checkpoint
    (quantizer ``qat``, or a card of precision ``int8``) is exported as it is, uncalibrated.

    Args:
        target: A registered target's name.
        precision: As for :func:`check_export_choice` (None: the target's default).
        quantizer: As for :func:`check_export_choice`.
        source_precision: The checkpoint card's ``precision`` when known (``int8``: QAT).

    Raises:
        ConfigError: what :func:`check_export_choice` refuses.
    """
    from skinedge.export.base import TARGETS

    chosen = check_export_choice(target, precision, quantizer)
    return (chosen == "int8" and TARGETS[target].int8_calibrated and quantizer != QAT
            and source_precision != "int8")


def _choice(name: str, value: object, allowed: tuple, *, optional: bool = False) -> None:
    if value not in allowed and not (optional and value is None):
        raise ConfigError(f"{name} {value!r}: choose one of {', '.join(allowed)}")


#: Leading convolutions that calibrated INT8 leaves in float by default (PT2E and aeq also keep
#: the classifier float, so the model takes float input and gives float logits, as NNCF's models do
#: and MediaPipe Tasks require): on EfficientNet-Lite0 the stem and block 0's depthwise and
#: pointwise convolutions (at 112 x 112, a few percent of the multiply-adds), which see the
#: image's colour and carried most of its INT8 error. On the quickstart Lite0 (HAM10000 test
#: split; docs/RESULTS.md, ``bench-lite0-int8-float0`` against ``bench-lite0-targets``) top-1
#: flips against FP32 fell from 5.7% to 2.4% (ONNX), 5.9% to 1.3% (OpenVINO), 5.1% to 3.5%
#: (TFLite) and 5.1% to 3.2% (ExecuTorch). 0 gives full-integer models (a TFLite file with
#: int8 input and output, as microcontrollers and some NPUs need).
FLOAT_FIRST = 3


@dataclass(frozen=True)
class ExportOptions:
    """How to export, beyond the target and precision.

    Attributes:
        quantizer: INT8 method, one of :func:`known_quantizers` (which ones a target takes is
            its ``quantizers``, checked by ``export_checkpoint``); None: the target's default.
        max_drop: ``qac``: allowed drop of top-1 agreement with the float model (absolute).
        max_control: ``qac``: validation images it is tuned on, disjoint from verification.
        overflow_fix: ONNX/OpenVINO INT8, see
            :func:`skinedge.compress.quantize.resolve_overflow_fix`.
        float_first: Calibrated INT8 (NNCF, PT2E, ai-edge-quantizer): the first
            convolutions, with their norm and activation, left in float (:data:`FLOAT_FIRST`).
        qat_epochs: ``pt2e-qat``: epochs of quantization-aware distillation over the whole
            training split (:class:`skinedge.compress.pt2e.DistillQAT`).
    """

    quantizer: str | None = None
    max_drop: float = 0.01
    max_control: int = 200
    overflow_fix: OverflowFix = "auto"
    float_first: int = FLOAT_FIRST
    qat_epochs: int = QAT_EPOCHS

    def __post_init__(self) -> None:
        _choice("quantizer", self.quantizer, known_quantizers(), optional=True)
        _choice("overflow_fix", self.overflow_fix, get_args(OverflowFix))
        if not 0 <= self.max_drop <= 1:
            raise ConfigError(f"max_drop {self.max_drop}: a drop of top-1 agreement, "
                              "between 0 and 1")
        if self.float_first < 0:
            raise ConfigError(f"float_first {self.float_first}: a number of leading "
                              "convolutions to keep in float (0: none)")
        if self.qat_epochs < 1:
            raise ConfigError(f"qat_epochs {self.qat_epochs}: at least one epoch of "
                              "quantization-aware distillation")
        if self.max_control < 1:
            raise ConfigError(f"max_control {self.max_control}: at least one validation image")


@dataclass(frozen=True, eq=False)
class Calibration:
    """INT8 calibration images and where they came from (the artifact's card records it).

    Attributes:
        images: (N, 3, S, S) float32 training images, preprocessed as the card says.
        source: The split they were drawn from, ``manifest.json:train``.
        images_sha256: sha256 of the image list (which images, not their pixels).
        manifest_split_hash: The manifest's split hash.
    """

    images: np.ndarray
    source: str
    images_sha256: str
    manifest_split_hash: str

    def __len__(self) -> int:
        return len(self.images)

    def provenance(self) -> dict[str, Any]:
        """The card's ``artifact.calibration`` section."""
        return {"split": self.source, "images": len(self), "images_sha256": self.images_sha256,
                "manifest_split_hash": self.manifest_split_hash}


@dataclass(frozen=True, eq=False)
class AccuracyControl:
    """What NNCF's accuracy control (``qac``) is tuned on.

    Attributes:
        images: (M, 3, S, S) validation images, none of them used by the verification.
        float_top1: (M,) the float model's top-1 class on each.
    """

    images: np.ndarray
    float_top1: np.ndarray


_MEASURES = ("max_prob_diff", "mean_prob_diff", "flips", "flip_rate", "accuracy_reference",
             "accuracy_artifact")


@dataclass(frozen=True)
class VerificationResult:
    """The artifact, reloaded through its runtime, against the checkpoint on validation images.

    ``skipped``: not verified here (``reason`` says why); ``not built``: the exporter made no
    artifact. The figures are None unless the artifact ran (``measured``).

    Attributes:
        images: Validation images compared (0 when skipped, None when not built).
        source: Where they came from, ``manifest.json:val``.
        max_prob_diff: Largest absolute difference of any class probability on any image.
        mean_prob_diff: Mean absolute difference over images and classes.
        flips: Images whose top-1 class differs; ``flip_rate``: their share.
        accuracy_reference: Top-1 accuracy of the checkpoint; ``accuracy_artifact``: of the
            artifact, on the same images.
        tolerance: The bounds it was held to.
    """

    status: VerificationStatus
    reason: str = ""
    images: int | None = None
    source: str | None = None
    max_prob_diff: float | None = None
    mean_prob_diff: float | None = None
    flips: int | None = None
    flip_rate: float | None = None
    accuracy_reference: float | None = None
    accuracy_artifact: float | None = None
    tolerance: Tolerance | None = None

    def __post_init__(self) -> None:
        # Set by export_checkpoint, or read from a report (whose reader names the file): an
        # internal check, not a user's option.
        if self.status not in get_args(VerificationStatus):
            raise ValueError(f"verification status {self.status!r}: not one of "
                             f"{get_args(VerificationStatus)}")

    @property
    def measured(self) -> bool:
        return self.max_prob_diff is not None

    def to_dict(self) -> dict[str, Any]:
        """The report's ``verification`` section (keys as the export reports have them)."""
        if not self.measured:
            doc: dict[str, Any] = {"status": self.status, "reason": self.reason}
            return doc if self.images is None else {**doc, "images": self.images}
        return {"images": self.images, "source": self.source,
                **{key: getattr(self, key) for key in _MEASURES},
                "tolerance": None if self.tolerance is None else asdict(self.tolerance),
                "status": self.status, "reason": self.reason}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> VerificationResult:
        """Read a report's ``verification`` section back (reports from before the mean bound
        existed read as bounded by 1.0, the default that applied to them)."""
        doc = dict(doc)
        if doc.get("tolerance") is not None:
            doc["tolerance"] = Tolerance(**doc["tolerance"])
        unknown = set(doc) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"verification report with unknown keys {sorted(unknown)}")
        return cls(**doc)
