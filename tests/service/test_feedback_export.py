"""The feedback store's exports: reviewed cases as a labels-csv dataset folder that the data
layer reads and splits by patient, and one reviewed case as a DICOM Comprehensive SR."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from skinedge.errors import ConfigError, NotFoundError
from tests.conftest import HAM10000_CODES, make_image

pytest.importorskip("sqlalchemy")


def png(colour, seed=0) -> bytes:
    out = io.BytesIO()
    make_image(colour, (64, 64), seed=seed).save(out, "PNG")
    return out.getvalue()


def prediction(top: str, p: float = 0.6):
    from skinedge.service.store import Prediction

    rest = (1 - p) / (len(HAM10000_CODES) - 1)
    probs = [p if c == top else rest for c in HAM10000_CODES]
    malignant = sum(q for c, q in zip(HAM10000_CODES, probs) if c in {"mel", "bcc", "akiec"})
    return Prediction(classes=list(HAM10000_CODES), probabilities=probs, prediction=top,
                      malignant=top in {"mel", "bcc", "akiec"} or malignant >= 0.3,
                      malignant_probability=malignant, model_label="onnx-fp32",
                      model_architecture="tf_efficientnet_lite0", card_sha256="ab" * 32,
                      latency_ms=3.0)


class Clinic:
    """A store with two clinicians' cases; ``cases`` maps a short name to the case id."""

    def __init__(self, root: Path):
        from skinedge.service.store import Store

        self.store = Store.open(f"sqlite:///{root / 'skinedge.db'}", root)
        self.a = self.store.actor_for_token(self.store.add_user("dr-a"), None)
        self.b = self.store.actor_for_token(self.store.add_user("dr-b"), None)
        self.images: dict[str, bytes] = {}
        self.cases: dict[str, str] = {}

    def case(self, name, actor, image, top, *, patient=None, review=None, label=None,
             note=None):
        data = self.images.setdefault(image, png((40 * len(self.images) % 256, 120, 200),
                                                 seed=len(self.images)))
        case = self.store.create_case(actor, data, 64, 64, prediction(top), patient_ref=patient,
                                      body_site="left shoulder")
        if review:
            self.store.review_case(actor, case.id, review, label, note)
        self.cases[name] = case.id
        return case.id


@pytest.fixture
def clinic(tmp_path):
    clinic = Clinic(tmp_path / "service")
    clinic.case("a1", clinic.a, "A", "mel", patient="P-0042", review="verify")
    clinic.case("a2", clinic.a, "B", "nv", patient="P-0042", review="correct", label="bkl",
                note="seborrhoeic keratosis on dermoscopy")
    clinic.case("a3", clinic.a, "A", "mel", review="verify")  # the same image, no patient
    clinic.case("b1", clinic.b, "C", "df", patient="P-0042", review="correct", label="nv")
    clinic.case("b2", clinic.b, "D", "df", patient="Q-7", review="verify")
    clinic.case("open", clinic.a, "E", "vasc")  # never reviewed
    for n in range(6):  # enough groups per class for a three-way split
        clinic.case(f"n{n}", clinic.b, f"N{n}", "nv", patient=f"R-{n}", review="verify")
    yield clinic
    clinic.store.close()


def labels(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "labels.csv").open(newline="") as f:
        return {Path(row["image"]).stem: row for row in csv.DictReader(f)}


def test_export_is_a_labels_csv_dataset_grouped_by_patient(clinic, tmp_path):
    from skinedge.data import read_dataset
    from skinedge.data.splitting import split_folder
    from skinedge.service.store.export import COLUMNS, export_reviewed, pseudonym

    out = tmp_path / "feedback"
    seen = []
    summary = export_reviewed(clinic.store, out, progress=lambda d, t: seen.append((d, t)))
    ids = clinic.cases
    assert summary.per_class == {"bkl": 1, "df": 1, "mel": 2, "nv": 7}
    assert summary.written == 11 and summary.skipped_unreviewed == 1 and not summary.replaced
    assert seen[-1] == (11, 11) and summary.folder == out

    text = (out / "labels.csv").read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    for secret in ("P-0042", "Q-7", "R-0", "shoulder", "seborrhoeic"):
        assert secret not in text and secret not in (out / "README.txt").read_text()
    rows = labels(out)
    assert ids["open"] not in rows and not (out / "images" / f"{ids['open']}.png").exists()
    assert rows[ids["a2"]]["dx"] == "bkl" and rows[ids["a2"]]["prediction"] == "nv"
    assert rows[ids["a2"]]["status"] == "corrected" and rows[ids["a2"]]["reviewer"] == "dr-a"
    assert rows[ids["a1"]]["dx"] == "mel" and rows[ids["a1"]]["status"] == "verified"
    assert rows[ids["b1"]]["dx"] == "nv" and rows[ids["b1"]]["reviewer"] == "dr-b"
    assert rows[ids["a1"]]["reviewed_at"].endswith("Z")
    patient = pseudonym(clinic.store, "P-0042")
    assert len(patient) == 16 and int(patient, 16) >= 0
    assert {rows[ids[n]]["patient_id"] for n in ("a1", "a2", "b1")} == {patient}
    assert rows[ids["b2"]]["patient_id"] not in (patient, "")
    a3 = clinic.store.get_case(clinic.a, ids["a3"])
    assert rows[ids["a3"]]["lesion_id"] == a3.image_id == rows[ids["a3"]]["patient_id"]
    assert (out / "images" / f"{ids['a1']}.png").read_bytes() == clinic.images["A"]
    readme = (out / "README.txt").read_text()
    assert "consent" in readme and "mel, nv, bcc, akiec, bkl, df, vasc" in readme

    dataset = read_dataset(out)
    assert dataset.layout == "labels-csv"
    got = {Path(r.image).stem: (r.label, r.group) for r in dataset.records}
    assert {case: label for case, (label, _) in got.items()} == {
        case: row["dx"] for case, row in rows.items()}
    assert got[ids["a1"]][1] == got[ids["a2"]][1] == got[ids["b1"]][1] == patient
    assert got[ids["a3"]][1] == a3.image_id

    manifest, _ = split_folder(out, tmp_path / "manifest.json")
    split_of = {Path(r.image).stem: r.split for r in manifest.rows}
    assert len(split_of) == 11
    assert split_of[ids["a1"]] == split_of[ids["a2"]] == split_of[ids["b1"]]
    assert split_of[ids["a3"]] == split_of[ids["a1"]]  # byte-identical image: kept together

    audit, _ = clinic.store.audit_page()
    export = [r for r in audit if r["action"] == "feedback.export"]
    assert len(export) == 1 and export[0]["actor"] == "system"
    assert export[0]["detail"].startswith("11 cases") and "1 unreviewed" in export[0]["detail"]


def test_include_unreviewed_labels_them_with_the_model_answer(clinic, tmp_path):
    from skinedge.service.store.export import export_reviewed

    summary = export_reviewed(clinic.store, tmp_path / "all", include_unreviewed=True)
    row = labels(tmp_path / "all")[clinic.cases["open"]]
    assert summary.skipped_unreviewed == 0 and summary.written == 12
    assert (row["dx"], row["status"], row["reviewer"], row["reviewed_at"]) == (
        "vasc", "unreviewed", "", "")


def test_second_export_replaces_a_previous_one_and_nothing_else(clinic, tmp_path):
    from skinedge.service.store.export import MARKER, export_reviewed

    out = tmp_path / "feedback"
    export_reviewed(clinic.store, out)
    clinic.store.review_case(clinic.a, clinic.cases["open"], "correct", "mel")
    clinic.store.erase_case(clinic.a, clinic.cases["a2"])
    again = export_reviewed(clinic.store, out)
    rows = labels(out)
    assert again.replaced and again.skipped_unreviewed == 0
    assert rows[clinic.cases["open"]]["dx"] == "mel" and clinic.cases["a2"] not in rows
    assert not (out / "images" / f"{clinic.cases['a2']}.png").exists()  # erased: gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback", "service"]

    (out / "manifest.json").write_text("{}")  # `skinedge data split feedback --out` inside
    with pytest.raises(ConfigError, match="manifest.json") as refused:
        export_reviewed(clinic.store, out)
    assert refused.value.exit_code == 2 and (out / "manifest.json").read_text() == "{}"
    assert (out / MARKER).is_file()

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(ConfigError, match="not a previous"):
        export_reviewed(clinic.store, foreign)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]
    with pytest.raises(ConfigError, match="is a file"):
        export_reviewed(clinic.store, foreign / "holiday.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_reviewed(clinic.store, empty).written == 11


def test_an_interrupted_export_resumes(clinic, tmp_path):
    from skinedge.service.store.export import export_reviewed

    out = tmp_path / "feedback"

    def stop_after_three(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_reviewed(clinic.store, out, progress=stop_after_three)
    partial = tmp_path / ".feedback.partial"
    assert not out.exists() and len(list((partial / "images").iterdir())) == 3
    first = sorted((partial / "images").iterdir())[0]
    first.write_bytes(first.read_bytes()[:100])  # as if cut short
    (partial / "images" / "c_erased.png").write_bytes(b"x")  # a case erased meanwhile

    summary = export_reviewed(clinic.store, out)
    assert summary.reused == 2 and summary.written == 11 and not partial.exists()
    images = {p.stem: p.read_bytes() for p in (out / "images").iterdir()}
    assert set(images) == set(labels(out)) and "c_erased" not in images
    for name, case_id in clinic.cases.items():
        if name != "open":
            assert images[case_id] == clinic.store.case_image(
                clinic.a if name[0] in "ao" else clinic.b, case_id)[0]


def test_nothing_reviewed_is_refused(tmp_path):
    from skinedge.service.store.export import export_reviewed

    clinic = Clinic(tmp_path / "service")
    clinic.case("open", clinic.a, "A", "mel")
    with pytest.raises(ConfigError, match="verify or correct"):
        export_reviewed(clinic.store, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    clinic.store.close()


# --------------------------------------------------------------------------- DICOM SR


def flatten(items, depth=0):
    """(concept name code value, item) of every content item, depth first."""
    for item in items:
        yield item.ConceptNameCodeSequence[0].CodeValue, item
        yield from flatten(item.get("ContentSequence", []), depth + 1)


def container(document, code):
    return next(item for value, item in flatten(document.ContentSequence) if value == code)


def test_case_to_sr_records_the_model_and_the_correction(clinic, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    highdicom = pytest.importorskip("highdicom")
    from skinedge.service.store.dicom import COMPREHENSIVE_SR, DISCLAIMER, case_to_sr

    path = case_to_sr(clinic.store, clinic.a, clinic.cases["a2"], tmp_path / "a2.dcm")
    document = pydicom.dcmread(path)
    assert path == tmp_path / "a2.dcm"
    assert type(highdicom.sr.srread(path)).__name__ == "ComprehensiveSR"  # highdicom reads it
    assert document.SOPClassUID == COMPREHENSIVE_SR and document.Modality == "SR"
    assert document.PatientID == "P-0042"
    assert document.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert document.CompletionFlag == "COMPLETE" and document.VerificationFlag == "UNVERIFIED"
    evidence = document.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert document.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99SKINEDGE"

    model = container(document, "model-output")
    items = dict(flatten(model.ContentSequence))
    finding = items["121071"].ConceptCodeSequence[0]
    assert (finding.CodeValue, finding.CodingSchemeDesignator) == ("nv", "99SKINEDGE")
    probability = items["122157"].MeasuredValueSequence[0].NumericValue
    assert float(probability) == pytest.approx(0.6)
    assert items["121016"].TextValue == "ab" * 32  # device serial number: the card's sha256
    assert items["121013"].TextValue == "tf_efficientnet_lite0"  # device observer name
    assert items["111003"].TextValue.startswith("onnx-fp32")  # algorithm version

    review = dict(flatten(container(document, "clinician-review").ContentSequence))
    finding = review["121071"].ConceptCodeSequence[0]
    assert (finding.CodeValue, finding.CodeMeaning) == ("bkl", "Benign keratosis")
    assert review["review-action"].ConceptCodeSequence[0].CodeValue == "corrected"
    assert review["121106"].TextValue == "seborrhoeic keratosis on dermoscopy"
    assert review["121008"].PersonName.family_name == "dr-a"
    assert review["128774"].TextValue == "dr-a"  # the observer's login name
    texts = [item.TextValue for _, item in flatten(document.ContentSequence)
             if item.ValueType == "TEXT"]
    assert DISCLAIMER in texts

    audit, _ = clinic.store.audit_page()
    assert [(r["action"], r["actor"], r["case_id"]) for r in audit][0] == (
        "case.dicom", "dr-a", clinic.cases["a2"])


def test_case_to_sr_codes_melanoma_in_snomed_and_leaves_patient_id_empty(clinic, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from skinedge.service.store.dicom import case_to_sr

    path = case_to_sr(clinic.store, clinic.a, clinic.cases["a3"], tmp_path)
    document = pydicom.dcmread(path)
    assert path.name == f"{clinic.cases['a3']}.dcm" and document.PatientID == ""
    review = dict(flatten(container(document, "clinician-review").ContentSequence))
    finding = review["121071"].ConceptCodeSequence[0]
    assert (finding.CodeValue, finding.CodingSchemeDesignator) == ("1162635006", "SCT")
    assert review["review-action"].ConceptCodeSequence[0].CodeValue == "verified"
    assert "121106" not in review  # no note, no comment


def test_case_to_sr_only_for_the_owner_and_a_reviewed_case(clinic, tmp_path):
    pytest.importorskip("highdicom")
    from skinedge.service.store.dicom import actor_named, case_to_sr

    with pytest.raises(NotFoundError, match="among yours"):
        case_to_sr(clinic.store, clinic.b, clinic.cases["a2"], tmp_path / "x.dcm")
    with pytest.raises(ConfigError, match="review") as unreviewed:
        case_to_sr(clinic.store, clinic.a, clinic.cases["open"], tmp_path / "x.dcm")
    assert "verify or correct it first" in str(unreviewed.value)
    assert not (tmp_path / "x.dcm").exists()
    assert actor_named(clinic.store, "dr-b") == clinic.b
    with pytest.raises(NotFoundError):
        actor_named(clinic.store, "dr-z")
    audit, _ = clinic.store.audit_page()
    assert not any(r["action"] == "case.dicom" for r in audit)
