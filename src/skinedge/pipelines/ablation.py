"""The GAN-augmentation ablation: each arm trained alike on one split, evaluated on its test set.

Arms (classifiers from one training config; only data and augmentation differ):

- ``no-aug``: real train images, no augmentation.
- ``classic-aug``: real images with flips, crops, rotations and colour jitter. It is also the
  classifier that scores candidates for selection, trained on real images of this split only.
- ``gan-unselected``: classic augmentation + the first candidates by seed up to the quotas.
- ``gan-selected``: classic augmentation + candidates kept by the selection step.
- ``gan-ensemble``: K ``gan-selected`` members, member k with training seed k on the candidates
  of seed k (``gan-selected`` is member 0).
- ``classic-ensemble`` (control): K ``classic-aug`` seeds, no synthetic images: the ensemble's
  gain without the GAN (``classic-aug`` is member 0).

Each arm is reported with balanced accuracy (and its bootstrap interval), melanoma AUC, the
recall of the rare classes, and the paired-bootstrap difference in balanced accuracy from
``classic-aug`` on the same test images. Every step is skipped when its output exists and
training resumes, so a killed ablation continues where it stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from skinedge.synth.selection import SelectionConfig
from skinedge.train.callbacks import TrainCallbacks
from skinedge.utils.io import atomic_write_text, package_versions

REFERENCE = "classic-aug"


class AblationConfig(BaseModel):
    """What the ablation compares; written as ``ablation.yaml`` next to its outputs."""

    model_config = ConfigDict(extra="forbid")

    manifest: Path  # the split every arm trains and is evaluated on
    train_config: Path  # classifier YAML shared by every arm
    train_overrides: list[str] = Field(default_factory=list)  # `a.b=c`, applied to every arm
    gan: Path  # a `skinedge gan train` run on the same split
    members: int = Field(3, ge=2)  # ensemble size
    control_ensemble: bool = True  # also train the classic-aug ensemble (K - 1 more runs)
    oversample: float = Field(3.0, ge=1)  # candidates generated per synthetic image needed
    truncation_psi: float = Field(1.0, gt=0, le=1)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    n_boot: int = Field(2000, ge=100)


def load_ablation_config(path: Path | str, overrides: list[str] | None = None) -> AblationConfig:
    """Read an ablation YAML, apply ``--set`` overrides and validate it.

    Raises:
        ConfigError: an unreadable file, a bad override or invalid values (file and field named).
    """
    from skinedge.utils.config import load_config

    return load_config(path, overrides, AblationConfig, kind="ablation config")


def run_ablation(
    cfg: AblationConfig, out_dir: Path | str, *,
    callbacks: Callable[[str], TrainCallbacks | None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) every arm and write ``ablation.json`` and ``ablation.md``.

    Args:
        cfg: The ablation.
        out_dir: ``runs/<arm>``, ``candidates/seed-k``, ``synthetic/<set>``, ``ensembles/``,
            ``eval/<arm>``.
        callbacks: ``callbacks(arm)`` -> training progress hooks.
        progress: ``progress(description, done, total)`` for sampling, selection, evaluation.

    Returns:
        The report written to ``ablation.json``.
    """
    from skinedge.data import load_manifest
    from skinedge.synth.candidates import needed_counts, select_synthetic
    from skinedge.synth.gan.sample import sample_candidates
    from skinedge.train.config import load_train_config
    from skinedge.train.resume import has_trainer_state
    from skinedge.utils.config import dump_config

    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "ablation.yaml", dump_config(cfg))
    manifest = load_manifest(cfg.manifest)
    base = load_train_config(cfg.train_config, [*cfg.train_overrides,
                                                f"data.manifest={cfg.manifest}"])
    hooks = callbacks or (lambda arm: None)

    def train(arm: str, **changes: Any) -> Path:
        from skinedge.train.trainer import train_classifier

        run = out_dir / "runs" / arm
        arm_cfg = base.model_copy(update=changes)
        train_classifier(arm_cfg, run, resume=has_trainer_state(run), callbacks=hooks(arm),
                         manifest=manifest)
        return run / "best"

    checkpoints = {
        "no-aug": train("no-aug", augment=base.augment.model_copy(update={"enabled": False})),
        REFERENCE: train(REFERENCE),
    }
    classifier = checkpoints[REFERENCE]

    quotas = needed_counts(manifest, cfg.selection)
    counts = {c: math.ceil(q * cfg.oversample) for c, q in quotas.items() if q > 0}
    selected, reference_cache = [], {}  # one classifier: real features computed once
    for k in range(cfg.members):
        candidates = out_dir / "candidates" / f"seed-{k}"
        if not (candidates / "candidates.csv").is_file():
            sample_candidates(cfg.gan, counts, candidates, seed=k,
                              truncation_psi=cfg.truncation_psi, progress=progress)
        kept = out_dir / "synthetic" / f"selected-seed-{k}"
        if not (kept / "synthetic.json").is_file():
            select_synthetic(candidates, manifest, kept, classifier=classifier,
                             cfg=cfg.selection, progress=progress,
                             reference_cache=reference_cache)
        selected.append(kept)
    unselected = out_dir / "synthetic" / "unselected-seed-0"
    if not (unselected / "synthetic.json").is_file():
        select_synthetic(out_dir / "candidates" / "seed-0", manifest, unselected,
                         classifier=classifier, cfg=cfg.selection, mode="none", progress=progress,
                         reference_cache=reference_cache)

    def with_synthetic(path: Path) -> dict[str, Any]:
        return {"data": base.data.model_copy(update={"synthetic": path})}

    checkpoints["gan-unselected"] = train("gan-unselected", **with_synthetic(unselected))
    members = [train("gan-selected" if k == 0 else f"gan-selected-seed-{k}",
                     seed=base.seed + k, **with_synthetic(selected[k]))
               for k in range(cfg.members)]
    checkpoints["gan-selected"] = members[0]
    checkpoints["gan-ensemble"] = _ensemble(out_dir / "ensembles" / "gan", members)
    if cfg.control_ensemble:
        controls = [classifier] + [train(f"{REFERENCE}-seed-{k}", seed=base.seed + k)
                                   for k in range(1, cfg.members)]
        checkpoints["classic-ensemble"] = _ensemble(out_dir / "ensembles" / "classic", controls)

    report = _evaluate_arms(cfg, checkpoints, manifest, quotas, out_dir, progress)
    atomic_write_text(out_dir / "ablation.json", json.dumps(report, indent=1))
    atomic_write_text(out_dir / "ablation.md", render_ablation_markdown(report))
    return report


def _ensemble(out: Path, members: list[Path]) -> Path:
    from skinedge.models import create_ensemble

    if not (out / "card.json").is_file():
        create_ensemble(members, out)
    return out


def _evaluate_arms(cfg: AblationConfig, checkpoints: dict[str, Path], manifest, quotas,
                   out_dir: Path, progress) -> dict[str, Any]:
    from skinedge.evaluate import evaluate_checkpoint
    from skinedge.models import load_card

    results = {}
    for done, (arm, checkpoint) in enumerate(checkpoints.items(), start=1):
        results[arm] = evaluate_checkpoint(checkpoint, manifest=cfg.manifest, split="test",
                                           out_dir=out_dir / "eval" / arm)
        if progress:
            progress("evaluating arms", done, len(checkpoints))
    reference = results[REFERENCE]
    group_of = {r.image: r.group for r in manifest.subset("test")}
    groups = [group_of.get(image, image) for image in reference.images]
    rare = [c for c, q in quotas.items() if q > 0]
    arms = []
    for arm, result in results.items():
        m = result.metrics
        card = load_card(checkpoints[arm])
        if result.images != reference.images:
            raise ValueError(f"{arm} was evaluated on other images than {REFERENCE}")
        delta = paired_bootstrap_delta(reference.targets, reference.probs, result.probs,
                                       groups=groups, n_boot=cfg.n_boot)
        synthetic = _synthetic_counts(card)
        arms.append({
            "arm": arm, "checkpoint": str(checkpoints[arm]),
            "balanced_accuracy": m["balanced_accuracy"],
            "balanced_accuracy_ci": m["confidence_intervals"]["balanced_accuracy"],
            "melanoma_auc": m["melanoma_auc"],
            "rare_recall": {c: m["per_class"][c]["recall"] for c in rare},
            "delta_vs_reference": delta,
            "synthetic_images": synthetic,
        })
    return {
        "manifest": str(cfg.manifest), "split_hash": manifest.split_hash, "split": "test",
        "n": int(len(reference.targets)), "reference": REFERENCE, "rare_classes": rare,
        "quotas": quotas, "gan": str(cfg.gan), "members": cfg.members,
        "train_config": str(cfg.train_config), "train_overrides": cfg.train_overrides,
        "arms": arms, "versions": package_versions(),
    }


def _synthetic_counts(card) -> int | None:
    """Synthetic images a model trained on; None for an ensemble (its members differ)."""
    if card.members:
        return None
    training = card.training or {}
    return int(sum((training.get("synthetic") or {}).get("counts", {}).values()))


def paired_bootstrap_delta(targets: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, *,
                           groups: list[str] | None = None, n_boot: int = 2000,
                           level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Balanced accuracy of B minus A on the same images, with a paired bootstrap interval.

    Both arms are scored on each resample of the test images, so the interval reflects the
    difference between them, not each one's own sampling noise. With ``groups`` (lesion ids)
    whole lesions are resampled: images of one lesion are not independent evidence.

    Returns:
        ``{"delta", "low", "high", "p_b_better"}`` (share of resamples where B beats A).
    """
    pred_a, pred_b = probs_a.argmax(axis=1), probs_b.argmax(axis=1)
    classes = np.unique(targets[targets >= 0])  # -1: a partial "not melanoma" row, no class

    def delta(idx: np.ndarray) -> float:
        y = targets[idx]
        return balanced_accuracy_of(pred_b[idx], y, classes) - \
            balanced_accuracy_of(pred_a[idx], y, classes)

    everything = np.arange(len(targets))
    deltas = np.array([delta(idx) for idx in lesion_resamples(
        groups if groups is not None else everything, n_boot, seed)])
    tail = (1 - level) / 2
    return {"delta": delta(everything),
            "low": float(np.quantile(deltas, tail)), "high": float(np.quantile(deltas, 1 - tail)),
            "p_b_better": float(np.mean(deltas > 0))}


def balanced_accuracy_of(pred: np.ndarray, targets: np.ndarray, classes) -> float:
    """Mean recall over those of ``classes`` that ``targets`` holds (predicted class indices)."""
    return float(np.mean([np.mean(pred[targets == c] == c) for c in classes
                          if np.any(targets == c)]))


def lesion_resamples(groups, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_boot`` bootstrap resamples of row indices that draw whole groups (lesions) with
    replacement: images of one lesion are not independent evidence."""
    names, members = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    rows_of = [np.flatnonzero(members == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([rows_of[g] for g in rng.integers(0, len(names), len(names))])


def render_ablation_markdown(report: dict[str, Any]) -> str:
    """The ablation table, with what each column means."""
    rare = report["rare_classes"]
    lines = [
        f"Test split of `{report['manifest']}` (n = {report['n']}); every arm trained with "
        f"`{report['train_config']}`"
        + (f" and `{' '.join(report['train_overrides'])}`" if report["train_overrides"] else "")
        + ". Synthetic images per class needed to reach the median class count: "
        + ", ".join(f"{c} {q}" for c, q in report["quotas"].items() if q) + ".",
        "",
        "| arm | synthetic | bal. acc. [95% CI] | Δ bal. acc. vs classic-aug [95% CI] | "
        "P(better) | mel AUC | " + " | ".join(f"recall {c}" for c in rare) + " |",
        "|---|---:|---|---|---:|---:|" + "---:|" * len(rare),
    ]
    for a in report["arms"]:
        ci = a["balanced_accuracy_ci"]
        d = a["delta_vs_reference"]
        synthetic = "per member" if a["synthetic_images"] is None else str(a["synthetic_images"])
        delta = "—" if a["arm"] == report["reference"] else \
            f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        better = "—" if a["arm"] == report["reference"] else f"{d['p_b_better']:.2f}"
        auc = "n/a" if a["melanoma_auc"] is None else f"{a['melanoma_auc']:.3f}"
        recalls = " | ".join("n/a" if a["rare_recall"][c] is None else f"{a['rare_recall'][c]:.2f}"
                             for c in rare)
        lines.append(f"| {a['arm']} | {synthetic} | {a['balanced_accuracy']:.3f} "
                     f"[{ci[0]:.3f}, {ci[1]:.3f}] | {delta} | {better} | {auc} | {recalls} |")
    lines += [
        "",
        "Δ is the paired bootstrap difference in balanced accuracy from classic-aug on the same "
        "test images, resampling whole lesions; P(better) is the share of resamples in which the arm beats classic-aug. An "
        "interval that contains 0 means the split cannot tell the two apart.",
    ]
    return "\n".join(lines) + "\n"
