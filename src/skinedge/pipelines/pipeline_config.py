"""The config of ``skinedge pipeline``: one YAML from a data folder to gated phone artifacts.

Each section configures one stage of :mod:`skinedge.pipelines.pipeline`; a stage's training
config is a YAML of its own (a packaged name such as ``ham10000-lite0-cpu.yaml``, a path
relative to the pipeline config, or an absolute path) changed by the section's ``overrides``::

    data: ../shared/data/ham10000-sample     # default: --data, else $SKINEDGE_DATA/ham10000-sample
    # or several folders side by side, split as `skinedge data split A B C` splits them:
    # data: [../shared/data/ham10000-sample, ../shared/data/isic2019-sample]
    split: {ratios: [0.7, 0.15, 0.15], seed: 0}   # classes: isic2018 names the vocabulary
    gan: {enabled: true, config: ham10000-gan64-cpu.yaml, oversample: 3}
    members: {count: 3, config: ham10000-lite0-cpu.yaml}
    distill: {enabled: true, config: ham10000-distill-lite0-cpu.yaml}
    export: {targets: [onnx:fp32, onnx:int8, tflite:int8]}
    bench: {gate: phone.yaml, iterations: 100}
    report: {split: test, gradcam_images: 6, gan_quality_images: 200}

Paths are resolved once, when the config is loaded, so the resolved config (``pipeline.yaml``
in the run folder) can be run from anywhere.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from skinedge.errors import ConfigError
from skinedge.synth.selection import SelectionConfig
from skinedge.utils.config import load_config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitSection(_Section):
    """How the data folder is split by lesion (``skinedge data split``)."""

    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test
    seed: int = 0
    layout: str | None = None  # detected when None
    # The class vocabulary labels are read in (isic2018, isic2019, melanoma), that of several
    # folders mapped into; by default inferred, the first folder's (`data split --classes`).
    classes: str | None = None

    @field_validator("classes")
    @classmethod
    def _known_vocabulary(cls, classes: str | None) -> str | None:
        from skinedge.data.classes import VOCABULARIES

        if classes is not None and classes not in VOCABULARIES:
            raise ValueError(f"unknown class vocabulary {classes!r}; choose one of: "
                             f"{', '.join(sorted(VOCABULARIES))}")
        return classes
    skip_bad: bool = False  # list unreadable rows in a report instead of stopping
    allow_outside_root: bool = False  # read rows whose images lie outside the data folder


class GanSection(_Section):
    """The class-conditional GAN and the synthetic sets its selected samples make."""

    enabled: bool = False
    config: Path = Path("ham10000-gan64-cpu.yaml")
    overrides: list[str] = Field(default_factory=list)
    oversample: float = Field(3.0, ge=1)  # candidates generated per synthetic image needed
    truncation_psi: float = Field(1.0, gt=0, le=1)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)


class MembersSection(_Section):
    """The ensemble members: member k trains with seed ``seed + k``; with the GAN on, member 0
    trains on real images only (it also scores the candidates) and member k >= 1 with the
    synthetic set of candidate seed k."""

    count: int = Field(3, ge=1)  # 1: no ensemble, the one model is the teacher
    config: Path = Path("ham10000-lite0-cpu.yaml")
    overrides: list[str] = Field(default_factory=list)


class DistillSection(_Section):
    """Distillation of the ensemble into one student; off: the ensemble (or the one member)
    is what gets exported."""

    enabled: bool = True
    config: Path = Path("ham10000-distill-lite0-cpu.yaml")
    overrides: list[str] = Field(default_factory=list)


class ExportSection(_Section):
    """Every target the final model goes to, as ``TARGET[:PRECISION[:QUANTIZER]]``."""

    targets: list[str] = Field(default_factory=lambda: ["onnx:fp32", "onnx:int8"])
    calibration_images: int = Field(300, ge=1)  # INT8 calibration, from the train split
    verify_images: int = Field(64, ge=0)  # parity of each artifact with the model, on val

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        from skinedge.export import TARGETS

        for spec in targets:
            name = spec.split(":")[0]
            if name not in TARGETS:
                raise ValueError(f"{spec!r}: unknown target {name!r}; targets: "
                                 + ", ".join(sorted(TARGETS)))
            if spec.count(":") > 2:
                raise ValueError(f"{spec!r}: write TARGET[:PRECISION[:QUANTIZER]]")
        if len(set(targets)) != len(targets):
            raise ValueError("a target is listed twice")
        return targets


class BenchSection(_Section):
    """The bench of every artifact against the final PyTorch model, and its gate."""

    gate: Path | None = None  # budgets YAML (`skinedge bench --gate`); None: measured only
    split: str = "test"
    limit: int | None = Field(None, ge=1)  # only the first N images (quick checks)
    threads: int | None = Field(1, ge=0)  # 0: the backend's default
    warmup: int = Field(10, ge=0)
    iterations: int = Field(100, ge=1)


class ReportSection(_Section):
    """``report.html``: every model evaluated on one split, Grad-CAM examples, the GAN's
    per-class quality (FID, KID, precision and recall on ImageNet features)."""

    split: Literal["train", "val", "test"] = "test"
    gradcam_images: int = Field(6, ge=0)  # test images explained by the final model
    gan_quality_images: int = Field(200, ge=0)  # generated per class; 0: no quality stage


class PipelineConfig(_Section):
    """Everything ``skinedge pipeline`` depends on; written as ``pipeline.yaml`` in its run."""

    # One labelled folder, or several side by side (one multi-source split, metrics per source).
    data: Path | list[Path] | None = None
    split: SplitSection = Field(default_factory=SplitSection)
    gan: GanSection = Field(default_factory=GanSection)
    members: MembersSection = Field(default_factory=MembersSection)
    distill: DistillSection = Field(default_factory=DistillSection)
    export: ExportSection = Field(default_factory=ExportSection)
    bench: BenchSection = Field(default_factory=BenchSection)
    report: ReportSection = Field(default_factory=ReportSection)

    @field_validator("data")
    @classmethod
    def _some_folder(cls, data: Path | list[Path] | None) -> Path | list[Path] | None:
        if isinstance(data, list) and not data:
            raise ValueError("data: give a folder, or a list of one or more folders")
        return data


def data_folders(cfg: PipelineConfig) -> list[Path]:
    """The data folders of ``cfg`` as a list (one, or several side by side); [] when unset."""
    if cfg.data is None:
        return []
    return list(cfg.data) if isinstance(cfg.data, list) else [cfg.data]


def packaged_pipeline_configs() -> list[str]:
    """Names of the pipeline configs shipped with skinedge (``pipeline-*.yaml``)."""
    return sorted(p.name for p in resources.files("skinedge.configs").iterdir()
                  if p.name.startswith("pipeline-") and p.name.endswith(".yaml"))


def find_config_file(name: Path | str, base: Path | None = None) -> Path:
    """A config file: an absolute path, a path relative to ``base`` (the folder of the config
    that names it) or to the working folder, or the name of a packaged config.

    Raises:
        ConfigError: none of those exists (the packaged names are listed).
    """
    name = Path(name)
    candidates = [name] if name.is_absolute() else [
        *([base / name] if base is not None else []), name,
        Path(str(resources.files("skinedge.configs") / name.name))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    packaged = sorted(p.name for p in resources.files("skinedge.configs").iterdir()
                      if p.name.endswith(".yaml"))
    raise ConfigError(f"config {name}: no such file (looked in {', '.join(map(str, candidates))})"
                      f"; give a path, or one of the packaged configs: {', '.join(packaged)}")


def load_pipeline_config(path: Path | str, overrides: list[str] | None = None, *,
                         data: Path | list[Path] | None = None) -> PipelineConfig:
    """Read a pipeline YAML (a path or a packaged name), apply ``--set`` overrides and
    ``data`` (one folder or several), validate, and resolve every path in it (see the module
    docstring).

    Raises:
        ConfigError: an unreadable file, invalid values (file and field named), a stage
            config or gate file that does not exist.
    """
    path = find_config_file(path)
    cfg = load_config(path, overrides, PipelineConfig, kind="pipeline config")
    base = path.parent
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if data is not None:
        cfg.data = data
    if cfg.data is not None:
        given = data is not None
        folders = [_resolve_folder(f, base, given) for f in data_folders(cfg)]
        cfg.data = folders if isinstance(cfg.data, list) else folders[0]
    cfg.members.config = find_config_file(cfg.members.config, base)
    if cfg.distill.enabled:
        cfg.distill.config = find_config_file(cfg.distill.config, base)
    if cfg.gan.enabled:
        cfg.gan.config = find_config_file(cfg.gan.config, base)
    if cfg.bench.gate is not None:
        cfg.bench.gate = find_gate_file(cfg.bench.gate, base)
    return cfg


def _resolve_folder(folder: Path, base: Path, given: bool) -> Path:
    """A data folder of the config, relative to the config's folder (else the working folder);
    one given on the command line (``given``), relative to the working folder."""
    resolved = folder if folder.is_absolute() or given else base / folder
    if not resolved.is_dir() and not folder.is_absolute():
        resolved = folder  # relative to the working folder
    return resolved.resolve()


def find_gate_file(gate: Path, base: Path) -> Path:
    """A gate file relative to the pipeline config or the working folder, the repository's
    ``examples/gates/``, or a packaged one (``gate-phone-int8.yaml``)."""
    packaged = Path(str(resources.files("skinedge.configs") / gate.name))
    for candidate in (gate, base / gate, Path("examples/gates") / gate, packaged):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"bench.gate {gate}: no such file (relative paths are read from "
                      f"{base} or the working folder); see examples/gates/ for gate files")
