"""``skinedge quickstart``: the packaged ``pipeline-quickstart.yaml`` on one data folder (or
several side by side).

Split by lesion, one EfficientNet-Lite0 trained for phone pictures, evaluated on the test split,
Grad-CAM of one test image per class, exported to ONNX and benched, ``report.html``: the stages
of :mod:`skinedge.pipelines.pipeline`, so a rerun reuses what is finished and a kill resumes.
The run folder keeps quickstart's short names as links into the pipeline's stages::

    OUT/manifest.json     the lesion-grouped split
    OUT/train/best        the trained checkpoint (OUT/train is the training run)
    OUT/eval/             metrics.json, metrics.md and the confusion matrix on the test split
    OUT/explanations/     Grad-CAM overlays
    OUT/command.json      the command, its first start and last finish, package versions
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from skinedge.errors import ConfigError, DataError, NotFoundError
from skinedge.pipelines.pipeline_stages import DataHints
from skinedge.pipelines.reporting import Reporter
from skinedge.utils.io import replace_symlink
from skinedge.utils.provenance import now, record_command

if TYPE_CHECKING:
    from skinedge.pipelines.pipeline import PipelineResult

DEFAULT_DATASET = "ham10000-sample"
#: The pipeline config quickstart runs; ``--config`` and ``--set`` change its members' recipe.
PIPELINE_CONFIG = "pipeline-quickstart.yaml"

#: A bad folder's fixes, worded for quickstart: it has no --skip-bad or --allow-outside-root,
#: and its pipeline config is packaged, so the fixes are the folder or the commands that do.
QUICKSTART_HINTS = DataHints(
    bad_rows="Fix these rows or files, or split the folder yourself with `skinedge data split "
             "--skip-bad` and train on its manifest with `skinedge train`.",
    outside_root="For a folder you trust, split it yourself with `skinedge data split "
                 "--allow-outside-root` and train with `skinedge train`.",
    labels="fix the row, or split the folder yourself with `skinedge data split --classes` "
           "and train with `skinedge train`")


#: The default recipe: Lite0 at 224 px trained for phone pictures (docs/RESULTS.md,
#: robustness-comparison: test spread over presentations 0.109 -> 0.019).
DEFAULT_RECIPE = "ham10000-lite0-phone-cpu.yaml"


def default_config() -> Path:
    return Path(str(resources.files("skinedge.configs") / DEFAULT_RECIPE))


def find_data(data: Path | None) -> Path:
    """--data, else $SKINEDGE_DATA/ham10000-sample, else $SKINEDGE_DATA itself."""
    if data is not None:
        if not data.is_dir():
            raise NotFoundError(f"--data {data} is not a folder")
        return data
    env = os.environ.get("SKINEDGE_DATA")
    if env:
        for candidate in (Path(env) / DEFAULT_DATASET, Path(env)):
            if candidate.is_dir() and any(candidate.glob("*.csv")):
                return candidate
    raise NotFoundError(
        "no data: pass --data FOLDER, or set SKINEDGE_DATA to a folder holding "
        f"{DEFAULT_DATASET}/; with internet, `skinedge data download ham10000 --dest DIR` "
        "fetches the full HAM10000 (about 2.8 GB)"
    )


def run_quickstart(data: Path | list[Path] | None, out: Path, config: Path | None,
                   overrides: list[str], *, reporter: Reporter | None = None,
                   command: str | None = None) -> tuple[str, PipelineResult]:
    """Run :data:`PIPELINE_CONFIG` on ``data`` in ``out``, with ``config`` (a training recipe;
    default :data:`DEFAULT_RECIPE`) and ``overrides`` of it for the model. What a previous run
    in ``out`` finished is reused. Several folders side by side make one multi-source split
    (as ``skinedge data split A B C``), whose figures the summary gives per source.

    Args:
        command: What ``command.json`` and ``pipeline.json`` record as the command (the CLI
            passes its command line; by default the Python call).

    Returns:
        ``(summary, result)``: a short text of the test-split figures and where the outputs
        are, and the :class:`~skinedge.pipelines.pipeline.PipelineResult`.

    Raises:
        ConfigError: a bad recipe or override (before anything is written), ``out`` holding a
            quickstart of the layout before the pipeline.
        NotFoundError: no data folder.
        DataError: bad rows or images (every one named, with quickstart's fixes).
    """
    from skinedge.pipelines import pipeline_stages as stages
    from skinedge.pipelines.pipeline import run_pipeline
    from skinedge.pipelines.pipeline_config import find_config_file, load_pipeline_config

    reporter = reporter or Reporter()
    command = command or f"skinedge.pipelines.quickstart.run_quickstart({str(data)!r}, {str(out)!r})"
    given = data if isinstance(data, list) else [data] if data is not None else []
    folders = [find_data(d).resolve() for d in given] or [find_data(None).resolve()]
    cfg = load_pipeline_config(PIPELINE_CONFIG, data=folders)
    cfg.members.config = find_config_file(config) if config else default_config()
    cfg.members.overrides = list(overrides)
    stages.member_config(cfg, 0)  # a bad recipe or --set is refused before anything is written
    _refuse_old_layout(out)
    previous = out / "command.json"
    # A rerun keeps the first start time, so the wall clock covers the whole job.
    started = _first_start(previous) if previous.is_file() else now()
    out.mkdir(parents=True, exist_ok=True)
    record_command(out, command=command, started=started,
                   data=", ".join(str(f) for f in folders))

    result = run_pipeline(cfg, out, reporter=reporter, command=command, hints=QUICKSTART_HINTS)
    done = result.outputs
    evaluation = done["evaluate"]
    links = {"manifest.json": Path(done["split"]["manifest"]),
             "train": Path(done["member-0"]["checkpoint"]).parent,
             "eval": Path(evaluation["models"]["member-0"]["confusion"]).parent}
    if evaluation["gradcam"]:
        links["explanations"] = Path(evaluation["gradcam"][0]).parent
    for name, target in links.items():
        replace_symlink(out / name, target)
    record_command(out, command=command, started=started, finished=now(),
                   data=", ".join(str(f) for f in folders))
    return _summary(out, result), result


def _summary(out: Path, result: PipelineResult) -> str:
    done = result.outputs
    evaluation = done["evaluate"]
    m = evaluation["models"]["member-0"]["metrics"]
    auc = "n/a" if m["melanoma_auc"] is None else f"{m['melanoma_auc']:.3f}"
    lines = [f"test split: n={m['n']} accuracy {m['accuracy']:.3f} balanced accuracy "
             f"{m['balanced_accuracy']:.3f} melanoma AUC {auc}"]
    for source, s in (m.get("per_source") or {}).items():
        balanced = ("n/a (melanoma vs benign)" if s.get("task") == "melanoma-detection"
                    else f"{s['balanced_accuracy']:.3f}")
        source_auc = "n/a" if s.get("melanoma_auc") is None else f"{s['melanoma_auc']:.3f}"
        lines.append(f"  {source}: n={s['n']} balanced accuracy {balanced} melanoma AUC "
                     f"{source_auc}")
    lines += [
             f"checkpoint:   {out / 'train' / 'best'}",
             f"reports:      {out / 'eval' / 'metrics.md'}, {result.html}",
             f"explanations: {len(evaluation['gradcam'])} PNGs in {out / 'explanations'}"]
    for name, doc in done.items():
        if name.startswith("export-") and doc.get("artifact"):
            lines.append(f"exported:     {doc['artifact']}")
    rows = {row["label"]: row for row in done["bench"]["rows"]}
    lines += [f"bench:        {label} p50 {row['p50_ms']:.2f} ms, top-1 flips against the "
              f"checkpoint {row['flip_rate']:.3f}" for label, row in rows.items()
              if row["status"] == "ok" and row.get("p50_ms") is not None
              and row.get("flip_rate") is not None]
    return "\n".join(lines)


def _refuse_old_layout(out: Path) -> None:
    """A quickstart folder from before quickstart ran on the pipeline holds real folders where
    the pipeline's run puts links; mixing the two would lose track of which model is which."""
    if any((out / name).exists() and not (out / name).is_symlink()
           for name in ("train", "eval", "explanations", "manifest.json")):
        raise ConfigError(f"{out} holds a quickstart run made by an earlier skinedge (real "
                          "folders where quickstart now links into its pipeline's stages); "
                          "choose another --out, or delete the folder to start again")


def _first_start(record: Path) -> str:
    """When the run in ``record``'s folder first started (its ``command.json``)."""
    try:
        return json.loads(record.read_text())["started"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{record}: not a readable quickstart record ({exc}); it is written "
                        "by `skinedge quickstart`: choose another --out, or delete the folder "
                        "to start again") from exc
