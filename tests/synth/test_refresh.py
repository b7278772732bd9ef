"""Fine-tuning a GAN from another run (``init_from``) and refreshing a synthetic set from new
train images, on 16 px DCGANs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from skinedge.data import load_manifest
from skinedge.data.manifest import Manifest, ManifestRow
from skinedge.errors import ConfigError, DataError
from skinedge.synth.gan import create_gan, train_gan
from skinedge.synth.refresh import refresh_synthetic
from skinedge.synth.selection import SelectionConfig
from skinedge.utils.io import sha256_file
from tests.conftest import TINY, make_image, manifest_of
from tests.synth.test_gan import tiny_config

DCGAN = {"arch": "dcgan"}
#: Learning rates so small that a step cannot move a weight visibly: what a fine-tune holds
#: after its first step is what it loaded.
STILL = {"optim": {"g_lr": 1e-12, "d_lr": 1e-12}, "ema_rampup": 0, "ema_kimg": 1e6}


@pytest.fixture(scope="module")
def source_gan(tiny_checkpoint, tmp_path_factory) -> Path:
    """A 16 px DCGAN of all 7 classes on the tiny checkpoint's own split."""
    out = tmp_path_factory.mktemp("source-gan") / "run"
    train_gan(tiny_config(manifest_of(tiny_checkpoint), model=DCGAN, kimg=0.016,
                          snapshot_kimg=0.016), out)
    return out


def _parameter_names(cfg) -> tuple[set[str], set[str]]:
    generator, discriminator = create_gan(cfg, 7)
    return ({n for n, _ in generator.named_parameters()},
            {n for n, _ in discriminator.named_parameters()})


def test_init_from_starts_from_the_source_weights_with_fresh_optimizers(
        source_gan, tiny_checkpoint, tmp_path) -> None:
    manifest = manifest_of(tiny_checkpoint)
    cfg = tiny_config(manifest, model=DCGAN, kimg=0.008, snapshot_kimg=0.008, seed=1, **STILL)
    train_gan(cfg, tmp_path / "tuned", init_from=source_gan)
    train_gan(cfg, tmp_path / "fresh")  # the same run without init_from: the control

    source = torch.load(source_gan / "last.pt", weights_only=True)
    tuned = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)
    fresh = torch.load(tmp_path / "fresh" / "last.pt", weights_only=True)
    g_names, d_names = _parameter_names(cfg)
    for key, names in (("generator", g_names), ("generator_ema", g_names),
                       ("discriminator", d_names)):
        for name in names:
            torch.testing.assert_close(tuned[key][name], source[key][name], msg=f"{key}.{name}")
        assert any(not torch.allclose(fresh[key][n], source[key][n]) for n in names), key
    assert tuned["shown"] == 8 and tuned["step"] == 1  # kimg counted from zero
    assert source["shown"] == 16
    assert all(s["step"] == 1 for s in tuned["g_opt"]["state"].values())  # fresh Adam
    record = {"run": str(source_gan.resolve()), "path": str((source_gan / "last.pt").resolve()),
              "sha256": sha256_file(source_gan / "last.pt"), "kimg": 0.016,
              "split_hash": source["split_hash"]}
    assert tuned["init_from"] == record and fresh["init_from"] is None
    versions = json.loads((tmp_path / "tuned" / "versions.json").read_text())
    assert versions["init_from"] == {".": record}
    assert "init_from" not in json.loads((tmp_path / "fresh" / "versions.json").read_text())

    # A resume continues from the run's own last.pt: init_from is not read again, and the
    # record stays.
    longer = cfg.model_copy(update={"kimg": 0.016})
    train_gan(longer, tmp_path / "tuned", resume=True, init_from=tmp_path / "nowhere")
    resumed = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)
    assert resumed["shown"] == 16 and resumed["init_from"] == record
    assert json.loads((tmp_path / "tuned" / "versions.json").read_text())["init_from"] == {
        ".": record}


@pytest.mark.parametrize(("changes", "field"), [
    ({"model": {**DCGAN, "channel_max": 16}}, "model.channel_max"),
    ({"model": {"arch": "stylegan2"}}, "model.arch"),
    ({"model": DCGAN, "resolution": 32}, "resolution"),
    ({"model": DCGAN, "data": {"classes": ["df", "vasc"]}}, "data.classes"),
    ({"model": {**DCGAN, "conditioning": "per_class"}}, "model.conditioning"),
])
def test_init_from_refuses_another_architecture_or_class_list(
        source_gan, tiny_checkpoint, tmp_path, changes, field) -> None:
    cfg = tiny_config(manifest_of(tiny_checkpoint), **changes)
    with pytest.raises(ConfigError, match=field) as info:
        train_gan(cfg, tmp_path / "tuned", init_from=source_gan)
    assert str(source_gan) in str(info.value)
    assert not (tmp_path / "tuned").exists()  # refused before anything was written


def test_gan_train_cli_fine_tunes_with_init_from(source_gan, tiny_checkpoint, tmp_path) -> None:
    from skinedge.cli.main import app

    tiny = [a for k, v in (("resolution", 16), ("batch_size", 8), ("kimg", 0.008),
                           ("snapshot_kimg", 0.008), ("model.arch", "dcgan"),
                           ("model.channel_base", 128), ("model.channel_max", 32),
                           ("model.z_dim", 16), ("model.w_dim", 32), ("model.mapping_layers", 2),
                           ("grid_per_class", 2)) for a in ("--set", f"{k}={v}")]
    args = ["gan", "train", "--manifest", str(manifest_of(tiny_checkpoint)), *tiny,
            "--init-from", str(source_gan)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "tuned")])
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["init_from"]["sha256"] \
        == sha256_file(source_gan / "last.pt")
    result = CliRunner().invoke(app, [*args, "--set", "model.z_dim=8",
                                      "--out", str(tmp_path / "other")])
    assert result.exit_code == 2 and "model.z_dim" in " ".join(result.output.split())


def extended_manifest(base_path: Path, folder: Path, label: str, n: int) -> tuple[Path, list[str]]:
    """The base manifest plus ``n`` new train images of ``label`` (as the retrain pipeline's
    data stage extends it): its path and the new images' manifest paths."""
    base = load_manifest(base_path)
    folder.mkdir(parents=True)
    rows = []
    for k in range(n):
        image = folder / f"new_{label}_{k}.png"
        make_image((90, 140, 200), (48, 64), seed=70_000 + k).save(image)
        rows.append(ManifestRow(image.as_posix(), f"feedback:P{k}", label, "train",
                                sha256_file(image)))
    extended = Manifest(base.root, base.layout, base.classes, base.seed, base.ratios,
                        [*base.rows, *rows], allow_outside_root=True)
    return extended.save(folder / "manifest.json"), [r.image for r in rows]


def test_refresh_selects_a_set_that_training_reads_and_resumes_step_by_step(
        source_gan, tiny_checkpoint, tmp_path) -> None:
    from skinedge.data.synthetic import augmented_train_set, load_synthetic_set
    from skinedge.train.config import load_train_config

    base = manifest_of(tiny_checkpoint)
    path, new = extended_manifest(base, tmp_path / "feedback", "df", 3)
    out = tmp_path / "refresh"
    options = dict(new_images=new, kimg=0.016, classifier=tiny_checkpoint,
                   selection=SelectionConfig(target=12, min_classifier_confidence=0),
                   gan_overrides=["threads=2"])
    with pytest.raises(DataError, match="may have seen"):  # the GAN's split is not this one
        refresh_synthetic(source_gan, path, out, **options)

    selected, summary = refresh_synthetic(source_gan, path, out, base_manifest=base, **options)

    # df: 6 base train images + 3 new = 9, 3 short of the target; other classes got nothing new.
    assert summary["classes"] == ["df"] and summary["images"] == {"df": 9}
    assert summary["new_images"] == {"df": 3} and summary["candidates"] == {"df": 6}
    assert summary["init_from"]["."]["sha256"] == sha256_file(source_gan / "last.pt")
    tuned = torch.load(out / "gan" / "last.pt", weights_only=True)
    assert tuned["shown"] == 16 and tuned["config"]["data"]["focus_classes"] == ["df"]
    assert tuned["split_hash"] == load_manifest(path).split_hash
    assert summary["classifier"]["checkpoint"] == str(tiny_checkpoint.resolve())
    assert "base split" in summary["classifier"]["reason"]  # accepted, not copied or altered
    assert not (out / "classifier").exists()
    kept = summary["selected"]["df"]
    assert 1 <= kept <= 3

    cfg = load_train_config(None, [*TINY, f"data.manifest={path}", f"data.synthetic={selected}"])
    manifest = load_manifest(cfg.data.manifest)
    synthetic = load_synthetic_set(cfg.data.synthetic, manifest)
    assert synthetic.counts() == {"df": kept}
    assert len(augmented_train_set(manifest, synthetic, lambda x: x)) == \
        len(manifest.subset("train")) + kept

    # Everything done: nothing is redone. Selection lost: only it runs again.
    trained = (out / "gan" / "last.pt").stat().st_mtime_ns
    sampled = (out / "candidates" / "candidates.csv").stat().st_mtime_ns
    _, again = refresh_synthetic(source_gan, path, out, base_manifest=base, **options)
    assert again["reused"] == ["gan", "candidates", "selected"]
    (out / "selected" / "synthetic.json").unlink()
    _, again = refresh_synthetic(source_gan, path, out, base_manifest=base, **options)
    assert again["reused"] == ["gan", "candidates"] and again["selected"] == summary["selected"]
    assert (out / "gan" / "last.pt").stat().st_mtime_ns == trained
    assert (out / "candidates" / "candidates.csv").stat().st_mtime_ns == sampled


def test_refresh_refuses_a_base_split_whose_test_rows_changed(
        source_gan, tiny_checkpoint, tmp_path) -> None:
    base = load_manifest(manifest_of(tiny_checkpoint))
    rows = [ManifestRow(r.image, r.group, r.label, "train" if r.split == "test" else r.split,
                        r.sha256) for r in base.rows]  # test images moved into train
    moved = Manifest(base.root, base.layout, base.classes, base.seed, base.ratios, rows)
    path = moved.save(tmp_path / "manifest.json")
    with pytest.raises(DataError, match="not .* with train images added"):
        refresh_synthetic(source_gan, path, tmp_path / "refresh", classes=["df"],
                          base_manifest=manifest_of(tiny_checkpoint), kimg=0.008)
    assert not (tmp_path / "refresh").exists()
