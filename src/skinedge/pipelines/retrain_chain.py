"""Retraining a model as far as its chain went: fine-tune a classifier, every member of an
ensemble, a distilled student's teacher and then the student, a QAT checkpoint's FP32 source
and then QAT again.

``retrain_model(checkpoint, manifest, out, ...)`` is the door; ``base_kind(checkpoint)`` says
which chain a checkpoint takes. Each step trains in its own folder under ``out``:

::

    classifier   OUT/                      a run folder (best/, last/), fine-tuned from the
                                           checkpoint's weights with its run's training config
                                           (``retrain_stages.finetune_config``)
    ensemble     OUT/members/member-K/     member K retrained as its own kind
                 OUT/ensemble/             create_ensemble of the retrained members
    distilled    OUT/teacher/              the teacher (``distill.teacher`` of the student's
                                           training config) retrained as its own kind
                 OUT/student/              the student distilled from its own weights against
                                           the new teacher, with its own temperature and alpha,
                                           for the fine-tune's epochs at lr x lr_scale
    qat          OUT/fp32/                 the FP32 checkpoint QAT started from, retrained as
                                           its own kind; when that checkpoint is gone or holds
                                           other weights: OUT/fp32-own/model.safetensors, the
                                           QAT checkpoint's own float weights (quantizers left out)
                 OUT/qat/                  QAT again from those weights, with the QAT run's own
                                           config (epochs, lr, quantizer settings)

A finished step leaves ``done.json`` (its result) beside its checkpoint and is not redone; an
interrupted training resumes from its ``last/``. ``done.json`` records the base's weights,
the manifest and the settings, and a folder holding another retrain is refused.

What goes where: the synthetic set joins the first fine-tune of each chain (a classifier, each
member, a teacher, a QAT source), not distillation (teacher logits exist for real images only)
nor QAT (calibrated and fine-tuned on real images). Each of ``train_overrides`` is applied to
every step whose config takes its top-level key (``distill.alpha=0.5`` to distillation only,
``quantize.calibration_images=100`` to QAT only, ``threads=2`` to all).

A student whose teacher folder is gone is refused (ConfigError), unless ``student_alone``:
then it is fine-tuned as a plain classifier (its card no longer names a teacher).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from skinedge.errors import ConfigError, ModelError, NotFoundError
from skinedge.utils.io import atomic_write_text

if TYPE_CHECKING:
    from skinedge.models import ModelCard
    from skinedge.train.callbacks import TrainCallbacks

Kind = Literal["classifier", "ensemble", "distilled", "qat"]
#: A finished step's result, beside its checkpoint.
DONE = "done.json"
#: ``callbacks_factory(step)`` -> a context manager giving the step's training callbacks
#: (``Reporter.training()`` is one); ``step`` is the step's folder relative to ``out``.
CallbacksFactory = Callable[[str], AbstractContextManager["TrainCallbacks | None"]]


def base_kind(checkpoint: Path | str) -> Kind:
    """Which chain retrains ``checkpoint`` (a folder or a file in it), from its card."""
    from skinedge.models import load_card

    return _kind_of(load_card(checkpoint))


def _kind_of(card: ModelCard) -> Kind:
    if card.members:
        return "ensemble"
    if card.precision != "fp32" or card.training.get("quantization"):
        return "qat"
    if card.training.get("distillation"):
        return "distilled"
    return "classifier"


@dataclass(frozen=True)
class _Chain:
    """What every step of one ``retrain_model`` call shares."""

    out: Path
    manifest: Path
    epochs: int
    lr_scale: float
    overrides: tuple[str, ...]
    synthetic: Path | None
    callbacks_factory: CallbacksFactory | None
    progress: Callable[[str, int, int], None] | None
    student_alone: bool

    def callbacks(self, folder: Path) -> AbstractContextManager[TrainCallbacks | None]:
        if self.callbacks_factory is None:
            return contextlib.nullcontext(None)
        return self.callbacks_factory(_step_name(self, folder))

    def overrides_for(self, config_class) -> list[str]:
        """The overrides whose top-level key ``config_class`` takes (QAT takes no ``ema``: it
        fine-tunes without a weight average)."""
        from skinedge.compress.qat import QATConfig

        skip = {"ema"} if issubclass(config_class, QATConfig) else set()
        return [o for o in self.overrides
                if _top_key(o) in config_class.model_fields and _top_key(o) not in skip]

    def settings(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "lr_scale": self.lr_scale,
                "train_overrides": list(self.overrides),
                "synthetic": str(self.synthetic) if self.synthetic else None,
                "student_alone": self.student_alone}


def retrain_model(
    checkpoint: Path | str,
    manifest: Path | str,
    out: Path | str,
    *,
    epochs: int,
    lr_scale: float,
    train_overrides: list[str] | tuple[str, ...] = (),
    synthetic: Path | None = None,
    callbacks_factory: CallbacksFactory | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    student_alone: bool = False,
) -> dict[str, Any]:
    """Retrain ``checkpoint`` on ``manifest`` (the extended one) as far as its chain went.

    Args:
        checkpoint: A classifier, ensemble, distilled student or QAT checkpoint folder.
        manifest: Train split with the corrections; val and test as the base's.
        out: Steps' folders (see the module doc); reused and resumed when called again.
        epochs, lr_scale: Each fine-tune and distillation: ``epochs`` at the step's own
            ``optim.lr x lr_scale``, no warm-up. QAT keeps its own.
        train_overrides: ``a.b=c``, each applied to the steps whose config takes ``a``.
        synthetic: A synthetic set (``skinedge gan select``) for the first fine-tune of each
            chain.
        callbacks_factory: ``callbacks_factory(step)`` -> context manager of its callbacks.
        progress: ``progress(description, done, total)`` while teacher logits are computed.
        student_alone: A student whose teacher is gone is fine-tuned without it.

    Returns:
        ``{"checkpoint", "kind", "steps", "best_epoch", "best_metric", "monitor", "epochs",
        "lr", "stopped_early", "reused"}``: the figures are the last training step's (an
        ensemble's: the members' mean best metric, their latest best epoch, whether any
        stopped early); ``steps`` lists every step, each with its folder, action, checkpoint
        and whether it was reused. A student's result adds ``teacher`` (the new one or None).

    Raises:
        ConfigError: an override no training config takes; a card without a training config;
            a student whose teacher is gone (without ``student_alone``); ``out`` holding the
            retrain of another base, manifest or settings.
        ModelError: a QAT checkpoint whose card records no QAT config.
    """
    _check_overrides(train_overrides)
    out = Path(out)
    chain = _Chain(out, Path(manifest).resolve(), epochs, lr_scale, tuple(train_overrides),
                   Path(synthetic) if synthetic else None, callbacks_factory, progress,
                   student_alone)
    return _retrain(Path(checkpoint), out, chain, first=True)


# --------------------------------------------------------------------------- one step


def _retrain(checkpoint: Path, folder: Path, chain: _Chain, *, first: bool) -> dict[str, Any]:
    """Retrain ``checkpoint`` in ``folder`` by its kind, or read the result it left there.
    ``first``: the first fine-tune of the chain (it takes the synthetic set)."""
    from skinedge.models import load_card
    from skinedge.models.checkpoint import checkpoint_dir

    directory = checkpoint_dir(checkpoint)
    card = load_card(directory)
    done = _read_done(folder, card, chain)
    if done is not None:
        return done
    kind = _kind_of(card)
    steps = {"classifier": _finetune, "ensemble": _ensemble, "distilled": _distilled,
             "qat": _qat}
    result = {"kind": kind, **steps[kind](directory, card, folder, chain, first),
              "reused": False}
    doc = {**result, "base": str(directory), "base_weights_sha256": card.weights_sha256,
           "manifest": str(chain.manifest), "settings": chain.settings()}
    atomic_write_text(folder / DONE, json.dumps(doc, indent=1))
    return result


def _read_done(folder: Path, card: ModelCard, chain: _Chain) -> dict[str, Any] | None:
    """The result a finished step left in ``folder``; None when it has not finished."""
    from skinedge.models.card import CARD

    file = folder / DONE
    try:
        doc = json.loads(file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # torn by a kill: the step runs again (its training resumes)
    recorded = (doc.get("base_weights_sha256"), doc.get("manifest"), doc.get("settings"))
    if recorded != (card.weights_sha256, str(chain.manifest), chain.settings()):
        raise ConfigError(
            f"{folder} holds a retrain of another base, manifest or settings (see {file}); "
            "retrain into a new folder, or delete this one to start afresh")
    if not (Path(doc["checkpoint"]) / CARD).is_file():
        return None
    steps = [{**s, "reused": True} for s in doc["steps"]]
    return {k: v for k, v in doc.items() if k not in ("base", "base_weights_sha256", "manifest",
                                                      "settings")} | {"steps": steps,
                                                                      "reused": True}


def _finetune(checkpoint: Path, card: ModelCard, folder: Path, chain: _Chain,
              first: bool) -> dict[str, Any]:
    """A classifier fine-tuned in ``folder`` (its run folder)."""
    cfg = _finetune_config(checkpoint, chain)
    if first and chain.synthetic is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(
            update={"synthetic": chain.synthetic})})
    return _train(cfg, folder, chain, "fine-tune")


def _finetune_config(checkpoint: Path, chain: _Chain,
                     training: dict[str, Any] | None = None):
    """``retrain_stages.finetune_config`` with this chain's settings."""
    from skinedge.pipelines.retrain import FinetuneSection, RetrainConfig
    from skinedge.pipelines.retrain_stages import finetune_config
    from skinedge.train.config import TrainConfig

    config = RetrainConfig(finetune=FinetuneSection(
        epochs=chain.epochs, lr_scale=chain.lr_scale,
        train_overrides=chain.overrides_for(TrainConfig)))
    return finetune_config(config, checkpoint, chain.manifest, training=training)


def _train(cfg, folder: Path, chain: _Chain, action: str, objective=None,
           manifest=None) -> dict[str, Any]:
    from skinedge.train.resume import has_trainer_state
    from skinedge.train.trainer import train_classifier

    with chain.callbacks(folder) as callbacks:
        result = train_classifier(cfg, folder, resume=has_trainer_state(folder),
                                  callbacks=callbacks, objective=objective, manifest=manifest)
    return _figures(result, cfg, chain, folder, action)


def _figures(result, cfg, chain: _Chain, folder: Path, action: str) -> dict[str, Any]:
    figures = {"checkpoint": str(result.best_dir), "best_epoch": result.best_epoch,
               "best_metric": result.best_metric, "monitor": cfg.monitor, "epochs": cfg.epochs,
               "lr": cfg.optim.lr, "stopped_early": result.stopped_early}
    step = {"step": _step_name(chain, folder), "action": action, **figures, "reused": False}
    return {**figures, "steps": [step]}


# --------------------------------------------------------------------------- ensembles


def _ensemble(checkpoint: Path, card: ModelCard, folder: Path, chain: _Chain,
              first: bool) -> dict[str, Any]:
    """Each member retrained in ``members/member-K``, then ``ensemble/`` made of them."""
    from skinedge.models import create_ensemble
    from skinedge.models.card import CARD
    from skinedge.models.ensemble import ensemble_members
    from skinedge.train.ensemble import calibrate_ensemble, member_dir

    members = [_retrain(path, member_dir(folder, k), chain, first=first)
               for k, (path, _) in enumerate(ensemble_members(checkpoint, card))]
    target = folder / "ensemble"
    if not (target / CARD).is_file():  # create_ensemble renames a finished folder into place
        create_ensemble([Path(m["checkpoint"]) for m in members], target)
    calibrate_ensemble(target, chain.manifest)
    steps = [s for m in members for s in m["steps"]]
    steps.append({"step": _step_name(chain, target), "action": "ensemble",
                  "checkpoint": str(target), "members": len(members), "reused": False})
    metrics = [m["best_metric"] for m in members]
    return {"checkpoint": str(target), "best_epoch": max(m["best_epoch"] for m in members),
            "best_metric": sum(metrics) / len(metrics), "monitor": members[0]["monitor"],
            "epochs": members[0]["epochs"], "lr": members[0]["lr"],
            "stopped_early": any(m["stopped_early"] for m in members), "steps": steps}


# --------------------------------------------------------------------------- students


def _distilled(checkpoint: Path, card: ModelCard, folder: Path, chain: _Chain,
               first: bool) -> dict[str, Any]:
    """The teacher retrained in ``teacher/``, then the student distilled in ``student/``."""
    from skinedge.compress.distill import DistillConfig, distill_classifier
    from skinedge.utils.config import apply_overrides, validate_config

    distill = _training_config(checkpoint, card).get("distill")
    if not isinstance(distill, dict) or not distill.get("teacher"):
        raise ConfigError(f"{checkpoint}: its card says it was distilled, but its training "
                          "config has no distill.teacher; retrain from a student made by "
                          "`skinedge compress distill`")
    teacher = _retrain_teacher(Path(distill["teacher"]), checkpoint, folder, chain, first)
    cfg = _student_config(checkpoint, card, chain)
    run = folder / "student"
    if teacher is None:
        return {**_train(cfg, run, chain, "fine-tune (teacher gone)"), "teacher": None}
    doc = cfg.model_dump(mode="json")  # its own weights, no synthetic set
    doc["distill"] = {**distill, "teacher": teacher["checkpoint"]}
    doc = apply_overrides(doc, chain.overrides_for(DistillConfig))
    dcfg = validate_config(DistillConfig, doc, f"distillation config of {checkpoint} "
                                               "(finetune.train_overrides)")
    with chain.callbacks(run) as callbacks:
        result = distill_classifier(dcfg, run, resume=_has_state(run), callbacks=callbacks,
                                    progress=chain.progress)
    student = _figures(result, dcfg, chain, run, "distil")
    return {**student, "teacher": teacher["checkpoint"],
            "steps": teacher["steps"] + student["steps"]}


def _retrain_teacher(teacher: Path, student: Path, folder: Path, chain: _Chain,
                     first: bool) -> dict[str, Any] | None:
    """The teacher retrained in ``folder/teacher``; None when it is gone and the student may
    be fine-tuned alone.

    Raises:
        ConfigError: the teacher is gone (and not ``student_alone``).
    """
    from skinedge.models.checkpoint import checkpoint_dir

    try:
        directory = checkpoint_dir(teacher)
    except NotFoundError:
        if chain.student_alone:
            return None
        raise ConfigError(
            f"{student} was distilled from {teacher} (distill.teacher of its training config), "
            "which is gone, so the student cannot be distilled again: put the teacher's "
            "checkpoint back at that path (e.g. copy it from the registry version it was "
            "registered as), or fine-tune the student alone, without a teacher "
            "(student_alone)") from None
    return _retrain(directory, folder / "teacher", chain, first=first)


def _student_config(checkpoint: Path, card: ModelCard, chain: _Chain):
    """The student's fine-tune config without its ``distill`` section (the caller adds the new
    teacher's)."""
    training = {k: v for k, v in _training_config(checkpoint, card).items() if k != "distill"}
    return _finetune_config(checkpoint, chain, training=training)


def _training_config(checkpoint: Path, card: ModelCard) -> dict[str, Any]:
    doc = card.training.get("config")
    if not isinstance(doc, dict):
        raise ConfigError(f"{checkpoint}: its card records no training config, so it cannot be "
                          "trained again as it was; retrain from a checkpoint made by skinedge")
    return json.loads(json.dumps(doc))  # a copy


# --------------------------------------------------------------------------- QAT


def _qat(checkpoint: Path, card: ModelCard, folder: Path, chain: _Chain,
         first: bool) -> dict[str, Any]:
    """The FP32 source retrained in ``fp32/`` (or the own float weights in ``fp32-own/``),
    then QAT again in ``qat/``."""
    from skinedge.compress.qat import QATConfig, prepare_qat
    from skinedge.models.checkpoint import WEIGHTS
    from skinedge.train.config import load_data_manifest
    from skinedge.utils.config import apply_overrides, validate_config

    quantization = card.training.get("quantization") or {}
    doc = card.training.get("config")
    if not isinstance(doc, dict) or not quantization.get("nncf_config"):
        raise ModelError(f"{checkpoint} is a {card.precision} checkpoint whose card records no "
                         "quantization-aware training (training.config and "
                         "training.quantization.nncf_config), so QAT cannot be run again; "
                         "retrain the FP32 checkpoint it came from")
    doc = json.loads(json.dumps(doc))
    source, why = _fp32_source(quantization.get("source_weights"), card)
    steps: list[dict[str, Any]] = []
    teachers: dict[str, str] = {}
    if source is not None:
        fp32 = _retrain(source, folder / "fp32", chain, first=first)
        weights = Path(fp32["checkpoint"]) / WEIGHTS
        steps += fp32["steps"]
        if fp32.get("teacher"):
            old = (_training_config(source, _card(source)).get("distill") or {}).get("teacher")
            teachers[str(Path(old).resolve())] = fp32["teacher"]
    else:
        weights = _own_float_weights(checkpoint, folder / "fp32-own")
        steps.append({"step": _step_name(chain, weights.parent), "action": f"float weights "
                      f"of the QAT checkpoint ({why})", "checkpoint": None, "reused": False})
    doc.setdefault("data", {}).update({"manifest": str(chain.manifest), "root": None,
                                       "synthetic": None})
    doc.setdefault("model", {})["pretrained"] = str(weights)
    if doc.get("distill"):
        old = str(Path(doc["distill"]["teacher"]).resolve())
        if old not in teachers:
            new = _retrain_teacher(Path(old), checkpoint, folder, chain, first)
            if new is not None:
                teachers[old] = new["checkpoint"]
                steps += new["steps"]
        if old in teachers:
            doc["distill"]["teacher"] = teachers[old]
        else:
            doc["distill"] = None  # gone, and student_alone: QAT without a teacher
    doc = apply_overrides(doc, chain.overrides_for(QATConfig))
    cfg = validate_config(QATConfig, doc, f"QAT config of {checkpoint} (finetune.train_overrides)")
    manifest = load_data_manifest(cfg)
    objective = prepare_qat(cfg, manifest, progress=chain.progress)
    result = _train(cfg, folder / "qat", chain, "quantization-aware training", objective,
                    manifest)
    return {**result, "source": str(source) if source else None,
            "steps": steps + result["steps"]}


def _fp32_source(source_weights: str | None, card: ModelCard) -> tuple[Path | None, str]:
    """The FP32 checkpoint QAT started from, if it is still there with the same weights
    (the card's ``pretrained`` names their sha256); else None and why."""
    from skinedge.utils.io import sha256_file

    if not source_weights:
        return None, "its card records no FP32 source"
    weights = Path(source_weights)
    if not weights.is_file():
        return None, f"its FP32 source {weights} is gone"
    expected = card.pretrained.rpartition("sha256:")[2] if "sha256:" in card.pretrained else ""
    if expected and not sha256_file(weights).startswith(expected):
        return None, f"its FP32 source {weights} holds other weights now"
    try:
        source = _card(weights.parent)
    except (NotFoundError, ModelError):
        return None, f"its FP32 source {weights.parent} is not a checkpoint"
    if source.precision != "fp32" or source.members:
        return None, f"its source {weights.parent} is not one FP32 model"
    return weights.parent, ""


def _own_float_weights(checkpoint: Path, folder: Path) -> Path:
    """``folder/model.safetensors``: the QAT checkpoint's weights without NNCF's quantizer
    state, which load into the plain architecture (QAT's starting point when the FP32 source
    is gone)."""
    from safetensors.torch import save_file

    from skinedge.models.checkpoint import WEIGHTS, load_checkpoint_weights

    file = folder / WEIGHTS
    if not file.is_file():
        state = {k: v.contiguous() for k, v in load_checkpoint_weights(checkpoint).items()
                 if not k.startswith("__nncf")}
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS}.tmp"
        save_file(state, str(tmp))
        tmp.replace(file)
    return file


# --------------------------------------------------------------------------- helpers


def _card(path: Path) -> ModelCard:
    from skinedge.models import load_card

    return load_card(path)


def _has_state(run: Path) -> bool:
    from skinedge.train.resume import has_trainer_state

    return has_trainer_state(run)


def _step_name(chain: _Chain, folder: Path) -> str:
    try:
        return Path(folder).relative_to(chain.out).as_posix()
    except ValueError:
        return str(folder)


def _top_key(override: str) -> str:
    return override.split("=", 1)[0].strip().split(".", 1)[0]


def _check_overrides(overrides) -> None:
    """Every override must fit at least one step's config.

    Raises:
        ConfigError: one that is not ``key=value``, or whose key no training config takes.
    """
    from skinedge.compress.distill import DistillConfig
    from skinedge.compress.qat import QATConfig

    known = set(DistillConfig.model_fields) | set(QATConfig.model_fields)
    for item in overrides:
        if "=" not in item or _top_key(item) not in known:
            raise ConfigError(f"finetune.train_overrides: {item!r} is not a.b=c with a key of a "
                              f"training config ({', '.join(sorted(known))})")
