"""The stages of :func:`skinedge.pipelines.pipeline.run_pipeline`, one function each.

Each takes the pipeline's config, its own folder and the ``stage.json`` documents of the
stages it reads (``inputs``, by stage name), and returns its own ``stage.json`` document
(plain JSON: paths as strings). The ``*_settings`` functions give what a stage's cache key
covers besides its inputs: its resolved config, never a path that names the run folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skinedge.data.classes import VOCABULARIES
from skinedge.pipelines.pipeline_config import PipelineConfig, data_folders
from skinedge.pipelines.reporting import GANProgress, Reporter

Inputs = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class DataHints:
    """The last lines of a bad data folder's error: its fixes, worded for the command that
    runs the pipeline (options of another command would send the user nowhere)."""

    bad_rows: str
    outside_root: str
    labels: str = "fix the row"  # the fix of a label outside the class vocabulary


#: ``skinedge pipeline``'s wording: the fixes are settings of its config.
PIPELINE_HINTS = DataHints(
    bad_rows="Fix these rows or files, or set split.skip_bad: true in the pipeline config to "
             "list them in a report and go on without them.",
    outside_root="For a folder you trust, set split.allow_outside_root: true in the pipeline "
                 "config to read images outside it.",
    labels="fix the row, or set split.classes in the pipeline config (one of "
           f"{', '.join(sorted(VOCABULARIES))})")


# --------------------------------------------------------------------------- settings


def gan_config(cfg: PipelineConfig, manifest: str | None = None):
    from skinedge.synth.gan import GANConfig
    from skinedge.utils.config import load_config

    extra = [f"data.manifest={manifest}"] if manifest else []
    return load_config(cfg.gan.config, [*cfg.gan.overrides, *extra], GANConfig,
                       kind=f"GAN config ({cfg.gan.config})")


def member_config(cfg: PipelineConfig, k: int, manifest: str | None = None,
                  synthetic: str | None = None):
    """Member ``k``'s training config: the members' YAML and overrides, seed + k."""
    from skinedge.train.config import load_train_config

    extra = [f"data.manifest={manifest}"] if manifest else []
    base = load_train_config(cfg.members.config, [*cfg.members.overrides, *extra])
    data = base.data.model_copy(update={"synthetic": Path(synthetic) if synthetic else None})
    return base.model_copy(update={"seed": base.seed + k, "data": data})


def distill_config(cfg: PipelineConfig, manifest: str | None = None,
                   teacher: str | None = None):
    from skinedge.compress.distill import DistillConfig
    from skinedge.utils.config import load_config

    # The teacher is the ensemble stage's output; planning validates with a stand-in.
    extra = [f"data.manifest={manifest}"] if manifest else []
    extra.append(f"distill.teacher={teacher or 'TEACHER'}")
    return load_config(cfg.distill.config, [*cfg.distill.overrides, *extra], DistillConfig,
                       kind=f"distillation config ({cfg.distill.config})")


def dump(config) -> dict[str, Any]:
    """A config as its cache key sees it (JSON, no run paths)."""
    doc = config.model_dump(mode="json")
    data = doc.get("data")
    if isinstance(data, dict):
        for field in ("manifest", "synthetic", "root"):
            data.pop(field, None)
    doc.get("distill", {}).pop("teacher", None)
    # A section added later is left out while it is off (it changes no training then), so the
    # keys of stages cached before it existed stay valid.
    for section, switch in _ADDED_LATER.items():
        if isinstance(doc.get(section), dict) and not doc[section].get(switch):
            doc.pop(section)
    for (section, switch), fields in _FIELDS_ADDED_LATER.items():
        if isinstance(doc.get(section), dict) and not doc[section].get(switch):
            for field in fields:
                doc[section].pop(field, None)
    return doc


#: Config sections added after pipelines cached stages, and the field that turns each on.
_ADDED_LATER = {"outliers": "weight", "ema": "decay"}
#: The same for fields added to a section: (section, switch) -> the fields left out while off.
_FIELDS_ADDED_LATER = {("augment", "zoom_out"): ("zoom_out", "zoom_out_size")}


# --------------------------------------------------------------------------- stages


def split(hints: DataHints = PIPELINE_HINTS):
    """The stage that splits the data folder by lesion (patient) into train, val and test;
    several folders as ``skinedge data split A B C`` does (each split on its own, labels
    mapped into one vocabulary, sources kept for per-source metrics)."""

    def stage(cfg: PipelineConfig, folder: Path, inputs: Inputs, reporter: Reporter) -> dict:
        from skinedge.data.sources import split_folders
        from skinedge.data.splitting import split_folder

        manifest_path = folder / "manifest.json"
        folders = data_folders(cfg)
        common = dict(layout=cfg.split.layout, classes=cfg.split.classes,
                      ratios=cfg.split.ratios, seed=cfg.split.seed, skip_bad=cfg.split.skip_bad,
                      allow_outside_root=cfg.split.allow_outside_root, label_hint=hints.labels,
                      hint=hints.bad_rows, outside_root_hint=hints.outside_root)
        notes: list[str] = []
        with reporter.counter("checking images") as progress:
            if len(folders) == 1:
                manifest, skipped = split_folder(folders[0], manifest_path, progress=progress,
                                                 **common)
            else:
                made = split_folders(folders, manifest_path, progress=lambda name: progress,
                                     **common)
                manifest, skipped, notes = made.manifest, made.skipped_report, made.notes
        counts = {s: dict(c) for s, c in manifest.counts().items()}
        reporter.note(str({s: sum(c.values()) for s, c in counts.items()}))
        for note in notes:
            reporter.note(note)
        doc = {"manifest": str(manifest_path), "split_hash": manifest.split_hash,
               "counts": counts, "skipped": str(skipped) if skipped else None,
               "warnings": manifest.class_warnings()}
        if manifest.sources:
            doc["sources"] = manifest.source_counts()
        return doc

    return stage


def gan(cfg: PipelineConfig, folder: Path, inputs: Inputs, reporter: Reporter) -> dict:
    """Train the class-conditional GAN on the train split (resumes after a kill)."""
    from skinedge.synth.gan import train_gan
    from skinedge.synth.gan.networks import CHECKPOINT

    manifest = inputs["split"]["manifest"]
    run = folder / "run"
    started = (run / CHECKPOINT).is_file() or any((run / "classes").glob(f"*/{CHECKPOINT}"))
    gan_cfg = gan_config(cfg, manifest)
    with reporter.counter("GAN training (images shown)") as count:
        results = train_gan(gan_cfg, run, resume=started,
                            callbacks=GANProgress(count, gan_cfg.kimg))
    return {"run": str(run), "models": [{"folder": str(r.out_dir), "kimg": r.kimg}
                                        for r in results]}


def synthetic(k: int):
    """The stage that samples candidates with seed ``k`` and selects member ``k``'s set."""

    def stage(cfg: PipelineConfig, folder: Path, inputs: Inputs, reporter: Reporter) -> dict:
        from skinedge.data import load_manifest
        from skinedge.synth.candidates import needed_counts, select_synthetic
        from skinedge.synth.gan.sample import sample_candidates

        manifest = load_manifest(inputs["split"]["manifest"])
        quotas = needed_counts(manifest, cfg.gan.selection)
        counts = {c: math.ceil(q * cfg.gan.oversample) for c, q in quotas.items() if q > 0}
        if not counts:
            return {"set": None, "note": "every class meets the selection target: no "
                                         "synthetic images needed"}
        candidates = folder / "candidates"
        with reporter.counter(f"sampling candidates (seed {k})") as progress:
            sample_candidates(inputs["gan"]["run"], counts, candidates, seed=k,
                              truncation_psi=cfg.gan.truncation_psi,
                              progress=_stage_progress(progress))
        with reporter.counter(f"selecting synthetic images (seed {k})") as progress:
            kept = select_synthetic(candidates, manifest, folder / "selected",
                                    classifier=Path(inputs["member-0"]["checkpoint"]),
                                    cfg=cfg.gan.selection, progress=_stage_progress(progress))
        return {"set": str(folder / "selected"), "summary": kept.source.get("summary")}

    return stage


def member(k: int):
    """The stage that trains ensemble member ``k`` (resumes after a kill)."""

    def stage(cfg: PipelineConfig, folder: Path, inputs: Inputs, reporter: Reporter) -> dict:
        synthetic_set = inputs.get(f"synthetic-{k}", {}).get("set")
        train_cfg = member_config(cfg, k, inputs["split"]["manifest"], synthetic_set)
        return _train(train_cfg, folder / "run", reporter)

    return stage


def ensemble(cfg: PipelineConfig, folder: Path, inputs: Inputs, reporter: Reporter) -> dict:
    """One checkpoint that averages the members' probabilities."""
    from skinedge.models import create_ensemble
    from skinedge.train.ensemble import calibrate_ensemble

    members = [inputs[f"member-{k}"]["checkpoint"] for k in range(cfg.members.count)]
    path = create_ensemble([Path(m) for m in members], folder / "ensemble")
    member_cfg = member_config(cfg, 0)
    if member_cfg.calibrate:  # on the members' split, which their cards record
        calibrate_ensemble(path, device=member_cfg.device)
    return {"checkpoint": str(path), "members": members}


def distill(cfg: PipelineConfig, folder: Path, inputs: Inputs, reporter: Reporter) -> dict:
    """Distil the teacher (the ensemble, or the one member) into one student."""
    from skinedge.compress.distill import distill_classifier
    from skinedge.train.resume import has_trainer_state

    teacher = teacher_of(cfg, inputs)
    student_cfg = distill_config(cfg, inputs["split"]["manifest"], teacher)
    run = folder / "run"
    with reporter.training() as callbacks:
        result = distill_classifier(student_cfg, run, resume=has_trainer_state(run),
                                    callbacks=callbacks)
    return {"checkpoint": str(result.best_dir), "teacher": teacher, **_figures(result)}


def export(spec: str):
    """The stage that exports the final model to ``TARGET[:PRECISION[:QUANTIZER]]``."""

    def stage(cfg: PipelineConfig, folder: Path, inputs: Inputs, reporter: Reporter) -> dict:
        from skinedge.export import ExportError, ExportOptions, export_checkpoint

        target, precision, quantizer = parse_target(spec)
        try:
            result = export_checkpoint(
                final_checkpoint(cfg, inputs), target, precision=precision, out_dir=folder,
                manifest=inputs["split"]["manifest"],
                calibration_images=cfg.export.calibration_images,
                verify_images=cfg.export.verify_images, verify=cfg.export.verify_images > 0,
                options=ExportOptions(quantizer=quantizer), log=reporter.note)
        except ExportError as exc:  # made but drifted, or refused: the bench gate decides
            reporter.note(f"{spec}: {exc}")
            return {"target": spec, "status": "failed", "reason": str(exc), "artifact": None}
        v = result.verification
        return {"target": spec, "status": "ok" if result.path else "skipped",
                "artifact": str(result.path) if result.path else None,
                "report": str(result.report), "notes": result.notes,
                "verification": {"status": v.status, "images": v.images,
                                 "max_prob_diff": v.max_prob_diff, "flips": v.flips}}

    return stage


def bench(cfg: PipelineConfig, folder: Path, inputs: Inputs, reporter: Reporter) -> dict:
    """Latency and parity of every artifact against the final PyTorch model; the gate."""
    from skinedge.bench.gates import check_gates, load_gates
    from skinedge.bench.harness import BenchSettings, run_bench
    from skinedge.bench.report import write_outputs

    final = final_checkpoint(cfg, inputs)
    artifacts = [doc["artifact"] for name, doc in inputs.items()
                 if name.startswith("export-") and doc.get("artifact")]
    settings = BenchSettings(threads=cfg.bench.threads or None, warmup=cfg.bench.warmup,
                             iterations=cfg.bench.iterations)
    result = run_bench([final, *artifacts], reference=final,
                       manifest=inputs["split"]["manifest"], split=cfg.bench.split,
                       limit=cfg.bench.limit, out_dir=folder, settings=settings,
                       log=reporter.note)
    checks = check_gates(load_gates(cfg.bench.gate), result.rows) if cfg.bench.gate else None
    files = write_outputs(result, folder, checks, "skinedge pipeline (bench stage)")
    failed = [c.message for c in checks or [] if not c.passed]
    return {"gate": None if checks is None else {"passed": not failed, "checks": len(checks),
                                                 "failed": failed},
            "files": {k: str(v) for k, v in files.items()},
            "rows": [{"label": r.label, "status": r.status, "reason": r.reason,
                      "p50_ms": r.p50_ms, "p95_ms": r.p95_ms, "size_mb": r.size_mb,
                      "balanced_accuracy": r.balanced_accuracy, "flip_rate": r.flip_rate}
                     for r in result.rows]}


def gan_quality(cfg: PipelineConfig, folder: Path, inputs: Inputs, reporter: Reporter) -> dict:
    """Per-class FID, KID, precision and recall of the GAN against its real train images."""
    from skinedge.data import load_manifest
    from skinedge.synth.gan.quality import evaluate_gan

    manifest = load_manifest(inputs["split"]["manifest"])
    with reporter.counter("GAN quality (classes)") as progress:
        report = evaluate_gan(inputs["gan"]["run"], manifest, folder,
                              per_class=cfg.report.gan_quality_images,
                              progress=_stage_progress(progress))
    return {"quality": str(folder / "quality.json"), "features": report["features"],
            "per_class": report["per_class"], "rows": report["rows"]}


def evaluate(cfg: PipelineConfig, folder: Path, inputs: Inputs, reporter: Reporter) -> dict:
    """Every model (members, ensemble, student) on the report's split: metrics with bootstrap
    intervals, confusion matrix, parameters and MACs; Grad-CAM of the final model."""
    from skinedge.data import load_manifest
    from skinedge.evaluate import evaluate_checkpoint
    from skinedge.explain import explain_images
    from skinedge.pipelines.compression_report import count_params_and_macs

    models = {f"member-{k}": inputs[f"member-{k}"]["checkpoint"]
              for k in range(cfg.members.count)}
    if cfg.members.count > 1:
        models["ensemble"] = inputs["ensemble"]["checkpoint"]
    if cfg.distill.enabled:
        models["student"] = inputs["distill"]["checkpoint"]
    synthetic = {f"member-{k}": inputs.get(f"synthetic-{k}", {}).get("set")
                 for k in range(cfg.members.count)}
    rows = {}
    with reporter.counter(f"evaluating {len(models)} models on {cfg.report.split}") as progress:
        for done, (name, checkpoint) in enumerate(models.items(), start=1):
            result = evaluate_checkpoint(checkpoint, manifest=inputs["split"]["manifest"],
                                         split=cfg.report.split, out_dir=folder / name)
            params, macs = count_params_and_macs(Path(checkpoint))
            rows[name] = {"checkpoint": checkpoint, "params": params, "macs": macs,
                          "synthetic": bool(synthetic.get(name)),
                          "metrics": {k: v for k, v in result.metrics.items()
                                      if k != "melanoma_sensitivity_at_spec"},
                          "confusion": str(result.files["confusion_png"])}
            if progress:
                progress(done, len(models))
    final = final_checkpoint(cfg, inputs)
    manifest = load_manifest(inputs["split"]["manifest"])
    explained = explain_images(final, _one_per_class(manifest, cfg.report.split,
                                                     cfg.report.gradcam_images),
                               folder / "gradcam") if cfg.report.gradcam_images else []
    return {"split": cfg.report.split, "models": rows, "final": final,
            "gradcam": [str(path) for path, _ in explained]}


# --------------------------------------------------------------------------- helpers


def teacher_of(cfg: PipelineConfig, inputs: Inputs) -> str:
    """The ensemble, or member 0 when there is one member."""
    return inputs["ensemble"]["checkpoint"] if cfg.members.count > 1 else \
        inputs["member-0"]["checkpoint"]


def final_checkpoint(cfg: PipelineConfig, inputs: Inputs) -> str:
    """The model that is exported: the student, else the teacher."""
    return inputs["distill"]["checkpoint"] if cfg.distill.enabled else teacher_of(cfg, inputs)


def parse_target(spec: str) -> tuple[str, str | None, str | None]:
    target, precision, quantizer = ([*spec.split(":"), None, None])[:3]
    return target, precision or None, quantizer or None


def exporter_revision(spec: str) -> int:
    """The revision of the exporter ``spec`` (``tflite:int8``) names: a fixed exporter makes
    its cached export stale (:attr:`~skinedge.export.base.ExportTarget.revision`)."""
    from skinedge.export.base import get_target

    return get_target(parse_target(spec)[0]).revision


def _train(train_cfg, run: Path, reporter: Reporter) -> dict:
    from skinedge.train.resume import has_trainer_state
    from skinedge.train.trainer import train_classifier

    with reporter.training() as callbacks:
        result = train_classifier(train_cfg, run, resume=has_trainer_state(run),
                                  callbacks=callbacks)
    return {"checkpoint": str(result.best_dir), **_figures(result)}


def _figures(result) -> dict[str, Any]:
    return {"best_epoch": result.best_epoch, "best_metric": result.best_metric,
            "epochs": len(result.history), "stopped_early": result.stopped_early,
            "history": result.history}


def _one_per_class(manifest, split: str, n: int) -> list[Path]:
    """Up to ``n`` images of ``split``, taking each class in turn (the first rows of each)."""
    by_class: dict[str, list[Path]] = {}
    for row in manifest.subset(split):
        by_class.setdefault(row.label, []).append(manifest.root / row.image)
    chosen: list[Path] = []
    for rank in range(max(map(len, by_class.values()), default=0)):
        chosen += [paths[rank] for paths in by_class.values() if rank < len(paths)]
    return chosen[:n]


def _stage_progress(count):
    """``progress(description, done, total)`` for the sampling and selection steps."""
    if count is None:
        return None
    return lambda description, done, total: count(done, total)
