"""The weight average: its arithmetic, what a run keeps, resume, and where it is refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from skinedge.data import LesionDataset, build_eval_transform, load_manifest
from skinedge.models import load_card, load_checkpoint
from skinedge.models.checkpoint import load_trainer_state
from skinedge.train.ema import WARMUP_POWER, WeightAverage
from skinedge.train.loop import validate
from skinedge.train.trainer import train_classifier
from tests.train.test_trainer import (
    KillAfter,
    assert_same_weights,
    last_weights,
    make_config,
    without_timing,
)


def test_the_average_follows_the_warmed_up_decay_by_hand() -> None:
    model = nn.Linear(2, 1, bias=False)
    average = WeightAverage(model, decay=0.9)
    expected = None
    for step, value in enumerate([1.0, 3.0, -2.0, 5.0, 0.5], start=1):
        model.weight.data.fill_(value)
        average.update(model)
        # timm counts warm-up from the update after the first, which copies the model.
        decay = min(0.9, 1 - (1 + step - 1) ** -WARMUP_POWER) if step > 1 else 0.0
        expected = value if expected is None else decay * expected + (1 - decay) * value
        assert average.current_decay() == pytest.approx(decay)
        torch.testing.assert_close(average.module.weight, torch.full((1, 2), expected))
    assert average.steps == 5


def test_batchnorm_statistics_are_averaged_and_the_model_is_left_alone() -> None:
    model = nn.BatchNorm1d(3)
    average = WeightAverage(model, decay=0.5)
    model.running_mean.fill_(2.0)
    average.update(model)  # the first update copies
    model.running_mean.fill_(4.0)
    average.update(model)
    decay = min(0.5, 1 - 2 ** -WARMUP_POWER)
    torch.testing.assert_close(average.module.running_mean,
                               torch.full((3,), decay * 2.0 + (1 - decay) * 4.0))
    assert model.running_mean.eq(4.0).all()
    assert not any(p.requires_grad for p in average.module.parameters())


def test_a_decay_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(nn.Linear(1, 1), decay=1.0)


def revalidated_loss(checkpoint, manifest) -> float:
    model, card = load_checkpoint(checkpoint)
    val = LesionDataset.from_manifest(load_manifest(manifest), "val",
                                      build_eval_transform(card.preprocess))
    return validate(model, val, device="cpu").loss


def test_best_keeps_the_average_it_validated_and_last_keeps_both(tiny_manifest, tmp_path) -> None:
    result = train_classifier(make_config(tiny_manifest, "epochs=1", "ema.decay=0.9",
                                          "calibrate=false"), tmp_path / "run")
    state = load_trainer_state(tmp_path / "run" / "last")
    best = load_file(str(result.best_dir / "model.safetensors"))
    assert_same_weights(best, {k: v.contiguous() for k, v in state["ema"]["weights"].items()})
    trained = last_weights(tmp_path / "run")
    assert any(not torch.equal(trained[k], best[k]) for k in best), \
        "best/ should hold the average, not the last step's weights"
    assert state["ema"]["steps"] == 3  # max_batches_per_epoch=3: one update per step
    # The epoch's record is the average's validation, not the last step's.
    assert result.history[0]["val_loss"] == pytest.approx(
        revalidated_loss(result.best_dir, tiny_manifest), abs=1e-6)
    assert load_card(result.best_dir).training["weight_average"]["decay"] == 0.9


def test_resume_after_a_kill_continues_the_same_average(tiny_manifest, tmp_path) -> None:
    extra = ("epochs=3", "ema.decay=0.9", "optim.scheduler=cosine")
    straight = train_classifier(make_config(tiny_manifest, *extra), tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train_classifier(make_config(tiny_manifest, *extra), tmp_path / "b", callbacks=KillAfter(2))
    resumed = train_classifier(make_config(tiny_manifest, *extra), tmp_path / "b", resume=True)
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert_same_weights(last_weights(tmp_path / "a"), last_weights(tmp_path / "b"))
    assert_same_weights(load_file(str(straight.best_dir / "model.safetensors")),
                        load_file(str(resumed.best_dir / "model.safetensors")))
    averages = [load_trainer_state(run / "last")["ema"] for run in (tmp_path / "a", tmp_path / "b")]
    assert averages[0]["steps"] == averages[1]["steps"] == 9
    assert_same_weights(averages[0]["weights"], averages[1]["weights"])


def test_a_qat_config_refuses_it(tiny_manifest) -> None:
    from skinedge.compress.qat import QATConfig
    from skinedge.train.config import load_train_config

    with pytest.raises(ValueError, match="ema.decay=0"):
        load_train_config(None, [f"data.manifest={tiny_manifest}", "ema.decay=0.9"],
                          config_class=QATConfig)


def test_pipeline_keys_leave_the_average_out_while_it_is_off(tiny_manifest) -> None:
    from skinedge.pipelines.pipeline_stages import dump

    assert "ema" not in dump(make_config(tiny_manifest))
    assert dump(make_config(tiny_manifest, "ema.decay=0.99"))["ema"] == {"decay": 0.99}
