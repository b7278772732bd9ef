"""One reviewed case as a DICOM Comprehensive SR document, for the clinic's archive (PACS).

Content tree (relationship, value type, concept name)::

    CONTAINER  (LN 18748-4) Diagnostic Imaging Report                 the document title
      CONTAINS CONTAINER  (99SKINEDGE model-output) Model output
        HAS OBS CONTEXT  Observer Type = Device; Device Observer UID (from the card's sha256),
                         Name (architecture), Manufacturer, Model Name (artifact label),
                         Serial Number (model card sha256)                       [TID 1002/1004]
        CONTAINS CODE  (DCM 121071) Finding = the predicted class
          HAS CONCEPT MOD  Algorithm Name, Algorithm Version                       [TID 4019]
          HAS PROPERTIES NUM  (DCM 122157) Probability = p (UCUM 1)
        CONTAINS NUM  (DCM 111047) Probability of cancer = mass on the malignant classes
      CONTAINS CONTAINER  (99SKINEDGE clinician-review) Clinician review
        HAS OBS CONTEXT  Observer Type = Person; Person Observer Name, Login Name = reviewer
        CONTAINS CODE  (DCM 121071) Finding = the verified or corrected class
        CONTAINS CODE  (99SKINEDGE review-action) Review action = verified | corrected
        CONTAINS DATETIME  (99SKINEDGE reviewed-at) Review date and time
        CONTAINS TEXT  (DCM 121106) Comment = the clinician's note, when there is one
      CONTAINS TEXT  (DCM 121106) Comment = "Decision support, not a diagnosis ..."

Evidence: highdicom refuses an SR without evidence (``ValueError: No evidence was
provided``) and takes the patient and study from it, but the store keeps a JPEG or PNG, not a DICOM
image. So the SR names a minimal secondary-capture reference (SOP class Secondary Capture
Image Storage, UIDs derived from the case id, no pixel data): it is listed in the Current
Requested Procedure Evidence Sequence and is not written anywhere; the archive holds the SR
alone. Study and series UIDs are derived from the case id, so every SR of one case falls in
one study; each SR is a new instance.

The document is COMPLETE, PRELIMINARY and UNVERIFIED: the clinician's review is content of
the report, not a signature on it (the store knows no verifying organisation), and a decision-
support report is not the definitive record of a diagnosis.
"""

from __future__ import annotations

import io
import secrets
from datetime import UTC
from pathlib import Path

from sqlalchemy import select

import skinedge
from skinedge.data.classes import VOCABULARIES
from skinedge.errors import ConfigError, DataError, NotFoundError
from skinedge.service.store.db import Actor, CaseView, Store
from skinedge.service.store.schema import User
from skinedge.utils.backends import require
from skinedge.utils.io import atomic_write_bytes

#: Private coding scheme of skinedge's class codes and report concepts (PS3.16 section 8.2:
#: private coding scheme designators begin with "99"); declared in the document's Coding
#: Scheme Identification Sequence.
SCHEME = "99SKINEDGE"
DISCLAIMER = ("Decision support, not a diagnosis: the model's output was reviewed by the "
              "clinician named in this report; the diagnosis rests with the clinician.")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"

#: SNOMED CT concepts (keywords of pydicom's DICOM code dictionary, PS3.16) for the classes
#: that one concept means: melanoma (1162635006, morphology "Malignant melanoma"), squamous
#: cell carcinoma of skin (254651007), actinic keratosis (201101007, ISIC 2019's "ak").
#: Every other class goes out under the private scheme with its class code, honestly: akiec
#: (actinic keratosis and intraepithelial carcinoma) and bkl (seborrhoeic keratosis, solar
#: lentigo, lichen-planus-like keratosis) group several disorders that no single concept
#: covers, and for nv, bcc, df and vasc the DICOM dictionary holds no skin-specific concept
#: that we could check here (we do not write codes we cannot check).
SNOMED_KEYWORDS = {"mel": "MalignantMelanoma", "scc": "SquamousCellCarcinomaOfSkin",
                   "ak": "ActinicKeratosis"}


def case_to_sr(store: Store, actor: Actor, case_id: str, out: Path | str) -> Path:
    """Write a reviewed case of ``actor``'s as a DICOM Comprehensive SR file.

    Args:
        store: The feedback store.
        actor: The case's owner (someone else's case answers like a missing one).
        case_id: The case (``c_...``).
        out: File to write (``.dcm``); an existing folder gets ``<case id>.dcm`` inside.

    Returns:
        The file written.

    Raises:
        NotFoundError: no such case among the actor's.
        ConfigError: the case is not reviewed yet.
        DataError: the patient reference cannot be a DICOM Patient ID.
        MissingBackendError: highdicom is not installed (the ``serve`` extra).
    """
    hd = require("highdicom", "serve")
    out = Path(out)
    if out.is_dir():
        out = out / f"{case_id}.dcm"
    with store.transaction() as session:
        case = store.owned(session, actor, case_id)
        if case.status == "unreviewed":
            raise ConfigError(f"case {case_id} is not reviewed yet: verify or correct it first "
                              "(the report records the clinician's review)")
        view = store.view(session, case)
        _check_patient_id(view)
        store.record(session, actor, "case.dicom", case_id)
    document = _build_sr(hd, view)
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return atomic_write_bytes(out, buffer.getvalue())


def actor_named(store: Store, name: str) -> Actor:
    """The active user ``name`` as an :class:`Actor` (for a command run on their behalf).

    Raises:
        NotFoundError: no active user of that name.
    """
    with store.reading() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None or user.revoked_at is not None:
            raise NotFoundError(f"no user named {name!r}; `skinedge users list` shows them")
        return Actor(user.id, user.name, user.role)


def class_concept(code: str):
    """The coded concept of a class code: SNOMED CT where one concept means the class (see
    :data:`SNOMED_KEYWORDS`), else the private scheme with the class code."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    if code in SNOMED_KEYWORDS:
        return CodedConcept.from_code(getattr(codes.SCT, SNOMED_KEYWORDS[code]))
    return CodedConcept(value=code, scheme_designator=SCHEME, meaning=class_name(code))


def class_name(code: str) -> str:
    """The long name of a class code from the vocabularies (the code itself if unknown)."""
    for vocabulary in VOCABULARIES.values():
        if code in vocabulary.names:
            name = vocabulary.names[code]
            return name[:1].upper() + name[1:]
    return code


# --------------------------------------------------------------------------- the document


def _check_patient_id(view: CaseView) -> None:
    """A Patient ID is a DICOM LO: up to 64 characters, no backslash or control characters."""
    ref = view.patient_ref
    if ref is not None and (len(ref) > 64 or "\\" in ref
                            or any(ord(ch) < 32 or ord(ch) == 127 for ch in ref)):
        raise DataError(f"case {view.id}: its patient reference cannot be a DICOM Patient ID "
                        "(up to 64 characters, no backslash or control characters); the SR "
                        "cannot name the patient, so it is not written")


def _uid(*parts: str) -> str:
    """A UID derived from ``parts`` (the same parts give the same UID)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["skinedge", *parts])


def _private(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


def _evidence(view: CaseView):
    """The minimal secondary-capture reference highdicom needs (see the module docstring)."""
    from pydicom.dataset import Dataset

    created = view.created_at.astimezone(UTC)
    evidence = Dataset()
    evidence.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: a patient reference may need it
    evidence.SOPClassUID = SECONDARY_CAPTURE
    evidence.SOPInstanceUID = _uid(view.id, "image")
    evidence.StudyInstanceUID = _uid(view.id, "study")
    evidence.SeriesInstanceUID = _uid(view.id, "image-series")
    evidence.PatientID = view.patient_ref or ""
    evidence.PatientName = ""
    evidence.PatientBirthDate = ""
    evidence.PatientSex = ""
    evidence.AccessionNumber = ""
    evidence.StudyID = ""
    evidence.StudyDate = created.strftime("%Y%m%d")
    evidence.StudyTime = created.strftime("%H%M%S")
    evidence.ReferringPhysicianName = ""
    return evidence


def _build_sr(hd, view: CaseView):
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from highdicom.sr import (
        CodeContentItem,
        ContainerContentItem,
        ContentSequence,
        DateTimeContentItem,
        DeviceObserverIdentifyingAttributes,
        NumContentItem,
        ObserverContext,
        PersonObserverIdentifyingAttributes,
        RelationshipTypeValues,
        TextContentItem,
    )
    from highdicom.sr.templates import AlgorithmIdentification
    from pydicom.sr.codedict import codes

    contains = RelationshipTypeValues.CONTAINS
    probability = view.probabilities[view.classes.index(view.prediction)]

    model = ContainerContentItem(name=_private("model-output", "Model output"),
                                 relationship_type=contains)
    model.ContentSequence = ContentSequence([
        *ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=_uid("model", view.card_sha256), name=view.model_architecture[:64],
                manufacturer_name="skinedge", model_name=view.model_label[:64],
                serial_number=view.card_sha256[:64])),
        _finding(view.prediction, children=[
            *AlgorithmIdentification(name=view.model_architecture[:64],
                                     version=f"{view.model_label} card {view.card_sha256[:12]}"),
            NumContentItem(name=codes.DCM.Probability, value=float(probability),
                           unit=codes.UCUM.NoUnits,
                           relationship_type=RelationshipTypeValues.HAS_PROPERTIES)]),
        NumContentItem(name=codes.DCM.ProbabilityOfCancer,
                       value=float(view.malignant_probability), unit=codes.UCUM.NoUnits,
                       relationship_type=contains),
    ])

    action = "verified" if view.review_action == "verify" else "corrected"
    review = ContainerContentItem(name=_private("clinician-review", "Clinician review"),
                                  relationship_type=contains)
    review_items = [
        *ObserverContext(
            observer_type=codes.cid270.Person,
            # The store knows the reviewer's user name, not their legal name: it goes in
            # as the family name component (the trailing caret says so) and as login name.
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=f"{view.reviewer or 'unknown'}^", login_name=view.reviewer)),
        _finding(view.review_label or view.prediction),
        CodeContentItem(name=_private("review-action", "Review action"),
                        value=_private(action, f"Model output {action} by the clinician"),
                        relationship_type=contains),
    ]
    if view.reviewed_at is not None:
        review_items.append(DateTimeContentItem(
            name=_private("reviewed-at", "Review date and time"),
            value=view.reviewed_at.astimezone(UTC).replace(tzinfo=None),
            relationship_type=contains))
    if view.review_note:
        review_items.append(TextContentItem(name=codes.DCM.Comment, value=view.review_note,
                                            relationship_type=contains))
    review.ContentSequence = ContentSequence(review_items)

    root = ContainerContentItem(name=codes.LN.DiagnosticImagingReport)
    root.ContentSequence = ContentSequence([
        model, review,
        TextContentItem(name=codes.DCM.Comment, value=DISCLAIMER, relationship_type=contains),
    ])

    document = hd.sr.ComprehensiveSR(
        evidence=[_evidence(view)], content=root,
        series_instance_uid=_uid(view.id, "sr-series"), series_number=1,
        sop_instance_uid=_uid(view.id, "sr", secrets.token_hex(16)), instance_number=1,
        manufacturer="skinedge", is_complete=True, is_final=False, is_verified=False,
        series_description="skinedge decision support",
        manufacturer_model_name="skinedge clinician service",
        software_versions=skinedge.__version__,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=SCHEME, name="skinedge class codes and report concepts",
            responsible_organization="skinedge")],
    )
    document.TimezoneOffsetFromUTC = "+0000"  # every date and time above is UTC
    return document


def _finding(code: str, children=()):
    from highdicom.sr import CodeContentItem, ContentSequence, RelationshipTypeValues
    from pydicom.sr.codedict import codes

    item = CodeContentItem(name=codes.DCM.Finding, value=class_concept(code),
                           relationship_type=RelationshipTypeValues.CONTAINS)
    if children:
        item.ContentSequence = ContentSequence(list(children))
    return item
