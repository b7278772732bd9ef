"""The bad-input catalogue: every kind of bad input, against every command that reads it.

Each case runs one command through the CLI (in process) on a damaged copy of a good input and
asserts:

- the exit code (2 for a user's mistake; 0 where the input is valid and must simply work);
- that the output names the file or row and the fix, with phrases chosen per case;
- that every ``--option`` the message suggests exists for the command the user ran (or for the
  ``skinedge ...`` command it quotes);
- that nothing half-written is left where the command writes its results.

The case count per command is printed by ``pytest tests/reliability -q --co``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from skinedge.cli.main import app
from tests.conftest import TINY, make_tiny_dataset, manifest_of
from tests.reliability import inputs

runner = CliRunner()
SET_TINY = [word for item in TINY for word in ("--set", item)]
SET_GAN = [word for item in ["resolution=16", "batch_size=8", "kimg=0.016", "snapshot_kimg=0.016",
                             "model.channel_base=128", "model.channel_max=32"]
           for word in ("--set", item)]
BENCH_QUICK = ["--warmup", "0", "--iterations", "2"]

#: Files a failed command may leave on purpose: the list of every problem it found.
REPORTS = ("*.problems.csv", "problems.csv")


# --------------------------------------------------------------------------- workspace


@dataclass
class Workspace:
    """Own copies of the inputs one case may damage; ``out`` does not exist yet."""

    data: Path  # labels.csv folder, 7 classes x 6 images of 48x64
    manifest: Path  # its grouped split
    checkpoint: Path  # a copy of the shared tiny checkpoint (32 px test_efficientnet)
    image: Path  # one good image, for explain
    out: Path
    tmp: Path


@pytest.fixture(scope="module")
def good_inputs(tmp_path_factory, tiny_checkpoint) -> tuple[Path, Path]:
    """A labels folder and its manifest, made once and copied per case."""
    from skinedge.data import make_manifest, read_dataset

    root = tmp_path_factory.mktemp("catalogue")
    data = make_tiny_dataset(root / "data", per_class=6)
    make_manifest(read_dataset(data)).save(root / "manifest.json")
    return data, root / "manifest.json"


@pytest.fixture
def ws(good_inputs, tiny_checkpoint, tmp_path) -> Workspace:
    data, manifest = good_inputs
    shutil.copytree(data, tmp_path / "data")
    doc = json.loads(manifest.read_text())
    doc["root"] = str(tmp_path / "data")
    (tmp_path / "manifest.json").write_text(json.dumps(doc, indent=1))
    checkpoint = inputs.copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    return Workspace(tmp_path / "data", tmp_path / "manifest.json", checkpoint,
                     tmp_path / "data/images/mel_000.jpg", tmp_path / "out", tmp_path)


# --------------------------------------------------------------------------- checks


def flat(text: str) -> str:
    """CLI output with the console's line wrapping undone."""
    return " ".join(text.split())


def _command(words: list[str]):
    command = typer.main.get_command(app)
    for word in words:
        if not hasattr(command, "commands") or word not in command.commands:
            break
        command = command.commands[word]
    return command


def options_of(words: list[str]) -> set[str]:
    command = _command(words)
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def assert_options_exist(output: str, argv: list[str]) -> None:
    """Every --option the output suggests exists: bare ones for the command that ran, ones in
    a quoted command (`skinedge data split --classes`) for the command they quote. Quoted
    commands of other programs (`pip install ...`, trtexec's lines) are not ours to check."""
    option = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
    for span in re.findall(r"`([^`]+)`", output):
        words = span.split()
        if words[:1] == ["skinedge"]:
            for name in option.findall(span):
                assert name in options_of(words[1:3]), \
                    f"{name} is not an option of `{span}`: {output}"
    rest = re.sub(r"`[^`]+`", "", output)
    rest = "\n".join(line for line in rest.splitlines() if "trtexec" not in line)
    for name in option.findall(rest):
        assert name in options_of(argv), f"{name} is not an option of {argv[:2]}: {output}"


def leftovers(out: Path) -> list[str]:
    """Files under ``out`` other than the problem reports a failed command writes on purpose."""
    if not out.exists():
        return []
    files = [p for p in out.rglob("*") if p.is_file()]
    return sorted(str(p.relative_to(out)) for p in files
                  if not any(p.match(pattern) for pattern in REPORTS))


def run_case(argv: list[str], exit_code: int, phrases: list[str], out: Path):
    result = runner.invoke(app, [str(a) for a in argv])
    output = flat(result.output)
    assert result.exit_code == exit_code, output or repr(result.exception)
    if exit_code != 0:
        assert "Traceback" not in result.output, output
        assert output.startswith("error:") or "error:" in output, output
        assert leftovers(out) == [], f"half-written outputs left: {leftovers(out)}"
    for phrase in phrases:
        assert phrase.lower() in output.lower(), f"{phrase!r} not in: {output}"
    assert_options_exist(result.output, [str(a) for a in argv])
    return result


# --------------------------------------------------------------------------- commands


Argv = Callable[[Workspace], list]

#: Commands that read a labelled dataset folder.
FOLDER_COMMANDS: dict[str, Argv] = {
    "data split": lambda w: ["data", "split", w.data, "--out", w.out / "manifest.json"],
    "evaluate --data": lambda w: ["evaluate", w.checkpoint, "--data", w.data, "--subset", "all",
                                  "--out", w.out],
    "bench --data": lambda w: ["bench", w.checkpoint, "--data", w.data, "--out", w.out,
                               *BENCH_QUICK],
}

#: Commands that read a split manifest.
MANIFEST_COMMANDS: dict[str, Argv] = {
    "train": lambda w: ["train", "--manifest", w.manifest, "--out", w.out, *SET_TINY],
    "evaluate": lambda w: ["evaluate", w.checkpoint, "--manifest", w.manifest, "--out", w.out],
    "export": lambda w: ["export", w.checkpoint, "--target", "onnx", "--manifest", w.manifest,
                         "--out", w.out],
    "bench": lambda w: ["bench", w.checkpoint, "--manifest", w.manifest, "--out", w.out,
                        *BENCH_QUICK],
    "gan train": lambda w: ["gan", "train", "--manifest", w.manifest, "--out", w.out, *SET_GAN],
    "compress distill": lambda w: ["compress", "distill", "--teacher", w.checkpoint,
                                   "--manifest", w.manifest, "--out", w.out, *SET_TINY],
    "compress quantize": lambda w: ["compress", "quantize", w.checkpoint, "--mode", "ptq",
                                    "--target", "onnx", "--manifest", w.manifest,
                                    "--out", w.out],
}

#: Commands that read a checkpoint (the good manifest beside it).
CHECKPOINT_COMMANDS: dict[str, Argv] = {
    "evaluate": MANIFEST_COMMANDS["evaluate"],
    "explain": lambda w: ["explain", w.checkpoint, w.image, "--out", w.out],
    "export": MANIFEST_COMMANDS["export"],
    "bench": MANIFEST_COMMANDS["bench"],
    "compress distill": MANIFEST_COMMANDS["compress distill"],
    "compress quantize": MANIFEST_COMMANDS["compress quantize"],
}

#: Commands that read a training config and --set overrides.
CONFIG_COMMANDS: dict[str, Argv] = {
    "train": lambda w: ["train", "--manifest", w.manifest, "--out", w.out],
    "gan train": lambda w: ["gan", "train", "--manifest", w.manifest, "--out", w.out],
    "compress distill": lambda w: ["compress", "distill", "--teacher", w.checkpoint,
                                   "--manifest", w.manifest, "--out", w.out],
}


# --------------------------------------------------------------------------- images

#: image maker -> phrases the error must contain besides the file (None: the image is valid)
IMAGE_CASES: dict[str, tuple[Callable[[Path], str], list[str] | None]] = {
    "missing": (inputs.missing, ["not found"]),
    "zero bytes": (inputs.zero_bytes, ["replace the file"]),
    "text named .jpg": (inputs.text_named_jpg, ["not an image", "replace the file"]),
    "truncated jpeg": (inputs.truncated_jpeg, ["truncated or corrupt", "copy it again"]),
    "cmyk": (inputs.cmyk, ["CMYK", "8-bit sRGB"]),
    "rgba transparent": (inputs.rgba_transparent, ["transparent", "save as RGB"]),
    "16-bit": (inputs.sixteen_bit, ["16-bit", "convert it to 8-bit RGB"]),
    "grayscale": (inputs.grayscale, ["grayscale", "original colour image"]),
    "1x1": (inputs.one_pixel, ["1x1", "original image"]),
    "decompression bomb": (inputs.decompression_bomb, ["decompression-bomb"]),
    "exif rotated": (inputs.exif_rotated, None),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_bad_image_in_a_folder(ws, command, case):
    make, phrases = IMAGE_CASES[case]
    image = make(ws.data)
    row = inputs.add_row(ws.data, image, dx="nv")
    argv = FOLDER_COMMANDS[command](ws)

    if phrases is None:  # valid: the command works
        run_case(argv, 0, [], ws.out)
        return
    # bench has no --skip-bad: it points at --manifest (a split made once, bad rows handled)
    leave_out = "--manifest" if command == "bench --data" else "--skip-bad"
    run_case(argv, 2, [row, Path(image).name, *phrases, leave_out], ws.out)


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_bad_image_given_to_explain(ws, case):
    make, phrases = IMAGE_CASES[case]
    image = ws.data / make(ws.data)
    argv = ["explain", ws.checkpoint, image, "--out", ws.out]

    if phrases is None:
        run_case(argv, 0, [], ws.out)
        (overlay,) = ws.out.glob("*.png")
        assert overlay.is_file()
        return
    run_case(argv, 2, [image.name, *phrases], ws.out)


# --------------------------------------------------------------------------- labels tables


def _unknown_label(w: Workspace) -> list[str]:
    return [inputs.add_row(w.data, "images/mel_001.jpg", dx="melanocytic"), "melanocytic"]


def _duplicate_id(w: Workspace) -> list[str]:
    return [inputs.add_row(w.data, "images/mel_001.jpg", dx="mel"), "more than once"]


def _missing_column(w: Workspace) -> list[str]:
    rows = inputs.labels_rows(w.data)
    inputs.write_labels(w.data, [row[:2] for row in rows])
    return ["labels.csv", "dx"]


def _wrong_delimiter(w: Workspace) -> list[str]:
    inputs.write_labels(w.data, inputs.labels_rows(w.data), delimiter=";")
    return ["labels.csv", "column"]


def _empty_file(w: Workspace) -> list[str]:
    (w.data / "labels.csv").write_text("")
    return ["labels.csv", "empty"]


def _path_traversal(w: Workspace) -> list[str]:
    return [inputs.add_row(w.data, "../../../../etc/passwd"), "outside the dataset folder",
            "--allow-outside-root"]


def _image_outside(w: Workspace) -> Path:
    """A good image beside the dataset folder, not in it."""
    return Path(shutil.copy(w.image, w.tmp / "elsewhere.jpg"))


def _absolute_outside(w: Workspace) -> list[str]:
    return [inputs.add_row(w.data, str(_image_outside(w))), "outside the dataset folder"]


def _symlink_outside(w: Workspace) -> list[str]:
    (w.data / "images/link.jpg").symlink_to(_image_outside(w))
    return [inputs.add_row(w.data, "images/link.jpg"), "outside the dataset folder"]


def _bom_crlf(w: Workspace) -> None:
    inputs.write_labels(w.data, inputs.labels_rows(w.data), newline="\r\n", bom=True)


def _unicode_and_spaces(w: Workspace) -> None:
    shutil.copy(w.image, w.data / "images/Läsion 01 é.jpg")
    inputs.add_row(w.data, "images/Läsion 01 é.jpg", dx="mel", lesion="L ü 1")


TABLE_CASES: dict[str, Callable[[Workspace], list[str] | None]] = {
    "unknown label": _unknown_label,
    "duplicate id": _duplicate_id,
    "missing column": _missing_column,
    "wrong delimiter": _wrong_delimiter,
    "empty file": _empty_file,
    "path traversal": _path_traversal,
    "absolute path outside": _absolute_outside,
    "symlink outside": _symlink_outside,
    "bom and crlf": _bom_crlf,
    "unicode and spaces": _unicode_and_spaces,
}


@pytest.mark.parametrize("case", TABLE_CASES)
@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_bad_labels_table(ws, command, case):
    phrases = TABLE_CASES[case](ws)
    argv = FOLDER_COMMANDS[command](ws)

    run_case(argv, 0 if phrases is None else 2, phrases or [], ws.out)


# --------------------------------------------------------------------------- manifests


def _changed_image(w: Workspace) -> list[str]:
    inputs.flip_bytes(w.data / "images/nv_000.jpg", 200, 16)
    return ["nv_000.jpg", "changed since the manifest was made", "skinedge data split"]


def _bad_json(w: Workspace) -> list[str]:
    inputs.truncate(w.manifest)
    return ["manifest.json", "skinedge data split"]


def _unknown_split(w: Workspace) -> list[str]:
    inputs.edit_manifest(w.manifest, lambda d: inputs.first_row(d, "val").update(
        split="validation"))
    return ["manifest.json", "validation"]


def _image_in_two_splits(w: Workspace) -> list[str]:
    def copy_train_row_into_test(doc):
        row = dict(inputs.first_row(doc, "train"), split="test")
        doc["rows"].append(row)

    inputs.edit_manifest(w.manifest, copy_train_row_into_test)
    return ["manifest.json", "train", "test"]


def _wrong_split_hash(w: Workspace) -> list[str]:
    inputs.edit_manifest(w.manifest, lambda d: d.update(split_hash="0" * 64))
    return ["manifest.json", "split_hash", "skinedge data split"]


def _row_outside_root(w: Workspace) -> list[str]:
    inputs.edit_manifest(w.manifest, lambda d: inputs.first_row(d, "test").update(
        image="../../etc/hostname"))
    return ["manifest.json", "outside the dataset folder"]


def _no_rows(w: Workspace) -> list[str]:
    inputs.edit_manifest(w.manifest, lambda d: d.pop("rows"))
    return ["manifest.json", "rows"]


MANIFEST_CASES: dict[str, Callable[[Workspace], list[str]]] = {
    "file changed after the split": _changed_image,
    "not JSON": _bad_json,
    "unknown split": _unknown_split,
    "image in two splits": _image_in_two_splits,
    "wrong split_hash": _wrong_split_hash,
    "row outside the root": _row_outside_root,
    "no rows": _no_rows,
}


@pytest.mark.parametrize("case", MANIFEST_CASES)
@pytest.mark.parametrize("command", MANIFEST_COMMANDS)
def test_bad_manifest(ws, command, case):
    phrases = MANIFEST_CASES[case](ws)

    run_case(MANIFEST_COMMANDS[command](ws), 2, phrases, ws.out)


# --------------------------------------------------------------------------- checkpoints


def _corrupt_weights(w: Workspace) -> list[str]:
    inputs.flip_bytes(w.checkpoint / "model.safetensors", 4000, 64)
    return ["model.safetensors", "sha256"]


def _missing_card(w: Workspace) -> list[str]:
    (w.checkpoint / "card.json").unlink()
    return ["card.json", "skinedge train"]


def _card_not_json(w: Workspace) -> list[str]:
    inputs.truncate(w.checkpoint / "card.json")
    return ["card.json"]


def _card_classes_swapped(w: Workspace) -> list[str]:
    def swap(card):
        card["classes"][0], card["classes"][1] = card["classes"][1], card["classes"][0]

    inputs.edit_card(w.checkpoint, swap)
    return ["card.json", "classes"]


def _card_input_size(w: Workspace) -> list[str]:
    inputs.edit_card(w.checkpoint, lambda c: c["preprocess"].update(input_size=48))
    return ["card.json", "preprocess"]


def _weights_of_another_architecture(w: Workspace) -> list[str]:
    """Weights of a test_resnet under a card that says test_efficientnet, both hashes right:
    what copying model.safetensors from another run gives."""
    from skinedge.models import create_classifier
    from skinedge.models.card import ModelCard
    from skinedge.models.checkpoint import save_checkpoint
    from skinedge.utils.io import sha256_file

    card = ModelCard.from_json((w.checkpoint / "card.json").read_text())
    other, _ = create_classifier("test_resnet", card.num_classes, pretrained="none")
    save_checkpoint(w.tmp / "other", other, card.model_copy(update={"architecture": "test_resnet"}))
    shutil.copy(w.tmp / "other/model.safetensors", w.checkpoint / "model.safetensors")
    resealed = card.model_copy(update={
        "weights_sha256": sha256_file(w.checkpoint / "model.safetensors")})
    (w.checkpoint / "card.json").write_text(resealed.sealed().to_json())
    return ["model.safetensors", "do not fit", "test_efficientnet"]


CHECKPOINT_CASES: dict[str, Callable[[Workspace], list[str]]] = {
    "corrupt safetensors": _corrupt_weights,
    "missing card": _missing_card,
    "card not JSON": _card_not_json,
    "edited card: classes swapped": _card_classes_swapped,
    "edited card: input size": _card_input_size,
    "weights of another architecture": _weights_of_another_architecture,
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
@pytest.mark.parametrize("command", CHECKPOINT_COMMANDS)
def test_bad_checkpoint(ws, tiny_checkpoint, command, case):
    ws.manifest = manifest_of(tiny_checkpoint)  # its own split: distill refuses any other
    phrases = CHECKPOINT_CASES[case](ws)

    run_case(CHECKPOINT_COMMANDS[command](ws), 2, phrases, ws.out)


# --------------------------------------------------------------------------- configs


def _unknown_key(w: Workspace) -> tuple[list[str], list[str]]:
    return ["--set", "optim.lrr=3e-4"], ["optim.lrr"]


def _wrong_type(w: Workspace) -> tuple[list[str], list[str]]:
    return ["--set", "batch_size=many"], ["batch_size", "many"]


def _yaml_typo(w: Workspace) -> tuple[list[str], list[str]]:
    (w.tmp / "typo.yaml").write_text("epochs: 3\n  batch_size: 8\n")
    return ["--config", w.tmp / "typo.yaml"], ["typo.yaml", "line 2"]


def _yaml_list(w: Workspace) -> tuple[list[str], list[str]]:
    (w.tmp / "list.yaml").write_text("- epochs: 3\n- batch_size: 8\n")
    return ["--config", w.tmp / "list.yaml"], ["list.yaml", "mapping"]


CONFIG_CASES: dict[str, Callable[[Workspace], tuple[list[str], list[str]]]] = {
    "unknown --set key": _unknown_key,
    "wrong type": _wrong_type,
    "YAML typo": _yaml_typo,
    "YAML list at the top": _yaml_list,
}


@pytest.mark.parametrize("case", CONFIG_CASES)
@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_bad_config(ws, command, case):
    extra, phrases = CONFIG_CASES[case](ws)

    run_case([*CONFIG_COMMANDS[command](ws), *extra], 2, phrases, ws.out)


# --------------------------------------------------------------------------- export and bench


def _export(w: Workspace, *options) -> list:
    return ["export", w.checkpoint, "--manifest", w.manifest, "--out", w.out, *options]


def _bench(w: Workspace, *options) -> list:
    return ["bench", w.checkpoint, "--manifest", w.manifest, "--out", w.out, *BENCH_QUICK,
            *options]


def test_export_unknown_target(ws):
    run_case(_export(ws, "--target", "onnxx"), 2, ["onnxx", "onnx, openvino"], ws.out)


def test_export_unknown_precision(ws):
    run_case(_export(ws, "--target", "onnx", "--precision", "fp8"), 2, ["fp8", "fp16"], ws.out)


def test_bench_unknown_precision_is_refused_before_measuring(ws):
    run_case(_bench(ws, "--export", "onnx,onnx:fp8"), 2, ["onnx:fp8", "fp16"], ws.out)


def test_bench_unknown_target_is_refused_before_measuring(ws):
    run_case(_bench(ws, "--export", "tflitee"), 2, ["tflitee", "tflite"], ws.out)


def test_export_missing_backend_names_the_extra(ws, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    run_case(_export(ws, "--target", "openvino"), 2, ["openvino", "pip install",
                                                      "skinedge[openvino]"], ws.out)


def test_export_gpu_target_without_a_gpu(ws):
    from tests.conftest import _cuda_available

    if _cuda_available():
        pytest.skip("a GPU is here")
    result = runner.invoke(app, [str(a) for a in _export(ws, "--target", "tensorrt")])
    output = flat(result.output)
    assert "trtexec" in output, output  # the command to build the engine on the GPU machine
    assert_options_exist(result.output, ["export"])


def test_bench_malformed_gate(ws):
    gate = ws.tmp / "gate.yaml"
    gate.write_text("rules:\n  - match: onnx-*\n    max_p50_ms: [oops\n")
    run_case(_bench(ws, "--gate", gate), 2, ["gate.yaml"], ws.out)


@pytest.fixture
def exported(ws) -> Path:
    """An ONNX export of the workspace checkpoint, report beside it."""
    result = runner.invoke(app, [str(a) for a in _export(ws, "--target", "onnx")])
    assert result.exit_code == 0, result.output
    (artifact,) = ws.out.glob("*.onnx")
    return artifact


@pytest.mark.parametrize("damage", ["truncated", "weights flipped"])
def test_bench_damaged_artifact(ws, exported, damage):
    if damage == "truncated":
        inputs.truncate(exported)
    else:
        inputs.flip_onnx_weights(exported)
    out = ws.tmp / "bench"

    run_case(["bench", exported, "--reference", ws.checkpoint, "--manifest", ws.manifest,
              "--out", out, *BENCH_QUICK], 2, [exported.name], out)
