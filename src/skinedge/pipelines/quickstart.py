"""The quickstart pipeline: split, train, evaluate and explain in one resumable run."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from skinedge.errors import ConfigError, DataError, NotFoundError
from skinedge.pipelines.reporting import Reporter
from skinedge.utils.provenance import now, record_command

DEFAULT_DATASET = "ham10000-sample"

#: The last line of a data error: quickstart has no --skip-bad or --allow-outside-root.
DATA_HINT = ("Fix these rows or files, or split the folder yourself with `skinedge data split "
             "--skip-bad` and train on its manifest with `skinedge train`.")
#: How images outside the folder are let in, worded for quickstart.
OUTSIDE_ROOT_HINT = ("For a folder you trust, split it yourself with `skinedge data split "
                     "--allow-outside-root` and train with `skinedge train`.")


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


def run_quickstart(data: Path | None, out: Path, config: Path | None, overrides: list[str], *,
                   resume: bool = False, reporter: Reporter | None = None,
                   command: str | None = None) -> str:
    """Split ``data`` by lesion, train, evaluate on the test split and explain one test image
    per class, all under ``out``; with ``resume``, finished stages are reused.

    Args:
        command: What ``command.json`` records as the command (the CLI passes its command line;
            by default the Python call).

    Returns:
        A short summary of the test-split figures and where the outputs are.
    """
    from skinedge.data import load_manifest
    from skinedge.data.splitting import split_folder
    from skinedge.evaluate import evaluate_checkpoint
    from skinedge.explain.api import explain_images
    from skinedge.train.config import load_train_config
    from skinedge.train.trainer import train_classifier

    reporter = reporter or Reporter()
    command = command or f"skinedge.pipelines.quickstart.run_quickstart({str(data)!r}, {str(out)!r})"
    folder = find_data(data)
    previous = out / "command.json"
    if previous.is_file() and not resume:
        raise ConfigError(f"{out} already holds a quickstart run; continue it with --resume, or "
                         "choose another --out")
    # A resumed run keeps its first start time, so the wall clock covers the whole job.
    started = _first_start(previous) if previous.is_file() else now()
    out.mkdir(parents=True, exist_ok=True)
    record_command(out, command=command, started=started, data=str(folder.resolve()))

    manifest_path = out / "manifest.json"
    reporter.stage(f"1/4 split {folder}")
    if resume and manifest_path.is_file():
        manifest = load_manifest(manifest_path)
        reporter.note(f"reusing {manifest_path}")
    else:
        with reporter.counter("checking images") as progress:
            manifest, skipped = split_folder(folder, manifest_path, progress=progress,
                                             hint=DATA_HINT, outside_root_hint=OUTSIDE_ROOT_HINT)
        if skipped:
            reporter.note(f"skipped rows listed in {skipped}")
    reporter.note(str({s: sum(c.values()) for s, c in manifest.counts().items()}))

    reporter.stage("2/4 train")
    cfg = load_train_config(config or default_config(),
                            [*overrides, f"data.manifest={manifest_path}"])
    run = out / "train"
    resume_training = resume and (run / "last").is_dir()
    with reporter.training() as callbacks:
        result = train_classifier(cfg, run, resume=resume_training, callbacks=callbacks)

    reporter.stage("3/4 evaluate on the test split")
    with reporter.counter("predicting") as progress:
        evaluation = evaluate_checkpoint(result.best_dir, manifest=manifest_path, split="test",
                                         out_dir=out / "eval", progress=progress)

    reporter.stage("4/4 explain")
    rows = evaluation.images
    picks = _pick_examples(evaluation, per_class=1)
    written = explain_images(result.best_dir, [manifest.root / rows[i] for i in picks],
                             out / "explanations")
    record_command(out, command=command, started=started, finished=now(),
                   data=str(folder.resolve()))
    m = evaluation.metrics
    auc = "n/a" if m["melanoma_auc"] is None else f"{m['melanoma_auc']:.3f}"
    return (
        f"test split: n={m['n']} accuracy {m['accuracy']:.3f} balanced accuracy "
        f"{m['balanced_accuracy']:.3f} melanoma AUC {auc}\n"
        f"checkpoint:   {result.best_dir}\n"
        f"reports:      {evaluation.files['markdown']}\n"
        f"explanations: {len(written)} PNGs in {out / 'explanations'}"
    )


def _first_start(record: Path) -> str:
    """When the run in ``record``'s folder first started (its ``command.json``)."""
    try:
        return json.loads(record.read_text())["started"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{record}: not a readable quickstart record ({exc}); it is written "
                        "by `skinedge quickstart`: choose another --out, or delete the folder "
                        "to start again") from exc


def _pick_examples(evaluation, per_class: int) -> list[int]:
    """The first test image of each class, so every class gets an explanation."""
    picks, seen = [], {}
    for i, target in enumerate(evaluation.targets):
        if seen.get(int(target), 0) < per_class:
            picks.append(i)
            seen[int(target)] = seen.get(int(target), 0) + 1
    return picks
