"""Checkpoint folders: weights + model card, verified on load."""

from __future__ import annotations

import json

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


# Card integrity: the fields that decide predictions are sealed by a sha256 in the card.

def _edit_card(directory, edit) -> None:
    import json

    file = directory / "card.json"
    doc = json.loads(file.read_text())
    edit(doc)
    file.write_text(json.dumps(doc, indent=2))


def _swap_first_classes(doc) -> None:
    doc["classes"][0], doc["classes"][1] = doc["classes"][1], doc["classes"][0]


@pytest.mark.parametrize("edit", [
    _swap_first_classes,
    lambda doc: doc["preprocess"].update(input_size=64),
    lambda doc: doc["preprocess"].update(mean=[0.485, 0.456, 0.406]),
    lambda doc: doc.update(positive_class="nv"),
    lambda doc: doc.update(architecture="mobilenetv3_small_050"),
    lambda doc: doc.update(architecture="no_such_net"),
    lambda doc: doc.update(classes=doc["classes"][:-1]),
], ids=["swapped-classes", "input-size", "mean", "positive-class", "other-architecture",
        "unknown-architecture", "class-removed"])
def test_an_edited_card_is_refused_naming_the_file_and_the_fix(saved, edit) -> None:
    from skinedge.errors import ModelError

    _, directory = saved
    _edit_card(directory, edit)
    for load in (load_card, load_checkpoint):
        with pytest.raises(ModelError) as caught:
            load(directory)
        message = str(caught.value)
        assert str(directory / "card.json") in message
        assert "'integrity' hash does not match" in message and "classes" in message
        assert "restore card.json from the training run" in message


def test_fields_outside_the_hash_may_be_edited(saved) -> None:
    _, directory = saved
    _edit_card(directory, lambda doc: (doc["metrics"].update(note="checked by hand"),
                                       doc["data"].update(licence="CC BY 4.0")))
    card = load_checkpoint(directory)[1]
    assert card.metrics == {"note": "checked by hand"} and card.data.licence == "CC BY 4.0"
    assert card.integrity == card.compute_integrity()


def test_a_card_written_before_a_field_with_a_default_existed_still_passes(saved) -> None:
    """A card sealed before a field was added to it (or to preprocess) lacks that field; with
    the default that keeps the old behaviour, it hashes as it did. A changed value does not."""
    from skinedge.errors import ModelError

    _, directory = saved
    _edit_card(directory, lambda doc: (doc["preprocess"].pop("equalize"),
                                       doc["preprocess"].pop("shades_of_gray_p")))
    card = load_checkpoint(directory)[1]
    assert card.preprocess.equalize is False and card.integrity == card.compute_integrity()

    _edit_card(directory, lambda doc: doc["preprocess"].update(equalize=True))
    with pytest.raises(ModelError, match="card.json"):
        load_checkpoint(directory)


def test_a_card_sealed_again_after_an_architecture_edit_is_still_checked_against_weights(
        saved) -> None:
    """seal_card_file makes an edit deliberate; weights that do not fit stay a ModelError."""
    from skinedge.errors import ModelError
    from skinedge.models.card import seal_card_file

    _, directory = saved
    card_file = directory / "card.json"
    cases = [({"architecture": "mobilenetv3_small_050"}, "do not fit the mobilenetv3_small_050"),
             ({"architecture": "no_such_net"}, "unknown architecture 'no_such_net'"),
             ({"classes": CLASSES[:-1]}, "with 6 classes")]
    original = card_file.read_text()
    for update, expected in cases:
        card_file.write_text(original)
        _edit_card(directory, lambda doc, update=update: doc.update(update))
        seal_card_file(directory)
        with pytest.raises(ModelError) as caught:
            load_checkpoint(directory)
        assert expected in str(caught.value) and str(directory) in str(caught.value)
        assert "restore the checkpoint folder from the training run" in str(caught.value)


def test_a_truncated_card_is_a_model_error_naming_the_file(saved) -> None:
    from skinedge.errors import ModelError

    _, directory = saved
    card_file = directory / "card.json"
    card_file.write_text(card_file.read_text()[:200])
    with pytest.raises(ModelError, match="not a valid model card") as caught:
        load_checkpoint(directory)
    assert str(card_file) in str(caught.value) and "restore it" in str(caught.value)
    card_file.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelError, match="not UTF-8") as caught:
        load_card(directory)
    assert str(card_file) in str(caught.value)


def test_a_card_written_before_integrity_checks_loads_with_a_warning(saved) -> None:
    _, directory = saved
    _edit_card(directory, lambda doc: (doc.pop("integrity"),
                                       doc.update(schema="skinedge.model-card/1")))
    with pytest.warns(UserWarning, match="written before integrity checks") as caught:
        card = load_card(directory)
    assert card.integrity is None
    assert str(directory / "card.json") in str(caught[0].message)
    assert "seal_card_file" in str(caught[0].message)


def test_a_sealed_card_with_its_integrity_deleted_is_refused(saved) -> None:
    from skinedge.errors import ModelError

    _, directory = saved
    assert json.loads((directory / "card.json").read_text())["schema"] == "skinedge.model-card/2"
    _edit_card(directory, lambda doc: doc.pop("integrity"))
    for load in (load_card, load_checkpoint):
        with pytest.raises(ModelError, match="has no 'integrity' hash") as caught:
            load(directory)
        assert str(directory / "card.json") in str(caught.value)
        assert "restore card.json from the training run" in str(caught.value)


def test_a_card_of_an_unknown_schema_is_refused(saved) -> None:
    from skinedge.errors import ModelError

    _, directory = saved
    _edit_card(directory, lambda doc: doc.update(schema="skinedge.model-card/9"))
    with pytest.raises(ModelError, match="unknown model card schema 'skinedge.model-card/9'") \
            as caught:
        load_card(directory)
    assert str(directory / "card.json") in str(caught.value)


def test_an_unsealed_v1_card_sealed_with_seal_card_file_becomes_v2(saved) -> None:
    from skinedge.models.card import seal_card_file

    _, directory = saved
    _edit_card(directory, lambda doc: (doc.pop("integrity"),
                                       doc.update(schema="skinedge.model-card/1")))
    seal_card_file(directory)
    doc = json.loads((directory / "card.json").read_text())
    assert doc["schema"] == "skinedge.model-card/2" and doc["integrity"]
    load_checkpoint(directory)


def test_positive_class_set_from_its_default_to_null_is_refused(saved) -> None:
    """Absent (the default "mel") and an explicit null hash differently."""
    from skinedge.errors import ModelError

    _, directory = saved
    assert load_card(directory).positive_class == "mel"
    _edit_card(directory, lambda doc: doc.update(positive_class=None))
    with pytest.raises(ModelError, match="'integrity' hash does not match") as caught:
        load_card(directory)
    assert str(directory / "card.json") in str(caught.value)


def test_ensemble_cards_are_sealed_over_their_members(saved, tmp_path) -> None:
    from skinedge.errors import ModelError
    from skinedge.models import create_ensemble

    model, directory = saved
    second = save_checkpoint(tmp_path / "second", model, make_card())
    ensemble = create_ensemble([directory, second], tmp_path / "ensemble")
    card = load_card(ensemble)
    assert card.integrity == card.compute_integrity()
    _edit_card(ensemble, lambda doc: doc["members"].reverse())
    with pytest.raises(ModelError, match="'integrity' hash does not match") as caught:
        load_checkpoint(ensemble)
    assert "recreate the ensemble with `skinedge ensemble create`" in str(caught.value)
