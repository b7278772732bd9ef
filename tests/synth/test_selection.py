"""Selection of GAN candidates: privacy, diversity, realism filters, quotas and the ledger."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from skinedge.synth.selection import (
    Candidate,
    SelectionConfig,
    explain_shortfalls,
    read_ledger,
    real_nn_distances,
    select_candidates,
    summarize,
    synthetic_quotas,
    write_ledger,
)

D = 16
COUNTS = {"a": 100, "b": 10, "c": 30}  # median 30 -> quotas a: 0, b: 20, c: 0


def make_real(rng: np.random.Generator, lesions: int = 100):
    """Two images per lesion, the second a close variant of the first."""
    base = rng.normal(size=(lesions, D))
    feats = np.concatenate([base, base + 0.3 * rng.normal(size=base.shape)])
    groups = [f"L{i:03d}" for i in range(lesions)] * 2
    images = [f"real/{g}_{k}.jpg" for k in range(2) for g in groups[:lesions]]
    return feats, images, groups


def spread_points(rng: np.random.Generator, real: np.ndarray, groups, k: int) -> np.ndarray:
    """Points from the real distribution, farther than the median real NN distance from the
    real images and from each other: clearly new, clearly diverse, yet realistic in scale."""
    min_dist = np.median(real_nn_distances(real, groups))
    chosen: list[np.ndarray] = []
    for x in rng.normal(size=(5000, D)):
        others = np.concatenate([real, np.array(chosen).reshape(-1, D)])
        if np.linalg.norm(others - x, axis=1).min() > min_dist:
            chosen.append(x)
        if len(chosen) == k:
            return np.array(chosen)
    raise RuntimeError("test setup: could not spread enough points")


def make_candidates(feats, label="b", disc=None, conf=None, prefix="g"):
    n = len(feats)
    disc = np.ones(n) if disc is None else np.asarray(disc, dtype=float)
    conf = np.full(n, 0.9) if conf is None else np.asarray(conf, dtype=float)
    cands = [Candidate(f"{prefix}{i:03d}.png", label, seed=i, discriminator_score=float(disc[i]))
             for i in range(n)]
    return cands, np.asarray(feats, dtype=float), conf


def run(cands, feats, conf, real, images, groups, counts=COUNTS, **cfg):
    return select_candidates(cands, feats, conf, real, images, groups, counts,
                             SelectionConfig(**cfg))


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    real, images, groups = make_real(rng)
    return rng, real, images, groups


def test_near_copies_rejected_and_diverse_kept(world):
    rng, real, images, groups = world
    copies = real[[3, 50, 120]] + 1e-3 * rng.normal(size=(3, D))
    diverse = spread_points(rng, real, groups, 10)
    cands, feats, conf = make_candidates(np.concatenate([copies, diverse]))
    decisions, thr = run(cands, feats, conf, real, images, groups)
    assert thr.privacy_distance > 0.01
    for d, real_index in zip(decisions[:3], [3, 50, 120]):
        assert not d.kept
        assert d.reason.startswith(f"near-copy of {images[real_index]} (distance")
        assert d.nearest_real_image == images[real_index]
    assert all(d.kept and d.reason == "kept" for d in decisions[3:])
    assert sorted(d.rank for d in decisions[3:]) == list(range(10))


def test_a_copy_of_a_real_images_view_is_a_near_copy_of_that_image(world):
    rng, real, images, groups = world
    # Features of each real image turned by 90 degrees: unrelated points in this model.
    turned = spread_points(rng, real, groups, len(real))
    cands, feats, conf = make_candidates(turned[[7, 42]] + 1e-3 * rng.normal(size=(2, D)))
    alone, _ = run(cands, feats, conf, real, images, groups)
    assert all(d.kept for d in alone)  # one orientation only: the copies look new
    decisions, _ = select_candidates(cands, feats, conf, real, images, groups, COUNTS,
                                     SelectionConfig(), real_views={"rotated 90": turned})
    for d, source in zip(decisions, [7, 42]):
        assert not d.kept and d.nearest_real_image == images[source]
        assert d.reason.startswith(f"near-copy of {images[source]} rotated 90 (distance")
    with pytest.raises(ValueError, match=r"real_views\['rotated 90'\] has shape"):
        select_candidates(cands, feats, conf, real, images, groups, COUNTS, SelectionConfig(),
                          real_views={"rotated 90": turned[:5]})


def test_real_nn_distances_take_the_nearest_view():
    feats = np.array([[0.0, 0.0], [10.0, 0.0]])
    assert real_nn_distances(feats, ["L1", "L2"]).tolist() == [10.0, 10.0]
    view = np.array([[9.0, 0.0], [1.0, 0.0]])  # each image's turned copy lies near the other
    assert real_nn_distances(feats, ["L1", "L2"], [view]).tolist() == [1.0, 1.0]


def test_identical_candidates_keep_at_most_one(world):
    rng, real, images, groups = world
    feats = spread_points(rng, real, groups, 6)
    feats = np.concatenate([feats, feats[:1]])  # g006 duplicates g000
    cands, feats, conf = make_candidates(feats, conf=[0.99, 0.5, 0.5, 0.5, 0.5, 0.5, 0.99])
    decisions, _ = run(cands, feats, conf, real, images, groups)
    pair = [decisions[0], decisions[6]]
    assert sum(d.kept for d in pair) == 1
    dropped = next(d for d in pair if not d.kept)
    kept = next(d for d in pair if d.kept)
    assert dropped.reason.startswith(f"duplicate of kept {kept.image}")
    assert dropped.nearest_kept_distance == pytest.approx(0.0, abs=1e-6)
    assert all(d.kept for d in decisions[1:6])


def test_low_discriminator_and_low_confidence_rejected(world):
    rng, real, images, groups = world
    disc = np.arange(10.0)  # 0.2-quantile = 1.8: scores 0 and 1 fall below it
    conf = np.full(10, 0.9)
    conf[5] = 0.1
    cands, feats, conf = make_candidates(spread_points(rng, real, groups, 10), disc=disc, conf=conf)
    decisions, _ = run(cands, feats, conf, real, images, groups)
    for d in decisions[:2]:
        assert not d.kept and d.reason.startswith("discriminator score")
        assert "0.2-quantile (1.8)" in d.reason
    assert not decisions[5].kept and decisions[5].reason.startswith("classifier confidence 0.1 <")
    assert [i for i, d in enumerate(decisions) if d.kept] == [2, 3, 4, 6, 7, 8, 9]
    summary = summarize(decisions)["b"]
    assert summary == {"candidates": 10, "kept": 7, "near-copy": 0, "discriminator": 2,
                       "classifier": 1, "duplicate": 0, "quota": 0}


def test_synthetic_quotas():
    assert synthetic_quotas(COUNTS, SelectionConfig()) == {"a": 0, "b": 20, "c": 0}
    assert synthetic_quotas(COUNTS, SelectionConfig(target="max")) == {"a": 0, "b": 90, "c": 70}
    assert synthetic_quotas(COUNTS, SelectionConfig(target=50)) == {"a": 0, "b": 40, "c": 20}
    capped = SelectionConfig(target="max", max_per_class=25)
    assert synthetic_quotas(COUNTS, capped) == {"a": 0, "b": 25, "c": 25}
    assert synthetic_quotas(COUNTS, SelectionConfig(), classes=["b", "d"]) == {"b": 20, "d": 30}
    assert synthetic_quotas({"a": 10, "b": 15}, SelectionConfig()) == {"a": 3, "b": 0}  # 12.5 -> 13


@pytest.mark.parametrize("bad", [{"target": 0}, {"target": "mean"}, {"max_per_class": -1},
                                 {"realism_weight": 1.5}, {"unknown": 1},
                                 {"min_classifier_confidence": 1.2},
                                 {"min_classifier_confidence": "val"}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        SelectionConfig(**bad)


def test_quota_respected_and_most_realistic_first(world):
    rng, real, images, groups = world
    n = 30
    disc = rng.permutation(n).astype(float)
    conf = 0.5 + 0.01 * disc  # same order as disc: realism follows disc
    cands, feats, conf = make_candidates(spread_points(rng, real, groups, n), disc=disc, conf=conf)
    extra, extra_feats, extra_conf = make_candidates(spread_points(rng, real, groups, 3),
                                                     label="a", prefix="x")
    cands = cands + extra
    feats, conf = np.concatenate([feats, extra_feats]), np.concatenate([conf, extra_conf])
    decisions, thr = run(cands, feats, conf, real, images, groups, min_discriminator_quantile=0.0)
    assert thr.quotas == {"a": 0, "b": 20, "c": 0}
    b = [d for d in decisions if d.label == "b"]
    assert sum(d.kept for d in b) == 20
    assert all(d.reason == "class quota reached (20)" for d in b if not d.kept)
    assert all(d.reason == "class quota reached (0)" for d in decisions if d.label == "a")
    first = next(d for d in b if d.rank == 0)
    assert first.discriminator_score == n - 1
    # Realism alone: kept = the 20 most realistic, in order.
    decisions, _ = run(cands, feats, conf, real, images, groups, min_discriminator_quantile=0.0,
                       realism_weight=1.0)
    kept = sorted((d for d in decisions if d.kept), key=lambda d: d.rank)
    assert [d.discriminator_score for d in kept] == list(range(n - 1, n - 21, -1))


def test_deterministic_and_independent_of_input_order(world):
    rng, real, images, groups = world
    n = 40
    feats = np.concatenate([spread_points(rng, real, groups, n - 2), real[:2] + 1e-4])
    disc = np.round(rng.normal(size=n), 1)  # rounded: ties on purpose
    cands, feats, conf = make_candidates(feats, disc=disc, conf=np.round(rng.uniform(0.2, 1, n), 1))
    first, _ = run(cands, feats, conf, real, images, groups)
    again, _ = run(cands, feats, conf, real, images, groups)
    assert first == again
    perm = rng.permutation(n)
    shuffled, _ = run([cands[i] for i in perm], feats[perm], conf[perm], real, images, groups)
    assert [d.image for d in shuffled] == [cands[i].image for i in perm]
    by_image = {d.image: d for d in shuffled}
    assert [by_image[d.image] for d in first] == first
    assert 0 < sum(d.kept for d in first) <= 20


def test_ties_broken_by_seed_whatever_the_input_order(world):
    rng, real, images, groups = world
    cands, feats, conf = make_candidates(spread_points(rng, real, groups, 12))  # all equally real
    cands = [Candidate(c.image, c.label, 100 - c.seed, 1.0) for c in cands]  # seeds 100..89
    counts = {"a": 100, "b": 27}  # target 30 -> quota 3
    results = []
    for perm in (np.arange(12), rng.permutation(12), np.arange(12)[::-1]):
        decisions, _ = run([cands[i] for i in perm], feats[perm], conf[perm], real, images,
                           groups, counts=counts, target=30)
        results.append({d.image: (d.kept, d.rank, d.reason) for d in decisions})
    assert results[0] == results[1] == results[2]
    first = next(image for image, (_, rank, _) in results[0].items() if rank == 0)
    assert first == "g011.png"  # lowest seed (89)
    assert sum(kept for kept, _, _ in results[0].values()) == 3


def test_ledger_round_trip_and_bad_row(world, tmp_path):
    rng, real, images, groups = world
    feats = np.concatenate([spread_points(rng, real, groups, 5), real[:1]])
    cands, feats, conf = make_candidates(feats, disc=rng.normal(size=6))
    cands[2] = Candidate("dir, with comma/g002.png", "b", 2, cands[2].discriminator_score)
    decisions, _ = run(cands, feats, conf, real, images, groups)
    path = write_ledger(decisions, tmp_path / "ledger.csv")
    assert read_ledger(path) == decisions
    assert any(d.nearest_kept_distance is None for d in read_ledger(path))
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(f",{decisions[1].seed},", ",not-a-seed,", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"ledger.csv: row 2 .*not-a-seed"):
        read_ledger(path)
    path.write_text("image,label\nx,b\n")
    with pytest.raises(ValueError, match="not a selection ledger"):
        read_ledger(path)


@pytest.mark.parametrize("what", ["features_rows", "features_dim", "confidence", "real_images",
                                  "real_groups", "unknown_label"])
def test_shape_mismatch_raises(world, what):
    rng, real, images, groups = world
    cands, feats, conf = make_candidates(rng.normal(size=(4, D)))
    if what == "features_rows":
        feats = feats[:3]
    elif what == "features_dim":
        feats = feats[:, :8]
    elif what == "confidence":
        conf = conf[:3]
    elif what == "real_images":
        images = images[:-1]
    elif what == "real_groups":
        groups = groups[:-1]
    else:
        cands[0] = Candidate("g000.png", "zzz", 0, 1.0)
    with pytest.raises(ValueError, match="expected|not in real_counts"):
        run(cands, feats, conf, real, images, groups)


def test_real_nn_distances_needs_two_groups():
    feats = np.random.default_rng(1).normal(size=(5, D))
    with pytest.raises(ValueError, match="at least 2 lesion groups"):
        real_nn_distances(feats, ["L1"] * 5)
    dist = real_nn_distances(feats, ["L1", "L1", "L2", "L2", "L2"])
    brute = [min(np.linalg.norm(feats[i] - feats[j]) for j in range(5) if (i < 2) != (j < 2))
             for i in range(5)]
    np.testing.assert_allclose(dist, brute, rtol=1e-9)


def test_a_copy_of_an_isolated_real_image_is_caught_by_the_local_ratio(world):
    """A rare lesion far from every other: a candidate nearer to it than half its distance to
    the nearest other lesion is a copy, even beyond the global (dense-region) threshold."""
    rng, real, images, groups = world
    lonely = np.full(D, 8.0)
    real = np.concatenate([real, lonely[None]])
    images, groups = [*images, "real/lonely.jpg"], [*groups, "LONELY"]
    global_cut = float(np.quantile(real_nn_distances(real, groups), 0.05))
    own = float(real_nn_distances(real, groups)[-1])
    offset = np.zeros(D)
    offset[0] = max(2 * global_cut, 0.3 * own)  # beyond the global cut, within 0.5 x own
    assert global_cut < offset[0] < 0.5 * own
    cands, feats, conf = make_candidates((lonely + offset)[None])
    decisions, _ = run(cands, feats, conf, real, images, groups)
    assert not decisions[0].kept and "nearest other lesion" in decisions[0].reason
    assert "real/lonely.jpg" in decisions[0].reason
    decisions, _ = run(cands, feats, conf, real, images, groups, copy_ratio=0)
    assert decisions[0].kept  # only the local test caught it


def test_validation_sets_each_classes_confidence_bar_from_its_real_images(world):
    """A class the classifier is unsure of (its real validation images score 0.1-0.3) gets a
    low bar; a class it knows (0.8-1.0) a high one; each rejection names its bar."""
    rng, real, images, groups = world
    feats = spread_points(rng, real, groups, 12)
    unsure, _, _ = make_candidates(feats[:6], label="b", conf=np.full(6, 0.9))
    known, _, _ = make_candidates(feats[6:], label="c", prefix="h")
    conf = np.array([0.05, 0.12, 0.2, 0.25, 0.5, 0.9,  # b: bar 0.14
                     0.5, 0.7, 0.85, 0.9, 0.95, 0.99])  # c: bar 0.84
    validation = {"b": np.linspace(0.1, 0.3, 11), "c": np.linspace(0.8, 1.0, 11)}
    cfg = SelectionConfig(target="max", min_classifier_confidence="validation",
                          min_discriminator_quantile=0)
    decisions, thr = select_candidates(unsure + known, feats, conf, real, images, groups, COUNTS,
                                       cfg, validation_confidence=validation)
    assert thr.classifier_confidence == pytest.approx({"b": 0.14, "c": 0.84})
    assert thr.confidence_source["b"] == "0.2-quantile of 11 real validation images"
    assert [d.kept for d in decisions] == [False, False, True, True, True, True,
                                           False, False, True, True, True, True]
    assert decisions[1].reason == ("classifier confidence 0.12 < 0.14 (0.2-quantile of 11 real "
                                   "validation images)")
    fixed, _ = run(unsure + known, feats, conf, real, images, groups, target="max",
                   min_discriminator_quantile=0)  # one bar of 0.3 for both
    assert [d.kept for d in fixed[:6]] == [False, False, False, False, True, True]
    with pytest.raises(ValueError, match=r"at least 5 real validation images.*\['c'\]"):
        select_candidates(unsure + known, feats, conf, real, images, groups, COUNTS, cfg,
                          validation_confidence={"b": validation["b"], "c": validation["c"][:4]})


def test_a_class_short_of_its_quota_is_explained(world):
    rng, real, images, groups = world
    copies = real[[3, 50]] + 1e-3 * rng.normal(size=(2, D))
    cands, feats, conf = make_candidates(np.concatenate([copies, spread_points(rng, real, groups,
                                                                               4)]),
                                         conf=[0.9, 0.9, 0.9, 0.1, 0.9, 0.9])
    decisions, thr = run(cands, feats, conf, real, images, groups)  # b's quota: 20
    why = explain_shortfalls(summarize(decisions), thr)
    assert why == {"b": "kept 3 of a quota of 20; of 6 candidates, 2 near-copies of a real "
                        "training image, 1 below classifier confidence 0.3; fewer candidates "
                        "than the quota: sample at least 20"}
    enough, thr = run(cands, feats, conf, real, images, groups, target=13)  # quota 3
    assert explain_shortfalls(summarize(enough), thr) == {}
