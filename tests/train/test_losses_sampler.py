"""Class weights, focal loss and the epoch-seeded, rank-sharded sampler."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from skinedge.train.losses import FocalLoss, build_loss, class_weights
from skinedge.train.sampler import ShardedSampler, balanced_weights


def test_inverse_class_weights_by_hand() -> None:
    # 1/n = 0.1, 0.05, 0.025 (mean 0.175/3); an absent class gets weight 0.
    weights = class_weights([10, 20, 0, 40], "inverse")
    mean = (0.1 + 0.05 + 0.025) / 3
    expected = torch.tensor([0.1 / mean, 0.05 / mean, 0.0, 0.025 / mean])
    torch.testing.assert_close(weights, expected)
    assert weights[[0, 1, 3]].mean().item() == pytest.approx(1.0)


def test_sqrt_inverse_and_none() -> None:
    weights = class_weights([1, 4], "sqrt_inverse")
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.5]) / 0.75)
    assert class_weights([1, 4], "none") is None


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_with_gamma_zero_is_cross_entropy(weighted: bool) -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)
    weight = class_weights([3, 10, 1, 7, 20], "inverse") if weighted else None
    focal = FocalLoss(gamma=0.0, weight=weight)(logits, target)
    torch.testing.assert_close(focal, F.cross_entropy(logits, target, weight=weight))


def test_focal_with_gamma_zero_and_label_smoothing_is_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
    torch.testing.assert_close(
        FocalLoss(gamma=0.0, label_smoothing=0.1)(logits, target),
        F.cross_entropy(logits, target, label_smoothing=0.1))


def test_focal_down_weights_easy_examples() -> None:
    target = torch.tensor([0])
    easy, hard = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    focal, ce = FocalLoss(gamma=2.0), torch.nn.CrossEntropyLoss()
    easy_ratio = (focal(easy, target) / ce(easy, target)).item()
    hard_ratio = (focal(hard, target) / ce(hard, target)).item()
    assert easy_ratio < 0.01  # (1 - p_t)^2 with p_t ~ 0.96
    assert hard_ratio > 0.3  # p_t ~ 0.21
    assert easy_ratio < hard_ratio


def test_build_loss_picks_the_kind() -> None:
    weights = torch.tensor([1.0, 2.0])
    assert isinstance(build_loss("focal", weights, gamma=1.0), FocalLoss)
    ce = build_loss("ce", weights)
    assert isinstance(ce, torch.nn.CrossEntropyLoss) and torch.equal(ce.weight, weights)


def shards(num_items: int, world_size: int, *, epoch: int = 0, seed: int = 0,
           weights=None) -> list[list[int]]:
    out = []
    for rank in range(world_size):
        sampler = ShardedSampler(num_items, weights, seed=seed, rank=rank, world_size=world_size)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
        assert len(out[-1]) == len(sampler)
    return out


def test_shuffle_shards_are_disjoint_and_cover_everything() -> None:
    parts = shards(12, 3, epoch=1)
    assert [len(p) for p in parts] == [4, 4, 4]
    assert sorted(i for p in parts for i in p) == list(range(12))


def test_uneven_shards_have_equal_length_and_cover_everything() -> None:
    parts = shards(10, 3, epoch=1)
    assert [len(p) for p in parts] == [4, 4, 4]  # same number of batches on every rank
    drawn = Counter(i for p in parts for i in p)
    assert set(drawn) == set(range(10))
    assert sum(drawn.values()) - 10 == 2  # only the padding repeats


def test_order_is_seeded_by_seed_and_epoch() -> None:
    assert shards(50, 2, epoch=3) == shards(50, 2, epoch=3)
    assert shards(50, 2, epoch=3) != shards(50, 2, epoch=4)
    assert shards(50, 2, epoch=3, seed=1) != shards(50, 2, epoch=3)
    assert shards(50, 1, epoch=3)[0] != list(range(50))  # actually shuffled


def test_balanced_sampling_draws_rare_classes_as_often_as_common_ones() -> None:
    targets = [0] * 900 + [1] * 90 + [2] * 10
    weights = balanced_weights(targets, num_classes=3)
    assert weights[0] == pytest.approx(1 / 900) and weights[-1] == pytest.approx(1 / 10)
    parts = shards(len(targets), 2, epoch=1, weights=weights)
    drawn = Counter(targets[i] for p in parts for i in p)
    assert sum(drawn.values()) == 1000
    for cls in range(3):
        assert 0.27 < drawn[cls] / 1000 < 0.40, drawn
    # the same (seed, epoch) gives the same draw; another epoch another one
    assert shards(1000, 2, epoch=1, weights=weights) == shards(1000, 2, epoch=1, weights=weights)
    assert shards(1000, 2, epoch=1, weights=weights) != shards(1000, 2, epoch=2, weights=weights)
