"""The ``/api/v1`` routes. Each is a thin door: check, call the model or the store, shape the
answer. Routes are plain ``def``: FastAPI runs them in its thread pool, where inference and
database work may block."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile

from skinedge.data.images import load_rgb_oriented, metadata_free
from skinedge.errors import NotFoundError
from skinedge.service import schemas
from skinedge.service.auth import AdminActor, CurrentActor
from skinedge.service.models import ServedModel
from skinedge.service.settings import MALIGNANT_CODES
from skinedge.service.store import CaseView, Store

PNG = {200: {"content": {"image/png": {}}, "description": "A PNG image."}}
_ERRORS = {status: {"model": schemas.Problem} for status in (400, 401, 404, 413, 422, 429, 503)}
#: A class code as the model card writes them (mel, akiec, benign).
CLASS_CODE = r"^[a-z0-9_]{1,32}$"

#: Seconds an upload waits for a free slot (max_concurrent_uploads) before a 503.
UPLOAD_WAIT_S = 60

router = APIRouter(prefix="/api/v1", responses=_ERRORS)


def _store(request: Request) -> Store:
    return request.app.state.store


def _model(request: Request) -> ServedModel:
    return request.app.state.model


def case_out(view: CaseView, model: ServedModel) -> schemas.Case:
    ranked = sorted(zip(view.classes, view.probabilities), key=lambda cp: -cp[1])
    review = None
    if view.review_action is not None:
        review = schemas.Review(action=view.review_action, label=view.review_label,
                                note=view.review_note, reviewed_at=view.reviewed_at,
                                reviewer=view.reviewer)
    return schemas.Case(
        id=view.id, created_at=view.created_at, status=view.status,
        probabilities=[schemas.ClassProbability(code=c, name=model.class_name(c),
                                                probability=round(p, 6),
                                                malignant=c in MALIGNANT_CODES)
                       for c, p in ranked],
        top_k=[c for c, _ in ranked[:model.settings.top_k]], prediction=view.prediction,
        malignant=view.malignant, malignant_probability=round(view.malignant_probability, 6),
        model=schemas.CaseModel(label=view.model_label, architecture=view.model_architecture,
                                card_sha256=view.card_sha256),
        latency_ms=round(view.latency_ms, 3), lesion_image=view.lesion,
        ood_score=None if view.ood_score is None else round(view.ood_score, 6),
        image=schemas.ImageSize(width=view.width, height=view.height),
        patient_ref=view.patient_ref, body_site=view.body_site, review=review)


@router.get("/me", response_model=schemas.Me)
def me(actor: CurrentActor) -> schemas.Me:
    return schemas.Me(name=actor.name, role=actor.role)


@router.get("/model", response_model=schemas.ModelInfo)
def model_info(actor: CurrentActor, request: Request) -> schemas.ModelInfo:
    return schemas.ModelInfo(**_model(request).describe())


@router.post("/cases", status_code=201, response_model=schemas.Case)
def create_case(
    actor: CurrentActor,
    request: Request,
    image: Annotated[UploadFile, File(description="A dermoscopic or close-up photo (JPEG, "
                                                  "PNG, ...); its metadata is not kept.")],
    patient_ref: Annotated[str | None, Form(max_length=64, description="The clinic's own "
                                            "reference for the patient (stored encrypted).")] = None,
    body_site: Annotated[str | None, Form(max_length=64)] = None,
) -> schemas.Case:
    """Classify an uploaded image and keep it as a case for review."""
    settings = request.app.state.settings
    data = image.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"the image is larger than this server's limit of "
                                 f"{settings.max_upload_mb:g} MB; send a smaller one")
    model = _model(request)
    # A decoded photo can take hundreds of MB: only so many are held at once.
    if not request.app.state.upload_slots.acquire(timeout=UPLOAD_WAIT_S):
        raise HTTPException(503, "the server is busy with other images; try again shortly",
                            headers={"Retry-After": "5"})
    try:
        # The client's file name is never used: it may name the patient.
        picture, orientation = load_rgb_oriented(data, name="the uploaded image",
                                                 max_pixels=settings.max_pixels)
        prediction = model.predict(picture)
        stored, media_type = metadata_free(data, picture, orientation)
        width, height = picture.size
        del picture, data
    finally:
        request.app.state.upload_slots.release()
    request.app.state.metrics.inference.observe(prediction.latency_ms / 1000)
    view = _store(request).create_case(actor, stored, width, height, prediction,
                                       patient_ref=patient_ref or None,
                                       body_site=body_site or None, media_type=media_type)
    request.app.state.metrics.cases.inc()
    return case_out(view, model)


@router.get("/cases", response_model=schemas.CasePage)
def list_cases(
    actor: CurrentActor,
    request: Request,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Literal["unreviewed", "verified", "corrected"] | None = None,
    label: Annotated[str | None, Query(pattern=CLASS_CODE, description="Class code: the "
                                       "reviewed label, or the prediction while unreviewed.")] = None,
    malignant: bool | None = None,
) -> schemas.CasePage:
    """The signed-in clinician's cases, newest first."""
    views, total = _store(request).list_cases(actor, page=page, per_page=per_page,
                                              status=status, label=label, malignant=malignant)
    model = _model(request)
    return schemas.CasePage(items=[case_out(v, model) for v in views], page=page,
                            per_page=per_page, total=total)


@router.get("/cases/{case_id}", response_model=schemas.Case)
def get_case(actor: CurrentActor, request: Request, case_id: str) -> schemas.Case:
    return case_out(_store(request).get_case(actor, _case_id(case_id)), _model(request))


@router.get("/cases/{case_id}/image", response_class=Response, responses={200: {
    "content": {"image/jpeg": {}, "image/png": {}},
    "description": "The upload's own JPEG without its metadata, or a PNG of the upright "
                   "pixels."}})
def case_image(actor: CurrentActor, request: Request, case_id: str) -> Response:
    """The stored image: upright, metadata stripped."""
    data, media_type = _store(request).case_image(actor, _case_id(case_id))
    return Response(data, media_type=media_type)


@router.get("/cases/{case_id}/overlay", response_class=Response,
            responses={**PNG, 409: {"model": schemas.Problem}})
def case_overlay(actor: CurrentActor, request: Request, case_id: str) -> Response:
    """The Grad-CAM heatmap of the class the case was given, over the image (computed once,
    kept)."""
    model = _model(request)
    if model.explainer is None:
        raise HTTPException(409, "this server has no Grad-CAM checkpoint; start it with "
                                 "`skinedge serve --explain CHECKPOINT` (the checkpoint the "
                                 "served model was exported from)")

    def compute(image: bytes, case: CaseView) -> bytes:
        if case.card_sha256 != model.card_sha256:
            raise HTTPException(409, f"this case was classified by another model "
                                     f"({case.model_label}, card {case.card_sha256[:12]}); "
                                     "the served model's heatmap would not explain its answer")
        return model.overlay(image, case.prediction)

    png = _store(request).case_overlay(actor, _case_id(case_id), compute)
    return Response(png, media_type="image/png")


@router.post("/cases/{case_id}/review", response_model=schemas.Case)
def review_case(actor: CurrentActor, request: Request, case_id: str,
                review: schemas.ReviewIn) -> schemas.Case:
    """Verify the model's answer, or correct it; a later review replaces an earlier one."""
    view = _store(request).review_case(actor, _case_id(case_id), review.action, review.label,
                                       review.note)
    request.app.state.metrics.reviews.labels(review.action).inc()
    return case_out(view, _model(request))


@router.delete("/cases/{case_id}", status_code=204, response_class=Response)
def erase_case(actor: CurrentActor, request: Request, case_id: str) -> Response:
    """Erase a case (GDPR art. 17): its image, overlay, note and patient fields, everywhere.
    The audit log keeps that it happened, without patient data."""
    _store(request).erase_case(actor, _case_id(case_id))
    request.app.state.metrics.erasures.inc()
    return Response(status_code=204)


@router.get("/audit", response_model=schemas.AuditPage,
            responses={403: {"model": schemas.Problem}})
def audit(actor: AdminActor, request: Request,
          page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
          per_page: Annotated[int, Query(ge=1, le=500)] = 50) -> schemas.AuditPage:
    """The audit log, newest first (admins)."""
    rows, total = _store(request).audit_page(page=page, per_page=per_page)
    return schemas.AuditPage(items=rows, page=page, per_page=per_page, total=total)


def _case_id(case_id: str) -> str:
    if len(case_id) > 40 or not case_id.startswith("c_") or not case_id[2:].isalnum():
        raise NotFoundError(f"no case {case_id[:40]!r} among yours")
    return case_id
