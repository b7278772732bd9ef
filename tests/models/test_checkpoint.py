"""Checkpoint folders: weights + model card, verified on load."""

from __future__ import annotations

import pytest
import torch

from skinedge.data import PreprocessConfig
from skinedge.models import (
    DataInfo,
    ModelCard,
    create_classifier,
    load_card,
    load_checkpoint,
    save_checkpoint,
)
from skinedge.models.checkpoint import load_trainer_state
from skinedge.utils.io import sha256_file

CLASSES = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]


def make_card(**update) -> ModelCard:
    return ModelCard(
        architecture="test_efficientnet", classes=CLASSES, class_names={c: c for c in CLASSES},
        vocabulary="isic2018", preprocess=PreprocessConfig(input_size=32), drop_rate=0.2,
        data=DataInfo(split_hash="abc123", licence="CC BY-NC 4.0"), **update)


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model, _ = create_classifier("test_efficientnet", len(CLASSES), pretrained="none",
                                 drop_rate=0.2)
    with torch.no_grad():  # a non-trivial head and BN statistics, so a lost tensor would show
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        model.bn2.running_mean.uniform_(-1, 1)
    model.eval()
    directory = save_checkpoint(tmp_path / "run" / "best", model, make_card(),
                                trainer_state={"epoch": 3})
    return model, directory


def test_round_trip_gives_identical_outputs_and_card(saved) -> None:
    model, directory = saved
    loaded, card = load_checkpoint(directory)
    assert not loaded.training
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    assert card.classes == CLASSES
    assert card.preprocess == PreprocessConfig(input_size=32)
    assert card.weights_sha256 == sha256_file(directory / "model.safetensors")
    assert card.data.licence == "CC BY-NC 4.0"
    assert card.data.split_hash == "abc123"
    assert load_card(directory / "model.safetensors") == card  # a file inside works too
    assert load_trainer_state(directory) == {"epoch": 3}
    assert sorted(p.name for p in directory.parent.iterdir()) == ["best"]  # no temp folders left


def test_saving_again_replaces_the_checkpoint(saved) -> None:
    model, directory = saved
    save_checkpoint(directory, model, make_card(metrics={"accuracy": 0.5}))
    card = load_card(directory)
    assert card.metrics == {"accuracy": 0.5}
    assert load_trainer_state(directory) is None  # old trainer_state.pt left with the old folder


def test_tampered_weights_are_refused(saved) -> None:
    _, directory = saved
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 differs .* restore it"):
        load_checkpoint(directory)


def test_folder_without_card_is_not_a_checkpoint(tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no card\.json.*skinedge train"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="runs/NAME/best"):
        load_card(tmp_path)
