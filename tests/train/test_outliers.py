"""Outlier exposure: the loss, the outlier pictures, their share of an epoch, and a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from skinedge.evaluate.ood import held_out, non_lesion_images, outlier_sources
from skinedge.models import load_card
from skinedge.train.losses import PartialLabelLoss
from skinedge.train.outliers import (
    OUTLIER,
    OutlierExposureLoss,
    OutlierSet,
    outlier_count,
    sampling_weights,
    with_outliers,
)
from skinedge.train.sampler import ShardedSampler, balanced_weights
from skinedge.train.trainer import train_classifier
from tests.train.test_trainer import make_config

# --------------------------------------------------------------------------- the loss


def test_without_outliers_the_loss_is_the_label_loss() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
    loss = OutlierExposureLoss(torch.nn.CrossEntropyLoss(), 0.5)(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))


def test_outlier_rows_cost_their_cross_entropy_to_uniform_and_never_reach_the_label_loss() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g)
    target = torch.tensor([0, 2, OUTLIER, 1, OUTLIER, 3])
    # PartialLabelLoss refuses any target below -1: an outlier row passed on would raise.
    loss = OutlierExposureLoss(PartialLabelLoss(positive_index=0), 0.5)(logits, target)
    lesion = target != OUTLIER
    uniform = -F.log_softmax(logits[~lesion], dim=1).mean(dim=1).mean()
    torch.testing.assert_close(loss, F.cross_entropy(logits[lesion], target[lesion]) + 0.5 * uniform)


def test_a_batch_of_outliers_alone_is_lowest_when_the_logits_are_equal() -> None:
    criterion = OutlierExposureLoss(torch.nn.CrossEntropyLoss(), 1.0)
    target = torch.full((3,), OUTLIER)
    flat = criterion(torch.zeros(3, 5), target)
    assert flat.item() == pytest.approx(math.log(5))
    assert criterion(torch.tensor([[4.0, 0, 0, 0, 0]] * 3), target) > flat


def test_training_with_it_makes_outliers_unsure_and_keeps_lesions_right() -> None:
    # Two lesion classes and, beside the first, a cluster of outliers, fed to a small MLP: with
    # the outlier term the outliers' top probability falls to about 1/2 while the lesions stay
    # right and sure; without it, the outliers are called the first class with certainty.
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [3.0, 3.0]])
    x = torch.cat([c + 0.3 * torch.randn(50, 2, generator=g) for c in centres])
    target = torch.tensor([0] * 50 + [1] * 50 + [OUTLIER] * 50)
    lesion = target != OUTLIER

    def train(weight: float) -> tuple[float, float, float]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        optim = torch.optim.Adam(model.parameters(), lr=0.05)
        criterion = OutlierExposureLoss(torch.nn.CrossEntropyLoss(), weight)
        for _ in range(200):
            optim.zero_grad()
            criterion(model(x), target).backward()
            optim.step()
        with torch.no_grad():
            probs = model(x).softmax(dim=1)
        accuracy = (probs[lesion].argmax(dim=1) == target[lesion]).float().mean().item()
        top = probs.max(dim=1).values
        return accuracy, top[lesion].mean().item(), top[~lesion].mean().item()

    accuracy, lesions_sure, outliers_top = train(0.5)
    assert accuracy == 1.0 and lesions_sure > 0.99
    assert outliers_top < 0.55
    assert train(0.0)[2] > 0.99


# --------------------------------------------------------------------------- the pictures


def test_outlier_sources_leave_out_the_held_out_half_and_its_scenes() -> None:
    groups = {s.group for s in outlier_sources()}
    graded = {item.group for item in non_lesion_images() if held_out(item.group)}
    assert groups and not groups & graded
    scenes = {g.split("/")[-1].split("_")[0].lower() for g in graded if g.startswith("photo:")}
    assert not {g for g in groups if g.startswith("photo:")
                and g.split("/")[-1].split("_")[0].lower() in scenes}
    assert any(g.startswith("pattern:") for g in groups) and any(g.startswith("photo:") for g in groups)


def test_an_outlier_set_draws_new_pictures_that_a_seed_repeats() -> None:
    sources = outlier_sources()
    items = OutlierSet(sources, 2 * len(sources), lambda image: torch.from_numpy(np.array(image)))
    assert len(items) == 2 * len(sources) and items.targets == [OUTLIER] * len(items)

    def draw(index: int) -> torch.Tensor:
        image, target = items[index]
        assert target == OUTLIER
        return image

    torch.manual_seed(0)
    first = [draw(i) for i in (0, len(sources))]  # the same source twice
    torch.manual_seed(0)
    again = [draw(i) for i in (0, len(sources))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])


def test_with_outliers_joins_the_share_asked_for() -> None:
    class Lesions(torch.utils.data.Dataset):
        targets = [0, 1, 2, 1] * 45

        def __len__(self):
            return len(self.targets)

    joined, outliers = with_outliers(Lesions(), 0.1, lambda image: image)
    assert len(outliers) == outlier_count(180, 0.1) == 20
    assert len(joined) == 200 and joined.targets[-20:] == [OUTLIER] * 20
    assert isinstance(joined[199][0], Image.Image) and joined[199][1] == OUTLIER


def test_a_balanced_sampler_draws_outliers_their_share_and_balances_the_lesions() -> None:
    targets = [0] * 90 + [1] * 10 + [OUTLIER] * 12
    weights = sampling_weights(targets, 0.2, lambda t: balanced_weights(t, 2))
    sampler = ShardedSampler(len(targets), weights, seed=0)
    drawn = [i for epoch in range(40) for i in _epoch(sampler, epoch)]
    kinds = np.array([targets[i] for i in drawn])
    assert np.mean(kinds == OUTLIER) == pytest.approx(0.2, abs=0.02)
    assert np.mean(kinds == 0) == pytest.approx(np.mean(kinds == 1), abs=0.03)


def _epoch(sampler: ShardedSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


# --------------------------------------------------------------------------- a run


def test_a_run_with_outliers_records_them_in_the_card(tiny_manifest, tmp_path) -> None:
    result = train_classifier(make_config(tiny_manifest, "epochs=1", "outliers.weight=0.5",
                                          "outliers.share=0.2", "sampler=balanced"),
                              tmp_path / "run")
    info = load_card(result.best_dir).training["outlier_exposure"]
    assert info["weight"] == 0.5 and info["share"] == 0.2 and info["images_per_epoch"] > 0
    assert info["groups"] == [s.group for s in outlier_sources()]


def test_a_distilled_student_learns_outliers_beside_its_teacher(teacher, tiny_checkpoint,
                                                                tmp_path) -> None:
    # The teacher's answers cover lesions only, so the student is taught the outliers itself;
    # the outliers carry zero teacher logits that the distillation term never sees.
    from skinedge.compress.distill import distill_classifier
    from tests.compress.test_distill import distill_config
    from tests.conftest import manifest_of

    cfg = distill_config(teacher, manifest_of(tiny_checkpoint), tmp_path / "cache", "epochs=1",
                         "outliers.weight=0.5", "outliers.share=0.2")
    card = load_card(distill_classifier(cfg, tmp_path / "student").best_dir)
    assert card.training["outlier_exposure"]["images_per_epoch"] > 0
    assert card.training["distillation"]["teacher_members"] == 2


def test_the_outlier_loss_wraps_the_objectives_loss_which_wraps_the_partial_label_loss(
        tiny_manifest) -> None:
    from skinedge.compress.distill import DistillationLoss
    from skinedge.train.trainer import _build_criterion

    class Distilling:
        def criterion(self, label_loss):
            return DistillationLoss(2.0, 0.7, label_loss)

    criterion = _build_criterion(make_config(tiny_manifest, "outliers.weight=0.5"), [3] * 7,
                                 Distilling(), positive=0)
    assert isinstance(criterion, OutlierExposureLoss)
    assert isinstance(criterion.label_loss, DistillationLoss)
    assert isinstance(criterion.label_loss.label_loss, PartialLabelLoss)


def test_the_outlier_loss_passes_only_the_lesion_rows_of_extras_on() -> None:
    from skinedge.compress.distill import DistillationLoss

    g = torch.Generator().manual_seed(3)
    logits, teacher = torch.randn(6, 4, generator=g), torch.randn(6, 2, 4, generator=g)
    target = torch.tensor([0, OUTLIER, 2, 3, OUTLIER, 1])
    lesion = target != OUTLIER
    teacher[~lesion] = 0.0  # the outliers' stand-ins
    inner = DistillationLoss(2.0, 0.7, torch.nn.CrossEntropyLoss())
    loss = OutlierExposureLoss(inner, 0.5)(logits, target, teacher)
    uniform = -F.log_softmax(logits[~lesion], dim=1).mean(dim=1).mean()
    torch.testing.assert_close(
        loss, inner(logits[lesion], target[lesion], teacher[lesion]) + 0.5 * uniform)


def test_pipeline_keys_leave_outliers_out_while_they_are_off(tiny_manifest) -> None:
    from skinedge.pipelines.pipeline_stages import dump

    assert "outliers" not in dump(make_config(tiny_manifest))
    assert dump(make_config(tiny_manifest, "outliers.weight=0.5"))["outliers"]["weight"] == 0.5
