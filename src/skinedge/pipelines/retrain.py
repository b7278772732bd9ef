"""Retraining from clinicians' corrections: a registry version, a feedback folder, and a new
version that is promoted only when it passes the gates.

``run_retrain(config, out)`` runs eight stages, each in its own folder under ``out`` and
finished by a ``stage.json``; a run killed at any point continues with ``resume=True``:
finished stages are read back, the one that was cut off starts again (training continues from
its last epoch with the trainer's own resume, registration finds a version it already made).

::

    OUT/retrain.yaml, command.json     the resolved config; the command, its run id, times
    OUT/1-base/                        the base version: checkpoint, manifest, artifacts, gate
    OUT/2-data/                        feedback.json (every row: trained, held out, refused,
                                       duplicate), manifest.json (base + corrections in
                                       train), holdout.json (the held-out cases), refused.csv
    OUT/2b-gan/                        with gan.run: the GAN fine-tuned on the rare classes'
                                       train images (corrections in train included, held-out
                                       ones never), its candidates and the selected synthetic
                                       set the fine-tune trains on (skinedge.synth.refresh)
    OUT/3-train/run/                   the base retrained as far as its chain went
                                       (skinedge.pipelines.retrain_chain): a classifier's
                                       run (best/, last/); an ensemble's members/ and
                                       ensemble/; a student's teacher/ and student/; a QAT
                                       checkpoint's fp32/ and qat/
    OUT/4-export/                      the base version's targets and precisions, re-exported
    OUT/5-bench/                       bench.json/.md against the deployment's gate
    OUT/6-gates/                       both models evaluated on the test split and held-out
                                       cases; the gates
    OUT/7-register/                    the registered candidate and its promotion
    OUT/retrain.json, retrain.md       the report: each gate, its figures, the decision and why

The candidate is registered either way (``source="retrain"``, ``parent`` = the base version,
its gates recorded) and promoted to the deployment only when every gate passed and
``promote`` is set. The GAN is refreshed only when ``gan.run`` names one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from skinedge.errors import ConfigError
from skinedge.pipelines import retrain_stages as stages
from skinedge.pipelines.reporting import Reporter
from skinedge.pipelines.retrain_data import check_feedback_folder
from skinedge.pipelines.stage import run_stage
from skinedge.synth.selection import SelectionConfig
from skinedge.utils.config import dump_config, load_config
from skinedge.utils.io import atomic_write_text
from skinedge.utils.provenance import now, record_command


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FinetuneSection(_Section):
    """How the base checkpoint is fine-tuned: its own training config, changed by these."""

    epochs: int = Field(3, ge=1)
    lr_scale: float = Field(0.2, gt=0)  # learning rate = the base run's optim.lr x lr_scale
    # `a.b=c` applied last to each training step whose config takes `a` (threads=2 to all,
    # distill.alpha=0.5 to distillation, quantize.* to QAT).
    train_overrides: list[str] = Field(default_factory=list)
    # A distilled student whose teacher folder is gone: fine-tune it alone instead of refusing.
    student_alone: bool = False


class GanRefreshSection(_Section):
    """Refreshing a GAN and its synthetic set from the corrections that joined train."""

    run: Path | None = None  # a `skinedge gan train` run of the base split; None: no GAN step
    kimg: float = Field(20, gt=0)  # length of the fine-tune
    # Classes to refresh; default: those below selection.target that corrections joined.
    classes: list[str] | None = None
    seed: int = 0
    oversample: float = Field(2.0, ge=1)  # candidates generated per synthetic image needed
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    # `a.b=c` applied last to the GAN run's own config (e.g. threads=2, batch_size=16).
    overrides: list[str] = Field(default_factory=list)


class ExportSection(_Section):
    calibration_images: int = Field(300, ge=1)  # INT8 calibration, from the train split
    verify_images: int = Field(64, ge=0)  # parity check of each export, on the val split


class BenchSection(_Section):
    # Budgets YAML of the deployment (latency, parity); default: the one registered with the
    # base version (a report named gate.yaml).
    gate: Path | None = None
    threads: int | None = Field(1, ge=1)
    warmup: int = Field(5, ge=0)
    iterations: int = Field(50, ge=1)
    limit: int | None = Field(None, ge=1)  # only the first N test images (quick checks)


class GateSection(_Section):
    max_drop: float = Field(0.02, ge=0, le=1)  # largest balanced-accuracy drop on the test split
    level: float = Field(0.95, gt=0, lt=1)  # bootstrap interval coverage
    n_boot: int = Field(2000, ge=100)
    # Classes whose recall (sensitivity) on the test split must hold, and by how much it may
    # drop at most; codes of the base's vocabulary.
    protected: list[str] = Field(default_factory=lambda: ["mel"])
    max_class_drop: float = Field(0.05, ge=0, le=1)
    # Accuracy gain needed on the held-out corrections (0: not lower than the base's).
    min_gain: float = Field(0.0, ge=0, le=1)
    # The held-out log-loss gains (over the base, and over the corrections' label prior) must
    # be beyond chance: one-sided paired bootstrap, p < holdout_alpha. None: reported, not
    # required (not advised).
    holdout_alpha: float | None = Field(0.05, gt=0, lt=1)
    seed: int = 0


class RetrainConfig(_Section):
    """Everything a retraining run depends on; written as ``retrain.yaml`` in its folder."""

    feedback: str | None = None  # labels.csv folder (or what the CLI exported it from)
    base: str | None = None  # version id (v0003), or "current": the deployment's
    registry: Path | None = None
    deployment: str | None = None
    promote: bool = True
    holdout_fraction: float = Field(0.3, gt=0, lt=1)
    seed: int = 0
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    gan: GanRefreshSection = Field(default_factory=GanRefreshSection)
    export: ExportSection = Field(default_factory=ExportSection)
    bench: BenchSection = Field(default_factory=BenchSection)
    gates: GateSection = Field(default_factory=GateSection)


#: Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = frozenset({"promote"})


def load_retrain_config(path: Path | str | None = None,
                        overrides: list[str] | None = None) -> RetrainConfig:
    """Read a retrain YAML (optional), apply ``--set`` overrides, validate.

    Raises:
        ConfigError: unreadable YAML or invalid values; the message names the file and field.
    """
    return load_config(path, overrides, RetrainConfig, kind="retrain config")


@dataclass
class RetrainResult:
    """What a retraining run decided."""

    out: Path
    base: str
    candidate: str | None  # the registered version
    passed: bool  # every gate passed
    promoted: bool
    reason: str
    gates: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None  # retrain.json
    markdown: Path | None = None  # retrain.md


#: ``export_feedback(folder)``: writes the feedback as a labels.csv folder (the CLI passes the
#: service store's export when --feedback names a data folder or a database).
FeedbackExport = Callable[[Path], None]


def run_retrain(config: RetrainConfig, out: Path | str, *, resume: bool = False,
                reporter: Reporter | None = None, command: str | None = None,
                export_feedback: FeedbackExport | None = None) -> RetrainResult:
    """Fine-tune the base version on the feedback, export and bench it as the base was, gate
    it, register it, and promote it when every gate passed.

    Args:
        config: The run's settings (``feedback``, ``base``, ``registry``, ``deployment`` set).
        out: Run folder (see the module docstring).
        resume: Continue a stopped run in ``out``; its config must be the same (``promote``
            may change).
        reporter: Progress hooks.
        command: What ``command.json`` records (the CLI passes its command line).
        export_feedback: Writes the feedback folder into ``out/feedback`` when the data stage
            runs; without it ``config.feedback`` is the labels.csv folder itself.

    Raises:
        ConfigError: a missing setting, a run already in ``out`` without ``resume`` (or a
            changed config with it), no gate file for a base version with artifacts.
        RegistryError: an unknown version (the message lists the known ones), a damaged one.
        DataError: a feedback folder without labels.csv, labels the model does not know (the
            rows are named), too few cases to hold some out.
    """
    reporter = reporter or Reporter()
    out = Path(out)
    if resume and not (out / "command.json").is_file():
        raise ConfigError(f"--resume: {out} holds no retrain run to resume (no command.json); "
                          "start it without --resume")
    _check_required(config, export_feedback)
    run_id, started = _start(config, out, resume, command)
    done: dict[str, dict[str, Any]] = {}  # stage folder name -> its stage.json
    steps = [
        ("1/8 base version", "1-base", lambda d: stages.read_base(config, d, reporter)),
        ("2/8 feedback", "2-data", lambda d: stages.prepare_data(
            config, _feedback_folder(config, out, export_feedback), done["1-base"], d,
            reporter)),
        ("3/8 GAN refresh", "2b-gan", lambda d: stages.refresh_gan(
            config, done["1-base"], done["2-data"], d, reporter)),
        ("4/8 fine-tune", "3-train", lambda d: stages.finetune(
            config, done["1-base"], done["2-data"], d, reporter, done["2b-gan"])),
        ("5/8 export", "4-export", lambda d: stages.export(
            config, done["1-base"], done["2-data"], done["3-train"], d, reporter)),
        ("6/8 bench", "5-bench", lambda d: stages.bench(
            config, done["1-base"], done["2-data"], done["3-train"], done["4-export"], d,
            reporter, command)),
        ("7/8 gates", "6-gates", lambda d: stages.gates(
            config, done, d, out, reporter)),
        ("8/8 register", "7-register", lambda d: stages.register(
            config, done, d, out, run_id, reporter)),
    ]
    for title, name, step in steps:
        reporter.stage(title)
        done[name] = run_stage(out / name, step, keep=name in stages.KEEP_ON_RESTART,
                                reporter=reporter)
    record_command(out, command=command or _python_call(out), started=started, finished=now(),
                   run_id=run_id)
    report = done["7-register"]["report"]
    decision = report["decision"]
    return RetrainResult(out, report["base"], report["candidate"], decision["passed"],
                         decision["promoted"], decision["reason"], report["gates"],
                         out / "retrain.json", out / "retrain.md")


def _check_required(config: RetrainConfig, export_feedback: FeedbackExport | None) -> None:
    missing = [option for option, value in (
        ("--feedback", config.feedback), ("--from", config.base),
        ("--registry", config.registry), ("--deployment", config.deployment)) if not value]
    if missing:
        raise ConfigError(f"retrain needs {', '.join(missing)} (or the same keys in the retrain "
                          "config: feedback, base, registry, deployment)")
    if export_feedback is None:
        check_feedback_folder(Path(config.feedback))


def _start(config: RetrainConfig, out: Path, resume: bool,
           command: str | None) -> tuple[str, str]:
    """Record the run (or check the one to resume): its id and first start time."""
    record, saved = out / "command.json", out / "retrain.yaml"
    if record.is_file() and not resume:
        raise ConfigError(f"{out} already holds a retrain run; continue it with --resume, or "
                          "choose another --out")
    if resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {out} holds no retrain.yaml (the config a run writes "
                              "when it starts); start a new run in another --out")
        previous = json.loads(record.read_text())
        _check_same_config(saved, config)
        run_id, started = previous["run_id"], previous["started"]
    else:
        run_id, started = uuid.uuid4().hex, now()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, dump_config(config))
    record_command(out, command=command or _python_call(out), started=started, run_id=run_id)
    return run_id, started


def _check_same_config(saved: Path, config: RetrainConfig) -> None:
    old = load_retrain_config(saved).model_dump(mode="json")
    new = config.model_dump(mode="json")
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(f"--resume: the config changed in {changed} since the run started; "
                          f"resume with the run's own config ({saved}) or start a new --out")


def _feedback_folder(config: RetrainConfig, out: Path,
                     export_feedback: FeedbackExport | None) -> Path:
    if export_feedback is None:
        return Path(config.feedback)
    folder = out / "feedback"
    export_feedback(folder)
    return folder


def _python_call(out: Path) -> str:
    return f"skinedge.pipelines.retrain.run_retrain(config, {str(out)!r})"
