"""The `skinedge` command through typer's CliRunner: split -> train -> evaluate -> explain."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from skinedge.cli.main import app

runner = CliRunner()

# timm's tiny test network at 32 px, two batches an epoch.
FAST = ["--set", "model.arch=test_efficientnet", "--set", "model.pretrained=none",
        "--set", "preprocess.input_size=32", "--set", "num_workers=0", "--set", "batch_size=8",
        "--set", "max_batches_per_epoch=2", "--set", "epochs=1", "--set", "device=cpu"]


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def text(result) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def all_commands(group, prefix: tuple[str, ...] = ()):
    """Every command path under a (typer) click group, e.g. ("data", "split")."""
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):  # a group; typer may vendor its own click
            yield from all_commands(command, (*prefix, name))


COMMANDS = list(all_commands(typer.main.get_command(app)))


def test_every_command_is_listed() -> None:
    assert {"train", "evaluate", "explain", "quickstart", "data"} <= {c[0] for c in COMMANDS}
    assert ("data", "split") in COMMANDS and ("data", "download") in COMMANDS


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda c: " ".join(c) or "skinedge")
def test_help(command: tuple[str, ...]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> dict[str, Path]:
    """`data split` then `train`: the manifest and the run folder."""
    work = tmp_path_factory.mktemp("cli")
    manifest, run = work / "manifest.json", work / "run"
    result = invoke("data", "split", tiny_dataset, "--out", manifest)
    assert result.exit_code == 0, result.output
    assert "split hash" in result.output
    result = invoke("train", "--out", run, "--manifest", manifest, *FAST)
    assert result.exit_code == 0, result.output
    assert "best epoch 1" in text(result)
    return {"manifest": manifest, "run": run, "work": work}


def test_split_and_train_write_a_run(trained) -> None:
    assert json.loads(trained["manifest"].read_text())["classes"] == "isic2018"
    run = trained["run"]
    assert (run / "best" / "card.json").is_file() and (run / "last" / "trainer_state.pt").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_evaluate_a_manifest_split(trained) -> None:
    out = trained["work"] / "eval-test"
    result = invoke("evaluate", trained["run"] / "best", "--out", out,
                    "--manifest", trained["manifest"], "--split", "test")
    assert result.exit_code == 0, result.output
    assert "balanced accuracy" in result.output
    assert json.loads((out / "metrics.json").read_text())["notes"] == []


def test_evaluate_on_another_split_says_the_figures_may_include_training_images(
        trained, tiny_dataset) -> None:
    other = trained["work"] / "other-manifest.json"
    assert invoke("data", "split", tiny_dataset, "--out", other, "--seed", "7").exit_code == 0
    out = trained["work"] / "eval-other"
    result = invoke("evaluate", trained["run"] / "best", "--out", out, "--manifest", other)
    assert result.exit_code == 0, result.output
    assert "may include training images" in text(result)
    assert "may include training images" in json.loads((out / "metrics.json").read_text())["notes"][0]
    for name in ("metrics.json", "metrics.md", "predictions.csv"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.png"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 14  # one lesion of 2 images per class in the test split
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14 and {"image", "label", "predicted", "p_mel"} <= rows[0].keys()


def test_evaluate_a_labelled_folder(trained, tiny_dataset) -> None:
    out = trained["work"] / "eval-folder"
    result = invoke("evaluate", trained["run"] / "best", "--out", out,
                    "--data", tiny_dataset, "--subset", "all")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["n"] == 70
    with (out / "predictions.csv").open() as f:
        assert {row["label"] for row in csv.DictReader(f)} == {
            "mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"}


def test_evaluate_refuses_a_subset_of_a_folder_and_no_source(trained, tiny_dataset) -> None:
    best, out = trained["run"] / "best", trained["work"] / "eval-bad"
    result = invoke("evaluate", best, "--out", out, "--data", tiny_dataset, "--subset", "test")
    assert result.exit_code != 0 and "--subset only takes 'all'" in text(result)
    result = invoke("evaluate", best, "--out", out)
    assert result.exit_code != 0
    assert "either a manifest split (--manifest) or a folder" in text(result)


def test_explain_writes_overlays(trained, tiny_dataset) -> None:
    out = trained["work"] / "explain"
    images = [tiny_dataset / "images" / "mel_000.jpg", tiny_dataset / "images" / "vasc_001.jpg"]
    result = invoke("explain", trained["run"] / "best", *images, "--out", out, "--class", "mel")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == [
        "000_mel_000_gradcam.png", "001_vasc_001_gradcam.png"]
    assert "predicted " in result.output and (out / "command.json").is_file()


def test_explain_unknown_class_fails_with_a_message(trained, tiny_dataset) -> None:
    image = tiny_dataset / "images" / "mel_000.jpg"
    result = invoke("explain", trained["run"] / "best", image,
                    "--out", trained["work"] / "explain-bad", "--class", "xyz")
    assert result.exit_code != 0
    assert "class 'xyz' is not one of the model's" in text(result)
    assert not (trained["work"] / "explain-bad").exists()


def test_train_with_a_bad_override_names_the_field(trained, tmp_path) -> None:
    result = invoke("train", "--out", tmp_path / "run", "--manifest", trained["manifest"],
                    "--set", "optim.lrr=0.1")
    assert result.exit_code != 0
    assert "optim.lrr" in result.output and "error:" in result.output
    assert not (tmp_path / "run").exists()


#: quickstart's packaged recipe (Lite0 with the packaged ImageNet weights), shrunk to one quick
#: epoch.
QUICK = ["--set", "epochs=1", "--set", "preprocess.input_size=32", "--set", "num_workers=0",
         "--set", "batch_size=8", "--set", "max_batches_per_epoch=2"]


def test_quickstart_end_to_end(tiny_dataset, tmp_path) -> None:
    out = tmp_path / "qs"
    result = invoke("quickstart", "--data", tiny_dataset, "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    summary = text(result)
    assert "test split: n=14 accuracy" in summary
    assert "explanations: 7 PNGs" in summary
    assert "bench: onnx-fp32 p50" in summary
    # Quickstart's short names link into the pipeline's stages.
    assert len(list((out / "explanations").glob("*.png"))) == 7
    assert (out / "eval" / "metrics.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["rows"]
    card = json.loads((out / "train" / "best" / "card.json").read_text())
    assert card["pretrained"].startswith("imagenet:")
    assert list((out / "export-onnx-fp32").glob("*.onnx"))
    assert "<html" in (out / "report.html").read_text()[:200].lower()
    first = json.loads((out / "command.json").read_text())

    again = invoke("quickstart", "--data", tiny_dataset, "--out", out, *QUICK)
    assert again.exit_code == 0, again.output
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    assert {s["status"] for s in stages} == {"cached"}  # a rerun continues, it redoes nothing
    assert json.loads((out / "command.json").read_text())["started"] == first["started"]


def test_quickstart_on_several_folders_splits_them_as_one_and_reports_each(tmp_path) -> None:
    from tests.conftest import make_tiny_dataset

    make_tiny_dataset(tmp_path / "data" / "ham", per_class=10)
    make_tiny_dataset(tmp_path / "data" / "isic2020", per_class=14, size=(56, 64),
                      codes=("mel", "benign"))
    out = tmp_path / "qs"
    result = invoke("quickstart", "--data", tmp_path / "data" / "ham",
                    "--data", tmp_path / "data" / "isic2020", "--out", out, *QUICK)
    assert result.exit_code == 0, result.output
    summary = text(result)
    assert "ham: n=14 balanced accuracy" in summary
    assert "isic2020: n=" in summary and "n/a (melanoma vs benign)" in summary
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["sources"]] == ["ham", "isic2020"]
    assert "isic2020" in json.loads((out / "command.json").read_text())["data"]


def test_quickstart_without_data_says_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SKINEDGE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    result = invoke("quickstart")
    assert result.exit_code != 0
    message = text(result)
    assert "no data: pass --data FOLDER, or set SKINEDGE_DATA" in message
    assert "skinedge data download ham10000" in message
    assert not (tmp_path / "runs").exists()


def test_import_and_help_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import skinedge\n"
        "assert 'torch' not in sys.modules, 'import skinedge'\n"
        "from skinedge.cli.main import app\n"
        "assert 'torch' not in sys.modules, 'import skinedge.cli.main'\n"
        "for args in (['--help'], ['train', '--help'], ['data', 'split', '--help']):\n"
        "    try:\n"
        "        app(args, prog_name='skinedge')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "    assert 'torch' not in sys.modules, args\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_split_of_several_folders_maps_labels_and_counts_per_source(tmp_path) -> None:
    from tests.conftest import make_tiny_dataset

    make_tiny_dataset(tmp_path / "data" / "ham", per_class=4)
    make_tiny_dataset(tmp_path / "data" / "isic2020", per_class=6, size=(56, 64),
                      codes=("mel", "benign"))
    result = invoke("data", "split", tmp_path / "data" / "ham", tmp_path / "data" / "isic2020",
                    "--classes", "isic2018", "--out", tmp_path / "manifest.json")
    assert result.exit_code == 0, result.output
    out = text(result)
    assert "images per source" in out and "isic2020 │ melanoma" in out
    assert "6 image(s) are labelled only melanoma vs benign" in out
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["name"] for s in doc["sources"]] == ["ham", "isic2020"]

    result = invoke("data", "split", tmp_path / "data" / "ham", tmp_path / "data" / "ham",
                    "--out", tmp_path / "again.json")
    assert result.exit_code != 0 and "side by side" in text(result)
