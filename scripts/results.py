"""Generate docs/RESULTS.md from finished runs. Never edit RESULTS.md by hand.

Usage:
    python scripts/results.py runs/ham10000-lite0 [more runs...] [--bench bench/NAME ...] \
        [--compression compression/NAME ...] --out docs/RESULTS.md
    python scripts/results.py --update --gan GAN_RUN --quality QUALITY --ablation ABLATION \
        --out docs/RESULTS.md   # (re)writes only the GAN section, keeping the rest
    python scripts/results.py --update --section gan-dcgan --gan DCGAN_RUN --quality QUALITY \
        --out docs/RESULTS.md   # a second GAN (the DCGAN baseline) in a section of its own
    python scripts/results.py --update --pipeline RUN --out docs/RESULTS.md
        # a `skinedge pipeline --out RUN`: stages and wall times, gate, bench, evaluation
    python scripts/results.py --update --bench bench/NAME --out docs/RESULTS.md
        # one bench folder in a section of its own (bench-NAME)
    python scripts/results.py --update --robustness runs/RUN/eval-robustness --out docs/RESULTS.md
        # `skinedge evaluate --robustness` in a section of its own (robustness-RUN-FOLDER);
        # several: a comparison section (robustness-comparison) first
    python scripts/results.py --update --calibration runs/RUN/eval-test --out docs/RESULTS.md
        # ECE with and without the card's temperature, reliability diagrams
        # (calibration-RUN-FOLDER)
    python scripts/results.py --update --lesion-check runs/RUN/eval-test [...] --out docs/RESULTS.md
        # the lesion checks of several models side by side, with and without outlier exposure
        # (lesion-check)
    python scripts/results.py --update --pt2e-seeds bench/pt2e-qat-seeds --out docs/RESULTS.md
        # TFLite INT8 per calibration seed, pt2e against pt2e-qat (pt2e-seeds)
    python scripts/results.py --update --compression compression/NAME --out docs/RESULTS.md
        # teacher, best single model, student FP32 and INT8 (compression-NAME)

Each run folder is what `skinedge quickstart --out RUN` leaves: command.json, manifest.json,
train/{config.yaml,versions.json,metrics.jsonl,best/card.json}, eval/metrics.json.
Each bench folder is what `skinedge bench --out DIR` leaves: bench.json, bench.md, bench.png.
Each compression folder is what `skinedge compress report --out DIR` leaves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
from pathlib import Path

import yaml
from results_gan import (  # scripts/ is on sys.path when run as a script
    render_gan,
    render_gan_comparison,
    render_selections,
)
from results_pipeline import render_pipeline

from skinedge.evaluate.report import render_markdown

# The bar every accuracy claim is held to: a plain timm fine-tune of ImageNet EfficientNet-Lite0
# on the HAM10000 sample, lesion-grouped test split (issue 5).
BAR = {"balanced_accuracy": 0.70, "melanoma_auc": 0.90}
REFERENCE = ("plain timm fine-tune of Lite0, as quoted in issue 5 (not measured by this script): "
             "balanced accuracy 0.70, melanoma AUC 0.92")


def render_run(run: Path) -> str:
    command = json.loads((run / "command.json").read_text())
    cfg = yaml.safe_load((run / "train" / "config.yaml").read_text())
    versions = json.loads((run / "train" / "versions.json").read_text())
    history = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    card = json.loads((run / "train" / "best" / "card.json").read_text())
    metrics_path = run / "eval" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    manifest = json.loads((run / "manifest.json").read_text())

    started = dt.datetime.fromisoformat(command["started"])
    finished = (dt.datetime.fromisoformat(command["finished"]) if "finished" in command
                else dt.datetime.fromtimestamp(metrics_path.stat().st_mtime, dt.UTC))
    train_minutes = sum(r["seconds"] for r in history) / 60
    best = card["training"]["epoch"]

    lines = [
        f"## {run.name}: {cfg['model']['arch']} at {cfg['preprocess']['input_size']} px",
        "",
        f"- command: `{command['command']}` (data: `{command['data']}`)",
        f"- run: {command['started']} to {finished.isoformat(timespec='seconds')}, "
        f"{(finished - started).total_seconds() / 60:.1f} min wall clock for the whole command; "
        f"training {train_minutes:.1f} min for {len(history)} epochs "
        f"({train_minutes / max(len(history), 1):.1f} min/epoch), best epoch {best} by val "
        f"{cfg['monitor']}",
        f"- split: `{manifest['layout']}` layout, {manifest['classes']} classes, grouped by "
        f"lesion, seed {manifest['seed']}, ratios {manifest['ratios']}, split hash "
        f"`{manifest['split_hash'][:16]}`; images per split: "
        + ", ".join(f"{s} {sum(c.values())}" for s, c in manifest["counts"].items()),
        f"- weights: {card['pretrained']}; data licence: {card['data']['licence']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "### Against the bar",
        "",
        f"Reference: {REFERENCE}. Target of issue 5: balanced accuracy >= 0.70, melanoma AUC >= 0.90.",
        "",
        "| evaluation of the test split | metric | value | target | verdict |",
        "|---|---|---:|---:|---|",
    ]
    test_evals = [("single view (`eval/`)", metrics)] + [
        (f"{m.get('tta', 'none')} TTA (`{p.parent.name}/`)", m)
        for p in sorted(run.glob("eval-*/metrics.json"))
        if (m := json.loads(p.read_text())).get("source", "").endswith(":test")
    ]
    for label, values in test_evals:
        for key, target in BAR.items():
            value = values[key]
            verdict = "met" if value is not None and value >= target else (
                f"missed by {target - value:.3f}" if value is not None else "n/a")
            lines.append(f"| {label} | {key} | {_fmt(value)} | {target:.2f} | {verdict} |")
    body = render_markdown(metrics, title="Test split", class_names=card["class_names"])
    # Demote the report's headings under this run's section.
    lines += ["", *("##" + ln if ln.startswith("#") else ln for ln in body.splitlines()), ""]
    lines += [
        "### Training history (validation split)",
        "",
        "| epoch | train loss | val loss | val accuracy | val balanced acc. | val melanoma AUC | lr | s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in history:
        mark = " *" if r["epoch"] == best else ""
        lines.append(
            f"| {r['epoch']}{mark} | {r['train_loss']:.3f} | {r['val_loss']:.3f} | {r['accuracy']:.3f} "
            f"| {r['balanced_accuracy']:.3f} | {_fmt(r['melanoma_auc'])} | {r['lr']:.1e} "
            f"| {r['seconds']:.0f} |")
    lines += ["", "`*` = checkpoint kept as `best/` and evaluated on the test split.", ""]
    for extra in sorted(run.glob("eval-*/metrics.json")):
        lines += render_extra_evaluation(extra.parent, card)
    return "\n".join(lines)


def render_extra_evaluation(folder: Path, card: dict) -> list[str]:
    """A further `skinedge evaluate --out RUN/eval-NAME` of the same checkpoint."""
    metrics = json.loads((folder / "metrics.json").read_text())
    command = json.loads((folder / "command.json").read_text())
    body = render_markdown(metrics, title=f"Evaluation on {metrics['source']}",
                           class_names=card["class_names"])
    return [
        f"### Further evaluation: {folder.name}",
        "",
        f"- command: `{command['command']}` ({command['finished']})",
        "",
        *("###" + ln if ln.startswith("#") else ln for ln in body.splitlines()),
        "",
    ]


def render_comparison(runs: list[Path]) -> list[str]:
    """One row per run: the recipe is chosen on validation, the test split only reports."""
    lines = [
        "## Runs side by side",
        "",
        "A recipe is chosen by its best validation balanced accuracy; the test columns only report.",
        "",
        "| run | command | split hash | best val bal. acc. | test bal. acc. | test melanoma AUC "
        "| test bal. acc., flip TTA | test melanoma AUC, flip TTA |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        command = json.loads((run / "command.json").read_text())["command"]
        history = [json.loads(line) for line in
                   (run / "train" / "metrics.jsonl").read_text().splitlines()]
        test = json.loads((run / "eval" / "metrics.json").read_text())
        tta_path = run / "eval-test-tta" / "metrics.json"
        tta = json.loads(tta_path.read_text()) if tta_path.is_file() else {}
        split_hash = json.loads((run / "manifest.json").read_text())["split_hash"][:12]
        best_val = max(r["balanced_accuracy"] for r in history)
        lines.append(
            f"| {run.name} | `{command}` | `{split_hash}` | {best_val:.3f} "
            f"| {_fmt(test['balanced_accuracy'])} | {_fmt(test['melanoma_auc'])} "
            f"| {_fmt(tta.get('balanced_accuracy'))} | {_fmt(tta.get('melanoma_auc'))} |")
    return [*lines, ""]


def render_bench(folder: Path, docs: Path) -> list[str]:
    """The benchmark table, its command and versions, and the export issue's targets checked."""
    import shutil

    doc = json.loads((folder / "bench.json").read_text())
    rows = {r["label"]: r for r in doc["rows"]}
    versions = doc["versions"]
    exported_by = sorted({_exporting_command(Path(r["model"])) for r in doc["rows"]
                          if r.get("model")} - {None})
    lines = [f"## Export and benchmark: {folder.name}", "",
             f"- command: `{doc['command']}`, finished {doc['created']}",
             *[f"- artifacts given to it were exported (and verified) by: `{c}`" for c in exported_by],
             "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
             (folder / "bench.md").read_text().strip(), ""]
    if (folder / "bench.png").is_file():
        chart = docs / f"bench-{folder.name}.png"
        shutil.copyfile(folder / "bench.png", chart)
        lines += [f"![balanced accuracy against latency]({chart.name})", ""]
    s = doc["settings"]
    lines += [f"Targets of the export issue ({s['threads'] or 'default'} thread(s), one run; only "
              "rows with status ok count as meeting a target):", ""]
    lines += [f"- {text}" for text in _export_targets(rows)]
    return [*lines, ""]


def render_pt2e_seeds(folder: Path) -> list[str]:
    """`python scripts/pt2e_qat_seeds.py --out DIR`: TFLite PT2E INT8 against the float model
    per calibration seed, post-training and quantization-aware distillation side by side."""
    doc = json.loads((folder / "pt2e-seeds.json").read_text())
    rows = doc["rows"]
    lines = ["## TFLite INT8 over calibration seeds: post-training against quantization-aware "
             "distillation", "",
             f"- command: `{doc['command']}`, finished {doc['finished']}",
             f"- model: `{doc['checkpoint']}`; splits of `{doc['manifest']}`; each seed draws "
             f"{doc['calibration_images']} calibration images of the {doc['training_images']} "
             f"training images; `pt2e-qat` then distils over all {doc['training_images']}; first "
             f"{doc['float_first']} convolutions and the classifier in float, as "
             "`skinedge export` leaves them",
             f"- machine: {doc['machine']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()), "",
             "Measured in the TFLite file (LiteRT, XNNPACK, 1 thread) against the float model "
             "with its temperature, as the bench measures; flips: images whose top-1 class "
             "differs.", "",
             "| seed | method | test flips | test logits SQNR (dB) | test Δ bal. acc | val flips "
             "| val logits SQNR (dB) | seconds |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, v = r["test"], r["val"]
        lines.append(f"| {r['seed']} | {r['method']} | {t['flips']}/{t['images']} "
                     f"({t['flip_rate']:.1%}) | {t['sqnr_db']:.1f} | "
                     f"{t['balanced_accuracy_change']:+.3f} | {v['flips']}/{v['images']} "
                     f"({v['flip_rate']:.1%}) | {v['sqnr_db']:.1f} | {r['seconds']} |")
    lines.append("")
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        flips = [r["test"]["flip_rate"] for r in mine]
        sqnr = [r["test"]["sqnr_db"] for r in mine]
        val = [r["val"]["flip_rate"] for r in mine]
        lines.append(f"- {method} over {len(mine)} seeds, test: flips {min(flips):.1%} to "
                     f"{max(flips):.1%} (mean {sum(flips) / len(flips):.1%}), logits SQNR "
                     f"{min(sqnr):.1f} to {max(sqnr):.1f} dB; under 3% flips in "
                     f"{sum(f < 0.03 for f in flips)} of {len(mine)}; validation flips "
                     f"{min(val):.1%} to {max(val):.1%}")
    return [*lines, ""]


def render_robustness(folder: Path) -> list[str]:
    """`skinedge evaluate --robustness --out DIR`: the table per presentation, its command and
    the model's preprocessing (colour constancy changes what the presentations do)."""
    command = json.loads((folder / "command.json").read_text())
    doc = json.loads((folder / "robustness.json").read_text())
    table = (folder / "robustness.md").read_text().strip().splitlines()[1:]  # not its title
    metrics = json.loads((folder / "metrics.json").read_text())
    pre = _card_of(metrics)["preprocess"]
    return [f"## Robustness: {folder.parent.name}/{folder.name} ({doc['images']} images of "
            f"`{doc['source']}`)", "",
            f"- command: `{command['command']}`, finished {command.get('finished')}",
            f"- model: `{metrics['checkpoint']}`, {_trained_by(Path(metrics['checkpoint']))}; "
            f"preprocessing: colour constancy {pre.get('color_constancy', 'none')}, resize "
            f"{pre.get('resize_mode', 'crop')}, {pre.get('input_size')} px",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in command["versions"].items()),
            *table, ""]


def _card_of(metrics: dict) -> dict:
    """The model card of the checkpoint an evaluate folder's metrics.json names."""
    return json.loads((Path(metrics["checkpoint"]) / "card.json").read_text())


def _trained_by(checkpoint: Path) -> str:
    """The command that made a checkpoint (the nearest command.json above it), or its run's
    resolved config where the run recorded no command."""
    for parent in checkpoint.parents[:3]:
        if (parent / "command.json").is_file():
            return f"made by `{json.loads((parent / 'command.json').read_text())['command']}`"
    return f"trained with the resolved config `{checkpoint.parent / 'config.yaml'}`"


def render_robustness_comparison(folders: list[Path]) -> list[str]:
    """One row per `evaluate --robustness` folder: its split, as stored, best, worst, spread."""
    lines = ["## Robustness: the models side by side", "",
             "Balanced accuracy; the tables per presentation follow in sections of their own.",
             "", "| model | images scored | colour constancy | phone augmentation | also trained "
             "with | as stored | best | worst | spread |", "|---|---|---|---|---|---:|---:|---:|---:|"]
    for folder in folders:
        doc = json.loads((folder / "robustness.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        card = _card_of(metrics)
        pre = card["preprocess"]
        rows = {r["presentation"]: r["balanced_accuracy"] for r in doc["rows"]}
        best, worst = max(rows, key=rows.get), min(rows, key=rows.get)
        scored = f"`{doc['source']}` ({doc['images']} images)"
        lines.append(f"| `{metrics['checkpoint']}` | {scored} | "
                     f"{pre.get('color_constancy', 'none')} | {_phone_augmentation(card)} | "
                     f"{_trained_with(card)} | {rows['as-stored']:.3f} | "
                     f"{rows[best]:.3f} ({best}) | {rows[worst]:.3f} ({worst}) | "
                     f"{doc['spread']:.3f} |")
    return [*lines, ""]


def _trained_with(card: dict) -> str:
    """Several sources, outlier exposure and the weight average, when a checkpoint was trained
    with them."""
    config = (card.get("training") or {}).get("config") or {}
    data = card.get("data") or {}
    parts = []
    if data.get("layout") == "multi-source":
        parts.append(f"several sources (`{data.get('manifest')}`, split "
                     f"{str(data.get('split_hash', ''))[:12]})")
    if (config.get("outliers") or {}).get("weight"):
        parts.append(f"outlier exposure {config['outliers']['weight']:g}")
    if (config.get("ema") or {}).get("decay"):
        parts.append(f"weight average {config['ema']['decay']:g}")
    return ", ".join(parts) or "-"


def _phone_augmentation(card: dict) -> str:
    """The phone augmentations a checkpoint was trained with (AugmentConfig), or "none"."""
    augment = ((card.get("training") or {}).get("config") or {}).get("augment") or {}
    low, high = augment.get("aspect_ratio") or (3 / 4, 4 / 3)
    parts = [f"crop aspect {low:.2f}-{high:.2f}"] if (low, high) != (0.75, 4 / 3) else []
    if augment.get("rot90"):
        parts.append("quarter turns")
    if augment.get("white_balance"):
        parts.append(f"white balance +-{augment['white_balance']:g}")
    if augment.get("phone_copy"):
        parts.append(f"phone copies {augment['phone_copy']:.0%}")
    if augment.get("zoom_out"):
        low, high = augment.get("zoom_out_size") or (0.5, 1.0)
        parts.append(f"zoomed out {augment['zoom_out']:.0%} (side {low:g}-{high:g})")
    return ", ".join(parts) or "none"


def render_calibration(folder: Path, docs: Path) -> list[str]:
    """`skinedge evaluate --out DIR` of a calibrated checkpoint: ECE on the evaluated split with
    the card's temperature and without it, where the temperature was fitted, and the
    reliability diagrams (copied next to RESULTS.md)."""
    import shutil

    command = json.loads((folder / "command.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    calibration = metrics.get("calibration")
    if not calibration or not calibration.get("fitted_on"):
        raise SystemExit(f"{folder}/metrics.json has no calibration: evaluate a checkpoint "
                         "whose card has a fitted temperature (`skinedge calibrate`)")
    card = _card_of(metrics)
    fit = card.get("calibration") or {}
    lines = [f"## Calibration: {folder.parent.name}/{folder.name} (temperature scaling, "
             f"{metrics['n']} images "
             f"of `{metrics['source']}`)", "",
             f"- command: `{command['command']}`, finished {command.get('finished')}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in command["versions"].items()),
             f"- temperature {calibration['temperature']:.3f}, fitted by NLL on "
             f"{calibration['fitted_images']} images of `{calibration['fitted_on']}`"
             + (f" (there: ECE {fit['ece_before']:.3f} -> {fit['ece_after']:.3f}, NLL "
                f"{fit['nll_before']:.3f} -> {fit['nll_after']:.3f})" if fit else ""), "",
             "| probabilities | ECE (top-1, 15 bins) |", "|---|---:|",
             f"| uncalibrated (T = 1) | {calibration['ece_uncalibrated']:.3f} |",
             f"| calibrated (T = {calibration['temperature']:.2f}) | {metrics['ece']:.3f} |", ""]
    lines += _lesion_check_lines(metrics.get("lesion_check"), card.get("ood"))
    if (folder / "reliability.png").is_file():
        chart = docs / f"reliability-{folder.parent.name}-{folder.name}.png"
        shutil.copyfile(folder / "reliability.png", chart)
        lines += [f"![reliability diagrams before and after]({chart.name})", ""]
    return lines


def render_sources(folders: list[Path]) -> list[str]:
    """`skinedge evaluate --manifest MULTI --out DIR` folders of several models on one
    multi-source split: one table, a row per model and source (the class figures of a source
    labelled with classes, melanoma detection for one labelled melanoma vs benign)."""
    lines = ["## Several sources: each model on each source's test images", ""]
    rows = []
    for folder in folders:
        command = json.loads((folder / "command.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        if not metrics.get("per_source"):
            raise SystemExit(f"{folder}/metrics.json has no per-source figures: evaluate on a "
                             "manifest made from several folders (`skinedge data split A B C`)")
        card = _card_of(metrics)
        lines += [f"- `{metrics['checkpoint']}` ({card['data'].get('manifest')}, "
                  f"{_trained_by(Path(metrics['checkpoint']))}): `{command['command']}`, "
                  f"finished {command.get('finished')}"]
        lines += [f"  - note: {note}" for note in metrics.get("notes") or []]
        for source, m in metrics["per_source"].items():
            ci = m.get("confidence_intervals") or {}
            spec = m["melanoma_sensitivity_at_spec"]
            detection = m.get("task") == "melanoma-detection"
            bal = "n/a (mel vs benign)" if detection else (
                f"{m['balanced_accuracy']:.3f} ({_span(ci.get('balanced_accuracy'))})")
            rows.append(f"| `{folder.parent.name}/{folder.name}` | {source} | {m['n']} | "
                        f"{m['per_class'].get('mel', {}).get('support', 0)} | {bal} | "
                        f"{_fmt(m['melanoma_auc'])} ({_span(ci.get('melanoma_auc'))}) | "
                        f"{_fmt(spec.get('0.80'))} | {_fmt(spec.get('0.90'))} | "
                        f"{m['ece']:.3f} |")
    versions = json.loads((folders[0] / "command.json").read_text())["versions"]
    lines += ["- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
              "Bootstrap 95% intervals (1000 resamples) in brackets; a source's balanced "
              "accuracy is over the classes it has.", "",
              "| evaluation | source | images | melanomas | balanced accuracy | melanoma AUC | "
              "sens. @ 80% spec. | sens. @ 90% spec. | ECE |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|", *rows, ""]
    return lines


def render_evaluations(folders: list[Path]) -> list[str]:
    """`skinedge evaluate --out DIR` folders side by side: the model, what it was scored on, and
    the headline figures with their bootstrap intervals (e.g. models on an external folder)."""
    lines = ["## Evaluations side by side", "",
             "| evaluation | model | scored on | images | balanced accuracy | melanoma AUC | "
             "sens. @ 90% spec. | ECE |", "|---|---|---|---:|---:|---:|---:|---:|"]
    commands = []
    for folder in folders:
        command = json.loads((folder / "command.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        ci = metrics.get("confidence_intervals") or {}
        lines.append(
            f"| `{folder.parent.name}/{folder.name}` | `{metrics['checkpoint']}` | "
            f"`{metrics['source']}` | {metrics['n']} | {metrics['balanced_accuracy']:.3f} "
            f"({_span(ci.get('balanced_accuracy'))}) | {_fmt(metrics['melanoma_auc'])} "
            f"({_span(ci.get('melanoma_auc'))}) | "
            f"{_fmt(metrics['melanoma_sensitivity_at_spec'].get('0.90'))} | "
            f"{metrics['ece']:.3f} |")
        commands.append(f"- `{folder.parent.name}/{folder.name}`: `{command['command']}`, "
                        f"finished {command.get('finished')}; the model "
                        f"{_trained_by(Path(metrics['checkpoint']))}")
    versions = json.loads((folders[0] / "command.json").read_text())["versions"]
    return [*lines, "", "Bootstrap 95% intervals (1000 resamples) in brackets.", "", *commands,
            "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]


def render_lesion_checks(folders: list[Path]) -> list[str]:
    """`skinedge evaluate --out DIR` folders of calibrated checkpoints side by side: what each
    model's lesion check refuses of the lesions scored and of the held-out non-lesion images
    (per photograph and pattern kind), beside its accuracy there, and whether it was trained
    with outlier exposure (``outliers.weight``)."""
    lines = ["## Refusing what is not a lesion: the models side by side", "",
             "| evaluation | model | outlier exposure | scored on | images | balanced accuracy | "
             "melanoma AUC | ECE | lesions refused (melanomas) | check | held-out non-lesion "
             "images caught |", "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    commands, by_model, versions = [], {}, None
    for folder in folders:
        command = json.loads((folder / "command.json").read_text())
        versions = versions or command["versions"]
        metrics = json.loads((folder / "metrics.json").read_text())
        check = metrics.get("lesion_check")
        if not check:
            raise SystemExit(f"{folder}/metrics.json has no lesion check: evaluate a checkpoint "
                             "whose card has one (`skinedge calibrate`)")
        card = _card_of(metrics)
        exposure = (card.get("training") or {}).get("outlier_exposure")
        ci = metrics.get("confidence_intervals") or {}
        mel = check["false_rejection_by_class"].get("mel")
        lines.append(
            f"| `{folder.parent.name}/{folder.name}` | `{metrics['checkpoint']}` | "
            + (f"weight {exposure['weight']:g}, {exposure['share']:.0%} of items, "
               f"{len(exposure['groups'])} sources" if exposure else "none")
            + f" | `{metrics['source']}` | {metrics['n']} | {metrics['balanced_accuracy']:.3f} "
            f"({_span(ci.get('balanced_accuracy'))}) | {_fmt(metrics['melanoma_auc'])} | "
            f"{metrics['ece']:.3f} | {check['false_rejection']:.1%} "
            f"({'n/a' if mel is None else f'{mel:.1%}'}) | {check['method']} above "
            f"{check['threshold']:.4g} | {check['detection_held_out']:.1%} of "
            f"{check['non_lesion_held_out']} |")
        by_model.setdefault(metrics["checkpoint"], check.get("detection_held_out_by_group") or {})
        commands.append(f"- `{folder.parent.name}/{folder.name}`: `{command['command']}`, "
                        f"finished {command.get('finished')}; the model "
                        f"{_trained_by(Path(metrics['checkpoint']))}")
    groups = sorted({g for rates in by_model.values() for g in rates})
    models = list(by_model)
    lines += ["", "Bootstrap 95% intervals (1000 resamples) in brackets. A check's threshold "
              "refuses at most 5% of the model's validation lesions; the non-lesion images held "
              "out (`skinedge.evaluate.ood.held_out`) were neither in the check's choice nor in "
              "outlier exposure's training pictures, which also leave out photographs of a "
              "held-out photograph's scene.", "", *commands,
              "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    if groups:
        lines += ["Held-out non-lesion images caught, per photograph or pattern kind (each "
                  "photograph whole and 3 crops, each pattern kind 6 drawings):", "",
                  "| held-out source | " + " | ".join(f"`{m}`" for m in models) + " |",
                  "|---|" + "---:|" * len(models)]
        lines += [f"| {g} | " + " | ".join(_percent(by_model[m].get(g)) for m in models) + " |"
                  for g in groups]
        lines.append("")
    return lines


def _span(bounds: list[float] | None) -> str:
    return "n/a" if not bounds else f"{bounds[0]:.3f}-{bounds[1]:.3f}"


def _lesion_check_lines(evaluated: dict | None, ood: dict | None) -> list[str]:
    """The card's lesion check: how it was chosen, and what it refuses on the evaluated split."""
    if not evaluated or not ood:
        return []
    fit = ood["fit"]
    lines = ["### Refusing what is not a lesion", "",
             f"The card's check: {ood['method']} of the calibrated logits above "
             f"{ood['threshold']:.4g} is reported as \"not a dermoscopic lesion image\". "
             f"Chosen on {fit['lesion_images']} lesions of `{fit['source']}` (at most "
             f"{fit['max_false_rejection']:.0%} refused) and {fit['non_lesion_images']} "
             f"non-lesion images; {fit['non_lesion_held_out']} more, from other photographs and "
             "pattern kinds, held out (`skinedge.evaluate.ood`: scikit-image, scikit-learn and "
             "Matplotlib sample photographs and their crops; flat colours, skin without a lesion, "
             "noise, gradients, checkerboards, stripes, text, shapes).", "",
             "| method | threshold | lesions refused (val) | non-lesion caught | held out caught "
             "| AUROC |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in fit["methods"].items():
        mark = " (chosen)" if name == ood["method"] else ""
        lines.append(f"| {name}{mark} | {m['threshold']:.4g} | {m['false_rejection']:.1%} | "
                     f"{m['detection']:.1%} | {m['detection_held_out']:.1%} | {m['auroc']:.3f} |")
    by_class = ", ".join(f"{k} {v:.1%}" for k, v in evaluated["false_rejection_by_class"].items())
    return [*lines, "",
            f"On the evaluated split: {evaluated['false_rejection']:.1%} of its lesions refused "
            f"({by_class}); {evaluated['detection_held_out']:.1%} of the "
            f"{evaluated['non_lesion_held_out']} held-out non-lesion images refused.", ""]


def _exporting_command(model: Path) -> str | None:
    """The `skinedge bench --export` command whose output folder holds this artifact, if any."""
    for parent in model.parents:
        if (parent / "bench.json").is_file():
            return json.loads((parent / "bench.json").read_text()).get("command")
    return None


# INT8 methods the export issue keeps as fallbacks after plain post-training quantization:
# a row made by one says so beside its verdict.
FALLBACKS = {"qac": "NNCF accuracy control", "pt2e-qat": "quantization-aware distillation",
             "qat": "quantization-aware training"}


def _fallback(label: str) -> str:
    """`` (fallback: ...)`` for a row whose label ends in a fallback method's variant."""
    method = next((m for v, m in FALLBACKS.items() if label.endswith(f"-int8-{v}")), None)
    return f" (fallback: {method})" if method else ""


def _export_targets(rows: dict) -> list[str]:
    ok = {k: r for k, r in rows.items() if r.get("p50_ms") is not None and r["status"] == "ok"}
    on_device = {k: r for k, r in ok.items() if " @ " in k}  # latency only, another runtime
    ok = {k: r for k, r in ok.items() if k not in on_device}
    int8 = {k: r for k, r in ok.items() if "-int8" in k}
    failed = [r for r in rows.values() if "-int8" in r["label"] and r["status"] != "ok"
              and not (" @ " in r["label"] and r["status"] == "skipped")]  # not for that device
    out = []
    for k, r in on_device.items():
        name, _, device = k.partition(" @ ")
        fp32 = on_device.get(f"{name.replace('-int8', '-fp32')} @ {device}")
        if "-int8" in name and fp32:
            ratio = fp32["p50_ms"] / r["p50_ms"]
            out.append(f"{k}: p50 {r['p50_ms']:.2f} ms vs FP32 {fp32['p50_ms']:.2f} ms on "
                       f"{device}: {ratio:.2f}x ({'meets' if ratio >= 2 else 'misses'} the 2x "
                       f"target; latency only there)")
    for target in sorted({k.split("-")[0] for k in int8}):
        fp32 = ok.get(f"{target}-fp32")
        fastest = min((r for k, r in int8.items() if k.startswith(f"{target}-")),
                      key=lambda r: r["p50_ms"])
        if fp32:
            speedup = fp32["p50_ms"] / fastest["p50_ms"]
            out.append(f"{target}: fastest INT8 ({fastest['label']}) p50 {fastest['p50_ms']:.2f} ms "
                       f"vs FP32 {fp32['p50_ms']:.2f} ms: {speedup:.2f}x "
                       f"({'meets' if speedup >= 2 else 'misses'} the 2x target)")
    if int8:
        best = min(int8.values(), key=lambda r: r["p95_ms"])
        out.append(f"fastest INT8 artifact: {best['label']}, p95 {best['p95_ms']:.2f} ms "
                   f"({'meets' if best['p95_ms'] < 10 else 'misses'} the 10 ms target)")
    if "tflite-int8" in ok and "tflite-fp32" in ok:
        a, b = ok["tflite-int8"]["p50_ms"], ok["tflite-fp32"]["p50_ms"]
        out.append(f"TFLite INT8 p50 {a:.2f} ms vs FP32 {b:.2f} ms: "
                   f"{'faster' if a < b else 'NOT faster'}")
    for k, r in int8.items():
        drop, flips = r.get("balanced_accuracy_drop"), r.get("flip_rate")
        within = drop is not None and drop <= 0.01
        under = flips is not None and flips < 0.03
        verdict = ("meets the within-1-point and under-3% targets" if within and under else
                   f"{'meets' if within else 'misses'} the within-1-point target, "
                   f"{'meets' if under else 'misses'} the under-3% flips target")
        confident = r.get("confident_flip_rate")
        out.append(f"{k}{_fallback(k)}: balanced accuracy {r['balanced_accuracy']:.3f} (change "
                   f"{0.0 - drop:+.3f}), flips {flips:.1%}"
                   + (f" ({confident:.1%} of confident answers)" if confident is not None else "")
                   + f": {verdict}")
    for r in failed:
        measured = (f"; measured anyway: balanced accuracy {r['balanced_accuracy']:.3f}, flips "
                    f"{r['flip_rate']:.1%}, p50 {r['p50_ms']:.2f} ms"
                    if r.get("flip_rate") is not None else "")
        out.append(f"{r['label']}: {r['status']} ({r.get('reason', '')}){measured}: misses")
    return out


def render_compression(folder: Path) -> list[str]:
    """The compression report (`skinedge compress report --out DIR`), with the commands that
    made the student and its INT8 artifacts, and the compression issue's targets."""
    command = json.loads((folder / "command.json").read_text())
    doc = json.loads((folder / "compression.json").read_text())
    made_by = [f"- {row['label']} ({row['role']}): {_provenance(Path(row['model']))}"
               for row in doc["rows"]]
    lines = [f"## Compression: {folder.name}", "",
             f"- command: `{command['command']}`, finished {command.get('finished')}",
             *made_by,
             "- versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()), "",
             (folder / "compression.md").read_text().strip(), ""]
    met = sum(c["ok"] for c in doc["checks"])
    lines += [f"{met} of {len(doc['checks'])} targets of the compression issue met in this run.", ""]
    return lines


def _provenance(model: Path) -> str:
    """Where a report row's model came from, read from the files beside it."""
    command = model.parent / "command.json"
    if command.is_file():
        doc = json.loads(command.read_text())
        if str(model) in doc.get("artifacts", []):
            return f"made by `{doc['command']}`"
    # Several targets share a file stem (x_fp32.onnx, x_fp32.xml): the report that lists it.
    reports = [(path, json.loads(path.read_text()))
               for path in sorted(model.parent.glob(f"{model.stem}.*.export.json"))]
    reports = [(path, doc) for path, doc in reports
               if any(Path(f["path"]).name == model.name for f in doc.get("files", []))]
    if reports:
        path, doc = reports[0]
        check = doc["verification"]
        flips = f", {check['flip_rate']:.1%} flips" if "flip_rate" in check else ""
        return (f"exported from `{doc['checkpoint']}` ({doc['target']} {doc['precision']}; "
                f"verification {check['status']}{flips}; report `{path}`)")
    card_file = model / "card.json"
    if not card_file.is_file():
        return "provenance not recorded"
    card = json.loads(card_file.read_text())
    if card.get("members"):
        return "ensemble of " + ", ".join(f"`{m['source']}`" for m in card["members"])
    training = card.get("training", {})
    run = model.parent
    ensemble = model.parent.parent / "card.json"
    if model.parent.name == "members" and ensemble.is_file():
        source = next(m["source"] for m in json.loads(ensemble.read_text())["members"]
                      if m["path"] == f"members/{model.name}")
        return f"ensemble member, a copy of `{source}` (epoch {training.get('epoch')})"
    if "distillation" in training:
        d = training["distillation"]
        return (f"distilled from `{d['teacher']}` ({d['teacher_members']} members, "
                f"T={d['temperature']}, alpha={d['alpha']}), epoch {training.get('epoch')}, "
                f"config `{run / 'config.yaml'}`")
    return f"trained with `{run / 'config.yaml'}`, epoch {training.get('epoch')}"


def replace_section(text: str, name: str, lines: list[str]) -> str:
    """Put ``lines`` between ``<!-- section: name -->`` markers, replacing an earlier version
    of the section or appending it."""
    begin, end = f"<!-- section: {name} -->", f"<!-- end section: {name} -->"
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        return text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def kept_sections(text: str) -> list[str]:
    """The ``<!-- section: NAME -->`` blocks of ``text`` (GAN, service bench, ...), each with
    a blank line after it: a full rewrite renders none of them, so it carries them over."""
    found = re.finditer(r"<!-- section: (\S+) -->.*?<!-- end section: \1 -->", text, re.S)
    return [line for match in found for line in (match.group(0), "")]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--bench", action="append", type=Path, default=[],
                        help="a `skinedge bench --out` folder (repeatable)")
    parser.add_argument("--compression", action="append", type=Path, default=[],
                        help="a `skinedge compress report --out` folder (repeatable; with "
                             "--update its section: compression-FOLDER)")
    parser.add_argument("--gan", type=Path, help="a `skinedge gan train --out` folder")
    parser.add_argument("--quality", type=Path, help="its `skinedge gan quality --out` folder")
    parser.add_argument("--ablation", type=Path,
                        help="a `skinedge experiment ablation --out` folder")
    parser.add_argument("--section",
                        help="name of the section --gan (default: gan), --gan-compare (default: "
                             "gan-compare), --selection (default: gan-selection) or --pipeline "
                             "(default: pipeline) renders into; another name keeps the earlier "
                             "one (e.g. the DCGAN baseline's)")
    parser.add_argument("--gan-compare", nargs="+", type=Path, metavar="RUN QUALITY",
                        help="GAN runs side by side: pairs of a `skinedge gan train --out` folder "
                             "and its `skinedge gan quality --out` folder")
    parser.add_argument("--selection", nargs="+", type=Path, metavar="SET",
                        help="`skinedge gan select --out` folders, one table each")
    parser.add_argument("--pipeline", type=Path,
                        help="a `skinedge pipeline --out` or `skinedge quickstart --out` folder "
                             "(its section: pipeline, or --section)")
    parser.add_argument("--robustness", action="append", type=Path, default=[],
                        help="a `skinedge evaluate --robustness --out` folder (repeatable; its "
                             "section: robustness-RUN-FOLDER, RUN the folder above it; several "
                             "also render side by side in robustness-comparison)")
    parser.add_argument("--calibration", action="append", type=Path, default=[],
                        help="a `skinedge evaluate --out` folder of a calibrated checkpoint "
                             "(repeatable; its section: calibration-RUN-FOLDER)")
    parser.add_argument("--sources", action="append", type=Path, default=[],
                        help="a `skinedge evaluate --manifest MULTI --out` folder on a multi-"
                             "source split (repeatable: the models side by side; section: "
                             "sources, or sources-NAME with --comparison-name)")
    parser.add_argument("--evaluation", action="append", type=Path, default=[],
                        help="a `skinedge evaluate --out` folder (repeatable: side by side; "
                             "section: evaluations-NAME, NAME from --evaluations-name)")
    parser.add_argument("--evaluations-name", default="external",
                        help="name of the section --evaluation renders into")
    parser.add_argument("--lesion-check", action="append", type=Path, default=[],
                        help="a `skinedge evaluate --out` folder of a checkpoint with a lesion "
                             "check (repeatable: side by side; section: lesion-check, or "
                             "lesion-check-NAME with --comparison-name)")
    parser.add_argument("--comparison-name",
                        help="suffix of the side-by-side sections of several --robustness "
                             "(robustness-comparison-NAME), of --lesion-check "
                             "(lesion-check-NAME) and of --sources (sources-NAME), so that "
                             "another comparison keeps the earlier one")
    parser.add_argument("--pt2e-seeds", type=Path,
                        help="a `python scripts/pt2e_qat_seeds.py --out` folder (its section: "
                             "pt2e-seeds)")
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    parser.add_argument("--update", action="store_true",
                        help="replace only the sections this call renders in --out (each names "
                             "the command that made it) and keep the others")
    args = parser.parse_args(argv)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    me = shlex.join(["python", "scripts/results.py", *(sys.argv[1:] if argv is None else argv)])
    if args.update:
        sections = []
        gan_kinds = [o for o, v in (("--gan", args.gan), ("--gan-compare", args.gan_compare),
                                    ("--selection", args.selection),
                                    ("--pipeline", args.pipeline)) if v]
        if args.section and len(gan_kinds) > 1:
            parser.error(f"--section names one section; {' and '.join(gan_kinds)} would all "
                         "render into it: run them in separate calls")
        if args.gan is not None:
            sections.append((args.section or "gan", render_gan(
                args.gan, args.quality, args.ablation, args.out.parent)))
        if args.gan_compare:
            if len(args.gan_compare) % 2:
                parser.error("--gan-compare takes pairs: RUN QUALITY [RUN QUALITY ...]")
            pairs = list(zip(args.gan_compare[::2], args.gan_compare[1::2]))
            sections.append((args.section or "gan-compare",
                             render_gan_comparison(pairs, args.out.parent)))
        if args.selection:
            sections.append((args.section or "gan-selection", [
                f"## Selection of synthetic images: {', '.join(f.name for f in args.selection)}",
                *render_selections([f / "selection.json" for f in args.selection]), ""]))
        if args.pipeline is not None:
            sections.append((args.section or "pipeline", render_pipeline(args.pipeline)))
        for folder in args.bench:  # each bench in a section of its own, named after it
            sections.append((f"bench-{folder.name}", render_bench(folder, args.out.parent)))
        suffix = f"-{args.comparison_name}" if args.comparison_name else ""
        if len(args.robustness) > 1:
            sections.append((f"robustness-comparison{suffix}",
                             render_robustness_comparison(args.robustness)))
        for folder in args.robustness:
            sections.append((f"robustness-{folder.parent.name}-{folder.name}",
                             render_robustness(folder)))
        if args.evaluation:
            sections.append((f"evaluations-{args.evaluations_name}",
                             render_evaluations(args.evaluation)))
        if args.sources:
            sections.append((f"sources{suffix}", render_sources(args.sources)))
        if args.lesion_check:
            sections.append((f"lesion-check{suffix}", render_lesion_checks(args.lesion_check)))
        if args.pt2e_seeds is not None:
            sections.append(("pt2e-seeds", render_pt2e_seeds(args.pt2e_seeds)))
        for folder in args.compression:
            sections.append((f"compression-{folder.name}", render_compression(folder)))
        for folder in args.calibration:
            sections.append((f"calibration-{folder.parent.name}-{folder.name}",
                             render_calibration(folder, args.out.parent)))
        text = args.out.read_text() if args.out.is_file() else "# Measured results\n"
        for name, lines in sections:
            text = replace_section(text, name, [f"Section generated by `{me}` on {now}; do not "
                                                "edit by hand.", "", *lines])
        args.out.write_text(text)
        print(f"updated {len(sections)} section(s) of {args.out}")
        return 0
    if not args.runs:
        parser.error("name the run folders (or use --update with --gan, --pipeline, --bench, "
                     "--robustness, --calibration or --sources)")
    parts = [
        "# Measured results",
        "",
        f"Generated by `{me}` on {now} from the run folders named there; do not edit by hand.",
        "Every figure below was read from files those runs wrote; rerun the commands shown, then "
        "this script, to reproduce them.",
        "",
    ]
    if len(args.runs) > 1:
        parts += render_comparison(args.runs)
    parts += [render_run(run) for run in args.runs]
    for folder in args.bench:
        parts += render_bench(folder, args.out.parent)
    for folder in args.compression:
        parts += render_compression(folder)
    parts += kept_sections(args.out.read_text() if args.out.is_file() else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
