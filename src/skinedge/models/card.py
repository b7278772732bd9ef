"""The model card that travels with every checkpoint and (later) every exported artifact.

A card is sealed (:meth:`ModelCard.sealed`): ``integrity`` is the sha256 of the fields that
decide predictions (:data:`INTEGRITY_FIELDS`), so an edited label order, input size or
normalisation is refused on load (:func:`check_card_integrity`) instead of silently changing
results. Metrics, notes, data provenance and versions sit outside the hash and may be edited.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from skinedge.data.transforms import PreprocessConfig
from skinedge.errors import ModelError, NotFoundError
from skinedge.utils.io import atomic_write_text
from skinedge.utils.provenance import created_time

CARD_SCHEMA = "skinedge.model-card/2"  # what every writer stores: a sealed card
#: Cards written before ``integrity`` existed: they load with a warning when it is missing.
CARD_SCHEMA_UNSEALED = "skinedge.model-card/1"
CARD_SCHEMAS = (CARD_SCHEMA_UNSEALED, CARD_SCHEMA)
CARD = "card.json"  # the card's file name in a checkpoint folder

#: The fields ``integrity`` covers (``a.b``: key ``b`` of the object ``a``, or of each item of
#: the list ``a``): everything that decides what a model predicts and how its
#: outputs are read (for ensembles the members' paths, architectures and weight hashes; for
#: artifacts the target, precision and the input/output tensor specs).
INTEGRITY_FIELDS = (
    "architecture", "classes", "class_names", "vocabulary", "positive_class", "preprocess",
    "drop_rate", "precision", "weights_sha256", "temperature", "ood.method", "ood.threshold",
    "members", "training.quantization",
    "artifact.target", "artifact.precision", "artifact.input", "artifact.output",
    "members.path", "members.architecture", "members.weights_sha256",
)



class DataInfo(BaseModel):
    """Which data a model was trained on."""

    model_config = ConfigDict(extra="forbid")

    manifest: str | None = None  # path of the split manifest, as given
    split_hash: str | None = None  # Manifest.split_hash: the same split on any machine
    layout: str | None = None
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)  # split -> class -> images
    licence: str = "unknown"


class TensorSpec(BaseModel):
    """One input or output of an exported artifact."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int]
    layout: str  # NCHW, NHWC (image inputs) or NC (class scores)
    dtype: str  # float32, float16, int8, uint8, or "image" (CoreML image input)
    scale: float | None = None  # int8 tensors: real = scale * (q - zero_point)
    zero_point: int | None = None
    kind: str | None = None  # outputs: "logits" or "probabilities"
    # outputs: the card's temperature, already inside the graph (folded into the classifier
    # at export), so runtimes do not divide by it again; None: raw logits
    temperature: float | None = None


class LesionCheck(BaseModel):
    """The out-of-distribution check (:mod:`skinedge.evaluate.ood`): an image whose score
    (``method`` on the calibrated logits) is above ``threshold`` is reported as not a
    dermoscopic lesion image instead of a diagnosis."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["energy", "msp"]
    threshold: float
    fit: dict[str, Any] = Field(default_factory=dict)  # rates on what it was chosen on


class ArtifactInfo(BaseModel):
    """What an exported file is, and how it was made: present only in artifacts' cards."""

    model_config = ConfigDict(extra="forbid")

    target: str  # onnx, openvino, tflite, coreml, tensorrt
    precision: str  # fp32, fp16, int8
    source_checkpoint: str  # path as given at export time
    source_weights_sha256: str | None  # the checkpoint's weights: ties the artifact to them
    input: TensorSpec
    output: TensorSpec
    calibration: dict[str, Any] | None = None  # int8: split, images, sha256 of the image list
    details: dict[str, Any] = Field(default_factory=dict)  # opset, quantizer, TensorRT version, GPU
    versions: dict[str, str] = Field(default_factory=dict)  # exporter packages
    created: str = Field(default_factory=created_time)


class EnsembleMember(BaseModel):
    """One member of an ensemble checkpoint: a checkpoint folder inside the ensemble's folder."""

    model_config = ConfigDict(extra="forbid")

    path: str  # relative to the ensemble folder, e.g. members/00
    architecture: str
    weights_sha256: str | None
    source: str  # where the member was copied from, as given
    metrics: dict[str, Any] = Field(default_factory=dict)  # the member's own validation metrics


class ModelCard(BaseModel):
    """Everything needed to use a classifier correctly, and to know where it came from.

    Runtimes rebuild preprocessing from ``preprocess``; labels are ``classes`` in output order.
    """

    model_config = ConfigDict(extra="forbid")

    schema_: str = Field(CARD_SCHEMA, alias="schema")
    architecture: str
    classes: list[str]
    class_names: dict[str, str]
    vocabulary: str
    positive_class: str | None = "mel"
    preprocess: PreprocessConfig
    drop_rate: float = 0.0
    pretrained: str = "none"
    precision: str = "fp32"
    weights_sha256: str | None = None
    # Probabilities are softmax(logits / temperature): fitted on the validation split
    # (skinedge.evaluate.calibration), applied by every runtime, folded into every export.
    temperature: float = Field(1.0, gt=0)
    calibration: dict[str, Any] | None = None  # the fit: split, images, NLL and ECE before/after
    ood: LesionCheck | None = None  # refuses what is not a lesion; None: no check fitted
    data: DataInfo = Field(default_factory=DataInfo)
    metrics: dict[str, Any] = Field(default_factory=dict)  # validation metrics of this checkpoint
    training: dict[str, Any] = Field(default_factory=dict)  # epoch, resolved config
    versions: dict[str, str] = Field(default_factory=dict)
    created: str = Field(default_factory=created_time)
    artifact: ArtifactInfo | None = None  # set in exported artifacts, None in checkpoints
    members: list[EnsembleMember] | None = None  # set in ensemble checkpoints
    intended_use: str = (
        "Decision support for trained clinicians on dermoscopic images of skin lesions; "
        "not a diagnosis, not validated for clinical use."
    )
    # sha256 over INTEGRITY_FIELDS (see compute_integrity); None in cards written before it.
    integrity: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def compute_integrity(self) -> str:
        """sha256 of a canonical JSON (sorted keys, no spaces) of :data:`INTEGRITY_FIELDS`,
        taken from the card's own JSON form, so a card hashes the same before and after a
        save and load.

        Values equal to their field's default are left out of the hash, so that a field added
        to the card (or to ``PreprocessConfig``) later, with a default that keeps today's
        behaviour, does not invalidate every card sealed before it. Changing a value, to or
        from its default, still changes the hash; so does setting a field to an explicit null
        where it was absent (its default), since only keys present in the JSON are hashed."""
        doc = json.loads(self.model_dump_json(by_alias=True, exclude_defaults=True))
        fields = _select_fields(doc, INTEGRITY_FIELDS)
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def sealed(self) -> ModelCard:
        """A copy with ``integrity`` set: what every writer of a card stores."""
        return self.model_copy(update={"schema_": CARD_SCHEMA,
                                       "integrity": self.compute_integrity()})

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        return cls.model_validate_json(text)


def _select_fields(doc: dict, fields: tuple[str, ...] | list[str]) -> dict:
    """The keys of ``doc`` named in ``fields`` that are present in it (``a.b`` selects key
    ``b`` inside the object ``a``, or inside each item of the list ``a``); an absent key stays
    absent, so it hashes differently from an explicit null."""
    selected: dict[str, Any] = {}
    nested: dict[str, list[str]] = {}
    for field in fields:
        head, _, rest = field.partition(".")
        if rest:
            nested.setdefault(head, []).append(rest)
        elif head in doc:
            selected[head] = doc[head]
    for head, keys in nested.items():
        if head not in doc:
            continue
        value = doc[head]
        if isinstance(value, list):
            selected[head] = [_select_fields(item, keys) if isinstance(item, dict) else item
                              for item in value]
        elif isinstance(value, dict):
            inner = _select_fields(value, keys)
            if inner:  # e.g. training with an epoch but no quantization: hashes as no training
                selected[head] = inner
        else:
            selected[head] = value
    return selected


def check_card_integrity(card: ModelCard, where: Path | str, *,
                         fix: str = "restore card.json from the training run") -> ModelCard:
    """Return ``card`` if its ``integrity`` matches its fields; ``where`` names its file.

    A card of schema :data:`CARD_SCHEMA_UNSEALED` with no ``integrity`` (written before
    integrity checks existed) is accepted with a ``UserWarning`` that names the file and how
    to seal it (:func:`seal_card_file` for a checkpoint; exporting again for an artifact).

    Raises:
        ModelError: an unknown ``schema``; a :data:`CARD_SCHEMA` card without ``integrity``
            (it was deleted); a field that decides predictions was changed after the card
            was written.
    """
    if card.schema_ not in CARD_SCHEMAS:
        raise ModelError(f"{where}: unknown model card schema {card.schema_!r} (this skinedge "
                         f"reads {' and '.join(repr(s) for s in CARD_SCHEMAS)}); {fix}, or "
                         "upgrade skinedge if a newer version wrote it")
    if card.integrity is None and card.schema_ == CARD_SCHEMA:
        raise ModelError(f"{where}: the model card has no 'integrity' hash, which every "
                         f"{CARD_SCHEMA!r} card carries: it was removed after the card was "
                         f"written, so edits to its classes or preprocessing cannot be "
                         f"detected; {fix}")
    if card.integrity is None:
        warnings.warn(f"{where}: model card written before integrity checks (no 'integrity' "
                      f"field), so edits to its classes or preprocessing cannot be detected; "
                      f"re-save it: a checkpoint, after checking it, with python -c \"from "
                      f"skinedge.models.card import seal_card_file; seal_card_file('{where}')\"; "
                      f"an artifact by exporting it again with `skinedge export`", UserWarning,
                      stacklevel=2)
        return card
    if card.integrity != card.compute_integrity():
        raise ModelError(f"{where}: the model card was changed after it was written: its "
                         f"'integrity' hash does not match the fields that decide predictions "
                         f"({', '.join(INTEGRITY_FIELDS)}); {fix}. Cards are not meant to be "
                         f"edited: only fields outside the hash (metrics, data, versions, "
                         f"intended_use, training other than its quantization) may be edited")
    return card


def seal_card_file(path: Path | str) -> Path:
    """Seal the card of a checkpoint folder in place (one written before integrity checks, or
    one edited on purpose): its current fields become the ones checked on load."""
    file = checkpoint_dir(Path(path)) / CARD
    card = _parse_card(file)
    return atomic_write_text(file, card.sealed().to_json())


def checkpoint_dir(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not (path / CARD).is_file():
        # A kill between the two renames of save_checkpoint leaves only the .old copy.
        old = path.parent / f".{path.name}.old"
        if (old / CARD).is_file():
            return old
        raise NotFoundError(
            f"{path} is not a skinedge checkpoint (no {CARD}); pass a folder written by "
            "`skinedge train`, e.g. runs/NAME/best"
        )
    return path


def load_card(path: Path | str) -> ModelCard:
    """The model card of a checkpoint folder (or of a file inside it).

    The card's ``integrity`` is checked (:func:`check_card_integrity`); a card without one
    (written before the check existed) loads with a warning.

    Raises:
        NotFoundError: not a checkpoint folder.
        ModelError: the card is not valid JSON, not a model card, or was edited in a field
            that decides predictions.
    """
    file = checkpoint_dir(Path(path)) / CARD
    card = _parse_card(file)
    fix = ("recreate the ensemble with `skinedge ensemble create`" if card.members
           else "restore card.json from the training run")
    return check_card_integrity(card, file, fix=fix)


def _parse_card(file: Path) -> ModelCard:
    try:
        return ModelCard.from_json(file.read_text())
    except UnicodeDecodeError as exc:
        raise ModelError(f"{file}: not a model card (not UTF-8 text: {exc.reason}); restore it "
                         "from the training run") from exc
    except ValidationError as exc:
        raise ModelError(f"{file}: not a valid model card ({exc.error_count()} problem(s)):\n"
                         f"{exc}\nrestore it from the training run") from exc


def resolve_manifest(manifest: Path | str | None, card: ModelCard, checkpoint: Path) -> Path:
    """``manifest`` if given, else the split manifest the card records, else a run folder's
    ``manifest.json`` beside the checkpoint's run (quickstart layout).

    Raises:
        NotFoundError: none of them is a file.
    """
    if manifest is not None:
        return Path(manifest)
    recorded = card.data.manifest
    candidates = [Path(recorded)] if recorded else []
    # A run folder keeps its manifest beside train/ (quickstart layout): runs/NAME/manifest.json.
    candidates += [p / "manifest.json" for p in checkpoint.resolve().parents[:3]]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise NotFoundError(
        f"{checkpoint}: this needs the model's own images (export: calibration from the "
        f"training split and verification on the validation split; calibrate: the validation "
        f"split) but the model's manifest {recorded or '(none recorded)'} is not here: pass "
        f"--manifest PATH")
