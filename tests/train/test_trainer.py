"""Classifier training on a tiny dataset: outputs, exact resume, learning, frozen stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from skinedge.data import load_manifest
from skinedge.models import create_classifier, load_card
from skinedge.train.config import TrainConfig, load_train_config
from skinedge.train.trainer import TrainCallbacks, train_classifier

# timm's tiny test network at 32 px, a few batches: each epoch takes a fraction of a second.
FAST = [
    "model.arch=test_efficientnet", "model.pretrained=none", "preprocess.input_size=32",
    "num_workers=0", "batch_size=8", "eval_batch_size=32", "max_batches_per_epoch=3",
    "device=cpu",
]


def make_config(manifest: Path, *overrides: str) -> TrainConfig:
    return load_train_config(None, [*FAST, f"data.manifest={manifest}", *overrides])


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def two_epoch_run(tiny_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "two"
    cfg = make_config(tiny_manifest, "epochs=2")
    return cfg, out, train_classifier(cfg, out)


def test_run_writes_config_versions_metrics_and_checkpoints(two_epoch_run, tiny_manifest) -> None:
    cfg, out, result = two_epoch_run
    assert load_train_config(out / "config.yaml") == cfg
    assert "torch" in json.loads((out / "versions.json").read_text())
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert without_timing([json.loads(line) for line in lines]) == without_timing(result.history)
    assert (out / "last" / "trainer_state.pt").is_file()
    assert (out / "last" / "model.safetensors").is_file()
    assert not (out / "best" / "trainer_state.pt").exists()  # best/ is for inference only

    card = load_card(out / "best")
    assert card.metrics["split"] == "val"
    assert 0 <= card.metrics["balanced_accuracy"] <= 1
    assert card.metrics["balanced_accuracy"] == pytest.approx(result.best_metric)
    assert card.training["epoch"] == result.best_epoch in (1, 2)
    assert card.data.split_hash == load_manifest(tiny_manifest).split_hash
    assert card.classes == ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]
    assert card.preprocess.input_size == 32
    assert card.architecture == "test_efficientnet"
    assert card.pretrained == "none"
    assert load_card(out / "last").training["epoch"] == 2
    assert result.best_dir == out / "best"


def test_resume_with_more_epochs_matches_an_uninterrupted_run(tiny_manifest, tmp_path) -> None:
    straight = train_classifier(make_config(tiny_manifest, "epochs=3"), tmp_path / "a")
    train_classifier(make_config(tiny_manifest, "epochs=2"), tmp_path / "b")
    resumed = train_classifier(make_config(tiny_manifest, "epochs=3"), tmp_path / "b", resume=True)
    assert_same_weights(last_weights(tmp_path / "a"), last_weights(tmp_path / "b"))
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert len(resumed.history) == 3
    assert (resumed.best_epoch, resumed.best_metric) == (straight.best_epoch, straight.best_metric)


class KillAfter(TrainCallbacks):
    """Stands in for a kill: raises once the given epoch's checkpoint is written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_after_a_kill_matches_with_cosine_warmup_and_balanced_sampling(
        tiny_manifest, tmp_path) -> None:
    extra = ("epochs=3", "optim.scheduler=cosine", "optim.warmup_epochs=1", "sampler=balanced",
             "loss.kind=focal")
    straight = train_classifier(make_config(tiny_manifest, *extra), tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train_classifier(make_config(tiny_manifest, *extra), tmp_path / "b", callbacks=KillAfter(2))
    resumed = train_classifier(make_config(tiny_manifest, *extra), tmp_path / "b", resume=True)
    assert_same_weights(last_weights(tmp_path / "a"), last_weights(tmp_path / "b"))
    assert without_timing(resumed.history) == without_timing(straight.history)


def test_resume_refuses_a_changed_config(two_epoch_run, tiny_manifest) -> None:
    _, out, _ = two_epoch_run
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=r"config changed in \['optim'\]"):
        train_classifier(make_config(tiny_manifest, "epochs=3", "optim.lr=0.01"), out, resume=True)
    assert (out / "metrics.jsonl").read_text() == before  # nothing was touched


def test_resume_refuses_to_stretch_a_cosine_schedule(tiny_manifest, tmp_path) -> None:
    cosine = ("optim.scheduler=cosine", "max_batches_per_epoch=1")
    train_classifier(make_config(tiny_manifest, "epochs=1", *cosine), tmp_path)
    with pytest.raises(ValueError, match="cosine"):
        train_classifier(make_config(tiny_manifest, "epochs=2", *cosine), tmp_path, resume=True)


def test_resume_without_a_checkpoint_raises(tiny_manifest, tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot resume.*start without --resume"):
        train_classifier(make_config(tiny_manifest), tmp_path / "empty", resume=True)


def test_no_manifest_raises() -> None:
    with pytest.raises(ValueError, match="data.manifest"):
        train_classifier(load_train_config(None, FAST), "unused")


def test_training_loss_goes_down_on_an_easy_task(tiny_manifest, tmp_path) -> None:
    # Classes differ by colour; without augmentation a few epochs at lr 1e-3 must learn that.
    result = train_classifier(make_config(
        tiny_manifest, "epochs=4", "max_batches_per_epoch=5", "optim.lr=1e-3",
        "augment.enabled=false", "optim.scheduler=none", "model.drop_rate=0"), tmp_path)
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < 0.8 * losses[0], losses


def test_frozen_stages_keep_their_weights(tiny_manifest, tmp_path) -> None:
    torch.manual_seed(123)
    start, _ = create_classifier("test_efficientnet", 7, pretrained="none")
    weights = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(weights))
    train_classifier(make_config(tiny_manifest, "epochs=1", f"model.pretrained={weights}",
                                 "model.freeze_stages=2", "optim.lr=1e-2"), tmp_path / "run")
    before, after = start.state_dict(), last_weights(tmp_path / "run")
    params = {name for name, _ in start.named_parameters()}
    frozen = [k for k in params if k.split(".")[0] in ("conv_stem", "bn1")
              or k.startswith(("blocks.0.", "blocks.1."))]
    trained = [k for k in params if k.startswith(("blocks.2.", "conv_head", "classifier"))]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("weight"))


def test_freezing_more_stages_than_exist_raises(tiny_manifest, tmp_path) -> None:
    with pytest.raises(ValueError, match="freeze_stages=9"):
        train_classifier(make_config(tiny_manifest, "model.freeze_stages=9"), tmp_path)


def test_resume_after_a_kill_between_the_checkpoint_renames(tiny_manifest, tmp_path) -> None:
    """A kill after `last/` became `.last.old` and before the new one moved in."""
    straight = train_classifier(make_config(tiny_manifest, "epochs=3"), tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train_classifier(make_config(tiny_manifest, "epochs=3"), tmp_path / "b",
                         callbacks=KillAfter(2))
    (tmp_path / "b" / "last").rename(tmp_path / "b" / ".last.old")
    resumed = train_classifier(make_config(tiny_manifest, "epochs=3"), tmp_path / "b", resume=True)
    assert_same_weights(last_weights(tmp_path / "a"), last_weights(tmp_path / "b"))
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert not (tmp_path / "b" / ".last.old").exists()


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(two_epoch_run, tiny_manifest) -> None:
    _, out, _ = two_epoch_run
    with pytest.raises(ValueError, match="already holds a training run.*--resume"):
        train_classifier(make_config(tiny_manifest, "epochs=2"), out)


# --------------------------------------------------------------------------- too-small classes


@pytest.fixture
def one_df_image_in_train(make_labels_folder, tmp_path) -> Path:
    """mel and nv: three lesions of two images; df: three single-image lesions, so 1/1/1."""
    from skinedge.data import make_manifest, read_dataset

    folder = make_labels_folder(per_class=6, codes=("mel", "nv", "df"))
    labels = (folder / "labels.csv").read_text().splitlines()
    kept = [row for row in labels if not row.startswith("images/df_")
            or row.split(",")[0] in {"images/df_000.jpg", "images/df_002.jpg", "images/df_004.jpg"}]
    (folder / "labels.csv").write_text("\n".join(kept) + "\n")
    manifest = make_manifest(read_dataset(folder, check_images=False))
    assert manifest.counts()["train"]["df"] == 1
    return manifest.save(tmp_path / "manifest.json")


def _train_cli(manifest: Path, out: Path, *overrides: str):
    from typer.testing import CliRunner

    from skinedge.cli.main import app

    sets = [word for item in [*FAST, "epochs=1", "max_batches_per_epoch=1", *overrides]
            for word in ("--set", item)]
    return CliRunner().invoke(app, ["train", "--manifest", str(manifest), "--out", str(out), *sets])


def test_a_class_with_one_training_image_is_refused(one_df_image_in_train, tmp_path) -> None:
    result = _train_cli(one_df_image_in_train, tmp_path / "run")

    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert (f"error: {one_df_image_in_train}: the train split has fewer than 2 images of "
            "class(es) df (1)") in output
    # Classes the dataset never has (bcc, akiec, bkl, vasc of isic2018) are not counted.
    assert "bcc" not in output
    assert "skinedge data split" in output
    assert ("train anyway with `--set data.min_images_per_class=0` (or the same key in the "
            "config file;") in output
    assert "an option of `skinedge train`" not in output  # also raised by other commands
    assert not (tmp_path / "run" / "last").exists()


def test_min_images_per_class_zero_trains_anyway(one_df_image_in_train, tmp_path) -> None:
    result = _train_cli(one_df_image_in_train, tmp_path / "run", "data.min_images_per_class=0")

    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_a_higher_minimum_names_every_small_class(tiny_manifest) -> None:
    # tiny_manifest: 3 lesions of 2 images per class in train.
    from skinedge.errors import DataError

    with pytest.raises(DataError) as info:
        train_classifier(make_config(tiny_manifest, "data.min_images_per_class=7"), "unused")

    assert "fewer than 7 images of class(es) mel (6), nv (6), bcc (6)" in str(info.value)
