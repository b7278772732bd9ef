"""Exported artifacts are tied to their export report (sha256 of every file) and carry a sealed
card: a changed, truncated or corrupted artifact is an error naming the file, never served."""

from __future__ import annotations

import json
import shutil

import pytest

from skinedge.errors import ModelError
from skinedge.runtimes import load_runtime, read_artifact_card, verify_artifact
from skinedge.utils.io import sha256_file, sha256_tree


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """ONNX and OpenVINO FP32 exports of the tiny checkpoint in one folder, with reports."""
    from skinedge.export import export_checkpoint

    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    out = tmp_path_factory.mktemp("integrity-exports")
    onnx = export_checkpoint(tiny_checkpoint, "onnx", out_dir=out, verify_images=4)
    ov = export_checkpoint(tiny_checkpoint, "openvino", out_dir=out, verify_images=4)
    return out, onnx, ov


def copy_of(exported, tmp_path):
    """A private copy of the export folder: (folder, onnx path, xml path, onnx report)."""
    out, onnx, ov = exported
    folder = tmp_path / "exports"
    shutil.copytree(out, folder)
    return folder, folder / onnx.path.name, folder / ov.path.name, folder / onnx.report.name


def test_reports_record_the_sha256_of_every_file(exported) -> None:
    _, onnx, ov = exported
    for result in (onnx, ov):
        files = json.loads(result.report.read_text())["files"]
        assert [f["path"] for f in files] == [str(f) for f in result.files]
        for entry, file in zip(files, result.files):
            assert entry["sha256"] == sha256_file(file) and entry["bytes"] > 0
    assert [f.suffix for f in ov.files] == [".xml", ".bin"]  # the IR's weights are hashed too
    card = read_artifact_card(onnx.path)
    assert card.integrity == card.compute_integrity() and card.artifact.target == "onnx"


def test_sha256_tree_hashes_a_folder_by_content_and_names(tmp_path) -> None:
    package = tmp_path / "model.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "weights.bin").write_bytes(b"\x00" * 64)
    (package / "Manifest.json").write_text("{}")
    first = sha256_tree(package)
    assert sha256_tree(package) == first and len(first) == 64
    (package / "Data" / "weights.bin").write_bytes(b"\x00" * 63 + b"\x01")
    assert sha256_tree(package) != first
    assert sha256_tree(package / "Manifest.json") == sha256_file(package / "Manifest.json")


def test_a_corrupted_onnx_is_refused_against_its_report(exported, tmp_path) -> None:
    """20 kB of flipped weight bytes still parse: only the report's sha256 catches them."""
    from tests.reliability.inputs import flip_onnx_weights

    _, onnx, _, report = copy_of(exported, tmp_path)
    flip_onnx_weights(onnx)
    read_artifact_card(onnx)  # still a valid ONNX file with its card
    for check in (load_runtime, verify_artifact):
        with pytest.raises(ModelError) as caught:
            check(onnx)
        message = str(caught.value)
        assert str(onnx) in message and str(report) in message
        assert "sha256 differs" in message and "export it again with `skinedge export`" in message
    report.unlink()  # copied alone (to a phone): no report, so only the card is checked
    load_runtime(onnx).close()


def test_a_truncated_onnx_is_refused_with_or_without_its_report(exported, tmp_path) -> None:
    _, onnx, _, report = copy_of(exported, tmp_path)
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    with pytest.raises(ModelError, match="sha256 differs") as caught:
        load_runtime(onnx)
    assert str(report) in str(caught.value)
    report.unlink()
    for check in (load_runtime, read_artifact_card):
        with pytest.raises(ModelError, match="could not load it") as caught:
            check(onnx)
        assert str(onnx) in str(caught.value) and "export it again" in str(caught.value)


def test_a_truncated_openvino_bin_is_refused_with_or_without_its_report(exported,
                                                                          tmp_path) -> None:
    folder, _, xml, _ = copy_of(exported, tmp_path)
    weights = xml.with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelError, match="sha256 differs") as caught:
        load_runtime(xml)
    assert str(weights) in str(caught.value) and ".openvino.export.json" in str(caught.value)
    for report in folder.glob("*.openvino.export.json"):
        report.unlink()
    for check in (load_runtime, read_artifact_card):
        with pytest.raises(ModelError, match="the file is truncated") as caught:
            check(xml)
        assert str(weights) in str(caught.value) and "skinedge export" in str(caught.value)
    weights.unlink()
    with pytest.raises(ModelError, match="missing"):
        load_runtime(xml)


def test_an_unreadable_report_of_the_artifact_is_named(exported, tmp_path) -> None:
    _, onnx, _, report = copy_of(exported, tmp_path)
    report.write_text(report.read_text()[:100])
    with pytest.raises(ModelError, match="not a readable export report") as caught:
        load_runtime(onnx)
    assert str(report) in str(caught.value)


def test_an_unreadable_report_of_another_target_with_the_same_stem_is_passed_by(
        exported, tmp_path) -> None:
    """arch_fp32.onnx.export.json belongs to arch_fp32.onnx, not to arch_fp32.xml (whose
    report is arch_fp32.openvino.export.json), and the other way round."""
    folder, onnx, xml, report = copy_of(exported, tmp_path)
    assert onnx.stem == xml.stem and report.name == f"{onnx.stem}.onnx.export.json"
    report.write_text(report.read_text()[:100])
    load_runtime(xml).close()  # its own report is intact: it loads, checked against it
    ov_report = folder / f"{xml.stem}.openvino.export.json"
    ov_report.write_text("{not json")
    with pytest.raises(ModelError, match="not a readable export report") as caught:
        load_runtime(xml)
    assert str(ov_report) in str(caught.value)
    report.write_text(json.dumps({"files": []}))
    load_runtime(onnx).close()  # the OpenVINO report is not the ONNX artifact's


def test_exporting_again_over_an_old_export_replaces_its_report(tiny_checkpoint, exported,
                                                                tmp_path) -> None:
    """The old report would not match the new file: export removes it before moving files."""
    from skinedge.export import export_checkpoint

    folder, onnx, _, report = copy_of(exported, tmp_path)
    doc = json.loads(report.read_text())
    doc["files"][0]["sha256"] = "0" * 64  # as if the earlier export had made another file
    report.write_text(json.dumps(doc))
    result = export_checkpoint(tiny_checkpoint, "onnx", out_dir=folder, verify_images=4)
    assert result.verification.status == "passed", result.verification.reason
    load_runtime(result.path).close()


def test_an_export_that_fails_verification_keeps_the_previous_one(tiny_checkpoint, exported,
                                                                  tmp_path) -> None:
    """The new artifact is verified before it replaces anything: the earlier export and its
    report stay as they were; the failed one goes to rejected/ with a report of its own."""
    from skinedge.export import Tolerance, VerificationFailed, export_checkpoint

    folder, onnx, _, report = copy_of(exported, tmp_path)
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    never = Tolerance(max_prob_diff=-1.0, max_flip_rate=-1.0)  # any difference fails
    with pytest.raises(VerificationFailed, match="failed verification") as caught:
        export_checkpoint(tiny_checkpoint, "onnx", out_dir=folder, verify_images=4,
                          tolerance=never)
    rejected = folder / "rejected"
    assert f"moved to {rejected}" in str(caught.value)
    assert {p.name: sha256_file(p) for p in folder.iterdir() if p != rejected} == before
    assert json.loads(report.read_text())["verification"]["status"] == "passed"
    load_runtime(onnx).close()  # still matches its own report
    assert sorted(p.name for p in rejected.iterdir()) == [onnx.name, report.name]
    assert caught.value.report == rejected / report.name
    assert json.loads(caught.value.report.read_text())["verification"]["status"] == "failed"
    load_runtime(rejected / onnx.name).close()  # checked against the rejected report


def test_an_export_that_cannot_be_made_keeps_the_previous_one(tiny_checkpoint, exported,
                                                              tmp_path, monkeypatch) -> None:
    """A conversion that fails ("not built") does not replace a verified earlier export's
    report (load_runtime checks the artifact against it) nor its files: the attempt's report
    and what it wrote anyway go to rejected/. With no verified export standing, as before."""
    import dataclasses

    from skinedge.export import TARGETS, ExportError, export_checkpoint

    def refuse(job):
        partial = job.workdir / f"{job.stem}.onnx"
        partial.write_bytes(b"half an onnx")
        error = ExportError("onnx conversion failed")
        error.files = [partial]
        raise error

    folder, onnx, _, report = copy_of(exported, tmp_path)
    monkeypatch.setitem(TARGETS, "onnx", dataclasses.replace(TARGETS["onnx"], export=refuse))
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    with pytest.raises(ExportError, match="conversion failed") as caught:
        export_checkpoint(tiny_checkpoint, "onnx", out_dir=folder, verify_images=0)
    rejected = folder / "rejected"
    assert caught.value.report == rejected / report.name
    assert {p.name: sha256_file(p) for p in folder.iterdir() if p != rejected} == before
    load_runtime(onnx).close()  # still matches its own report, which still lists it
    assert sorted(p.name for p in rejected.iterdir()) == [onnx.name, report.name]
    assert caught.value.files == [rejected / onnx.name]
    doc = json.loads(caught.value.report.read_text())
    assert doc["verification"]["status"] == "not built"
    assert doc["files"][0]["path"] == str(rejected / onnx.name)

    onnx.unlink()  # the earlier export no longer stands: the report is replaced, as before
    with pytest.raises(ExportError, match="conversion failed") as caught:
        export_checkpoint(tiny_checkpoint, "onnx", out_dir=folder, verify_images=0)
    assert caught.value.report == report
    assert json.loads(report.read_text())["verification"]["status"] == "not built"
    assert onnx.read_bytes() == b"half an onnx"
