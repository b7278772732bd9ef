"""``skinedge gan``: train, sample, select and quality end to end through the CLI (16 px)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from skinedge.cli.main import app
from tests.conftest import manifest_of

runner = CliRunner()
TINY = ["--set", "resolution=16", "--set", "batch_size=8", "--set", "kimg=0.016",
        "--set", "snapshot_kimg=0.016", "--set", "model.channel_base=128",
        "--set", "model.channel_max=32", "--set", "grid_per_class=2"]


def flat(output: str) -> str:
    """The CLI's output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_gan_commands_chain(tiny_checkpoint, tmp_path) -> None:
    manifest = manifest_of(tiny_checkpoint)
    gan = tmp_path / "gan"
    result = runner.invoke(app, ["gan", "train", "--manifest", str(manifest), "--out", str(gan),
                                 *TINY])
    assert result.exit_code == 0, result.output
    assert (gan / "command.json").is_file() and (gan / "last.pt").is_file()

    result = runner.invoke(app, ["gan", "train", "--manifest", str(manifest), "--out", str(gan),
                                 *TINY])
    assert result.exit_code == 2 and "already holds a GAN run" in flat(result.output)

    cand = tmp_path / "cand"
    result = runner.invoke(app, ["gan", "sample", str(gan), "--out", str(cand),
                                 "--count", "df=4", "--count", "vasc=4"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["gan", "sample", str(gan), "--out", str(cand), "--count", "df"])
    assert result.exit_code == 2 and "CLASS=N" in flat(result.output)

    chosen = tmp_path / "set"
    result = runner.invoke(app, ["gan", "select", str(cand), "--out", str(chosen),
                                 "--manifest", str(manifest), "--classifier", str(tiny_checkpoint),
                                 "--mode", "none", "--set", "target=8"])
    assert result.exit_code == 0, result.output
    assert "df: kept 2 of 4" in flat(result.output)
    assert len(json.loads((chosen / "synthetic.json").read_text())["rows"]) == 4

    quality = tmp_path / "quality"
    result = runner.invoke(app, ["gan", "quality", str(gan), "--manifest", str(manifest),
                                 "--out", str(quality), "--per-class", "6",
                                 "--features", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    report = json.loads((quality / "quality.json").read_text())
    assert [r["label"] for r in report["rows"]][-1] == "all"
    assert "classifier" in report["features"] and "Inception" not in report["features"]
    assert "FID" in (quality / "quality.md").read_text()
