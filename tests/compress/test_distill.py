"""Ensembles and distillation on tiny models: the loss pulls a student toward its teacher, the
teacher-logit cache is reused and invalidated by the right things, runs resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skinedge.compress.distill import DistillationLoss, DistillConfig, distill_classifier
from skinedge.compress.teacher import teacher_logits
from skinedge.data import build_eval_transform, load_manifest
from skinedge.data.dataset import LesionDataset
from skinedge.evaluate.predict import predict_probs
from skinedge.models import Ensemble, create_classifier, create_ensemble, load_card, load_checkpoint
from skinedge.train.config import load_train_config
from tests.conftest import TINY, manifest_of


def distill_config(teacher: Path, manifest: Path, cache: Path, *extra: str) -> DistillConfig:
    return load_train_config(None, [*TINY, f"data.manifest={manifest}", f"distill.teacher={teacher}",
                                    f"distill.cache_dir={cache}", *extra],
                             config_class=DistillConfig)


# --------------------------------------------------------------------------- the loss


def test_distillation_loss_is_zero_when_the_student_matches_and_pulls_it_toward_the_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(16, 2, 5) * 3  # 16 images, 2 members, 5 classes
    loss_fn = DistillationLoss(temperature=2.0, alpha=1.0, label_loss=torch.nn.CrossEntropyLoss())
    targets = torch.zeros(16, dtype=torch.long)
    one_member = teacher[:, :1]
    assert loss_fn(one_member[:, 0], targets, one_member).item() == pytest.approx(0, abs=1e-5)

    student = torch.nn.Linear(8, 5)
    x = torch.randn(16, 8)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    soft = torch.softmax(teacher, -1).mean(1)

    def disagreement() -> float:
        with torch.no_grad():
            return (torch.softmax(student(x), 1) - soft).abs().sum(1).mean().item()

    losses, before = [], disagreement()
    for _ in range(100):
        loss = loss_fn(student(x), targets, teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert disagreement() < 0.6 * before


def test_alpha_mixes_in_the_label_loss():
    logits, teacher = torch.randn(4, 3), torch.randn(4, 1, 3)
    targets = torch.tensor([0, 1, 2, 0])
    ce = torch.nn.CrossEntropyLoss()
    only_labels = DistillationLoss(3.0, 0.0, ce)(logits, targets, teacher)
    assert only_labels.item() == pytest.approx(ce(logits, targets).item(), rel=1e-6)
    half = DistillationLoss(3.0, 0.5, ce)(logits, targets, teacher)
    only_teacher = DistillationLoss(3.0, 1.0, ce)(logits, targets, teacher)
    assert half.item() == pytest.approx(0.5 * only_labels.item() + 0.5 * only_teacher.item(), rel=1e-5)


# --------------------------------------------------------------------------- ensembles


def test_ensemble_checkpoint_averages_member_probabilities(teacher, tiny_checkpoint):
    model, card = load_checkpoint(teacher)
    assert isinstance(model, Ensemble) and card.architecture == "ensemble"
    assert [m.path for m in card.members] == ["members/00", "members/01"]
    first, _ = load_checkpoint(teacher / "members" / "00")
    second, _ = load_checkpoint(teacher / "members" / "01")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = (torch.softmax(first(x), 1) + torch.softmax(second(x), 1)) / 2
        got = torch.softmax(model(x), 1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert card.weights_sha256 != load_card(tiny_checkpoint).weights_sha256


def test_ensemble_refuses_members_that_do_not_belong_together(teacher, tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="at least two"):
        create_ensemble([tiny_checkpoint], tmp_path / "one")
    with pytest.raises(ValueError, match="itself an ensemble"):
        create_ensemble([teacher, tiny_checkpoint], tmp_path / "nested")
    other = tmp_path / "other"
    other.mkdir()
    card = json.loads((tiny_checkpoint / "card.json").read_text())
    card["data"]["split_hash"] = "0" * 64
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="different splits"):
        create_ensemble([tiny_checkpoint, other], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()


def test_ensemble_detects_a_swapped_member(teacher, tmp_path):
    import shutil

    copy = tmp_path / "ensemble"
    shutil.copytree(teacher, copy)
    shutil.rmtree(copy / "members/01")  # the second member's folder replaced by the first's
    shutil.copytree(copy / "members/00", copy / "members/01")
    with pytest.raises(ValueError, match="members/01"):
        load_checkpoint(copy)


# --------------------------------------------------------------------------- teacher cache


def test_teacher_logits_are_cached_per_member_and_reused(teacher, tiny_checkpoint, tmp_path):
    manifest = load_manifest(manifest_of(tiny_checkpoint))
    first = teacher_logits(teacher, manifest, "train", cache_dir=tmp_path, device="cpu")
    assert first.computed == 2 and len(first.cache_files) == 2
    assert first.logits.shape == (len(manifest.subset("train")), 2, 7)
    again = teacher_logits(teacher, manifest, "train", cache_dir=tmp_path, device="cpu")
    assert again.computed == 0
    np.testing.assert_array_equal(again.logits, first.logits)
    # The shared member's cache serves any ensemble (or single teacher) that contains it.
    single = teacher_logits(tiny_checkpoint, manifest, "train", cache_dir=tmp_path, device="cpu")
    assert single.computed == 0
    np.testing.assert_array_equal(single.logits[:, 0], first.logits[:, 0])
    # The cached logits are what the model says, and the teacher's probabilities their mean.
    model, card = load_checkpoint(teacher)
    dataset = LesionDataset.from_manifest(manifest, "train", build_eval_transform(card.preprocess))
    probs, _ = predict_probs(model, dataset)
    np.testing.assert_allclose(first.probs(), probs, atol=1e-5)


def test_teacher_cache_is_recomputed_when_images_change_or_the_file_is_damaged(
        teacher, tiny_checkpoint, tmp_path):
    manifest = load_manifest(manifest_of(tiny_checkpoint))
    first = teacher_logits(teacher, manifest, "val", cache_dir=tmp_path, device="cpu")
    first.cache_files[0].write_bytes(b"truncated")
    assert teacher_logits(teacher, manifest, "val", cache_dir=tmp_path, device="cpu").computed == 1
    i = next(i for i, r in enumerate(manifest.rows) if r.split == "val")
    row = manifest.rows[i]
    manifest.rows[i] = type(row)(row.image, row.group, row.label, row.split, "f" * 64)
    assert teacher_logits(teacher, manifest, "val", cache_dir=tmp_path, device="cpu").computed == 2


# --------------------------------------------------------------------------- distillation runs


def test_distilled_student_moves_toward_the_teacher_and_resumes_from_the_cache(
        teacher, tiny_checkpoint, tmp_path):
    manifest = manifest_of(tiny_checkpoint)
    cfg = distill_config(teacher, manifest, tmp_path / "cache", "epochs=8", "optim.lr=5e-3",
                         "distill.alpha=1.0", "distill.temperature=2.0")
    result = distill_classifier(cfg, tmp_path / "student")
    assert all("teacher_agreement" in r for r in result.history)
    card = load_card(result.best_dir)
    assert card.training["distillation"]["teacher_weights_sha256"] == load_card(teacher).weights_sha256
    assert card.training["distillation"]["teacher_members"] == 2

    # Pure distillation (alpha=1: no labels) brings the student's probabilities toward the
    # teacher's, from where the same seed's untrained student starts. (Measured on the images
    # it distilled from: with 14 validation images, tiny models swing too much to test there.)
    man = load_manifest(manifest)
    target = teacher_logits(teacher, man, "train", cache_dir=tmp_path / "cache").probs()
    torch.manual_seed(cfg.seed)
    untrained, _ = create_classifier("test_efficientnet", 7, pretrained="none", drop_rate=0)
    student, _ = load_checkpoint(result.out_dir / "last")
    images = LesionDataset.from_manifest(man, "train", build_eval_transform(card.preprocess))

    def kl_and_agreement(model) -> tuple[float, float]:
        probs, _ = predict_probs(model, images)
        kl = (target * (np.log(target + 1e-12) - np.log(probs + 1e-12))).sum(1).mean()
        return float(kl), float((probs.argmax(1) == target.argmax(1)).mean())

    (kl_student, agree_student), (kl_untrained, agree_untrained) = map(
        kl_and_agreement, (student, untrained))
    assert kl_student < 0.7 * kl_untrained
    assert agree_student > max(0.6, agree_untrained)

    # Resuming finds the config (with its distill section) and the cached logits.
    longer = distill_config(teacher, manifest, tmp_path / "cache", "epochs=9", "optim.lr=5e-3",
                            "distill.alpha=1.0", "distill.temperature=2.0")
    cached = {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").glob("*.npz")}
    assert len(cached) == 4  # 2 members x train, val
    resumed = distill_classifier(longer, tmp_path / "student", resume=True)
    assert [r["epoch"] for r in resumed.history] == list(range(1, 10))
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").glob("*.npz")} == cached
    changed = distill_config(teacher, manifest, tmp_path / "cache", "epochs=9", "optim.lr=5e-3",
                             "distill.alpha=0.5", "distill.temperature=2.0")
    with pytest.raises(ValueError, match="distill"):
        distill_classifier(changed, tmp_path / "student", resume=True)


def test_teacher_from_another_split_is_refused(teacher, tiny_dataset, tmp_path):
    from skinedge.data import make_manifest, read_dataset

    other = tmp_path / "manifest.json"
    make_manifest(read_dataset(tiny_dataset), seed=7).save(other)
    cfg = distill_config(teacher, other, tmp_path / "cache", "epochs=1")
    with pytest.raises(ValueError, match="may have seen"):
        distill_classifier(cfg, tmp_path / "student")


def test_cli_creates_an_ensemble_and_distils_it(teacher, tiny_checkpoint, tmp_path):
    from skinedge.cli.main import app

    members = [str(teacher / "members" / "00"), str(teacher / "members" / "01")]
    runner = CliRunner()
    created = runner.invoke(app, ["ensemble", "create", str(tmp_path / "ens"), *members])
    assert created.exit_code == 0, created.output
    args = ["compress", "distill", "--out", str(tmp_path / "student"), "--teacher",
            str(tmp_path / "ens"), "--manifest", str(manifest_of(tiny_checkpoint))]
    sets = [f"--set={s}" for s in [*TINY, "epochs=1", f"distill.cache_dir={tmp_path / 'c'}"]]
    done = runner.invoke(app, [*args, *sets])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "student" / "best" / "model.safetensors").is_file()
    missing = runner.invoke(app, ["compress", "distill", "--out", str(tmp_path / "s2"), *sets[:3]])
    assert missing.exit_code == 2 and "distill" in missing.output


def test_grad_cam_explains_an_ensemble_through_every_member(teacher, tiny_dataset, tmp_path):
    from skinedge.explain.api import explain_images

    image = sorted((tiny_dataset / "images").glob("mel_*.jpg"))[0]
    [(path, result)] = explain_images(teacher, [image], tmp_path)
    assert path.is_file() and result.heatmap.shape == (32, 32)
    model, card = load_checkpoint(teacher)
    x = build_eval_transform(card.preprocess)(__import__("PIL.Image").Image.open(image).convert("RGB"))
    with torch.no_grad():
        assert result.predicted_class == int(model(x[None]).argmax())
