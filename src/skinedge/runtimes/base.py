"""The inference contract every format implements: images in, class probabilities out.

Preprocessing is rebuilt from the model card with NumPy and PIL (no torch), so a photo gives the
same input on every runtime; the runtime only adapts layout (NCHW/NHWC), dtype (int8 inputs are
quantized with the tensor's scale and zero point) and batch size (static-shape artifacts run in
chunks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from pydantic import ValidationError

from skinedge.data.images import load_rgb
from skinedge.data.transforms import preprocess_image
from skinedge.errors import DataError, ModelError, SkinedgeError
from skinedge.models.card import ModelCard, TensorSpec, check_card_integrity
from skinedge.models.ood_score import NOT_A_LESION, ood_scores


@dataclass(frozen=True)
class Assessment:
    """What :meth:`Runtime.assess` answers for N images."""

    probabilities: np.ndarray  # (N, C), columns in card.classes order
    ood_scores: np.ndarray | None  # (N,), higher: less like a lesion; None: no check in the card
    lesion: np.ndarray  # (N,) bool: False: not a dermoscopic lesion image, no diagnosis

    def verdicts(self, classes: Sequence[str]) -> list[str]:
        """Per image, its top-1 class code, or :data:`NOT_A_LESION`."""
        return [classes[int(row.argmax())] if ok else NOT_A_LESION
                for row, ok in zip(self.probabilities, self.lesion, strict=True)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, in float64, stable for large values."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def artifact_label(card: ModelCard) -> str:
    """``target-precision[-variant]``, e.g. ``openvino-int8-qac``; ``torch-fp32`` for a checkpoint."""
    art = card.artifact
    if art is None:
        return f"torch-{card.precision}"
    variant = art.details.get("variant")
    return f"{art.target}-{art.precision}" + (f"-{variant}" if variant else "")


def card_from_json(text: str | bytes, path: Path | str) -> ModelCard:
    """Parse the card stored in an artifact and check its ``integrity``
    (:func:`~skinedge.models.card.check_card_integrity`: a card without one, exported before
    the check existed, loads with a warning).

    Raises:
        ModelError: a damaged card, or one edited in a field that decides predictions; the
            message names ``path``.
    """
    try:
        card = ModelCard.from_json(text)
    except ValidationError as exc:
        raise ModelError(f"{path}: its skinedge model card is not valid ({exc.error_count()} "
                         f"problems, first: {exc.errors()[0]['msg']}); export it again") from exc
    return check_card_integrity(card, path, fix="export it again with `skinedge export`")


@contextmanager
def unreadable_artifact(path: Path | str, backend: str) -> Iterator[None]:
    """Turn a backend's failure to read or compile ``path`` (a truncated or corrupted file:
    protobuf, flatbuffer or IR errors; or an operation or kernel this backend version lacks,
    found when the model is compiled) into a :class:`ModelError` naming the file and both
    causes; skinedge's own errors
    (:class:`~skinedge.errors.MissingBackendError` among them) pass through unchanged."""
    try:
        yield
    except SkinedgeError:
        raise
    except Exception as exc:  # each backend raises its own types for a damaged file
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelError(f"{path}: {backend} could not load it ({type(exc).__name__}: {detail}); "
                         f"the file may be truncated or corrupted, or use an operation this "
                         f"{backend} version lacks: export it again with `skinedge export`, or "
                         f"check the installed {backend} version") from exc


#: The metadata key under which ONNX, TFLite and Core ML artifacts carry their card.
CARD_KEY = "skinedge.card"


def embedded_card(text: str | bytes | None, path: Path | str, where: str) -> ModelCard:
    """The card an artifact carries in ``where`` (e.g. ``its 'skinedge.card' metadata``);
    ``text`` None means it carries none: not exported by skinedge, a :class:`ModelError`."""
    if text is None:
        raise ModelError(f"{path}: no skinedge card in {where}: not exported by skinedge, so its "
                         f"labels and preprocessing are unknown; export it with `skinedge export`")
    return card_from_json(text, path)


class Runtime(ABC):
    """A loaded model. Subclasses implement :meth:`_run` on one batch of the artifact's size.

    A backend is one module of this package with one subclass registered by
    :func:`skinedge.runtimes.registry.register_runtime`; its class attributes say what it loads.

    Attributes:
        backend: Registry name (``onnxruntime``, ``litert``, ...).
        suffixes: File suffixes it loads (``.onnx``); a backend with none overrides :meth:`handles`.
        extra: The pip extra that installs it (``runtime-onnx``).
        requires: Modules that extra provides, checked without importing them.
        exports: Export target -> the endings of the artifact file names it writes that this
            backend loads (``{"openvino": (".xml",)}``): ``skinedge export`` names its report
            ``<stem>.<target>.export.json`` for the artifact ``<stem><ending>``, so an
            unreadable report is blamed on exactly its own artifact.
        needs: What the machine must have beyond the packages: ``gpu`` (a CUDA GPU),
            ``macos``; tests that predict with the backend carry these words as markers.
        path: The artifact (or checkpoint folder).
        card: Its model card (``card.artifact`` is None for a torch checkpoint).
        threads: Intra-op threads the backend was told to use (None: backend default).
    """

    backend: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    exports: ClassVar[dict[str, tuple[str, ...]]] = {}
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
        self.path = Path(path)
        self.card = card
        self.threads = threads

    @staticmethod
    @abstractmethod
    def read_card(path: Path) -> ModelCard:
        """The artifact's model card, read without loading the model.

        Raises:
            ModelError: the artifact carries no skinedge card, or a damaged one.
        """

    @classmethod
    def handles(cls, path: Path) -> bool:
        """Whether ``path`` (an existing file or folder) is this backend's format."""
        return path.suffix in cls.suffixes

    @classmethod
    def artifact_files(cls, path: Path) -> list[Path]:
        """The files (or package folders) the artifact at ``path`` is made of, which
        :func:`~skinedge.runtimes.registry.check_artifact_files` checks against the export
        report beside them; a backend whose model spans files (OpenVINO's ``.bin``, TensorRT's
        card sidecar) adds them."""
        return [Path(path)]

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> Runtime:
        """Load ``path`` with its card. A backend whose card reader would open the model a
        second time (ONNX Runtime without ``onnx``) overrides this to open it once."""
        return cls(path, cls.read_card(path), threads)

    @property
    def label(self) -> str:
        """``target-precision``, e.g. ``openvino-int8``; ``torch-fp32`` for a checkpoint."""
        return artifact_label(self.card)

    @property
    def batch_size(self) -> int | None:
        """The artifact's static batch size; None when any batch works."""
        return self.card.artifact.input.shape[0] if self.card.artifact else None

    def preprocess(self, images: Sequence[Image.Image | str | Path]) -> np.ndarray:
        """Images (PIL or paths) -> (N, 3, S, S) float32 with the card's preprocessing."""
        arrays = []
        for image in images:
            if not isinstance(image, Image.Image):
                image = load_rgb(Path(image))
            arrays.append(preprocess_image(image, self.card.preprocess))
        return np.stack(arrays)  # float32, as preprocess_image returns

    def predict(self, images: Sequence[Image.Image | str | Path]) -> np.ndarray:
        """Class probabilities (N, C), columns in ``card.classes`` order."""
        return self.predict_array(self.preprocess(images))

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) float64 for preprocessed images (N, 3, S, S) float32."""
        return softmax(self._calibrated_logits(self._outputs(x)))

    def assess(self, images: Sequence[Image.Image | str | Path]) -> Assessment:
        """Probabilities and the card's lesion check for images (PIL or paths)."""
        return self.assess_array(self.preprocess(images))

    def assess_array(self, x: np.ndarray) -> Assessment:
        """Probabilities (N, C) and, where the card carries a lesion check
        (:mod:`skinedge.evaluate.ood`), which images are not dermoscopic lesion images: for
        those, the probabilities are no diagnosis.

        Raises:
            ModelError: the check needs logits (``energy``) and the artifact gives
                probabilities, which have lost the scale it reads.
        """
        self.check_lesion_check()
        z = self._calibrated_logits(self._outputs(x))
        check = self.card.ood
        if check is None:
            return Assessment(softmax(z), None, np.ones(len(z), dtype=bool))
        scores = ood_scores(z, 1.0, check.method)
        return Assessment(softmax(z), scores, scores <= check.threshold)

    def check_lesion_check(self) -> None:
        """Raise ModelError where the card's lesion check cannot be computed from this
        artifact's outputs (an energy check on an artifact that outputs probabilities): for
        a service to refuse to start rather than fail on every image."""
        check, output = self.card.ood, self.card.artifact.output if self.card.artifact else None
        if (check is not None and check.method == "energy" and output is not None
                and output.kind == "probabilities"):
            raise ModelError(f"{self.path}: its card's lesion check scores energy, which needs "
                             "the logits; this artifact outputs probabilities. Use a target "
                             "that outputs logits, or predict() without the check")

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs (N, C) float64 of preprocessed images, in the artifact's batch size."""
        x = np.asarray(x, dtype=np.float32)
        size = self.card.preprocess.input_size
        if x.ndim != 4 or x.shape[1:] != (3, size, size):
            raise DataError(f"{self.path}: expected images of shape (N, 3, {size}, {size}), "
                             f"got {x.shape}")
        step = self.batch_size or len(x)
        outputs = []
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            n = len(chunk)
            if n < step:  # static batch: pad, then drop the padding's outputs
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            outputs.append(np.asarray(self._run(chunk))[:n])
        return np.concatenate(outputs).astype(np.float64)

    def _calibrated_logits(self, raw: np.ndarray) -> np.ndarray:
        """The logits divided by the card's temperature (for artifacts that output
        probabilities, their logs: the same up to a shift per row, which softmax ignores)."""
        output = self.card.artifact.output if self.card.artifact else None
        if output is not None and output.kind == "probabilities":
            raw = np.log(np.maximum(raw, 1e-300))
        return raw / self.temperature

    @property
    def temperature(self) -> float:
        """What the raw outputs are still to be divided by: the card's calibration temperature,
        or 1 where the export folded it into the graph (``artifact.output.temperature``)."""
        output = self.card.artifact.output if self.card.artifact else None
        if output is not None and output.temperature is not None:
            return self.card.temperature / output.temperature
        return self.card.temperature

    @abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs (logits or probabilities, as the card says) for one batch."""

    def execution(self) -> dict[str, Any]:
        """How the backend chose to run this model on this machine, for reports (JSON values):
        ONNX Runtime's ``provider``, OpenVINO's ``inference_precision`` and kernels, LiteRT's
        ``xnnpack`` delegate. Empty when the backend says nothing; never raises (a backend
        that cannot say gives ``{"error": ...}``)."""
        try:
            return dict(self._execution())
        except Exception as exc:  # noqa: BLE001 - a report must not fail over this
            return {"error": f"{type(exc).__name__}: {exc}"[:300]}

    def _execution(self) -> dict[str, Any]:
        """What :meth:`execution` returns; backends override it."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources."""


def quantize_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float input -> the int8/uint8 tensor a full-integer model expects."""
    if spec.dtype not in ("int8", "uint8"):
        return x.astype(spec.dtype)
    info = np.iinfo(spec.dtype)
    q = np.round(x / spec.scale) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize_output(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """An int8/uint8 output tensor -> float32 (``scale * (q - zero_point)``); floats as float32."""
    if spec.dtype not in ("int8", "uint8"):
        return y.astype(np.float32)
    return (y.astype(np.float32) - spec.zero_point) * spec.scale
