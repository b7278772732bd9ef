"""`skinedge pipeline` over several data folders: one multi-source split (each folder split as
on its own, labels mapped into one vocabulary), every model scored per source, and the cache
keys of a one-folder pipeline unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from skinedge.cli.main import app
from skinedge.data import load_manifest
from skinedge.errors import ConfigError
from skinedge.pipelines.pipeline import data_digest, plan_pipeline, run_pipeline
from skinedge.pipelines.pipeline_config import data_folders, load_pipeline_config
from tests.conftest import make_tiny_dataset
from tests.pipelines.test_pipeline import TRAIN


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> Path:
    """ham/ (the 7 classes) and isic2020/ (melanoma vs benign), side by side."""
    root = tmp_path_factory.mktemp("sources") / "data"
    make_tiny_dataset(root / "ham", per_class=10)
    make_tiny_dataset(root / "isic2020", per_class=14, size=(56, 64), codes=("mel", "benign"))
    return root


def write_config(folder: Path, data: list[Path] | Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "members.yaml").write_text(yaml.safe_dump(TRAIN))
    doc = {"data": [str(d) for d in data] if isinstance(data, list) else str(data),
           "split": {"classes": "isic2018"},
           "members": {"count": 1, "config": "members.yaml"},
           "distill": {"enabled": False},
           "export": {"targets": ["onnx:fp32"], "verify_images": 0},
           "bench": {"warmup": 1, "iterations": 2},
           "report": {"gradcam_images": 0}}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def finished(two_sources, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("multi")
    config = write_config(root, [two_sources / "ham", two_sources / "isic2020"])
    run_pipeline(load_pipeline_config(config), root / "run")
    return config, root / "run"


def test_several_folders_make_one_split_and_every_model_is_scored_per_source(finished):
    _, out = finished
    split = json.loads(next((out / "cache" / "split").glob("*/stage.json")).read_text())
    manifest = load_manifest(split["manifest"])
    assert [s.name for s in manifest.sources] == ["ham", "isic2020"]
    assert manifest.classes == "isic2018" and manifest.partial > 0  # benign -> not-mel
    assert set(split["sources"]) == {"ham", "isic2020"}
    assert split["sources"]["isic2020"]["test"] > 0

    evaluation = json.loads(next((out / "cache" / "evaluate").glob("*/stage.json")).read_text())
    per_source = evaluation["models"]["member-0"]["metrics"]["per_source"]
    assert set(per_source) == {"ham", "isic2020"}
    assert per_source["ham"]["balanced_accuracy"] is not None
    assert "melanoma_auc" in per_source["isic2020"]  # melanoma vs benign: detection figures
    html = (out / "report.html").read_text()
    assert "Per source" in html and "not-mel" in html
    # Melanoma vs benign has no class balance to report; each source's licence is its own.
    assert re.search(r"<td>isic2020</td><td class=n>\d+</td><td class=n>n/a</td>", html)
    assert html.count("Licence of") == 2 and "unknown (set data.licence)" in html


def test_the_folders_come_from_the_config_or_from_repeated_data_options(finished, two_sources,
                                                                       tmp_path):
    config, _ = finished
    cfg = load_pipeline_config(config)
    assert data_folders(cfg) == [(two_sources / "ham").resolve(),
                                 (two_sources / "isic2020").resolve()]
    one = load_pipeline_config(config, data=[two_sources / "ham"])
    assert one.data == (two_sources / "ham").resolve()  # one folder: the plain form

    result = CliRunner().invoke(app, [
        "pipeline", str(config), "--data", str(two_sources / "isic2020"),
        "--data", str(two_sources / "ham"), "--out", str(tmp_path / "plan"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "split" in result.output and "runs" in result.output

    result = CliRunner().invoke(app, [
        "pipeline", str(config), "--data", str(two_sources / "ham"),
        "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "plan"), "--dry-run"])
    assert result.exit_code != 0 and "nowhere is not a folder" in result.output
    with pytest.raises(ConfigError, match="data"):
        load_pipeline_config(config, ["data=[]"])
    with pytest.raises(ConfigError, match="unknown class vocabulary 'isic2017'"):
        load_pipeline_config(config, ["split.classes=isic2017"])
    twice = load_pipeline_config(config, data=[two_sources / "ham", two_sources / "ham"])
    with pytest.raises(ConfigError, match="ham is listed twice"):
        plan_pipeline(twice, tmp_path / "plan", dry_run=True)


def test_one_folder_keeps_the_cache_keys_it_had(two_sources, tmp_path):
    """A one-folder pipeline without split.classes keys its split as before this setting and
    several folders existed (keys of cached runs stay valid); the order of several folders is
    part of the key."""
    from skinedge.pipelines.pipeline import stage_key

    ham, isic = two_sources / "ham", two_sources / "isic2020"
    assert data_digest([ham, isic], tmp_path) != data_digest([isic, ham], tmp_path)
    for data in (ham, [ham]):
        cfg = load_pipeline_config(write_config(tmp_path / "cfg", data), ["split.classes=null"])
        before = {"split": {"ratios": [0.7, 0.15, 0.15], "seed": 0, "layout": None,
                            "skip_bad": False},
                  "data": data_digest(ham, tmp_path)}
        split = plan_pipeline(cfg, tmp_path / "run", dry_run=True)[0]
        assert split.key == stage_key("split", before, {})
