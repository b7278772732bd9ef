"""Selection over files, synthetic sets in training, and the ablation, on tiny data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinedge.data import load_manifest
from skinedge.data.arrays import load_thumbnails
from skinedge.data.synthetic import augmented_train_set, load_synthetic_set
from skinedge.synth.candidates import dihedral_views, read_candidates, select_synthetic
from skinedge.synth.selection import SelectionConfig, read_ledger
from tests.conftest import TINY, manifest_of
from tests.synth.test_gan import tiny_config


@pytest.fixture(scope="module")
def tiny_gan(tiny_checkpoint, tmp_path_factory) -> Path:
    """A 16 px GAN trained briefly on the tiny checkpoint's own split."""
    from skinedge.synth.gan import train_gan

    out = tmp_path_factory.mktemp("gan") / "run"
    train_gan(tiny_config(manifest_of(tiny_checkpoint), kimg=0.04, snapshot_kimg=0.04), out)
    return out


def planted_candidates(folder: Path, manifest, gan_meta: dict,
                       turn: bool = False) -> list[tuple[str, str]]:
    """A candidates folder of df/vasc images: near-copies of real train images (slightly
    noised; with ``turn``, also rotated 90 degrees or mirrored) and generated-looking images
    of other lesions' colours; returns (image, kind), kind "copy of <real image>" or "diverse"."""
    rng = np.random.default_rng(0)
    rows, kinds = [], []
    train = [r for r in manifest.subset("train") if r.label in ("df", "vasc")]
    for i, r in enumerate(train[:4]):  # near-copies of patients' images
        image = load_thumbnails([manifest.root / r.image], 16)[0].astype(np.int16)
        if turn:
            image = np.rot90(image) if i % 2 else image[:, ::-1]
        image = np.clip(image + rng.integers(-2, 3, image.shape), 0, 255).astype(np.uint8)
        name = f"images/{r.label}/{r.label}-{i}.png"
        rows.append((name, r.label, i, 1.0))
        kinds.append((name, f"copy of {r.image}"))
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / name)
    from tests.conftest import CLASS_COLOURS, make_image

    for i in range(8):  # diverse: each a different shade and blob of its class
        code = ("df", "vasc")[i % 2]
        base = np.array(CLASS_COLOURS[code]) + rng.integers(-40, 40, 3)
        image = make_image(tuple(int(v) for v in np.clip(base, 0, 255)), (16, 16), seed=500 + i)
        name = f"images/{code}/{code}-{100 + i}.png"
        rows.append((name, code, 100 + i, 2.0))
        kinds.append((name, "diverse"))
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
    with (folder / "candidates.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "seed", "discriminator_score"])
        writer.writerows(rows)
    (folder / "sample.json").write_text(json.dumps({**gan_meta, "resolution": 16}))
    return kinds


def test_selection_rejects_planted_near_copies_and_keeps_diverse_candidates(
        tiny_checkpoint, tmp_path) -> None:
    manifest = load_manifest(manifest_of(tiny_checkpoint))
    kinds = planted_candidates(tmp_path / "cand", manifest, {"split_hash": manifest.split_hash})
    cfg = SelectionConfig(target=20, min_discriminator_quantile=0, min_classifier_confidence=0,
                          privacy_quantile=0.9, diversity_quantile=0.0)
    synthetic = select_synthetic(tmp_path / "cand", manifest, tmp_path / "set",
                                 classifier=tiny_checkpoint, cfg=cfg)
    ledger = {d.image: d for d in read_ledger(tmp_path / "set" / "ledger.csv")}
    assert len(ledger) == len(kinds)  # one row per candidate, nothing dropped
    for image, kind in kinds:
        if kind.startswith("copy"):
            assert not ledger[image].kept and ledger[image].reason.startswith("near-copy"), image
        else:
            assert ledger[image].kept, (image, ledger[image].reason)
    kept = {r.image for r in synthetic.rows}
    assert len(kept) == 8 and all((tmp_path / "set" / k).is_file() for k in kept)
    assert json.loads((tmp_path / "set" / "selection.json").read_text())["features"]


def test_validation_bars_come_from_the_classifiers_real_validation_images(
        tiny_checkpoint, tmp_path) -> None:
    from skinedge.synth.metrics import classifier_features, uint8_to_unit

    manifest = load_manifest(manifest_of(tiny_checkpoint))
    planted_candidates(tmp_path / "cand", manifest, {"split_hash": manifest.split_hash})
    cfg = SelectionConfig(target=20, min_discriminator_quantile=0, privacy_quantile=0.9,
                          diversity_quantile=0.0, min_classifier_confidence="validation",
                          validation_quantile=0.5, validation_min_images=2)  # 2 val images each
    select_synthetic(tmp_path / "cand", manifest, tmp_path / "set", classifier=tiny_checkpoint,
                     cfg=cfg)
    doc = json.loads((tmp_path / "set" / "selection.json").read_text())
    codes = list(manifest.vocabulary.codes)
    extractor = classifier_features(tiny_checkpoint)
    for code in ("df", "vasc"):
        val = [manifest.root / r.image for r in manifest.subset("val") if r.label == code]
        _, probs = extractor.classify(uint8_to_unit(load_thumbnails(val, 16)))
        expected = float(np.median(probs[:, codes.index(code)]))
        assert doc["thresholds"]["classifier_confidence"][code] == pytest.approx(expected)
        assert doc["thresholds"]["confidence_source"][code] == \
            f"0.5-quantile of {len(val)} real validation images"
        # a handful of candidates per class for a quota near 20: every class falls short
        assert doc["shortfalls"][code].startswith(f"kept {doc['summary'][code]['kept']} of a "
                                                  "quota of")
        assert "sample at least" in doc["shortfalls"][code]
    ledger = read_ledger(tmp_path / "set" / "ledger.csv")
    low = [d for d in ledger if d.reason.startswith("classifier confidence")]
    assert all("0.5-quantile of" in d.reason for d in low)


def test_turned_and_mirrored_copies_are_near_copies_of_their_source(tiny_checkpoint, tmp_path):
    manifest = load_manifest(manifest_of(tiny_checkpoint))
    kinds = planted_candidates(tmp_path / "cand", manifest, {"split_hash": manifest.split_hash},
                               turn=True)
    cfg = SelectionConfig(target=20, min_discriminator_quantile=0, min_classifier_confidence=0,
                          privacy_quantile=0.9, diversity_quantile=0.0)
    select_synthetic(tmp_path / "cand", manifest, tmp_path / "set", classifier=tiny_checkpoint,
                     cfg=cfg)
    ledger = {d.image: d for d in read_ledger(tmp_path / "set" / "ledger.csv")}
    copies = [(image, kind.removeprefix("copy of ")) for image, kind in kinds
              if kind.startswith("copy")]
    for image, source in copies:
        d = ledger[image]
        assert not d.kept and d.nearest_real_image == source, (image, d.reason)
        assert d.reason.startswith(f"near-copy of {source}"), d.reason
    assert any("rotated 90" in ledger[image].reason for image, _ in copies)
    assert any("mirrored" in ledger[image].reason for image, _ in copies)


def test_dihedral_views_are_the_seven_other_flips_and_rotations() -> None:
    images = np.random.default_rng(0).integers(0, 255, (2, 5, 5, 3), dtype=np.uint8)
    views = dict(dihedral_views(images))
    assert len({images.tobytes(), *(v.tobytes() for v in views.values())}) == 8
    np.testing.assert_array_equal(views["rotated 180"], images[:, ::-1, ::-1])
    np.testing.assert_array_equal(views["mirrored"], images[:, :, ::-1])


def test_a_reference_cache_reads_the_real_images_once(tiny_checkpoint, tmp_path,
                                                      monkeypatch) -> None:
    import skinedge.data.arrays as arrays

    manifest = load_manifest(manifest_of(tiny_checkpoint))
    planted_candidates(tmp_path / "cand", manifest, {"split_hash": manifest.split_hash})
    reads = []
    real_load = arrays.load_thumbnails
    monkeypatch.setattr(arrays, "load_thumbnails",
                        lambda paths, *a, **k: reads.append(len(paths)) or real_load(paths, *a, **k))
    cache: dict = {}
    for out in ("first", "second"):
        select_synthetic(tmp_path / "cand", manifest, tmp_path / out, classifier=tiny_checkpoint,
                         reference_cache=cache)
    real, candidates = len(manifest.subset("train")), 12
    assert reads == [real, candidates, candidates]  # real images once, candidates each time
    assert ((tmp_path / "first" / "ledger.csv").read_text()
            == (tmp_path / "second" / "ledger.csv").read_text())


def test_no_selection_keeps_the_first_candidates_by_seed(tiny_checkpoint, tmp_path) -> None:
    manifest = load_manifest(manifest_of(tiny_checkpoint))
    planted_candidates(tmp_path / "cand", manifest, {"split_hash": manifest.split_hash})
    synthetic = select_synthetic(tmp_path / "cand", manifest, tmp_path / "set",
                                 classifier=tiny_checkpoint, cfg=SelectionConfig(target=8),
                                 mode="none")
    # 6 real train images per class here -> 2 synthetic each, the lowest seeds, copies or not
    assert sorted((r.label, r.seed) for r in synthetic.rows) == [
        ("df", 0), ("df", 1), ("vasc", 101), ("vasc", 103)]
    ledger = {d.seed: d for d in read_ledger(tmp_path / "set" / "ledger.csv")}
    assert ledger[0].reason.startswith("kept without selection")


def test_candidates_of_a_gan_from_another_split_are_refused(tiny_checkpoint, tmp_path) -> None:
    manifest = load_manifest(manifest_of(tiny_checkpoint))
    planted_candidates(tmp_path / "cand", manifest, {"split_hash": "0" * 64})
    with pytest.raises(ValueError, match="may have seen validation or test"):
        select_synthetic(tmp_path / "cand", manifest, tmp_path / "set",
                         classifier=tiny_checkpoint)


def test_bad_candidate_rows_name_the_line(tmp_path) -> None:
    (tmp_path / "sample.json").write_text("{}")
    (tmp_path / "candidates.csv").write_text("image,label,seed,discriminator_score\n"
                                             "a.png,df,1,0.5\nb.png,df,x,0.5\n")
    with pytest.raises(ValueError, match="candidates.csv:3"):
        read_candidates(tmp_path)


@pytest.fixture(scope="module")
def synthetic_set(tiny_gan, tiny_checkpoint, tmp_path_factory) -> Path:
    from skinedge.synth.gan import sample_candidates

    root = tmp_path_factory.mktemp("synthetic")
    sample_candidates(tiny_gan, {"df": 6, "vasc": 6}, root / "cand")
    select_synthetic(root / "cand", load_manifest(manifest_of(tiny_checkpoint)), root / "set",
                     classifier=tiny_checkpoint, cfg=SelectionConfig(target=9), mode="none")
    return root / "set"


def test_synthetic_images_join_the_train_split_only(synthetic_set, tiny_checkpoint, tmp_path):
    from skinedge.train.config import load_train_config
    from skinedge.train.trainer import train_classifier

    manifest_path = manifest_of(tiny_checkpoint)
    manifest = load_manifest(manifest_path)
    synthetic = load_synthetic_set(synthetic_set, manifest)
    assert synthetic.counts() == {"df": 3, "vasc": 3}
    train = augmented_train_set(manifest, synthetic, transform=lambda image: image)
    assert len(train) == len(manifest.subset("train")) + 6
    assert train[len(train) - 1][0].size == (16, 16)  # a synthetic image reads fine

    seen = {}

    class Spy:
        def on_start(self, info):
            seen.update(info)

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    cfg = load_train_config(None, [*TINY, "epochs=1", f"data.manifest={manifest_path}",
                                   f"data.synthetic={synthetic_set}"])
    result = train_classifier(cfg, tmp_path / "run", callbacks=Spy())
    assert seen["train"] == len(manifest.subset("train")) + 6
    assert seen["val"] == len(manifest.subset("val"))
    card = json.loads((result.best_dir / "card.json").read_text())
    assert card["training"]["synthetic"]["counts"] == {"df": 3, "vasc": 3}
    assert card["training"]["synthetic"]["sha256"] == synthetic.sha256
    # evaluation reads the manifest's test split alone
    from skinedge.evaluate import evaluate_checkpoint

    evaluated = evaluate_checkpoint(result.best_dir, manifest=manifest_path, split="test")
    assert not any(str(synthetic_set) in image for image in evaluated.images)
    assert len(evaluated.images) == len(manifest.subset("test"))


def test_a_set_holding_a_copy_of_a_test_image_is_refused(synthetic_set, tiny_checkpoint,
                                                          tmp_path) -> None:
    from skinedge.utils.io import sha256_file

    manifest = load_manifest(manifest_of(tiny_checkpoint))
    copy = tmp_path / "set"
    shutil.copytree(synthetic_set, copy)
    doc = json.loads((copy / "synthetic.json").read_text())
    test_image = manifest.subset("test")[0]
    shutil.copyfile(manifest.root / test_image.image, copy / doc["rows"][0]["image"])
    doc["rows"][0]["sha256"] = sha256_file(copy / doc["rows"][0]["image"])
    (copy / "synthetic.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"identical to .* \(test split\)"):
        load_synthetic_set(copy, manifest)


def test_a_changed_or_foreign_set_is_refused(synthetic_set, tiny_checkpoint, tmp_path) -> None:
    manifest = load_manifest(manifest_of(tiny_checkpoint))
    copy = tmp_path / "set"
    shutil.copytree(synthetic_set, copy)
    first = next((copy / "images").rglob("*.png"))
    Image.new("RGB", (16, 16)).save(first)
    with pytest.raises(ValueError, match="changed since selection"):
        load_synthetic_set(copy, manifest)
    doc = json.loads((copy / "synthetic.json").read_text())
    doc["split_hash"] = "f" * 64
    (copy / "synthetic.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="Select again for this manifest"):
        load_synthetic_set(copy, manifest)


def test_distillation_refuses_a_synthetic_set(synthetic_set, tiny_checkpoint) -> None:
    from skinedge.compress.distill import DistillConfig, prepare_distillation
    from skinedge.train.config import load_train_config

    cfg = load_train_config(None, [*TINY, f"data.manifest={manifest_of(tiny_checkpoint)}",
                                   f"data.synthetic={synthetic_set}",
                                   f"distill.teacher={tiny_checkpoint}"],
                            config_class=DistillConfig)
    with pytest.raises(ValueError, match="unset data.synthetic"):
        prepare_distillation(cfg, load_manifest(manifest_of(tiny_checkpoint)))


@pytest.mark.slow
def test_the_ablation_trains_every_arm_and_writes_its_table(tiny_gan, tiny_checkpoint,
                                                              tmp_path) -> None:
    import yaml

    from skinedge.pipelines.ablation import AblationConfig, run_ablation

    train_config = tmp_path / "train.yaml"
    train_config.write_text(yaml.safe_dump({"epochs": 1}))
    cfg = AblationConfig(manifest=manifest_of(tiny_checkpoint), train_config=train_config,
                         train_overrides=TINY, gan=tiny_gan, members=2, oversample=1.5,
                         selection=SelectionConfig(target=8, min_classifier_confidence=0),
                         n_boot=100)
    report = run_ablation(cfg, tmp_path / "ablation")
    arms = [a["arm"] for a in report["arms"]]
    assert arms == ["no-aug", "classic-aug", "gan-unselected", "gan-selected", "gan-ensemble",
                    "classic-ensemble"]
    by_arm = {a["arm"]: a for a in report["arms"]}
    assert by_arm["gan-unselected"]["synthetic_images"] == 14  # 7 classes x (8 - 6 real)
    assert by_arm["no-aug"]["synthetic_images"] == 0
    assert by_arm["classic-aug"]["delta_vs_reference"]["delta"] == 0
    assert set(by_arm["gan-selected"]["rare_recall"]) == set(report["rare_classes"])
    assert report["n"] == len(load_manifest(cfg.manifest).subset("test"))
    table = (tmp_path / "ablation" / "ablation.md").read_text()
    assert all(f"| {arm} |" in table for arm in arms)
    # a second call finds every step done and trains nothing
    mtime = (tmp_path / "ablation" / "runs" / "no-aug" / "best" / "card.json").stat().st_mtime
    run_ablation(cfg, tmp_path / "ablation")
    assert (tmp_path / "ablation" / "runs" / "no-aug" / "best" / "card.json").stat().st_mtime == mtime


def test_ensemble_members_train_on_their_own_sets_and_seeds(synthetic_set, tiny_checkpoint,
                                                          tmp_path) -> None:
    from skinedge.models import load_card
    from skinedge.train.config import load_train_config
    from skinedge.train.ensemble import member_dir, train_ensemble

    cfg = load_train_config(None, [*TINY, "epochs=1", f"data.manifest={manifest_of(tiny_checkpoint)}"])
    ensemble = train_ensemble(cfg, tmp_path / "ens", synthetic=[synthetic_set, None])
    card = load_card(ensemble)
    assert len(card.members) == 2
    first, second = (load_card(member_dir(tmp_path / "ens", k) / "best") for k in range(2))
    assert first.training["synthetic"]["counts"] == {"df": 3, "vasc": 3}
    assert "synthetic" not in second.training
    assert (first.training["config"]["seed"], second.training["config"]["seed"]) == (0, 1)
    assert train_ensemble(cfg, tmp_path / "ens", synthetic=[synthetic_set, None]) == ensemble
    with pytest.raises(ValueError, match="at least two"):
        train_ensemble(cfg, tmp_path / "one", members=1)
