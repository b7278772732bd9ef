"""What the API sends and receives (its OpenAPI schema is built from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class Problem(BaseModel):
    detail: str = Field(description="What was wrong and what to do.")


class Me(BaseModel):
    name: str
    role: Literal["clinician", "admin"]


class ClassInfo(BaseModel):
    code: str
    name: str
    malignant: bool


class ModelInfo(BaseModel):
    name: str
    architecture: str
    label: str = Field(description="Format and precision, e.g. openvino-int8.")
    classes: list[ClassInfo]
    card_sha256: str = Field(description="The model card's integrity seal.")
    created: str
    intended_use: str
    explain: bool = Field(description="Whether Grad-CAM overlays are available.")
    input_size: int
    resize_mode: str = Field(description="How the model sees the image: crop (centre square) "
                             "or squash; the overlay covers the same region.")
    malignant_threshold: float
    temperature: float = Field(description="The calibration temperature the probabilities are "
                               "scaled by (1: uncalibrated).")
    lesion_check: bool = Field(description="Whether the model refuses images that are not "
                               "dermoscopic lesion images (its card's lesion check).")
    registry_version: str | None = Field(None, description="The model registry version "
                                         "served (none: a model given by path).")
    deployment: str | None = Field(None, description="The registry deployment served.")


class ClassProbability(BaseModel):
    code: str
    name: str
    probability: float
    malignant: bool


class CaseModel(BaseModel):
    label: str
    architecture: str
    card_sha256: str


class ImageSize(BaseModel):
    width: int
    height: int


class Review(BaseModel):
    action: Literal["verify", "correct"]
    label: str
    note: str | None
    reviewed_at: datetime
    reviewer: str | None


class Case(BaseModel):
    id: str
    created_at: datetime
    status: Literal["unreviewed", "verified", "corrected"]
    probabilities: list[ClassProbability] = Field(description="Every class, highest first.")
    top_k: list[str]
    prediction: str
    malignant: bool = Field(description="Top class malignant, or the malignant classes' "
                            "probabilities adding up to the model's malignant_threshold.")
    malignant_probability: float
    model: CaseModel
    latency_ms: float = Field(description="Inference time alone.")
    lesion_image: bool = Field(description="False: the model card's lesion check found this "
                               "not to be a dermoscopic lesion image; the probabilities are no "
                               "diagnosis (retake it with the dermatoscope).")
    ood_score: float | None = Field(description="The lesion check's score (higher: less like "
                                    "a lesion); null where the model has no check.")
    image: ImageSize
    patient_ref: str | None
    body_site: str | None
    review: Review | None


class CasePage(BaseModel):
    items: list[Case]
    page: int
    per_page: int
    total: int


class ReviewIn(BaseModel):
    model_config = {"extra": "forbid"}

    action: Literal["verify", "correct"]
    label: str | None = Field(None, pattern=r"^[a-z0-9_]{1,32}$", description="The right "
                              "class code; required to correct.")
    note: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _label_to_correct(self) -> ReviewIn:
        if self.action == "correct" and not self.label:
            raise ValueError("a correction needs the right class in `label`")
        return self


class AuditRow(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    case_id: str | None
    address: str | None
    outcome: str
    detail: str | None


class AuditPage(BaseModel):
    items: list[AuditRow]
    page: int
    per_page: int
    total: int


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: str | None = None
    registry_version: str | None = None
    deployment: str | None = None
