"""The GAN-augmentation section of docs/RESULTS.md, read from the folders the commands wrote.

Used by scripts/results.py (``--gan RUN --quality DIR --ablation DIR``); never edit by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml


def render_gan(gan: Path, quality: Path | None, ablation: Path | None, docs: Path) -> list[str]:
    """Training record, sample grid, per-class quality, selection and the ablation table."""
    cfg = yaml.safe_load((gan / "config.yaml").read_text())
    history = [json.loads(line) for line in (gan / "metrics.jsonl").read_text().splitlines()]
    versions = json.loads((gan / "versions.json").read_text())
    command = _command(gan)
    last = history[-1]
    m = cfg["model"]
    lines = [
        f"## GAN augmentation: {gan.name}", "",
        f"- command: `{command}`",
        f"- {m['arch']}, {m['conditioning']} conditioning, {cfg['resolution']} px, channels "
        f"base {m['channel_base']} / max {m['channel_max']}, batch {cfg['batch_size']}, "
        f"DiffAugment {cfg['diffaugment'] or 'off'}, "
        + (f"R1 gamma {cfg['loss']['r1_gamma']} every {cfg['loss']['r1_interval']} steps"
           if cfg["loss"]["r1_gamma"] else "no R1")
        + f", EMA half-life {cfg['ema_kimg']} kimg",
        f"- trained {last['kimg']:.1f} kimg ({last['step']} steps) in {last['minutes']:.1f} "
        f"minutes on this machine's CPU"
        + (f" (time limit {cfg['time_limit_minutes']} min)" if cfg.get("time_limit_minutes") else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
        "Losses per snapshot (means over the steps since the previous one; d_real/d_fake are the "
        "discriminator's mean logits on augmented real and generated images):", "",
        "| kimg | minutes | d_loss | g_loss | d_real | d_fake | R1 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    step = max(1, len(history) // 8)
    for row in history[::step] + ([history[-1]] if (len(history) - 1) % step else []):
        lines.append(f"| {row['kimg']:.1f} | {row['minutes']:.1f} | {row['d_loss']:.3f} | "
                     f"{row['g_loss']:.3f} | {row['d_real']:.3f} | {row['d_fake']:.3f} | "
                     + (f"{row['r1']:.3f} |" if "r1" in row else "— |"))
    grid = _copy_last_grid(gan, docs)
    if grid:
        source, target = grid
        lines += ["", f"Samples of the EMA generator at {last['kimg']:.1f} kimg, one row per "
                      f"class, fixed seeds (`{source}`):", "",
                  f"![GAN samples]({target.name})"]
    if quality is not None:
        doc = json.loads((quality / "quality.json").read_text())
        lines += ["", f"### Per-class quality ({doc['per_class']} generated images per class "
                      "against every real train image of the class, both at "
                      f"{doc['resolution']} px)", "",
                  f"- command: `{_command(quality)}`", "",
                  (quality / "quality.md").read_text().strip()]
    if ablation is not None:
        lines += ["", *_render_selection(ablation), "", *_render_ablation(ablation)]
    return lines + [""]


def _render_selection(ablation: Path) -> list[str]:
    return ["### Selection of synthetic images",
            *render_selections(sorted((ablation / "synthetic").glob("*/selection.json")))]


def render_selections(paths: list[Path]) -> list[str]:
    """A table per ``skinedge gan select`` output (its ``selection.json``): candidates, kept
    and rejections per class, the confidence bars and why a class fell short of its quota."""
    lines = []
    for folder in paths:
        doc = json.loads(folder.read_text())
        t = doc["thresholds"]
        lines += ["", f"`{folder.parent}` (mode {doc['mode']}; features: {doc['features']}; "
                      f"near-copy below distance {t['privacy_distance']:.3f}, duplicate below "
                      f"{t['diversity_distance']:.3f}; ledger `{folder.parent / 'ledger.csv'}`):",
                  "", "| class | quota | candidates | kept | near-copy | discriminator | "
                      "classifier | duplicate | over quota |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for code, row in doc["summary"].items():
            lines.append(f"| {code} | {t['quotas'].get(code, 0)} | {row['candidates']} | "
                         f"{row['kept']} | {row['near-copy']} | {row['discriminator']} | "
                         f"{row['classifier']} | {row['duplicate']} | {row['quota']} |")
        conf = t.get("classifier_confidence") or {}
        if conf:
            lines += ["", "Classifier-confidence bar per class: " + ", ".join(
                f"{code} {value:.3g} ({t['confidence_source'][code]})"
                for code, value in conf.items()) + "."]
        shortfalls = doc.get("shortfalls") or {}
        if shortfalls:
            lines += ["", *(f"- {code} short of its quota: {why}"
                            for code, why in shortfalls.items())]
    return lines


def _render_ablation(ablation: Path) -> list[str]:
    doc = json.loads((ablation / "ablation.json").read_text())
    by_arm = {a["arm"]: a for a in doc["arms"]}
    lines = ["### Ablation", "", f"- command: `{_command(ablation)}`", "",
             (ablation / "ablation.md").read_text().strip(), ""]
    verdicts = []
    for arm, against in (("gan-unselected", "classic-aug"), ("gan-selected", "classic-aug"),
                         ("gan-ensemble", "classic-aug"), ("classic-ensemble", "classic-aug")):
        if arm in by_arm:
            d = by_arm[arm]["delta_vs_reference"]
            clear = d["low"] > 0 or d["high"] < 0
            verdicts.append(f"- {arm} vs {against}: {d['delta']:+.3f} balanced accuracy "
                            f"[{d['low']:+.3f}, {d['high']:+.3f}], "
                            + ("a difference this split can resolve" if clear else
                               "within what this test split cannot tell apart"))
    if "gan-ensemble" in by_arm and "classic-ensemble" in by_arm:
        g, c = by_arm["gan-ensemble"], by_arm["classic-ensemble"]
        verdicts.append(f"- gan-ensemble minus classic-ensemble: "
                        f"{g['balanced_accuracy'] - c['balanced_accuracy']:+.3f} balanced "
                        "accuracy (the GAN's share of the ensemble's result)")
    return lines + ["What the table says, computed from it:", "", *verdicts]


def _command(folder: Path) -> str:
    path = folder / "command.json"
    return json.loads(path.read_text())["command"] if path.is_file() else "not recorded"


#: Issue 17's targets for a GAN worth its place: FID (EfficientNet-Lite0 ImageNet features) at
#: most half of the 64 px StyleGAN2-style run's overall 99.6 (section gan), recall above 0.2.
FID_TARGET = 99.6 / 2
RECALL_TARGET = 0.2


def render_gan_comparison(pairs: list[tuple[Path, Path]], docs: Path) -> list[str]:
    """GAN runs side by side: how each was trained, its per-class quality on one feature
    network, its last sample grid, and the issue's targets checked from the numbers.

    Args:
        pairs: (``skinedge gan train --out`` folder, its ``skinedge gan quality --out`` folder).
        docs: Where the grids are copied (beside RESULTS.md).
    """
    runs = []
    for gan, quality in pairs:
        cfg = yaml.safe_load((gan / "config.yaml").read_text())
        history = [json.loads(line) for line in (gan / "metrics.jsonl").read_text().splitlines()]
        if not history:
            raise SystemExit(f"{gan}/metrics.jsonl is empty: the run has no snapshot yet")
        runs.append((gan, cfg, history, json.loads((quality / "quality.json").read_text())))
    features = {doc["features"] for *_, doc in runs}
    if len(features) > 1:
        raise SystemExit(f"the quality folders used different feature networks {features}; "
                         "compare runs on one")
    lines = [f"## GAN side by side: {', '.join(gan.name for gan, *_ in runs)}", "",
             "Each run trained for the wall-clock minutes shown with the threads its config "
             "names (`scripts/gan-128-cpu.sh` runs the two runs of a pair side by side, one "
             "thread each, so they share one machine for the same minutes).", "",
             "| run | generator | discriminator | loss | px | batch | threads | kimg | steps | "
             "minutes | s/step |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for gan, cfg, history, _ in runs:
        m, last = cfg["model"], history[-1]
        disc = m.get("discriminator", "own")
        disc = (f"projected ({m['feature_network']}, CCM {m['projection_channels']})"
                if disc == "projected" else {"stylegan2": "residual", "dcgan": "dcgan"}[m["arch"]])
        loss = cfg["loss"].get("objective", "logistic") + (
            f", R1 {cfg['loss']['r1_gamma']}" if cfg["loss"]["r1_gamma"] else "")
        lines.append(f"| {gan.name} | {m['arch']} {m['channel_base']}/{m['channel_max']} | "
                     f"{disc} | {loss} | {cfg['resolution']} | {cfg['batch_size']} | "
                     f"{cfg.get('threads') or 'all'} | "
                     f"{last['kimg']:.1f} | {last['step']} | {last['minutes']:.1f} | "
                     f"{60 * last['minutes'] / last['step']:.2f} |")
    lines += ["", "Each run's resolved config is its `config.yaml`; quality by `skinedge gan "
                  "quality RUN --manifest MANIFEST --per-class N --out QUALITY` into "
                  + ", ".join(f"`{q}`" for _, q in pairs) + "."]
    lines += ["", f"Per-class quality on **{features.pop()}** "
                  f"({runs[0][3]['per_class']} generated images per class against every real train "
                  f"image of the class, both at the GAN's resolution). FID with few real images "
                  "(df, vasc) is biased upwards; KID is not. Precision = fidelity, recall = "
                  "diversity (k-NN manifolds, Kynkäänniemi et al. 2019).", ""]
    names = [gan.name for gan, *_ in runs]
    lines += ["| class | real | " + " | ".join(f"FID {n}" for n in names) + " | "
              + " | ".join(f"KID x1e3 {n}" for n in names) + " | "
              + " | ".join(f"precision / recall {n}" for n in names) + " |",
              "|---|---:|" + "---:|" * (3 * len(names))]
    tables = [{r["label"]: r for r in doc["rows"]} for *_, doc in runs]
    for label in tables[0]:
        rows = [t[label] for t in tables]
        lines.append(f"| {label} | {rows[0]['real']} | "
                     + " | ".join(_num(r["fid"], 1) for r in rows) + " | "
                     + " | ".join(_num(None if r["kid_mean"] is None else r["kid_mean"] * 1e3, 1)
                                  for r in rows)
                     + " | " + " | ".join(f"{_num(r['precision'], 3)} / {_num(r['recall'], 3)}"
                                          for r in rows) + " |")
    lines += ["", f"Issue 17's targets (FID at most {FID_TARGET:.1f}, half of the 64 px "
                  f"StyleGAN2's overall 99.6; recall above {RECALL_TARGET}), computed from the "
                  "table:", ""]
    for (gan, *_), table in zip(runs, tables):
        classes = [r for label, r in table.items() if label != "all"]
        fid_ok = [r["label"] for r in classes if r["fid"] is not None and r["fid"] <= FID_TARGET]
        recall_ok = [r["label"] for r in classes
                     if r["recall"] is not None and r["recall"] > RECALL_TARGET]
        lines.append(f"- {gan.name}: overall FID {_num(table['all']['fid'], 1)}, recall "
                     f"{_num(table['all']['recall'], 3)}; FID target met by "
                     f"{_share(fid_ok, classes)}, recall target by {_share(recall_ok, classes)}")
    for gan, _, history, _ in runs:
        grid = _copy_last_grid(gan, docs)
        if grid:
            source, target = grid
            lines += ["", f"{gan.name} at {history[-1]['kimg']:.1f} kimg, one row per class, "
                          f"fixed seeds (`{source}`):", "", f"![{gan.name}]({target.name})"]
    return lines + [""]


def _copy_last_grid(gan: Path, docs: Path) -> tuple[Path, Path] | None:
    """Copy a run's last sample grid beside RESULTS.md: (its grid, the copy), None if none."""
    grids = sorted((gan / "grids").glob("*.png"))
    if not grids:
        return None
    target = docs / f"gan-grid-{gan.name}.png"
    shutil.copyfile(grids[-1], target)
    return grids[-1], target


def _share(met: list[str], rows: list[dict]) -> str:
    return f"{len(met)} of {len(rows)} classes" + (f" ({', '.join(met)})" if met else "")


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
