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
    grids = sorted((gan / "grids").glob("*.png"))
    if grids:
        target = docs / f"gan-grid-{gan.name}.png"
        shutil.copyfile(grids[-1], target)
        lines += ["", f"Samples of the EMA generator at {last['kimg']:.1f} kimg, one row per "
                      f"class, fixed seeds (`{grids[-1]}`):", "",
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
    lines = ["### Selection of synthetic images"]
    for folder in sorted((ablation / "synthetic").glob("*/selection.json")):
        doc = json.loads(folder.read_text())
        t = doc["thresholds"]
        lines += ["", f"`{folder.parent}` (mode {doc['mode']}; features: {doc['features']}; "
                      f"near-copy below distance {t['privacy_distance']:.3f}, duplicate below "
                      f"{t['diversity_distance']:.3f}; ledger `{folder.parent / 'ledger.csv'}`):",
                  "", "| class | candidates | kept | near-copy | discriminator | classifier | "
                      "duplicate | quota |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for code, row in doc["summary"].items():
            lines.append(f"| {code} | {row['candidates']} | {row['kept']} | {row['near-copy']} | "
                         f"{row['discriminator']} | {row['classifier']} | {row['duplicate']} | "
                         f"{row['quota']} |")
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
