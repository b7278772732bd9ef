"""The retrain chain on tiny models: a classifier, an ensemble, a distilled student and a QAT
checkpoint, each retrained on a manifest extended with new training cases as far as it was
made; finished steps are reused and an interrupted one resumes."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from skinedge.data import load_manifest
from skinedge.data.manifest import Manifest, ManifestRow
from skinedge.errors import ConfigError
from skinedge.models import load_card
from skinedge.pipelines.retrain_chain import base_kind, retrain_model
from skinedge.train.callbacks import TrainCallbacks
from skinedge.utils.io import sha256_file
from tests.conftest import TINY, make_image, manifest_of

#: Two epochs at the base run's own learning rate: enough to move every weight.
SETTINGS = {"epochs": 2, "lr_scale": 1.0, "train_overrides": ["threads=1"]}
#: Colours no class of the tiny dataset has: new training cases, labelled.
NEW_LOOKS = {"mel": (30, 200, 40), "nv": (240, 240, 40), "bcc": (20, 20, 200)}


@pytest.fixture(scope="module")
def extended(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint's manifest with six new training images (another split hash)."""
    base = load_manifest(manifest_of(tiny_checkpoint))
    folder = tmp_path_factory.mktemp("corrections")
    rows = []
    for i, (code, colour) in enumerate(NEW_LOOKS.items()):
        for n in range(2):
            image = folder / f"{code}_{n}.jpg"
            make_image(colour, (48, 64), seed=50 + 2 * i + n).save(image, quality=90)
            rows.append(ManifestRow(image.as_posix(), f"new_{code}", code, "train",
                                    sha256_file(image)))
    extended = Manifest(base.root, base.layout, base.classes, base.seed, base.ratios,
                        [*base.rows, *rows], allow_outside_root=True)
    assert extended.split_hash != base.split_hash
    return extended.save(folder / "manifest.json")


@pytest.fixture(scope="module")
def student(teacher, tiny_checkpoint, tmp_path_factory) -> Path:
    """A student distilled from the two-member ``teacher`` ensemble."""
    from skinedge.compress.distill import DistillConfig, distill_classifier
    from skinedge.train.config import load_train_config

    root = tmp_path_factory.mktemp("student")
    cfg = load_train_config(None, [*TINY, f"data.manifest={manifest_of(tiny_checkpoint)}",
                                   f"distill.teacher={teacher}", f"distill.cache_dir={root / 'cache'}",
                                   "distill.temperature=3", "distill.alpha=0.6", "epochs=2",
                                   "optim.lr=1e-2"],
                            config_class=DistillConfig)
    return distill_classifier(cfg, root / "run").best_dir


def _weights(checkpoint) -> dict:
    return load_file(str(Path(checkpoint) / "model.safetensors"))


def _differ(a, b) -> bool:
    first, second = _weights(a), _weights(b)
    return any(not first[k].equal(second[k]) for k in first if not k.startswith("__nncf"))


def _same_model(result_card, base_card) -> None:
    assert result_card.architecture == base_card.architecture
    assert result_card.classes == base_card.classes
    assert result_card.preprocess == base_card.preprocess


# --------------------------------------------------------------------------- classifier


def test_classifier_is_fine_tuned_on_the_extended_manifest_and_reused(tiny_checkpoint, extended,
                                                                      tmp_path):
    assert base_kind(tiny_checkpoint) == "classifier"
    out = tmp_path / "out"
    result = retrain_model(tiny_checkpoint, extended, out, **SETTINGS)
    assert result["kind"] == "classifier" and result["checkpoint"] == str(out / "best")
    base, card = load_card(tiny_checkpoint), load_card(result["checkpoint"])
    _same_model(card, base)
    assert card.data.split_hash == load_manifest(extended).split_hash
    assert _differ(result["checkpoint"], tiny_checkpoint)
    assert result["epochs"] == 2
    assert result["lr"] == pytest.approx(base.training["config"]["optim"]["lr"])
    assert [s["step"] for s in result["steps"]] == ["."] and not result["reused"]
    # Called again: the finished step is read back, not trained again.
    mtime = (out / "best" / "model.safetensors").stat().st_mtime_ns
    again = retrain_model(tiny_checkpoint, extended, out, **SETTINGS)
    assert again["reused"] and again["checkpoint"] == result["checkpoint"]
    assert (out / "best" / "model.safetensors").stat().st_mtime_ns == mtime
    # Other settings in the same folder are refused, not mixed in.
    with pytest.raises(ConfigError, match="another base, manifest or settings"):
        retrain_model(tiny_checkpoint, extended, out, **{**SETTINGS, "epochs": 3})


def test_an_override_no_training_config_takes_is_refused(tiny_checkpoint, extended, tmp_path):
    with pytest.raises(ConfigError, match="trainer.lr=1"):
        retrain_model(tiny_checkpoint, extended, tmp_path, epochs=1, lr_scale=1.0,
                      train_overrides=["trainer.lr=1"])
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- ensemble


def test_ensemble_members_are_fine_tuned_and_ensembled_again(teacher, extended, tmp_path):
    assert base_kind(teacher) == "ensemble"
    result = retrain_model(teacher, extended, tmp_path, **SETTINGS)
    assert result["kind"] == "ensemble"
    assert result["checkpoint"] == str(tmp_path / "ensemble")
    base, card = load_card(teacher), load_card(result["checkpoint"])
    _same_model(card, base)
    assert len(card.members) == len(base.members) == 2
    assert card.data.split_hash == load_manifest(extended).split_hash
    for k in range(2):
        assert _differ(tmp_path / "ensemble" / "members" / f"{k:02d}",
                       teacher / "members" / f"{k:02d}")
    assert [s["step"] for s in result["steps"]] == ["members/member-0", "members/member-1",
                                                    "ensemble"]
    # Each member was fine-tuned from its own training config (member 1: seed 1).
    seeds = [load_card(tmp_path / "members" / f"member-{k}" / "best").training["config"]["seed"]
             for k in range(2)]
    assert seeds == [0, 1]


class Killed(Exception):
    """Stands for a kill in the middle of a member's training."""


class Recorder(TrainCallbacks):
    def __init__(self, step: str, kill: str | None, starts: dict):
        self.step, self.kill, self.starts = step, kill, starts

    def on_start(self, info):
        self.starts[self.step] = info["start_epoch"]

    def on_epoch_end(self, epoch, record):
        if self.step == self.kill and epoch == 1:
            raise Killed(self.step)


def test_an_interrupted_ensemble_resumes_without_retraining_finished_members(teacher, extended,
                                                                            tmp_path):
    starts: dict[str, int] = {}

    def factory(kill):
        return lambda step: contextlib.nullcontext(Recorder(step, kill, starts))

    with pytest.raises(Killed):
        retrain_model(teacher, extended, tmp_path, **SETTINGS,
                      callbacks_factory=factory("members/member-1"))
    first = tmp_path / "members" / "member-0"
    assert (first / "done.json").is_file() and not (tmp_path / "ensemble").exists()
    before = {p: p.stat().st_mtime_ns
              for p in (first / "best" / "model.safetensors", first / "done.json")}
    starts.clear()
    result = retrain_model(teacher, extended, tmp_path, **SETTINGS, callbacks_factory=factory(None))
    assert {p: p.stat().st_mtime_ns for p in before} == before  # member 0 not trained again
    assert starts == {"members/member-1": 2}  # member 1 went on from its first epoch
    reused = {s["step"]: s["reused"] for s in result["steps"]}
    assert reused == {"members/member-0": True, "members/member-1": False, "ensemble": False}
    history = [json.loads(line)["epoch"] for line in
               (tmp_path / "members" / "member-1" / "metrics.jsonl").read_text().splitlines()]
    assert history == [1, 2]
    assert len(load_card(result["checkpoint"]).members) == 2


# --------------------------------------------------------------------------- distilled student


def test_student_is_distilled_again_from_the_retrained_teacher(student, teacher, extended,
                                                              tmp_path):
    assert base_kind(student) == "distilled"
    result = retrain_model(student, extended, tmp_path, **SETTINGS)
    assert result["kind"] == "distilled"
    assert result["teacher"] == str(tmp_path / "teacher" / "ensemble")
    assert result["checkpoint"] == str(tmp_path / "student" / "best")
    base, card = load_card(student), load_card(result["checkpoint"])
    _same_model(card, base)
    assert _differ(result["checkpoint"], student)
    distillation = card.training["distillation"]
    assert distillation["teacher"] == result["teacher"]  # the NEW teacher, not the base's
    assert distillation["teacher_weights_sha256"] == load_card(result["teacher"]).weights_sha256
    assert distillation["teacher_weights_sha256"] != load_card(teacher).weights_sha256
    assert (distillation["temperature"], distillation["alpha"]) == (3.0, 0.6)
    assert card.training["config"]["model"]["pretrained"] == str(student / "model.safetensors")
    assert len(load_card(result["teacher"]).members) == 2
    assert [s["action"] for s in result["steps"]] == ["fine-tune", "fine-tune", "ensemble",
                                                      "distil"]


def test_student_whose_teacher_is_gone_is_refused_or_fine_tuned_alone(student, extended,
                                                                      tmp_path):
    orphan = tmp_path / "orphan"
    shutil.copytree(student, orphan)
    card = json.loads((orphan / "card.json").read_text())
    card["training"]["config"]["distill"]["teacher"] = str(tmp_path / "deleted-teacher")
    (orphan / "card.json").write_text(json.dumps(card))  # training.config is outside the hash
    with pytest.raises(ConfigError, match="deleted-teacher.*gone.*student_alone"):
        retrain_model(orphan, extended, tmp_path / "refused", **SETTINGS)
    result = retrain_model(orphan, extended, tmp_path / "alone", **SETTINGS, student_alone=True)
    assert result["teacher"] is None
    fine_tuned = load_card(result["checkpoint"])
    assert "distillation" not in fine_tuned.training and _differ(result["checkpoint"], orphan)


# --------------------------------------------------------------------------- QAT


QAT = ["epochs=1", "optim.scheduler=none", "optim.lr=1e-3", "device=cpu", "num_workers=0",
       "quantize.calibration_images=24"]


@pytest.fixture(scope="module")
def qat_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    pytest.importorskip("nncf")
    from skinedge.compress.qat import prepare_qat
    from skinedge.pipelines.quantize import qat_config
    from skinedge.train.trainer import train_classifier

    cfg = qat_config(tiny_checkpoint, overrides=QAT)
    out = tmp_path_factory.mktemp("qat") / "run"
    return train_classifier(cfg, out, objective=prepare_qat(cfg, load_manifest(
        manifest_of(tiny_checkpoint)))).best_dir


def test_qat_checkpoint_is_quantized_again_from_its_retrained_fp32_source(
        qat_checkpoint, tiny_checkpoint, extended, tmp_path):
    assert base_kind(qat_checkpoint) == "qat"
    result = retrain_model(qat_checkpoint, extended, tmp_path, **SETTINGS)
    assert result["kind"] == "qat" and result["source"] == str(tiny_checkpoint)
    assert [s["step"] for s in result["steps"]] == ["fp32", "qat"]
    base, card = load_card(qat_checkpoint), load_card(result["checkpoint"])
    _same_model(card, base)
    assert card.precision == base.precision == "int8"
    assert card.training["quantization"]["nncf_config"]
    # QAT started from the fine-tuned FP32 weights, on the extended manifest, as it was run.
    assert card.training["quantization"]["source_weights"] == str(tmp_path / "fp32" / "best" /
                                                                  "model.safetensors")
    assert card.data.split_hash == load_manifest(extended).split_hash
    assert result["epochs"] == 1
    assert _differ(result["checkpoint"], qat_checkpoint)


def test_qat_checkpoint_without_its_fp32_source_starts_from_its_own_weights(
        qat_checkpoint, extended, tmp_path):
    from skinedge.models.card import ModelCard

    copy = tmp_path / "qat-base"
    shutil.copytree(qat_checkpoint, copy)
    card = load_card(copy)
    training = {**card.training, "quantization": {**card.training["quantization"],
                                                  "source_weights": str(tmp_path / "gone.st")}}
    (copy / "card.json").write_text(ModelCard.to_json(
        card.model_copy(update={"training": training}).sealed()))
    result = retrain_model(copy, extended, tmp_path / "out", **SETTINGS)
    assert result["source"] is None
    assert [s["step"] for s in result["steps"]] == ["fp32-own", "qat"]
    assert "gone" in result["steps"][0]["action"]
    own = load_file(str(tmp_path / "out" / "fp32-own" / "model.safetensors"))
    assert own and not any(k.startswith("__nncf") for k in own)
    assert load_card(result["checkpoint"]).precision == "int8"
    assert _differ(result["checkpoint"], copy)
