"""The k-fold GAN ablation on tiny data, and its pooled paired statistics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from skinedge.pipelines.kfold import KFoldAblationConfig, pooled_paired_delta, run_kfold_ablation
from skinedge.synth.selection import SelectionConfig
from tests.conftest import TINY
from tests.synth.test_gan import TINY_GAN


def test_pooled_delta_sees_a_real_gain_and_states_what_it_can_detect() -> None:
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(4), 250)
    groups = [f"L{i // 2}" for i in range(len(targets))]  # two images per lesion
    right = lambda p: np.where(rng.random(len(targets)) < p, targets,  # noqa: E731
                               (targets + 1) % 4)
    reference = [right(0.70), right(0.70)]
    better = [right(0.78), right(0.78)]
    gain = pooled_paired_delta(targets, groups, reference, better, classes=[3], n_boot=300)
    assert gain["delta"] == pytest.approx(0.08, abs=0.03)
    assert gain["low"] > 0 and gain["p_better"] > 0.99
    assert gain["se"] == pytest.approx(math.hypot(gain["se_sampling"], gain["se_training"]))
    assert gain["detectable"] == pytest.approx(2.8 * gain["se"], rel=1e-3)
    assert gain["detectable"] < 0.08  # this design can see an 8-point gain
    recall, low, high, missing = gain["recall"][3]
    assert low <= recall <= high and missing == 0
    same = pooled_paired_delta(targets, groups, reference, reference, n_boot=300)
    assert same["delta"] == 0 and same["low"] == 0 == same["high"]
    # fewer images: a wider interval, a larger detectable difference
    half = pooled_paired_delta(targets[::4], groups[::4], [p[::4] for p in reference],
                               [p[::4] for p in better], n_boot=300)
    assert half["se_sampling"] > 1.5 * gain["se_sampling"]
    # seeds that disagree: the training part of the error grows, and counts
    noisy = [right(0.70), right(0.86)]
    spread = pooled_paired_delta(targets, groups, reference, noisy, n_boot=300)
    assert spread["se_training"] > 2 * gain["se_training"]
    assert spread["se"] > spread["se_sampling"]
    one = pooled_paired_delta(targets, groups, reference[:1], better[:1], n_boot=300)
    assert one["se_training"] is None and one["se"] == one["se_sampling"]


@pytest.mark.slow
def test_every_image_is_tested_once_per_arm_and_a_rerun_trains_nothing(tiny_manifest,
                                                                       tmp_path) -> None:
    train_config = tmp_path / "train.yaml"
    train_config.write_text(yaml.safe_dump({"epochs": 1}))
    gan_config = tmp_path / "gan.yaml"
    gan_config.write_text(yaml.safe_dump({**TINY_GAN, "kimg": 0.016, "snapshot_kimg": 0.016}))
    cfg = KFoldAblationConfig(
        manifest=tiny_manifest, folds=2, train_config=train_config, train_overrides=TINY,
        seeds=[0, 1], gans={"gan-tiny": gan_config}, oversample=1.0,
        selection=SelectionConfig(target=8, min_classifier_confidence=0), n_boot=100)
    out = tmp_path / "kfold"
    report = run_kfold_ablation(cfg, out)
    from skinedge.data import load_manifest

    source = load_manifest(tiny_manifest)
    assert report["n"] == len(source.rows)  # every image once, pooled over the folds
    assert [a["arm"] for a in report["arms"]] == ["classic-aug", "gan-tiny"]
    tested = [r.image for i in range(2)
              for r in load_manifest(out / f"fold-{i}" / "manifest.json").subset("test")]
    assert sorted(tested) == sorted(r.image for r in source.rows)
    for i in range(2):  # a GAN per fold, on that fold's train split only
        gan = json.loads((out / f"fold-{i}" / "candidates" / "gan-tiny-seed-0" /
                          "sample.json").read_text())
        fold = load_manifest(out / f"fold-{i}" / "manifest.json")
        assert gan["split_hash"] == fold.split_hash
    reference = report["arms"][0]
    assert reference["delta"] == 0
    assert report["rare_classes"] and \
        set(report["arms"][1]["rare_recall"]) == set(report["rare_classes"])
    table = (out / "kfold.md").read_text()
    assert "| gan-tiny |" in table and "detectable" in table
    card = out / "fold-1" / "runs" / "gan-tiny-seed-1" / "best" / "card.json"
    mtime = card.stat().st_mtime
    assert run_kfold_ablation(cfg, out) == report
    assert card.stat().st_mtime == mtime
    saved = (out / "kfold.yaml").read_text()
    with pytest.raises(ValueError, match="another split than fold 0"):
        run_kfold_ablation(cfg.model_copy(update={"fold_seed": 5}), out)
    assert (out / "kfold.yaml").read_text() == saved  # a refused call changes nothing
    with pytest.raises(ValueError, match="made with another config"):
        run_kfold_ablation(cfg.model_copy(update={"selection": SelectionConfig(
            target=8, min_classifier_confidence=0.5)}), out)
