"""The stages of :func:`skinedge.pipelines.retrain.run_retrain`, one function each.

Each takes the run's config, the ``stage.json`` documents of the stages before it and its own
folder, and returns its ``stage.json`` document (plain JSON: paths as strings).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skinedge.errors import ConfigError, ModelError, SkinedgeError
from skinedge.pipelines import promotion
from skinedge.pipelines.reporting import GANProgress, Reporter
from skinedge.pipelines.retrain_chain import base_kind, retrain_model
from skinedge.utils.io import atomic_write_text

if TYPE_CHECKING:
    from skinedge.pipelines.retrain import RetrainConfig

#: Stages whose folder is kept when they restart: training resumes from its ``last/``, and
#: registration looks for the version it made before registering again.
KEEP_ON_RESTART = frozenset({"3-train", "7-register"})
#: The name under which the deployment's gate file is registered with a version's reports.
GATE_REPORT = "gate.yaml"
#: Refused or duplicate rows shown in retrain.md (feedback.json lists every one).
SHOWN_ROWS = 20


# --------------------------------------------------------------------------- 1: base version


def read_base(config: RetrainConfig, folder: Path, reporter: Reporter) -> dict[str, Any]:
    """The base version: its checkpoint, manifest, artifacts (target, precision, quantizer
    from their cards) and the deployment's gate file (copied into ``folder``)."""
    from skinedge.bench.gates import load_gates
    from skinedge.models import load_card
    from skinedge.registry import Registry

    registry = Registry(config.registry)
    if config.base == "current":
        version = registry.current(config.deployment)
        if version is None:
            raise ConfigError(f"--from current: the deployment {config.deployment!r} has no "
                              f"current version in {config.registry}; name a version "
                              "(`skinedge registry list`)")
    else:
        version = registry.get(config.base)
    problems = registry.verify(version.id)
    if problems:
        raise ModelError(f"version {version.id} in {config.registry} is damaged: "
                         + "; ".join(problems[:5]) + f"; see `skinedge registry verify {version.id}`")
    where = f"version {version.id} in {config.registry}"
    if version.checkpoint is None:
        raise ConfigError(f"{where} has no checkpoint, and retraining fine-tunes one: retrain "
                          "from a version registered with its checkpoint")
    if version.manifest is None:
        raise ConfigError(f"{where} has no manifest, so its train and test splits are unknown: "
                          "retrain from a version registered with --manifest")
    card = load_card(version.checkpoint)
    artifacts = _artifacts_of(version)
    gate = config.bench.gate or version.reports.get(GATE_REPORT)
    gate_copy = None
    if gate is not None:
        load_gates(gate)  # refused here, before any training, when it is not a gate file
        gate_copy = folder / GATE_REPORT
        shutil.copyfile(gate, gate_copy)
    elif artifacts:
        raise ConfigError(
            f"{where} has exported artifacts ({', '.join(a['label'] for a in artifacts)}), so "
            "the candidate must meet the deployment's latency and parity budgets: give the "
            f"gate file with --gate GATE.yaml (none is registered with {version.id})")
    unknown = [c for c in config.gates.protected if c not in card.classes]
    if unknown:
        raise ConfigError(f"gates.protected {unknown}: not classes of {where} "
                          f"({', '.join(card.classes)}); protect classes it predicts, e.g. "
                          "--set 'gates.protected=[mel]'")
    kind = base_kind(version.checkpoint)
    reporter.note(f"base {version.id}: {card.architecture} ({kind}), artifacts "
                  f"{', '.join(a['label'] for a in artifacts) or 'none'}")
    return {"version": version.id, "path": str(version.path),
            "checkpoint": str(version.checkpoint), "manifest": str(version.manifest),
            "architecture": card.architecture, "classes": card.classes, "kind": kind,
            "artifacts": artifacts, "gate": str(gate_copy) if gate_copy else None,
            "gate_source": str(gate) if gate else None,
            "pointer": registry.pointer(config.deployment)}


def _artifacts_of(version) -> list[dict[str, Any]]:
    """The version's exported models (sidecar reports and weights files are passed by), each
    with what it was exported as."""
    from skinedge.runtimes import RUNTIMES, read_artifact_card
    from skinedge.runtimes.base import artifact_label

    suffixes = {s for cls in RUNTIMES.values() for s in cls.suffixes}
    found = []
    for path in sorted(version.artifacts):
        if path.suffix not in suffixes:
            continue
        card = read_artifact_card(path)
        if card.artifact is None:
            continue
        art = card.artifact
        variant = art.details.get("variant")  # "qat": the QAT candidate is exported as it is
        found.append({"file": path.relative_to(version.path).as_posix(),
                      "label": artifact_label(card), "target": art.target,
                      "precision": art.precision, "quantizer": variant})
    return found


# --------------------------------------------------------------------------- 2: feedback


def prepare_data(config: RetrainConfig, feedback: Path, base: dict[str, Any], folder: Path,
                 reporter: Reporter) -> dict[str, Any]:
    """Read and sort the feedback; write the extended manifest and the held-out cases."""
    from skinedge.data import load_manifest, write_problem_report
    from skinedge.pipelines.retrain_data import (
        extend_manifest,
        holdout_manifest,
        read_feedback,
    )

    base_manifest = load_manifest(base["manifest"])
    with reporter.counter("checking feedback images") as progress:
        split = read_feedback(feedback, base_manifest, holdout_fraction=config.holdout_fraction,
                              seed=config.seed, problems_report=folder / "refused.csv",
                              progress=progress)
    if split.refused:
        write_problem_report(split.refused, folder / "refused.csv")
    extend_manifest(base_manifest, split).save(folder / "manifest.json")
    holdout_manifest(base_manifest, split).save(folder / "holdout.json")
    doc = split.to_dict()
    atomic_write_text(folder / "feedback.json", json.dumps(doc, indent=1))
    reporter.note(f"{len(split.train)} case(s) join train, {len(split.holdout)} held out, "
                  f"{len(split.refused)} refused, {len(split.duplicates)} already in the base "
                  "data")
    return {"feedback": str(feedback), "manifest": str(folder / "manifest.json"),
            "holdout": str(folder / "holdout.json"),
            "refused_report": str(folder / "refused.csv") if split.refused else None,
            "counts": doc["counts"], "train": len(split.train), "held_out": len(split.holdout),
            "refused": len(split.refused), "duplicates": len(split.duplicates),
            "refused_examples": doc["refused"][:SHOWN_ROWS],
            "duplicate_examples": doc["duplicates"][:SHOWN_ROWS]}


# --------------------------------------------------------------------------- 2b: GAN refresh


def refresh_gan(config: RetrainConfig, base: dict[str, Any], data: dict[str, Any],
                folder: Path, reporter: Reporter) -> dict[str, Any]:
    """With ``gan.run``: fine-tune that GAN on the extended train split's images of the rare
    classes the corrections joined (held-out corrections are not in that split), sample and
    select with the base checkpoint; ``synthetic`` is the set the fine-tune trains on."""
    g = config.gan
    if g.run is None:
        return {"status": "skipped: no GAN run", "synthetic": None}
    from skinedge.data import load_manifest
    from skinedge.synth.refresh import refresh_classes, refresh_synthetic

    extended, before = load_manifest(data["manifest"]), load_manifest(base["manifest"])
    new = ({r.image for r in extended.subset("train")}
           - {r.image for r in before.subset("train")})
    classes = g.classes or refresh_classes(extended, g.selection, new_images=new)
    if not classes:
        reporter.note("GAN refresh skipped: no class below the selection target got "
                      "corrections in train")
        return {"status": "skipped: no class below the selection target got corrections in "
                          "train", "run": str(g.run), "synthetic": None}
    with reporter.counter("GAN fine-tune (images shown)") as count:
        callbacks = GANProgress(count, g.kimg)
        selected, summary = refresh_synthetic(
            g.run, data["manifest"], folder, classes=classes, new_images=new, kimg=g.kimg,
            oversample=g.oversample, classifier=base["checkpoint"],
            base_manifest=base["manifest"], selection=g.selection, seed=g.seed,
            gan_overrides=g.overrides, callbacks=callbacks)
    reporter.note(f"GAN refreshed on {', '.join(classes)}: selected "
                  + ", ".join(f"{c} {n}" for c, n in summary["selected"].items()))
    return {"status": "refreshed", "run": str(g.run), "synthetic": str(selected),
            "summary": summary}


# --------------------------------------------------------------------------- 3: fine-tune


def finetune(config: RetrainConfig, base: dict[str, Any], data: dict[str, Any], folder: Path,
             reporter: Reporter, gan: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retrain the base checkpoint on the extended train split (validating on the base's val
    split) as far as its chain went (:mod:`skinedge.pipelines.retrain_chain`: a classifier
    fine-tuned; an ensemble's members; a student's teacher, then the student distilled again;
    a QAT checkpoint's FP32 source, then QAT again), each with its own run's training config,
    plus the refreshed GAN's synthetic set when the GAN stage made one; resumes an interrupted
    run."""
    synthetic = (gan or {}).get("synthetic")
    result = retrain_model(
        base["checkpoint"], data["manifest"], folder / "run", epochs=config.finetune.epochs,
        lr_scale=config.finetune.lr_scale, train_overrides=config.finetune.train_overrides,
        synthetic=Path(synthetic) if synthetic else None,
        callbacks_factory=lambda step: reporter.training(),
        student_alone=config.finetune.student_alone)
    for step in result["steps"]:
        reporter.note(f"{step['step'] or 'run'}: {step['action']}"
                      + (" (reused)" if step.get("reused") else ""))
    return {**{k: result[k] for k in ("checkpoint", "kind", "steps", "best_epoch", "best_metric",
                                      "monitor", "epochs", "lr", "stopped_early")},
            "synthetic": synthetic}


def finetune_config(config: RetrainConfig, checkpoint: str | Path, manifest: str | Path,
                    synthetic: str | Path | None = None, *,
                    training: dict[str, Any] | None = None):
    """The base run's training config (from its checkpoint's card), set to start from the base
    weights on the extended manifest for ``finetune.epochs`` at ``lr x lr_scale``, without
    warm-up; with ``synthetic`` (a set selected for the extended manifest) as
    ``data.synthetic``, else without synthetic images (the base's were selected for the base
    split); then ``finetune.train_overrides``. ``training``: the training config to start from
    instead of the card's (a distilled student's, without its ``distill`` section).

    Raises:
        ConfigError: the card holds no training config, or an override is invalid.
    """
    from skinedge.models import load_card
    from skinedge.train.config import TrainConfig
    from skinedge.utils.config import apply_overrides, validate_config

    doc = training if training is not None else load_card(checkpoint).training.get("config")
    if not isinstance(doc, dict):
        raise ConfigError(f"{checkpoint}: its card records no training config, so it cannot be "
                          "fine-tuned as it was trained; retrain from a checkpoint made by "
                          "`skinedge train`")
    doc = json.loads(json.dumps(doc))  # a copy
    doc.setdefault("data", {}).update({"manifest": str(manifest), "root": None,
                                       "synthetic": str(synthetic) if synthetic else None})
    doc.setdefault("model", {})["pretrained"] = str(Path(checkpoint) / "model.safetensors")
    doc["epochs"] = config.finetune.epochs
    optim = doc.setdefault("optim", {})
    optim["lr"] = float(optim.get("lr", TrainConfig().optim.lr)) * config.finetune.lr_scale
    optim["warmup_epochs"] = 0
    doc = apply_overrides(doc, list(config.finetune.train_overrides))
    return validate_config(TrainConfig, doc, "fine-tuning config (finetune.train_overrides)")


# --------------------------------------------------------------------------- 4: export


def export(config: RetrainConfig, base: dict[str, Any], data: dict[str, Any],
           trained: dict[str, Any], folder: Path, reporter: Reporter) -> dict[str, Any]:
    """Export the candidate to each target and precision of the base's artifacts; a failed
    export is recorded (and fails the budgets gate), not raised."""
    from skinedge.export import ExportOptions, export_checkpoint
    from skinedge.export.base import VerificationFailed

    results = []
    for art in base["artifacts"]:
        entry = {"label": art["label"], "target": art["target"], "precision": art["precision"],
                 "quantizer": art["quantizer"]}
        try:
            result = export_checkpoint(
                trained["checkpoint"], art["target"], precision=art["precision"],
                out_dir=folder, manifest=data["manifest"],
                calibration_images=config.export.calibration_images,
                verify_images=config.export.verify_images,
                options=ExportOptions(quantizer=art["quantizer"]), log=reporter.note)
        except VerificationFailed as exc:
            entry.update(status="failed", reason=str(exc))
        except SkinedgeError as exc:  # a missing backend, a converter that refused
            entry.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        else:
            entry.update(status="ok", reason="", path=str(result.path),
                         files=[str(f) for f in result.files], report=str(result.report),
                         verification=result.verification.status)
        results.append(entry)
        reporter.note(f"{entry['label']}: {entry['status']}"
                      + (f" ({entry['reason']})" if entry["reason"] else ""))
    return {"artifacts": results}


# --------------------------------------------------------------------------- 5: bench


def bench(config: RetrainConfig, base: dict[str, Any], data: dict[str, Any],
          trained: dict[str, Any], exported: dict[str, Any], folder: Path, reporter: Reporter,
          command: str | None) -> dict[str, Any]:
    """Bench the candidate's artifacts against its checkpoint and check the deployment's gate;
    each failed export is a failed check too."""
    checks = [{"label": a["label"], "check": "export", "passed": False,
               "message": f"{a['label']}: export failed: {a['reason']}"}
              for a in exported["artifacts"] if a["status"] != "ok"]
    paths = [a["path"] for a in exported["artifacts"] if a["status"] == "ok"]
    if not base["artifacts"] or not paths:
        return {"checks": checks, "ran": False}
    from skinedge.bench.gates import check_gates, load_gates
    from skinedge.bench.harness import BenchSettings, run_bench
    from skinedge.bench.report import write_outputs

    settings = BenchSettings(threads=config.bench.threads, warmup=config.bench.warmup,
                             iterations=config.bench.iterations)
    result = run_bench(paths, reference=trained["checkpoint"], manifest=data["manifest"],
                       split="test", limit=config.bench.limit, out_dir=folder,
                       settings=settings, log=reporter.note)
    gate_checks = check_gates(load_gates(base["gate"]), result.rows)
    files = write_outputs(result, folder, gate_checks, command)
    checks += [{"label": c.label, "check": c.check, "passed": c.passed, "message": c.message}
               for c in gate_checks]
    return {"checks": checks, "ran": True, "json": str(files["json"]),
            "markdown": str(files["markdown"]),
            "rows": [{"label": r.label, "status": r.status, "p95_ms": r.p95_ms,
                      "flip_rate": r.flip_rate} for r in result.rows]}


# --------------------------------------------------------------------------- 6: gates


def gates(config: RetrainConfig, done: dict[str, dict[str, Any]], folder: Path, out: Path,
          reporter: Reporter) -> dict[str, Any]:
    """Both models on the base's test split and on the held-out cases; the four gates; the
    report (``out/retrain.json`` and ``retrain.md``)."""
    base, data, trained = done["1-base"], done["2-data"], done["3-train"]
    models = {"base": base["checkpoint"], "candidate": trained["checkpoint"]}
    test = {who: _evaluate(path, base["manifest"], folder / f"{who}-test", reporter)
            for who, path in models.items()}
    held = {who: _evaluate(path, data["holdout"], folder / f"{who}-holdout", reporter)
            for who, path in models.items()}
    n_classes = len(base["classes"])
    g = config.gates
    truth, predicted = test["base"].targets, test["candidate"].probs.argmax(1)
    reference = test["base"].probs.argmax(1)
    boot = promotion.paired_bootstrap(truth, predicted, reference, n_classes, n_boot=g.n_boot,
                                      level=g.level, seed=g.seed)
    results = [
        promotion.fixed_test_gate(truth, predicted, reference, n_classes, max_drop=g.max_drop,
                                  n_boot=g.n_boot, level=g.level, seed=g.seed,
                                  source=test["base"].source, boot=boot),
        promotion.protected_classes_gate(boot, list(base["classes"]), g.protected,
                                         max_class_drop=g.max_class_drop,
                                         source=test["base"].source),
        promotion.corrected_cases_gate(
            held["base"].targets, held["candidate"].probs, held["base"].probs,
            promotion.class_counts(data["counts"]["train"], list(base["classes"])),
            min_gain=g.min_gain, source=held["base"].source, alpha=g.holdout_alpha,
            n_boot=g.n_boot, level=g.level, seed=g.seed),
        promotion.budgets_gate(done["5-bench"]["checks"], gate_file=base["gate_source"],
                               applicable=bool(base["artifacts"])),
    ]
    decision = promotion.decide(results, promote=config.promote, deployment=config.deployment)
    for gate in results:
        reporter.note(f"{gate.name}: {'passed' if gate.passed else 'FAILED'}: {gate.reason}")
    report = {
        "schema": "skinedge.retrain-report/1", "base": base["version"], "candidate": None,
        "registry": str(config.registry), "deployment": config.deployment,
        "data": {"folder": data["feedback"], "train": data["train"],
                 "holdout": data["held_out"], "refused": data["refused"],
                 "duplicates": data["duplicates"], "counts": data["counts"],
                 "refused_examples": data["refused_examples"],
                 "duplicate_examples": data["duplicate_examples"]},
        "training": {k: trained[k] for k in ("epochs", "lr", "best_epoch", "best_metric",
                                             "monitor")},
        "exports": [{k: a.get(k) for k in ("label", "status", "reason", "path")}
                    for a in done["4-export"]["artifacts"]],
        "gates": [gate.to_dict() for gate in results],
        "decision": {"passed": decision.passed, "promote_requested": config.promote,
                     "promoted": False, "reason": decision.reason, "pointer": None},
        "evaluations": {f"{who}-{where}": str(folder / f"{who}-{where}")
                        for who in models for where in ("test", "holdout")},
    }
    write_report(out, report)
    return {"report": report}


def _evaluate(checkpoint: str, manifest: str, folder: Path, reporter: Reporter):
    from skinedge.evaluate import evaluate_checkpoint

    with reporter.counter(f"evaluating {folder.name}") as progress:
        return evaluate_checkpoint(checkpoint, manifest=manifest, split="test", out_dir=folder,
                                   device="cpu", progress=progress)


def write_report(out: Path, report: dict[str, Any]) -> None:
    """``out/retrain.json`` and ``out/retrain.md``."""
    atomic_write_text(out / "retrain.json", json.dumps(report, indent=1, default=str))
    atomic_write_text(out / "retrain.md", promotion.render_markdown(report))


# --------------------------------------------------------------------------- 7: register


def register(config: RetrainConfig, done: dict[str, dict[str, Any]], folder: Path, out: Path,
             run_id: str, reporter: Reporter) -> dict[str, Any]:
    """Register the candidate (once per run, whatever the gates said) and promote it when
    every gate passed and promotion was asked for; the report gets its id and pointer."""
    from skinedge.registry import Registry

    base, gated = done["1-base"], done["6-gates"]
    report = json.loads(json.dumps(gated["report"]))
    report["gan"] = _gan_report(done.get("2b-gan"))
    # Decided again: --promote/--no-promote may change when a stopped run is resumed.
    decision = promotion.decide([promotion.GateResult(**g) for g in report["gates"]],
                                promote=config.promote, deployment=config.deployment)
    report["decision"].update(promote_requested=config.promote, reason=decision.reason)
    write_report(out, report)  # the copy registered with the candidate
    registry = Registry(config.registry)
    version = next((v for v in registry.versions()
                    if v.metrics.get("retrain_run_id") == run_id), None)
    if version is None:
        version = registry.register(**_registration(config, done, out, run_id, report))
        reporter.note(f"registered {version.id} (parent {base['version']})")
    else:
        reporter.note(f"{version.id} was registered by this run before the stop")
    report["candidate"] = version.id
    pointer = None
    if decision.promote:
        current = registry.pointer(config.deployment)
        if current is not None and current.get("version") == version.id:
            pointer = current
        else:
            pointer = registry.promote(
                version.id, config.deployment, artifact=_artifact_to_serve(base, version),
                reason=f"retrained from {base['version']} on clinicians' corrections; every "
                       "gate passed")
        reporter.note(f"promoted {version.id} to {config.deployment}")
    report["decision"].update(promoted=pointer is not None, pointer=pointer)
    write_report(out, report)
    return {"version": version.id, "report": report}


def _gan_report(gan: dict[str, Any] | None) -> dict[str, Any]:
    """What the report says of the GAN stage: skipped, or what was refreshed."""
    if not gan or gan.get("status") != "refreshed":
        return {"status": (gan or {}).get("status", "skipped: no GAN run")}
    s = gan["summary"]
    return {"status": "refreshed", "run": gan["run"], "refreshed_run": s["gan"],
            "init_from": s["init_from"], "classes": s["classes"], "kimg": s["kimg"],
            "images": s["images"], "new_images": s["new_images"], "selected": s["selected"],
            "synthetic": gan["synthetic"], "seconds": s["seconds"]}


def _registration(config: RetrainConfig, done: dict[str, dict[str, Any]], out: Path,
                  run_id: str, report: dict[str, Any]) -> dict[str, Any]:
    """``Registry.register`` arguments for the candidate."""
    base, data, trained = done["1-base"], done["2-data"], done["3-train"]
    # Each brings its export report and the files it needs (the registry bundles them).
    artifacts = [Path(a["path"]) for a in done["4-export"]["artifacts"] if a["status"] == "ok"]
    reports = {"retrain.json": out / "retrain.json", "retrain.md": out / "retrain.md",
               "feedback.json": Path(data["manifest"]).parent / "feedback.json"}
    if done["5-bench"].get("ran"):
        reports.update({"bench.json": Path(done["5-bench"]["json"]),
                        "bench.md": Path(done["5-bench"]["markdown"])})
    if base["gate"]:
        reports[GATE_REPORT] = Path(base["gate"])
    gates_doc = report["gates"]
    figures = {g["name"]: g["figures"] for g in gates_doc}
    test, held = figures["test-split"], figures["corrected-cases"]
    protected = figures["protected-classes"]["recall"]
    return {
        "checkpoint": Path(trained["checkpoint"]), "artifacts": artifacts, "reports": reports,
        "manifest": Path(data["manifest"]), "parent": base["version"], "source": "retrain",
        "metrics": {"retrain_run_id": run_id,
                    "test_balanced_accuracy": test["candidate"],
                    "test_balanced_accuracy_difference": test["difference"],
                    "test_balanced_accuracy_interval": test["interval"],
                    "holdout_accuracy": held["candidate_accuracy"],
                    "holdout_accuracy_gain": held["accuracy_gain"],
                    "holdout_log_loss_gain": held["log_loss_gain"]["gain"],
                    "holdout_log_loss_p": held["log_loss_gain"]["p"],
                    "holdout_log_loss_p_over_prior": held["log_loss_gain_over_prior"]["p"],
                    "holdout_sign_test_p": held["sign_test_p"],
                    **{f"test_{code}_recall": protected[code]["candidate"]
                       for code in figures["protected-classes"]["protected"]
                       if code in protected}},
        "gates": {"passed": report["decision"]["passed"], "report": "reports/retrain.json",
                  "checks": [{"name": g["name"], "passed": g["passed"], "reason": g["reason"]}
                             for g in gates_doc]},
        "notes": report["decision"]["reason"],
    }


def _artifact_to_serve(base: dict[str, Any], version) -> str | None:
    """The candidate's artifact of the same kind (label) as the one the deployment serves from
    the base version; None (the registry's default) when the deployment serves another."""
    pointer = base.get("pointer")
    if not pointer or pointer.get("version") != base["version"]:
        return None
    served = next((a["label"] for a in base["artifacts"] if a["file"] == pointer.get("artifact")),
                  None)
    return next((a["file"] for a in _artifacts_of(version) if a["label"] == served), None)
