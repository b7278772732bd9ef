"""``skinedge pipeline CONFIG.yaml``: from a data folder to gated phone artifacts, cached.

The stages (:mod:`skinedge.pipelines.pipeline_stages`), in order::

    split            the data folder split by lesion
    gan              the class-conditional GAN (gan.enabled)
    member-0         ensemble member 0, on real images (it also scores the GAN's candidates)
    synthetic-K      candidates of seed K, selected by member 0 (gan.enabled, K >= 1)
    member-K         member K, with synthetic-K's images when the GAN is on
    ensemble         the members as one checkpoint (members.count >= 2)
    distill          the teacher distilled into one student (distill.enabled)
    export-T-P       the final model exported to target T at precision P, verified
    bench            latency and parity of every artifact against the final model; the gate
    gan-quality      per-class FID, KID, precision, recall of the GAN (report.gan_quality_images)
    evaluate         every model on the report's split; Grad-CAM examples of the final model

and, after every run, ``OUT/report.html`` (:mod:`skinedge.pipelines.pipeline_report`).

Every stage runs in ``OUT/cache/STAGE/KEY/`` and is finished by its ``stage.json``. ``KEY`` is
a hash of the stage's own settings (its resolved training config, its section of the
pipeline config, the gate file's content, the skinedge version) and the keys of the stages
it reads; the split's key covers the content of every file in the data folder. So a
changed setting reruns its stage and every stage after it that depends on it, and nothing
else, and the cache is never reused for other inputs. A stage cut off by a kill starts again
(training stages continue from their ``last/`` checkpoint). ``OUT/STAGE`` links to the
stage's current folder; ``OUT/pipeline.json`` (and ``pipeline.md``) say, for the last run,
which stage ran or came from the cache, and its wall time.

Under ``torchrun --nproc_per_node N skinedge pipeline ...`` (one machine, or nodes that share
``OUT``) the training stages (members, distillation) train on every process with DDP, as
``skinedge train`` does; every other stage runs on rank 0 while the others wait for its
``stage.json``, and rank 0 alone writes the run's files. A training stage's key names the
number of processes when it is more than one (``batch_size`` is per process, so the model
differs); the other stages' keys do not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import skinedge
from skinedge.errors import ConfigError
from skinedge.pipelines import pipeline_stages as stages
from skinedge.pipelines.pipeline_config import PipelineConfig, data_folders
from skinedge.pipelines.pipeline_report import write_html_report
from skinedge.pipelines.reporting import Reporter
from skinedge.pipelines.stage import STAGE_DONE, read_stage, run_stage
from skinedge.utils.config import dump_config
from skinedge.utils.io import atomic_write_text, package_versions, replace_symlink, sha256_file
from skinedge.utils.provenance import now

StageFn = Callable[[PipelineConfig, Path, "stages.Inputs", Reporter], dict[str, Any]]
#: Length of the key in folder names (hex digits of the sha256).
KEY_CHARS = 16


@dataclass
class Stage:
    """One stage of the plan: what it reads, what its key covers, where it runs."""

    name: str
    run: StageFn
    inputs: tuple[str, ...]
    settings: dict[str, Any]
    resumes: bool = False  # a cut-off run continues in its folder (training)
    distributed: bool = False  # under torchrun every process runs it (DDP); else rank 0 alone
    key: str = ""
    folder: Path = Path()
    status: str = ""  # cached | partial (cut off, continues) | runs

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "folder": str(self.folder),
                "inputs": list(self.inputs), "status": self.status}


@dataclass
class PipelineResult:
    """What a pipeline run did, stage by stage, and the gate's verdict."""

    out: Path
    stages: list[dict[str, Any]] = field(default_factory=list)  # pipeline.json's "stages"
    gate: dict[str, Any] | None = None  # passed, checks, failed; None: no gate
    report: Path | None = None  # pipeline.json
    html: Path | None = None  # report.html
    # Stage name -> why: an export that failed its verification or was refused, a bench row
    # that could not be measured. The job said no, as `skinedge export` and `bench` do.
    failures: dict[str, str] = field(default_factory=dict)
    # Stage name -> its stage.json document (what it made, where), for this run's plan.
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    main: bool = True  # False on torchrun ranks other than 0: they write and report nothing

    @property
    def passed(self) -> bool:
        """The gate passed (or there is none) and every artifact was made and measured."""
        return (self.gate is None or bool(self.gate["passed"])) and not self.failures


def plan_pipeline(cfg: PipelineConfig, out: Path | str, *, dry_run: bool = False,
                  hints: stages.DataHints = stages.PIPELINE_HINTS) -> list[Stage]:
    """The stages ``cfg`` asks for, in order, each with its key, folder and status (whether
    its folder in ``out``'s cache holds a finished run). Reads configs and hashes the data
    folder; trains nothing, and with ``dry_run`` writes nothing either. ``hints`` word the
    fixes of a bad data folder for the command that runs the pipeline.

    Raises:
        ConfigError: no data folder, a stage config that does not validate.
    """
    folders = data_folders(cfg)
    missing = [str(f) for f in folders if not Path(f).is_dir()] if folders else ["none"]
    if missing:
        raise ConfigError(f"data: {', '.join(missing)} is not a folder; set data: in the "
                          "pipeline config or pass --data FOLDER (repeat it for several)")
    twice = sorted({str(f) for f in folders if folders.count(f) > 1})
    if twice:
        raise ConfigError(f"data: {', '.join(twice)} is listed twice; list each folder once")
    out = Path(out)
    data = data_digest([Path(f) for f in folders], out, save=not dry_run)
    # Off, allow_outside_root changes no manifest (such rows stop the split), and classes only
    # names the vocabulary of several folders: keys made before the settings existed stay valid.
    unset = {"allow_outside_root"} if not cfg.split.allow_outside_root else set()
    if cfg.split.classes is None:
        unset.add("classes")
    split = cfg.split.model_dump(mode="json", exclude=unset or None)
    plan = [Stage("split", stages.split(hints), (), {"split": split, "data": data})]
    if cfg.gan.enabled:
        plan.append(Stage("gan", stages.gan, ("split",),
                          {"config": stages.dump(stages.gan_config(cfg))}, resumes=True))
    trained = {"members": (cfg.members.config, [stages.member_config(cfg, k)
                                                for k in range(cfg.members.count)])}
    for k, member_cfg in enumerate(trained["members"][1]):
        inputs: tuple[str, ...] = ("split",)
        if cfg.gan.enabled and k > 0:
            gan = cfg.gan.model_dump(mode="json", include={"oversample", "truncation_psi",
                                                           "selection"})
            plan.append(Stage(f"synthetic-{k}", stages.synthetic(k),
                              ("split", "gan", "member-0"), {"seed": k, **gan}))
            inputs = ("split", f"synthetic-{k}")
        plan.append(Stage(f"member-{k}", stages.member(k), inputs,
                          {"config": stages.dump(member_cfg)}, resumes=True,
                          distributed=True))
    members = tuple(f"member-{k}" for k in range(cfg.members.count))
    if cfg.members.count > 1:
        plan.append(Stage("ensemble", stages.ensemble, members, {}))
    teacher = "ensemble" if cfg.members.count > 1 else "member-0"
    final = teacher
    if cfg.distill.enabled:
        trained["distill"] = (cfg.distill.config, [stages.distill_config(cfg)])
        plan.append(Stage("distill", stages.distill, ("split", teacher),
                          {"config": stages.dump(trained["distill"][1][0])}, resumes=True,
                          distributed=True))
        final = "distill"
    exports = []
    for spec in cfg.export.targets:
        name = "export-" + "-".join(p for p in stages.parse_target(spec) if p)
        exports.append(name)
        plan.append(Stage(name, stages.export(spec), ("split", final),
                          {"target": spec, "exporter_revision": stages.exporter_revision(spec),
                           **cfg.export.model_dump(
                               mode="json", include={"calibration_images", "verify_images"})}))
    gate = Path(cfg.bench.gate).read_text() if cfg.bench.gate else None
    plan.append(Stage("bench", stages.bench, ("split", final, *exports),
                      {**cfg.bench.model_dump(mode="json", exclude={"gate"}), "gate": gate}))
    if cfg.gan.enabled and cfg.report.gan_quality_images:
        plan.append(Stage("gan-quality", stages.gan_quality, ("split", "gan"),
                          {"report": cfg.report.model_dump(mode="json",
                                                           include={"gan_quality_images"})}))
    models = [*members, *(["ensemble"] if cfg.members.count > 1 else []),
              *(["distill"] if cfg.distill.enabled else [])]
    synthetic = [f"synthetic-{k}" for k in range(1, cfg.members.count) if cfg.gan.enabled]
    plan.append(Stage("evaluate", stages.evaluate, ("split", *models, *synthetic),
                      {"report": cfg.report.model_dump(mode="json",
                                                       exclude={"gan_quality_images"})}))
    _check_weights(trained)
    processes = _world_size()
    keys: dict[str, str] = {}
    for stage in plan:
        if stage.distributed and processes > 1:
            stage.settings = {**stage.settings, "processes": processes}
        stage.key = stage_key(stage.name, stage.settings, {i: keys[i] for i in stage.inputs})
        keys[stage.name] = stage.key
        stage.folder = out / "cache" / stage.name / stage.key[:KEY_CHARS]
        stage.status = ("cached" if (stage.folder / STAGE_DONE).is_file() else
                        "partial" if stage.resumes and stage.folder.is_dir() else "runs")
    return plan


def _check_weights(trained: dict[str, tuple[Path, list[Any]]]) -> None:
    """A weights file that a training stage names must exist now, not when the stage starts
    after hours of GAN training (``model.pretrained=imagenet`` is checked with the config).

    Args:
        trained: Pipeline section -> (its config file, the training configs made from it).
    """
    from skinedge.errors import NotFoundError
    from skinedge.models.pretrained import check_pretrained

    for section, (path, configs) in trained.items():
        try:
            for config in configs:
                check_pretrained(config.model.pretrained)
        except NotFoundError as exc:
            raise NotFoundError(f"{section}.config {path}: {exc} (its comments say where such "
                                f"weights come from; or pass --set {section}.overrides="
                                "[model.pretrained=PATH])") from exc


def stage_key(name: str, settings: dict[str, Any], inputs: dict[str, str]) -> str:
    """sha256 of a stage's name, settings, its inputs' keys and the skinedge version."""
    doc = {"stage": name, "skinedge": skinedge.__version__, "settings": settings,
           "inputs": inputs}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def run_pipeline(cfg: PipelineConfig, out: Path | str, *, reporter: Reporter | None = None,
                 command: str | None = None,
                 hints: stages.DataHints = stages.PIPELINE_HINTS) -> PipelineResult:
    """Run every stage of ``cfg`` whose result is not in ``out``'s cache.

    Args:
        cfg: The resolved config (:func:`~skinedge.pipelines.pipeline_config.load_pipeline_config`).
        out: Run folder; its ``cache/`` keeps every stage result ever made there.
        reporter: Progress hooks.
        command: What ``pipeline.json`` records as the command.
        hints: How a bad data folder's error words its fixes (``skinedge quickstart`` has
            its own).

    Raises:
        ConfigError: another pipeline is running in ``out``; what :func:`plan_pipeline` raises.
        SkinedgeError: what a stage raises (bad data rows, a missing backend); the stages that
            finished stay cached.
    """
    reporter = reporter or Reporter()
    out = Path(out)
    with _process_group(cfg):
        if torchrun_rank() != 0:
            return _follow(cfg, out, hints)
        return _run(cfg, out, reporter, command, hints)


def _run(cfg: PipelineConfig, out: Path, reporter: Reporter, command: str | None,
         hints: stages.DataHints) -> PipelineResult:
    """:func:`run_pipeline` in its one process, or on torchrun's rank 0."""
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        plan = plan_pipeline(cfg, out, hints=hints)
        atomic_write_text(out / "pipeline.yaml", dump_config(cfg))
        started = now()
        done: dict[str, dict[str, Any]] = {}
        rows = []
        for i, stage in enumerate(plan, 1):
            reporter.stage(f"{i}/{len(plan)} {stage.name}"
                           + (" (cached)" if stage.status == "cached" else ""))
            began = time.perf_counter()
            inputs = {name: done[name] for name in stage.inputs}
            doc = run_stage(stage.folder, lambda d, s=stage, x=inputs: _timed(s, d, x, cfg,
                                                                              reporter),
                            keep=stage.resumes, reporter=reporter)
            done[stage.name] = doc
            replace_symlink(out / stage.name, stage.folder)
            rows.append({**stage.to_json(),
                         "status": "cached" if stage.status == "cached" else "ran",
                         "seconds": doc.get("seconds"),
                         "this_run_seconds": round(time.perf_counter() - began, 2)})
        gate = done["bench"].get("gate")
        failures = {name: doc["reason"] for name, doc in done.items()
                    if name.startswith("export-") and doc.get("status") == "failed"}
        failures.update({f"bench {row['label']}": row.get("reason") or row["status"]
                         for row in done["bench"]["rows"] if row["status"] == "failed"})
        report = {"command": command or "skinedge.pipelines.pipeline.run_pipeline", "started":
                  started, "finished": now(), "stages": rows, "gate": gate,
                  "failures": failures, "versions": package_versions()}
        atomic_write_text(out / "pipeline.json", json.dumps(report, indent=1, default=str))
        atomic_write_text(out / "pipeline.md", render_markdown(report))
        html = write_html_report(out, report, done, cfg)
    return PipelineResult(out, rows, gate, out / "pipeline.json", html, failures, done)


@contextlib.contextmanager
def _process_group(cfg: PipelineConfig) -> Iterator[None]:
    """Under torchrun, one process group for the whole run, joined before the first stage:
    every training stage trains in it. (Each joining and leaving its own group, a fast rank
    could meet the keys its slower peer left in torchrun's store and wait for ever.) The
    group stays idle, without a time limit, while rank 0 runs the stages that are its alone."""
    if _world_size() <= 1:
        yield
        return
    from skinedge.train.distributed import cleanup_distributed, init_distributed

    dist = init_distributed(stages.member_config(cfg, 0).device)
    try:
        yield
    finally:
        cleanup_distributed(dist)


def _world_size() -> int:
    """Processes that ``torchrun`` started (``WORLD_SIZE``); 1 outside it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def torchrun_rank() -> int:
    """This process's rank under ``torchrun`` (``RANK``); 0 outside it."""
    return int(os.environ.get("RANK", "0")) if _world_size() > 1 else 0


def _follow(cfg: PipelineConfig, out: Path, hints: stages.DataHints,
            poll_seconds: float = 1.0) -> PipelineResult:
    """A torchrun process other than rank 0: train the distributed stages with rank 0 (DDP)
    and read every stage's result from the ``stage.json`` rank 0 writes. A rank that fails
    makes torchrun stop the others, so the wait has no time limit of its own."""
    quiet = Reporter()
    done: dict[str, dict[str, Any]] = {}
    for stage in plan_pipeline(cfg, out, dry_run=True, hints=hints):
        if stage.distributed and stage.status != "cached":
            stage.run(cfg, stage.folder, {name: done[name] for name in stage.inputs}, quiet)
        while (doc := read_stage(stage.folder)) is None:
            time.sleep(poll_seconds)
        done[stage.name] = doc
    return PipelineResult(out, outputs=done, main=False)


def render_markdown(report: dict[str, Any]) -> str:
    """pipeline.md: each stage, whether it ran or came from the cache, its wall time."""
    lines = [f"# Pipeline run {report['started']}", "", f"Command: `{report['command']}`", "",
             "| stage | key | this run | stage wall time (s) | this run's time (s) |",
             "|---|---|---|---:|---:|"]
    for row in report["stages"]:
        lines.append(f"| {row['name']} | `{row['key'][:KEY_CHARS]}` | {row['status']} | "
                     f"{row['seconds']} | {row['this_run_seconds']} |")
    gate = report.get("gate")
    lines += ["", "Gate: " + ("none" if gate is None else "passed" if gate["passed"] else
                              "failed: " + "; ".join(gate["failed"]))]
    lines += [f"- {name} failed: {reason}" for name, reason in report["failures"].items()]
    return "\n".join(lines) + "\n"


def data_digest(folders: Path | list[Path], out: Path, *, save: bool = True) -> str:
    """sha256 over every file in a folder (path and content); for several folders, sha256
    over their names and digests in order. Content hashes are kept in
    ``out/cache/data-hashes.json`` by path, size and mtime, so a second run reads no image."""
    store = out / "cache" / "data-hashes.json"
    try:
        known = json.loads(store.read_text()) if store.is_file() else {}
    except (OSError, ValueError):
        known = {}
    folders = folders if isinstance(folders, list) else [folders]
    fresh: dict[str, list] = {}
    digests = [_folder_digest(f, known, fresh) for f in folders]
    if save:
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store, json.dumps(fresh))
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(f"{Path(f).name}\0{d}\n" for f, d in zip(folders, digests))
                          .encode()).hexdigest()


def _folder_digest(folder: Path, known: dict[str, list], fresh: dict[str, list]) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        key = str(path.resolve())
        entry = known.get(key)
        if entry is None or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
            entry = [stat.st_size, stat.st_mtime_ns, sha256_file(path)]
        fresh[key] = entry
        digest.update(f"{path.relative_to(folder).as_posix()}\0{entry[2]}\n".encode())
    return digest.hexdigest()


def _timed(stage: Stage, folder: Path, inputs: dict[str, dict[str, Any]], cfg: PipelineConfig,
           reporter: Reporter) -> dict[str, Any]:
    began = time.perf_counter()
    doc = stage.run(cfg, folder, inputs, reporter)
    return {**doc, "stage": stage.name, "key": stage.key, "inputs": list(stage.inputs),
            "seconds": round(time.perf_counter() - began, 2), "finished": now()}


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One pipeline at a time in ``out`` (an advisory lock; a killed one releases it)."""
    with open(out / ".pipeline.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigError(f"another skinedge pipeline is running in {out}; wait for it, "
                              "or choose another --out") from exc
        yield

