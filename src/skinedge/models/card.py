"""The model card that travels with every checkpoint and (later) every exported artifact."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from skinedge.data.transforms import PreprocessConfig
from skinedge.errors import ModelError, NotFoundError

CARD_SCHEMA = "skinedge.model-card/1"
CARD = "card.json"  # the card's file name in a checkpoint folder


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
    created: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


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
    data: DataInfo = Field(default_factory=DataInfo)
    metrics: dict[str, Any] = Field(default_factory=dict)  # validation metrics of this checkpoint
    training: dict[str, Any] = Field(default_factory=dict)  # epoch, resolved config
    versions: dict[str, str] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    artifact: ArtifactInfo | None = None  # set in exported artifacts, None in checkpoints
    members: list[EnsembleMember] | None = None  # set in ensemble checkpoints
    intended_use: str = (
        "Decision support for trained clinicians on dermoscopic images of skin lesions; "
        "not a diagnosis, not validated for clinical use."
    )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        return cls.model_validate_json(text)


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

    Raises:
        NotFoundError: not a checkpoint folder.
        ModelError: the card is not valid JSON or not a model card.
    """
    file = checkpoint_dir(Path(path)) / CARD
    try:
        return ModelCard.from_json(file.read_text())
    except ValidationError as exc:
        raise ModelError(f"{file}: not a valid model card ({exc.error_count()} problem(s)):\n"
                         f"{exc}\nrestore it from the training run") from exc
