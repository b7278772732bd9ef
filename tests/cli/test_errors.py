"""One handler for user errors: a ``SkinedgeError`` from any command becomes ``error: <message>``
with its exit code; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import skinedge.cli
from skinedge.cli.main import app
from skinedge.errors import (
    ConfigError,
    DataError,
    MissingBackendError,
    ModelError,
    NotFoundError,
    SkinedgeError,
    UnsupportedHereError,
)

runner = CliRunner()


def text(result) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def split(tmp_path: Path):
    return runner.invoke(app, ["data", "split", str(tmp_path), "--out", str(tmp_path / "m.json")])


class _CustomError(SkinedgeError):
    exit_code = 7


@pytest.mark.parametrize(("error", "code"), [
    (ConfigError, 2), (DataError, 2), (ModelError, 2), (NotFoundError, 2),
    (MissingBackendError, 2), (UnsupportedHereError, 2), (_CustomError, 7),
])
def test_a_user_error_from_the_library_is_its_message_and_exit_code(
        split_raises, tmp_path, error, code) -> None:
    # Brackets survive: rich would take "[tflite]" for a style tag.
    message = f"{error.__name__} in labels.csv:3: pip install 'skinedge[tflite]'"
    split_raises(error(message))
    result = split(tmp_path)
    assert result.exit_code == code, result.output
    assert f"error: {message}" in text(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("rows"), ValueError("internal"),
                                   FileNotFoundError("/nowhere"), TypeError("bad call")])
def test_an_internal_error_propagates_as_a_bug(split_raises, tmp_path, error) -> None:
    split_raises(error)
    result = split(tmp_path)
    assert result.exception is error  # not turned into a message and exit 2
    assert result.exit_code == 1
    assert "error:" not in result.output


def test_a_runtime_only_install_is_told_which_extra_trains(split_raises, tmp_path) -> None:
    """Without the `train` extra, a command that needs torch names the extra to install."""
    split_raises(ModuleNotFoundError("No module named 'torch'", name="torch"))
    result = split(tmp_path)
    assert result.exit_code == MissingBackendError.exit_code, result.output
    assert "pip install 'skinedge[train]'" in text(result) and "torch" in text(result)


def test_another_missing_module_is_still_a_bug(split_raises, tmp_path) -> None:
    error = ModuleNotFoundError("No module named 'skinedge.nowhere'", name="skinedge.nowhere")
    split_raises(error)
    assert split(tmp_path).exception is error


def test_a_real_user_error_through_the_entry_point(tmp_path) -> None:
    """The installed command (standalone mode, not CliRunner): message on stderr, exit 2."""
    missing = tmp_path / "absent"
    done = subprocess.run(
        [sys.executable, "-m", "skinedge.cli.main", "data", "split", str(missing),
         "--out", str(tmp_path / "m.json")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: dataset folder {missing} does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_config_value_names_the_file_and_exits_2(tmp_path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("- a list\n- not a mapping\n")
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert f"error: {config}: a config is a mapping" in text(result)


NOT_UTF8 = "image,lesion_id,dx\nISIC_1,HAM_1,n\xe9vus\n".encode("latin-1")


@pytest.mark.parametrize("case", ["labels", "config", "manifest", "gate", "profile"])
def test_unreadable_user_files_are_named_not_tracebacks(case, tmp_path) -> None:
    """Files a user names that are not UTF-8 text, or do not exist: a message and exit 2."""
    bad = tmp_path / "bad.bin"
    bad.write_bytes(NOT_UTF8)
    args = {
        "labels": ["data", "split", str(tmp_path), "--out", str(tmp_path / "m.json")],
        "config": ["train", "--out", str(tmp_path / "run"), "--config", str(bad)],
        "manifest": ["train", "--out", str(tmp_path / "run"), "--manifest", str(bad)],
        "gate": ["bench", str(tmp_path), "--gate", str(bad), "--out", str(tmp_path / "b")],
        "profile": ["bench", str(tmp_path), "--profile", f"{tmp_path / 'absent.yaml'}:x",
                    "--out", str(tmp_path / "b")],
    }[case]
    if case == "labels":
        (tmp_path / "labels.csv").write_bytes(NOT_UTF8)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    named = tmp_path / ("labels.csv" if case == "labels" else
                        "absent.yaml" if case == "profile" else "bad.bin")
    assert "error:" in text(result) and str(named) in text(result)


def test_no_command_module_imports_the_root_app() -> None:
    """Groups are joined in cli/main.py with add_typer; none registers itself into main."""
    offenders = []
    for file in Path(skinedge.cli.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if "skinedge.cli.main" in names:
                offenders.append(f"{file.name}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize(("extra", "hint"), [([], True),
                                             (["--set", "distill.teacher=t", "--set", "optim.lr=x"],
                                              False)])
def test_the_teacher_hint_only_for_a_missing_teacher(tmp_path, extra, hint) -> None:
    """The packaged config's file name says "distill": only the missing field earns the hint."""
    from importlib import resources

    config = resources.files("skinedge.configs") / "ham10000-distill-lite0-cpu.yaml"
    result = runner.invoke(app, ["compress", "distill", "--out", str(tmp_path / "d"),
                                 "--config", str(config), *extra])
    assert result.exit_code == 2, result.output
    assert ("name the teacher with --teacher" in text(result)) is hint


# Config and CLI mistakes found by a user (issue 18): each is a named error with a fix, exit 2,
# raised before anything is written.

def _set(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _tiny_train(tmp_path: Path, manifest: Path, *extra: str):
    from tests.conftest import TINY

    return runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--manifest",
                               str(manifest), *_set(*TINY, "epochs=1"), *extra])


@pytest.mark.parametrize(("device", "expected"), [
    ("tpu", ["device='tpu' is not a device", "device=auto | cpu | cuda | cuda:N"]),
    ("cuda:x", ["device='cuda:x' is not a device", "device=auto | cpu | cuda | cuda:N"]),
    ("cuda", ["device='cuda': no CUDA GPU is visible (torch.cuda.is_available() is False)",
              "use device=cpu or auto"]),
    ("cuda:1", ["device='cuda:1': no CUDA GPU is visible", "use device=cpu or auto"]),
])
def test_a_bad_or_absent_device_is_named_with_the_valid_words(device, expected, tiny_manifest,
                                                             tmp_path) -> None:
    import torch

    if device.startswith("cuda") and ":x" not in device and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    result = _tiny_train(tmp_path, tiny_manifest, "--set", f"device={device}")
    assert result.exit_code == 2, (result.output, result.exception)
    assert all(part in text(result) for part in expected), text(result)
    assert not (tmp_path / "run").exists()


def test_mps_off_apple_silicon_is_named_not_a_traceback(tiny_manifest, tmp_path) -> None:
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    result = _tiny_train(tmp_path, tiny_manifest, "--set", "device=mps")
    assert result.exit_code == 2, (result.output, result.exception)
    assert "device='mps': MPS is not available here" in text(result)
    assert "use device=cpu or auto" in text(result)


def test_gan_sample_checks_its_device_option_first(tmp_path) -> None:
    result = runner.invoke(app, ["gan", "sample", str(tmp_path / "gan"), "--out",
                                 str(tmp_path / "c"), "--count", "df=1", "--device", "tpu"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "--device 'tpu' is not a device; use --device auto | cpu | cuda" in text(result)
    assert not (tmp_path / "c").exists()


def test_a_gpu_index_past_the_last_one_is_named(monkeypatch, tmp_path) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = runner.invoke(app, ["gan", "sample", str(tmp_path / "gan"), "--out",
                                 str(tmp_path / "c"), "--count", "df=1", "--device", "cuda:3"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert ("--device 'cuda:3': only cuda:0 is visible; use --device cuda, a visible cuda:N, "
            "or auto") in text(result)


def test_the_device_module_does_not_import_torch() -> None:
    code = ("import sys; from skinedge.utils.device import check_device_word; "
            "check_device_word('cuda:1'); assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(("pretrained", "expected"), [
    ("imagnet", ["model.pretrained='imagnet' is neither a known word nor an existing file",
                 "did you mean model.pretrained=imagenet?",
                 "imagenet (packaged ImageNet weights), none (random init)"]),
    ("weights.pt", ["pretrained weights file weights.pt not found",
                    "model.pretrained takes imagenet (packaged ImageNet weights), none"]),
])
def test_a_misspelt_pretrained_lists_the_valid_words(pretrained, expected, tiny_manifest,
                                                     tmp_path) -> None:
    result = _tiny_train(tmp_path, tiny_manifest, "--set", f"model.pretrained={pretrained}")
    assert result.exit_code == 2, (result.output, result.exception)
    assert all(part in text(result) for part in expected), text(result)


@pytest.mark.parametrize(("args", "expected"), [
    (["--target", "onnx", "--verify-images", "-5"],
     "--verify-images -5: a number of validation images to check the artifact on (0: no "
     "verification); give --verify-images 0 or more"),
    (["--target", "onnx", "--precision", "int8", "--calibration-images", "0"],
     "--calibration-images 0: a number of training images to calibrate INT8 on, and INT8 needs "
     "at least one; give --calibration-images 1 or more"),
    (["--target", "onnx", "--calibration-images", "-3"],
     "--calibration-images -3: a number of training images; give --calibration-images 0 or more"),
    (["--target", "onnx", "--threads", "-1"], "--threads -1: a number of runtime threads"),
    (["--target", "onnx", "--precision", "int8", "--float-first", "-1"],
     "--float-first -1: a number of leading convolutions to keep in float (0: none); give "
     "--float-first 0 or more"),
    (["--target", "onnx", "--precision", "fp32", "--float-first", "2"],
     "--float-first applies to calibrated INT8 (--precision int8 with --target onnx, openvino, "
     "tflite, executorch, web or tensorrt; not --quantizer qat): leave it out for "
     "--target onnx --precision fp32"),
])
def test_export_refuses_meaningless_counts_before_writing(args, expected, tiny_checkpoint,
                                                          tmp_path) -> None:
    out = tmp_path / "exports"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--out", str(out), *args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"error: {expected}" in text(result), text(result)
    assert not out.exists()


@pytest.fixture
def recorded_export(monkeypatch) -> list[dict]:
    """``export_checkpoint`` replaced by a recorder: the CLI's checks alone are tested."""
    import skinedge.export

    calls: list[dict] = []

    def record(checkpoint, target, **kwargs):
        calls.append({"target": target, **kwargs})
        raise ConfigError("recorded")  # stop here: the options were accepted

    monkeypatch.setattr(skinedge.export, "export_checkpoint", record)
    return calls


def _qat_copy(checkpoint: Path, tmp_path: Path) -> Path:
    """``checkpoint`` with a card saying INT8, as `skinedge compress quantize --mode qat`
    writes (sealed again, so it loads)."""
    import shutil

    from skinedge.models.card import CARD, ModelCard, checkpoint_dir

    folder = shutil.copytree(checkpoint_dir(checkpoint), tmp_path / "qat")
    card = ModelCard.from_json((folder / CARD).read_text())
    (folder / CARD).write_text(card.model_copy(update={"precision": "int8"}).sealed().to_json())
    return folder


@pytest.mark.parametrize("target", ["coreml", "qat-onnx"])
def test_export_takes_no_calibration_images_where_int8_is_not_calibrated(
        target, tiny_checkpoint, recorded_export, tmp_path) -> None:
    checkpoint = tiny_checkpoint
    if target == "qat-onnx":
        checkpoint, target = _qat_copy(tiny_checkpoint, tmp_path), "onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--target", target, "--precision",
                                 "int8", "--calibration-images", "0", "--out",
                                 str(tmp_path / "exports")])
    assert "--calibration-images" not in text(result), text(result)
    assert "error: recorded" in text(result), text(result)
    assert [(c["target"], c["calibration_images"]) for c in recorded_export] == [(target, 0)]


@pytest.mark.parametrize(("args", "expected"), [
    (["--export", "onnx:fp8"], "bad --export 'onnx:fp8': 'fp8' is not a precision (they are "
                               "fp32, fp16, int8); target onnx exports fp32, int8"),
    (["--export", "onnx:fp16"], "bad --export 'onnx:fp16': target onnx exports fp32, int8, "
                                "not fp16"),
    (["--export", "onnx,openvino:fp32:qac"],
     "bad --export 'openvino:fp32:qac': a quantizer (qac) only applies to int8, not fp32"),
    (["--export", "tflite:int8:nope"],
     "bad --export 'tflite:int8:nope': target tflite has no quantizer 'nope'; choose one of "
     "pt2e, aeq, pt2e-qat, or leave it out for pt2e"),
    (["--export", "all:int8"], "bad --export 'all:int8': all exports every target"),
    (["--export", "onnx:int8", "--calibration-images", "0"],
     "--calibration-images 0: a number of training images to calibrate the INT8 exports on"),
    (["--iterations", "0"], "--iterations 0: a number of timed runs per model; give "
                            "--iterations 1 or more"),
    (["--limit", "0"], "--limit 0: a number of test images to measure on"),
    (["--warmup", "-1"], "--warmup -1: a number of untimed runs"),
    (["--threads", "-2"], "--threads -2: a number of threads per runtime"),
])
def test_bench_checks_every_option_before_measuring(args, expected, tiny_checkpoint,
                                                    tmp_path) -> None:
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", str(tiny_checkpoint), "--out", str(out), *args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"error: {expected}" in text(result), text(result)
    assert not out.exists()


@pytest.mark.parametrize("command", [["train"], ["gan", "train"], ["compress", "distill"]])
@pytest.mark.parametrize("folder", ["absent", "empty"])
def test_resume_without_a_run_says_so(command, folder, tmp_path) -> None:
    out = tmp_path / folder
    if folder == "empty":
        out.mkdir()
    result = runner.invoke(app, [*command, "--out", str(out), "--resume"])
    assert result.exit_code == 2, (result.output, result.exception)
    said = (f"the run folder {out} does not exist, so there is no run to resume" if
            folder == "absent" else f"{out} holds no run to resume (no config.yaml")
    assert f"error: --resume: {said}" in text(result), text(result)
    assert "start a new run there without --resume" in text(result)
    assert "data.manifest" not in text(result)
    assert out.exists() == (folder == "empty")


def test_tensorrt_refusal_keeps_the_command_on_the_first_line(tiny_checkpoint, tmp_path) -> None:
    """Bench rows keep a message's first line: it must say what to run (the script), and the
    whole message still shows the trtexec command."""
    import json

    from skinedge.export import TARGETS
    from skinedge.runtimes.tensorrt import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the engine is built instead")
    if TARGETS["tensorrt"].missing_backend("fp32"):
        pytest.skip("onnx not installed")
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--target", "tensorrt",
                                 "--precision", "fp32", "--out", str(tmp_path),
                                 "--verify-images", "0"])
    assert result.exit_code == 1, (result.output, result.exception)
    report = json.loads((tmp_path / "test_efficientnet_fp32.tensorrt.export.json").read_text())
    reason = report["verification"]["reason"]
    first_line = reason.splitlines()[0]
    assert "TensorRT engine not built" in first_line
    assert ("in the folder holding them, run `sh test_efficientnet_fp32.trtexec.sh` (it writes "
            "test_efficientnet_fp32.engine; keep test_efficientnet_fp32.card.json beside it)."
            ) in first_line
    assert "\n  trtexec --onnx=test_efficientnet_fp32.trt.onnx" in reason


def test_float_first_help_states_the_default() -> None:
    from skinedge.export.records import FLOAT_FIRST

    for command in ("export", "bench"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert f"default {FLOAT_FIRST}" in " ".join(text(result).split()), command
