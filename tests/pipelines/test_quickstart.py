"""Quickstart runs the packaged pipeline-quickstart.yaml. Its data errors name the commands
and options that fix them, not options of `skinedge data split` or settings of a pipeline
config that quickstart does not take; what it refuses, it refuses before writing anything.
(The end-to-end run is tests/cli/test_cli.py::test_quickstart_end_to_end.)"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skinedge.cli.main import app
from tests.conftest import make_image


def _text(result) -> str:
    """CLI output with the console's line wrapping undone."""
    return " ".join((result.output or "").split())


def _add_row(root: Path, image: str, dx: str = "nv") -> str:
    path = root / "labels.csv"
    lines = path.read_text().splitlines()
    with path.open("a", newline="") as f:
        csv.writer(f).writerow([image, f"L_{Path(image).stem}", dx])
    return f"labels.csv:{len(lines) + 1}"


def test_quickstart_bad_image_names_its_row_and_real_fixes(make_labels_folder, tmp_path):
    folder = make_labels_folder(per_class=2)
    (folder / "images/noise.jpg").write_bytes(np.random.default_rng(0).bytes(4096))
    source = _add_row(folder, "images/noise.jpg")
    out = tmp_path / "qs"

    result = CliRunner().invoke(app, ["quickstart", "--data", str(folder), "--out", str(out)])

    assert result.exit_code == 2, (result.output, result.exception)
    message = _text(result)
    assert f"{source}: [unreadable-image]" in message
    assert "rerun with --skip-bad" not in message
    assert ("split the folder yourself with `skinedge data split --skip-bad` and train on its "
            "manifest with `skinedge train`") in message
    assert not (out / "train").exists()  # failed at the split, before any training


def test_quickstart_image_outside_the_folder_names_the_split_opt_in(make_labels_folder,
                                                                    tmp_path):
    folder = make_labels_folder(per_class=2)
    make_image((150, 100, 80), (48, 64), seed=5).save(folder.parent.parent / "elsewhere.jpg")
    source = _add_row(folder, "../../elsewhere.jpg")
    out = tmp_path / "qs"

    result = CliRunner().invoke(app, ["quickstart", "--data", str(folder), "--out", str(out)])

    assert result.exit_code == 2, (result.output, result.exception)
    message = _text(result)
    assert f"{source}: [outside-root]" in message
    assert "rerun with --allow-outside-root" not in message
    assert "split it yourself with `skinedge data split --allow-outside-root`" in message
    assert not (out / "train").exists()


def test_the_pipeline_words_the_same_fixes_as_its_own_settings(make_labels_folder, tmp_path):
    from skinedge.errors import DataError
    from skinedge.pipelines import pipeline_stages as stages
    from skinedge.pipelines.pipeline_config import load_pipeline_config
    from skinedge.pipelines.reporting import Reporter

    folder = make_labels_folder(per_class=2)
    make_image((150, 100, 80), (48, 64), seed=5).save(folder.parent.parent / "elsewhere.jpg")
    source = _add_row(folder, "../../elsewhere.jpg")
    cfg = load_pipeline_config("pipeline-quickstart.yaml", data=folder)

    with pytest.raises(DataError) as refused:
        stages.split()(cfg, tmp_path / "refused", {}, Reporter())
    message = " ".join(str(refused.value).split())
    assert f"{source}: [outside-root]" in message
    assert "set split.allow_outside_root: true in the pipeline config" in message
    assert "--allow-outside-root" not in message  # `skinedge pipeline` has no such option

    cfg.split.allow_outside_root = True
    doc = stages.split()(cfg, tmp_path / "allowed", {}, Reporter())
    assert sum(sum(c.values()) for c in doc["counts"].values()) == 7 * 2 + 1


def test_quickstart_refuses_a_bad_override_before_writing_anything(tiny_dataset, tmp_path):
    out = tmp_path / "qs"
    result = CliRunner().invoke(app, ["quickstart", "--data", str(tiny_dataset), "--out",
                                      str(out), "--set", "optim.lrr=0.1"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "optim.lrr" in _text(result)
    assert not out.exists()


def test_quickstart_refuses_a_folder_of_the_layout_before_the_pipeline(tiny_dataset, tmp_path):
    out = tmp_path / "qs"
    (out / "train" / "best").mkdir(parents=True)  # what quickstart wrote before it linked
    result = CliRunner().invoke(app, ["quickstart", "--data", str(tiny_dataset), "--out",
                                      str(out)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "choose another --out" in _text(result)
    assert sorted(p.name for p in out.iterdir()) == ["train"]  # nothing written beside it
