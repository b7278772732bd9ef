"""The public training loop as a caller outside the trainer uses it (a federated client,
retraining from corrections): train a few epochs from given weights on a loader, validate,
save and resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from skinedge.data import LesionDataset, PreprocessConfig, build_eval_transform, load_manifest
from skinedge.models import ModelCard, create_classifier
from skinedge.train import (
    TrainState,
    epoch_loader,
    fit_epoch,
    load_state,
    save_state,
    seed_epoch,
    validate,
)

PREPROCESS = PreprocessConfig(input_size=32)


@pytest.fixture(scope="module")
def splits(tiny_manifest):
    """(train, val) of the tiny colour-coded manifest, without augmentation."""
    manifest = load_manifest(tiny_manifest)
    transform = build_eval_transform(PREPROCESS)
    return (LesionDataset.from_manifest(manifest, "train", transform),
            LesionDataset.from_manifest(manifest, "val", transform))


@pytest.fixture
def start_weights() -> dict[str, torch.Tensor]:
    """The weights a caller starts from (e.g. the global model a federated server sent)."""
    torch.manual_seed(7)
    model, _ = create_classifier("test_efficientnet", 7, pretrained="none", drop_rate=0.0)
    return copy.deepcopy(model.state_dict())


def model_from(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    model, _ = create_classifier("test_efficientnet", 7, pretrained="none", drop_rate=0.0)
    model.load_state_dict(weights)
    return model.to(memory_format=torch.channels_last)


def train_epochs(state: TrainState, train_set, epochs: range) -> list[float]:
    losses = []
    for epoch in epochs:
        seed_epoch(0, epoch)
        loader = epoch_loader(train_set, batch_size=8, epoch=epoch, seed=0)
        stats = fit_epoch(state.model, loader, torch.nn.CrossEntropyLoss(), state.optimizer,
                          device="cpu", epoch=epoch, max_batches=3)
        assert (stats.batches, stats.images) == (3, 24)
        losses.append(stats.loss)
        state.update_best(epoch, -stats.loss)
        if state.scheduler is not None:
            state.scheduler.step()
    return losses


def test_fit_epoch_from_given_weights_learns_and_is_reproducible(splits, start_weights) -> None:
    train_set, _ = splits
    runs = []
    for _ in range(2):
        model = model_from(start_weights)
        state = TrainState(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
        runs.append((state, train_epochs(state, train_set, range(1, 3))))
    (state, losses), (again, again_losses) = runs
    assert losses[1] < losses[0], losses
    after = state.model.state_dict()
    changed = [k for k, v in start_weights.items() if v.is_floating_point()
               and not torch.equal(v, after[k])]
    assert "classifier.weight" in changed and "conv_stem.weight" in changed
    # Same weights, seed and epochs: the same numbers, bit for bit.
    assert again_losses == losses
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in after.items())
    assert state.epoch == 2


def test_validate_returns_probabilities_for_every_item(splits, start_weights) -> None:
    _, val_set = splits
    result = validate(model_from(start_weights), val_set, device="cpu", batch_size=4)
    assert result.probs.shape == (len(val_set), 7)
    assert np.allclose(result.probs.sum(axis=1), 1.0)
    assert (result.probs >= 0).all()
    assert result.targets.tolist() == val_set.targets
    assert result.loss > 0


def test_save_and_load_state_resume_exactly(splits, start_weights, tmp_path) -> None:
    train_set, _ = splits

    def fresh_state() -> TrainState:
        model = model_from(start_weights)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return TrainState(model, optimizer,
                          torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5))

    straight = fresh_state()
    train_epochs(straight, train_set, range(1, 2))
    card = ModelCard(architecture="test_efficientnet", classes=list("abcdefg"), class_names={},
                     vocabulary="test", preprocess=PREPROCESS)
    save_state(tmp_path / "last", straight, card, extra={"note": "kept"})
    train_epochs(straight, train_set, range(2, 3))

    resumed = fresh_state()
    saved = load_state(tmp_path / "last", resumed)
    assert saved["note"] == "kept"
    assert (resumed.epoch, resumed.next_epoch, resumed.best_epoch) == (1, 2, 1)
    assert resumed.scheduler.last_epoch == 1
    train_epochs(resumed, train_set, range(resumed.next_epoch, 3))

    assert (resumed.best_epoch, resumed.best_metric) == (straight.best_epoch, straight.best_metric)
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()
    assert all(torch.equal(v, resumed.model.state_dict()[k])
               for k, v in straight.model.state_dict().items())
