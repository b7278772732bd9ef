"""The benchmark harness and its CI gate, on the tiny checkpoint and two exported artifacts."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from skinedge.bench.gates import Gates, check_gates, load_gates
from skinedge.bench.harness import BenchResult, BenchSettings, run_bench
from skinedge.bench.report import int8_slower_notes, render_markdown, write_outputs
from skinedge.bench.rows import BenchRow
from skinedge.utils.cpu import cpu_info, cpu_summary

FAST = BenchSettings(threads=1, warmup=1, iterations=5)


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoint, tmp_path_factory):
    from skinedge.export import export_checkpoint

    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    out = tmp_path_factory.mktemp("bench-exports")
    onnx = export_checkpoint(tiny_checkpoint, "onnx", out_dir=out, verify_images=14).path
    ov = export_checkpoint(tiny_checkpoint, "openvino", precision="int8", out_dir=out,
                           calibration_images=40, verify_images=14).path
    return onnx, ov


@pytest.fixture(scope="module")
def bench(tiny_checkpoint, artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return run_bench([tiny_checkpoint, *artifacts], exports=[("tensorrt", "fp16")],
                     out_dir=out, settings=FAST), out


@pytest.mark.slow
def test_rows_measure_latency_memory_and_parity(bench) -> None:
    result, _ = bench
    rows = {r.label: r for r in result.rows}
    assert list(rows) == ["torch-fp32", "onnx-fp32", "openvino-int8", "tensorrt-fp16"]
    for label in ("torch-fp32", "onnx-fp32", "openvino-int8"):
        row = rows[label]
        assert row.status == "ok", row
        assert 0 < row.p50_ms <= row.p95_ms <= row.p99_ms
        assert row.cold_ms > 0 and row.load_s > 0 and row.peak_rss_mb > 0
        assert row.size_mb > 0 and row.threads == 1
        assert 0 <= row.balanced_accuracy <= 1
    assert rows["torch-fp32"].reference and rows["torch-fp32"].export is None
    assert rows["onnx-fp32"].export.status == "passed"  # read from its .export.json
    assert rows["onnx-fp32"].flip_rate == 0
    assert abs(rows["onnx-fp32"].balanced_accuracy_drop) < 1e-9
    assert rows["tensorrt-fp16"].status in ("skipped", "ok")
    assert result.test["images"] == 14  # the tiny manifest's test split
    # What each runtime chose on this CPU, and the CPU that timed them.
    onnx = rows["onnx-fp32"].execution
    assert onnx["provider"] == "CPUExecutionProvider"
    assert {"Conv", "FusedConv"} & set(onnx["compute_ops"]), onnx  # float file, float kernels
    assert rows["torch-fp32"].execution["device"] == "cpu"
    openvino = rows["openvino-int8"].execution
    assert openvino["inference_precision"] in ("f32", "bf16", "f16"), openvino
    assert set(openvino["compute_layer_precisions"]) & {"u8", "i8"}, openvino  # int8 kernels ran
    assert result.cpu == cpu_info()


@pytest.mark.slow
def test_outputs_json_markdown_junit_chart(bench) -> None:
    result, out = bench
    checks = check_gates(Gates(rules=[{"match": "*", "p95_ms": 1e6, "allow_skipped": True}]),
                         result.rows)
    files = write_outputs(result, out, checks, command="skinedge bench ...")
    doc = json.loads(files["json"].read_text())
    assert doc["rows"] == [r.to_dict() for r in result.rows]
    assert {"p50_ms", "flip_rate", "balanced_accuracy_drop", "export"} <= set(doc["rows"][1])
    assert "onnxruntime" in doc["versions"]
    assert doc["cpu"] == cpu_info() and doc["cpu_summary"] == cpu_summary()
    onnx = doc["rows"][1]["execution"]
    assert onnx["provider"] == "CPUExecutionProvider" and onnx["compute_ops"]
    assert doc["notes"] == int8_slower_notes(result)
    md = files["markdown"].read_text()
    assert "| openvino-int8 | ok |" in md and "Gate: " in md
    assert md.startswith(f"Machine: {cpu_summary()}.")
    assert "- **onnx-fp32** (onnxruntime): provider=CPUExecutionProvider, compute_ops=" in md
    suite = ET.parse(files["junit"]).getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(checks)
    assert files["chart"].stat().st_size > 1000


@pytest.mark.slow
def test_export_reports_name_the_machine_that_verified_them(artifacts) -> None:
    for artifact, target in zip(artifacts, ("onnx", "openvino")):
        report = next(artifact.parent.glob(f"{artifact.stem}.{target}.export.json"))
        machine = json.loads(report.read_text())["machine"]
        assert machine["cpu"] == cpu_info() and machine["cpu_summary"] == cpu_summary()
        assert machine["verification_execution"], report  # what its runtime chose here
    onnx_report = next(artifacts[0].parent.glob("*.onnx.export.json"))
    execution = json.loads(onnx_report.read_text())["machine"]["verification_execution"]
    assert execution["provider"] == "CPUExecutionProvider" and execution["compute_ops"]


NO_VNNI = {"model": "AMD EPYC 7B13", "vendor": "AuthenticAMD", "arch": "x86_64",
           "logical_cores": 2, "physical_cores": 1, "usable_cores": 2,
           "isa": ["avx", "avx2", "fma"], "int8_dot": False}
VNNI = {**NO_VNNI, "model": "Intel(R) Xeon(R) CPU @ 2.80GHz", "vendor": "GenuineIntel",
        "isa": ["avx", "avx2", "avx512_vnni", "avx512f", "fma"], "int8_dot": True}


def _timed(label: str, p50_ms: float, backend: str = "onnxruntime", **execution) -> BenchRow:
    return BenchRow(label, None, backend=backend, threads=1, cpus=(0,), execution=execution,
                    p50_ms=p50_ms, p95_ms=p50_ms, p99_ms=p50_ms, reference=label == "torch-fp32")


def _rows() -> list[BenchRow]:
    return [_timed("torch-fp32", 5.0, "torch", device="cpu"),
            _timed("onnx-fp32", 1.0, provider="CPUExecutionProvider"),
            _timed("onnx-int8", 2.0, provider="CPUExecutionProvider"),
            _timed("openvino-fp32", 3.0, "openvino", inference_precision="f32"),
            _timed("openvino-int8-qac", 1.5, "openvino", inference_precision="f32"),
            BenchRow("tflite-int8", None, "failed", "not installed")]


def test_an_int8_row_slower_than_fp32_says_why_with_the_cpu(tmp_path) -> None:
    result = BenchResult(_rows(), "torch-fp32", {"source": "test", "images": 8}, FAST,
                         cpu=NO_VNNI)
    assert int8_slower_notes(result) == [
        "onnx-int8: INT8 slower than FP32 (p50 2.00 ms vs 1.00 ms for onnx-fp32): this CPU has "
        "no VNNI/AMX int8 dot product"]  # openvino-int8-qac is faster than openvino-fp32
    md = render_markdown(result)
    assert md.startswith("Machine: AMD EPYC 7B13, x86_64, 2 logical cores (1 physical), "
                         "AVX AVX2 FMA, no VNNI/AMX int8 dot product.")
    assert "- Note: onnx-int8: INT8 slower than FP32" in md
    assert "- **openvino-int8-qac** (openvino): inference_precision=f32" in md
    doc = json.loads(write_outputs(result, tmp_path)["json"].read_text())
    assert doc["cpu"] == NO_VNNI and doc["notes"] == int8_slower_notes(result)
    assert doc["rows"][2]["execution"] == {"provider": "CPUExecutionProvider"}

    on_vnni = BenchResult(_rows(), "torch-fp32", {"source": "test", "images": 8}, FAST, cpu=VNNI)
    assert int8_slower_notes(on_vnni) == [
        "onnx-int8: INT8 slower than FP32 (p50 2.00 ms vs 1.00 ms for onnx-fp32): although this "
        "CPU has an int8 dot product (AVX512-VNNI): check what the runtime chose "
        "(provider=CPUExecutionProvider)"]
    unknown = BenchResult(_rows(), "torch-fp32", {"source": "test", "images": 8}, FAST,
                          cpu={**NO_VNNI, "isa": [], "int8_dot": None})
    assert int8_slower_notes(unknown)[0].endswith("int8 dot product support is unknown")


def test_a_device_row_is_compared_with_fp32_on_the_same_device() -> None:
    rows = [_timed("torch-fp32", 5.0, "torch"), _timed("web-fp32", 9.0), _timed("web-int8", 4.0),
            _timed("web-fp32 @ chromium", 47.0), _timed("web-int8 @ chromium", 66.0)]
    result = BenchResult(rows, "torch-fp32", {"source": "test", "images": 8}, FAST, cpu=VNNI)
    assert int8_slower_notes(result) == [
        "web-int8 @ chromium: INT8 slower than FP32 (p50 66.00 ms vs 47.00 ms for web-fp32 @ "
        "chromium): measured on the device, whose CPU and runtime are in its Devices line; its "
        "runtime's int8 kernels are slower there"]


def test_int8_as_fast_as_fp32_needs_no_note() -> None:
    rows = [_timed("torch-fp32", 5.0, "torch"), _timed("onnx-fp32", 1.0),
            _timed("onnx-int8", 1.0)]
    result = BenchResult(rows, "torch-fp32", {"source": "test", "images": 8}, FAST, cpu=NO_VNNI)
    assert int8_slower_notes(result) == [] and "Note:" not in render_markdown(result)


def test_report_removes_what_an_earlier_run_left_and_this_one_does_not_write(tmp_path) -> None:
    """No model ran (no chart) and no gate (no junit.xml): an earlier run's files go."""
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.png").write_bytes(b"an earlier run's chart")
    (out / "junit.xml").write_text("<testsuite name='an earlier gate'/>")
    rows = [BenchRow("torch-fp32", None, status="failed", reason="could not load",
                     reference=True)]
    result = BenchResult(rows, "torch-fp32", {"source": "test", "images": 0}, FAST)

    files = write_outputs(result, out, None, command="skinedge bench ...")

    assert "chart" not in files and "junit" not in files
    assert not (out / "bench.png").exists() and not (out / "junit.xml").exists()
    assert json.loads(files["json"].read_text())["rows"][0]["status"] == "failed"


@pytest.mark.slow
def test_gate_passes_and_fails_with_readable_reasons(bench, tmp_path) -> None:
    result, _ = bench
    passing = tmp_path / "pass.yaml"
    passing.write_text("require: [onnx-fp32, openvino-int8]\nrules:\n"
                       "  - match: '*-fp32'\n    max_flip_rate: 0\n    p95_ms: 60000\n"
                       "  - match: '*'\n    allow_skipped: true\n")
    assert all(c.passed for c in check_gates(load_gates(passing), result.rows))
    failing = tmp_path / "fail.yaml"
    failing.write_text("require: [tflite-int8]\nrules:\n  - match: openvino-int8\n"
                       "    p95_ms: 0.0001\n  - match: tensorrt-*\n    p95_ms: 5\n")
    failed = [c for c in check_gates(load_gates(failing), result.rows) if not c.passed]
    messages = " | ".join(c.message for c in failed)
    assert "tflite-int8: required but not benchmarked" in messages
    assert "openvino-int8: p95_ms" in messages and "> 0.0001ms" in messages
    if result.rows[-1].status == "skipped":  # TensorRT off a GPU fails unless allowed
        assert "tensorrt-fp16: skipped" in messages


def test_gate_file_typos_are_refused(tmp_path) -> None:
    bad = tmp_path / "gates.yaml"
    bad.write_text("rules:\n  - match: '*'\n    p95: 10\n")
    with pytest.raises(ValueError, match="rules.0.p95"):
        load_gates(bad)


@pytest.mark.slow
def test_cli_gate_exits_nonzero_when_a_budget_is_missed(tiny_checkpoint, artifacts, tmp_path) -> None:
    from skinedge.cli.main import app

    gate = tmp_path / "gates.yaml"
    gate.write_text("rules:\n  - match: onnx-fp32\n    p95_ms: 0.0001\n")
    runner = CliRunner()
    args = ["bench", str(tiny_checkpoint), str(artifacts[0]), "--out", str(tmp_path / "b"),
            "--iterations", "3", "--warmup", "1", "--gate", str(gate)]
    failed = runner.invoke(app, args)
    assert failed.exit_code == 1, failed.output
    assert "gate failed" in failed.output and "onnx-fp32: p95_ms" in failed.output
    assert (tmp_path / "b" / "junit.xml").is_file()
    gate.write_text("rules:\n  - match: onnx-fp32\n    p95_ms: 60000\n    max_flip_rate: 0\n")
    passed = runner.invoke(app, args)
    assert passed.exit_code == 0, passed.output
    assert "gate passed" in passed.output


def test_profiles_are_checked_against_this_machine(tmp_path) -> None:
    import os

    from skinedge.bench.profiles import load_profile

    assert load_profile("single-core") == {"threads": 1, "cpus": [0]}
    with pytest.raises(ValueError, match="no profile"):
        load_profile("pixel-99")
    custom = tmp_path / "p.yaml"
    custom.write_text(f"huge:\n  threads: 2\n  cpus: [{max(os.sched_getaffinity(0)) + 1000}]\n")
    with pytest.raises(ValueError, match="may only use"):
        load_profile(f"{custom}:huge")


def test_shipped_example_gates_load() -> None:
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "examples" / "gates").glob("*.yaml")):
        gates = load_gates(path)
        assert gates.rules and gates.require, path


def test_the_phone_gate_holds_int8_to_parity_and_passes_core_ml_off_macos() -> None:
    from pathlib import Path

    gates = load_gates(Path(__file__).parents[2] / "examples" / "gates" / "phone.yaml")

    def row(label, flips=0.01, drop=0.005, **more):
        return BenchRow(label, None, size_mb=3.8, p95_ms=6.0, flip_rate=flips,
                        balanced_accuracy_drop=drop, **more)

    rows = [row("torch-fp32", 0.0, 0.0), row("tflite-int8"), row("executorch-int8"),
            BenchRow("coreml-int8", None, "skipped", "Core ML predicts on macOS only"),
            row("web-fp32", 0.0, 0.0),
            BenchRow("web-fp32 @ chromium", None, p95_ms=48.0, device="chromium")]
    assert all(c.passed for c in check_gates(gates, rows)), check_gates(gates, rows)
    rows[1] = row("tflite-int8", flips=0.040, drop=0.0103)  # the student in RESULTS.md, pipeline
    failed = [c.message for c in check_gates(gates, rows) if not c.passed]
    assert failed == ["tflite-int8: balanced_accuracy_drop 0.0103 > 0.01",
                      "tflite-int8: flip_rate 0.04 > 0.03"]


def test_required_rows_must_be_ok_not_just_present() -> None:
    rows = [BenchRow("tflite-int8", None, "failed parity", "11% flips")]
    checks = check_gates(Gates(require=["tflite-int8"]), rows)
    assert [c.passed for c in checks] == [False]
    assert "tflite-int8: failed parity (11% flips)" in checks[0].message


@pytest.mark.slow
def test_an_export_that_fails_parity_is_still_measured(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    from skinedge.export import TARGETS, Tolerance

    if TARGETS["onnx"].missing_backend("int8"):
        pytest.skip("onnx/nncf not installed")
    monkeypatch.setitem(TARGETS["onnx"].tolerances, "int8", Tolerance(0.0, 0.0))
    result = run_bench([tiny_checkpoint], exports=[("onnx", "int8")], out_dir=tmp_path,
                       settings=FAST, calibration_images=20)
    row = result.rows[1]
    assert row.label == "onnx-int8" and row.status == "failed parity"
    assert "rejected" in str(row.model) and row.p50_ms > 0 and row.flip_rate is not None
    assert "probabilities differ" in row.reason and row.export.status == "failed"


@pytest.mark.slow
def test_executorch_exports_are_benchmarked_with_parity(tiny_checkpoint, tmp_path) -> None:
    from skinedge.export import TARGETS

    if TARGETS["executorch"].missing_backend("int8"):
        pytest.skip("executorch not installed")
    result = run_bench([tiny_checkpoint], exports=[("executorch", "fp32"), ("executorch", "int8")],
                       out_dir=tmp_path, settings=FAST, calibration_images=40)
    rows = {r.label: r for r in result.rows}
    for label in ("executorch-fp32", "executorch-int8"):
        row = rows[label]
        assert row.status == "ok" and row.export.status == "passed", row
        assert row.model.suffix == ".pte" and 0 < row.p50_ms <= row.p95_ms
        assert row.execution == {"xnnpack": True, "threads": 1}
        assert row.flip_rate is not None and row.flip_rate <= 1 / 14
    assert rows["executorch-fp32"].flip_rate == 0
    assert rows["executorch-int8"].size_mb < rows["executorch-fp32"].size_mb


@pytest.mark.slow
def test_a_requested_export_that_fails_makes_bench_exit_1_with_its_hint(
        tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """The reports are written, the row says why, and the install hint keeps its brackets."""
    import skinedge.export
    from skinedge.cli.main import app
    from skinedge.errors import MissingBackendError

    def export_checkpoint(*args, **kwargs):
        raise MissingBackendError("litert_torch is not installed; pip install 'skinedge[tflite]'")

    monkeypatch.setattr(skinedge.export, "export_checkpoint", export_checkpoint)
    out = tmp_path / "b"
    result = CliRunner().invoke(app, ["bench", str(tiny_checkpoint), "--export", "tflite:int8",
                                      "--out", str(out), "--iterations", "3", "--warmup", "1",
                                      "--limit", "8"])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "error: tflite-int8 could not be measured" in output
    assert "pip install 'skinedge[tflite]'" in output
    rows = {r["label"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert rows["tflite-int8"]["status"] == "failed" and rows["torch-fp32"]["status"] == "ok"


def _bench_cli(tiny_checkpoint, model, out):
    from skinedge.cli.main import app

    return CliRunner().invoke(app, ["bench", str(tiny_checkpoint), str(model), "--out", str(out),
                                    "--iterations", "3", "--warmup", "1", "--limit", "8"])


@pytest.mark.slow
def test_a_given_artifact_that_differs_from_its_report_stops_bench(tiny_checkpoint, artifacts,
                                                                   tmp_path) -> None:
    """Flipped weight bytes still run (with wrong answers): the export report's sha256 stops
    the benchmark before anything is measured, exit 2 with the file, the report and the fix."""
    import shutil

    from tests.reliability.inputs import flip_onnx_weights

    folder = tmp_path / "exports"
    shutil.copytree(artifacts[0].parent, folder)
    model = folder / artifacts[0].name
    flip_onnx_weights(model)
    result = _bench_cli(tiny_checkpoint, model, tmp_path / "b")
    assert result.exit_code == 2, result.output
    output = "".join(result.output.split())  # rich wraps long paths anywhere
    assert "error:" in output and model.name in output and ".onnx.export.json" in output
    assert "sha256differs" in output and "exportitagain" in output
    assert not (tmp_path / "b" / "bench.json").exists()


@pytest.mark.slow
def test_a_given_truncated_openvino_bin_stops_bench(tiny_checkpoint, artifacts, tmp_path) -> None:
    import shutil

    folder = tmp_path / "exports"
    shutil.copytree(artifacts[1].parent, folder)
    for report in folder.glob("*.export.json"):  # copied without its report: still refused
        report.unlink()
    xml = folder / artifacts[1].name
    weights = xml.with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:-1000])
    result = _bench_cli(tiny_checkpoint, xml, tmp_path / "b")
    assert result.exit_code == 2, result.output
    output = "".join(result.output.split())
    assert "error:" in output and weights.name in output and "truncated" in output


@pytest.mark.slow
def test_a_given_artifact_its_runtime_refuses_stops_bench(tiny_checkpoint, tmp_path) -> None:
    """A file that parses but that its runtime cannot load is an error, not a `failed` row."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from skinedge.runtimes import read_artifact_card

    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    helper.set_model_props(model, {"skinedge.card": read_artifact_card(tiny_checkpoint).to_json()})
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    result = _bench_cli(tiny_checkpoint, path, tmp_path / "b")
    assert result.exit_code == 2, result.output
    output = "".join(result.output.split())
    assert "error:" in output and "odd.onnx" in output and "ONNXRuntimecouldnotloadit" in output


def _folder_with_an_outside_image(make_labels_folder, *extra_rows: str):
    """A labels.csv folder (2 images per class) with a row naming ``../outside.jpg`` (a copy
    of one of its images, beside the folder) and ``extra_rows``."""
    import shutil

    folder = make_labels_folder(per_class=2)
    shutil.copy(folder / "images" / "mel_000.jpg", folder.parent / "outside.jpg")
    with open(folder / "labels.csv", "a") as f:
        f.writelines(f"{row}\n" for row in ("../outside.jpg,L_out,mel", *extra_rows))
    return folder


def test_bench_on_a_folder_with_bad_rows_lists_them_in_its_out_folder(
        tiny_checkpoint, make_labels_folder, tmp_path) -> None:
    """Before anything is measured; the fix names bench's own options (it has no --skip-bad)."""
    from skinedge.data.records import DataValidationError

    folder = _folder_with_an_outside_image(make_labels_folder, "images/nv_000.jpg,L_x,melanomma")
    out = tmp_path / "bench"
    with pytest.raises(DataValidationError) as caught:
        run_bench([tiny_checkpoint], data=folder, out_dir=out, settings=FAST)
    message = str(caught.value)
    report = out / "problems.csv"
    assert f"Every problem is listed in {report}" in message
    assert "--skip-bad" not in message and "--manifest" in message
    assert "[outside-root]" in message and "--allow-outside-root" in message
    assert "'melanomma'" in message
    listed = report.read_text()
    assert "outside-root" in listed and "unknown-label" in listed
    assert not list(out.glob("*.npy"))


def test_bench_reads_outside_images_of_a_folder_it_is_told_to_trust(
        tiny_checkpoint, make_labels_folder) -> None:
    from skinedge.bench.harness import load_test_arrays
    from skinedge.data.records import DataValidationError
    from skinedge.models.checkpoint import load_card

    folder = _folder_with_an_outside_image(make_labels_folder)
    card = load_card(tiny_checkpoint)
    with pytest.raises(DataValidationError, match="outside-root"):
        load_test_arrays(card, data=folder, problems_report=folder.parent / "problems.csv")
    arrays = load_test_arrays(card, data=folder, allow_outside_root=True)
    assert len(arrays) == 15  # 7 classes x 2 images, and the one outside the folder


@pytest.mark.slow
def test_a_bench_that_reads_its_folder_removes_an_earlier_problems_report(
        tiny_checkpoint, make_labels_folder, tmp_path) -> None:
    folder = _folder_with_an_outside_image(make_labels_folder)
    out = tmp_path / "bench"
    out.mkdir()
    (out / "problems.csv").write_text("source,kind,message\nold,old,old\n")
    result = run_bench([tiny_checkpoint], data=folder, out_dir=out, settings=FAST,
                       allow_outside_root=True)
    assert result.test["images"] == 15 and result.rows[0].status == "ok"
    assert not (out / "problems.csv").exists()


def test_bench_into_a_folder_it_cannot_write_stops_before_measuring(
        tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """(A read-only --out through the CLI: tests/reliability/test_faults.py.)"""
    import errno
    import tempfile

    from skinedge.errors import WriteError

    out = tmp_path / "bench"
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if kwargs.get("dir") == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(out / ".x.tmp"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(WriteError, match=f"{out} is not writable"):
        run_bench([tiny_checkpoint], out_dir=out, settings=FAST)
    assert list(out.iterdir()) == []
