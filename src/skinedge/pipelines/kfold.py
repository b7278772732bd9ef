"""The GAN ablation over lesion-grouped folds: every image tested once, differences pooled.

One test split of the HAM10000 sample (371 images, 11 df, 12 vasc) gives a paired interval of
about +/- 5 points on a difference in balanced accuracy: it cannot see the +1.5 points the
paper claims. Here the source manifest's lesions are dealt into ``folds`` (``skinedge.data.
folds``), and for each fold, with only that fold's train images:

- ``classic-aug``: a classifier per training seed (the reference; its first seed also scores
  the candidates for selection);
- one arm per GAN config in ``gans``: that GAN trained on the fold's train split, its candidates
  (candidate seed = training seed) selected, and a classifier per seed trained on real +
  selected images.

Every arm's test predictions are pooled over the folds (each image predicted once per seed by a
model that never saw it). The difference from ``classic-aug`` is the mean over seeds of the
pooled balanced-accuracy difference. Its standard error has two parts: the test images' sampling
(a paired bootstrap that resamples whole lesions, the same resample for every seed and arm) and
the classifiers' training noise (the spread of the per-seed differences, over the number of
seeds; not estimated from one seed). A GAN is trained once per fold, so the GAN's own training
noise is in neither part. The interval is the difference +/- 1.96 standard errors, and the
report states the design's detectable difference: the true difference it finds at two-sided 5%
with 80% power, ``(1.96 + 0.84) x`` the standard error.

Training, sampling and selection are skipped when their outputs exist (and refused when those
were made with other settings), and training resumes, so a killed run continues; the test
predictions are recomputed on every call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from skinedge.pipelines.ablation import balanced_accuracy_of, lesion_resamples
from skinedge.synth.selection import SelectionConfig
from skinedge.train.callbacks import TrainCallbacks
from skinedge.utils.io import atomic_write_text, package_versions

REFERENCE = "classic-aug"


class KFoldAblationConfig(BaseModel):
    """What the k-fold ablation compares; written as ``kfold.yaml`` next to its outputs."""

    model_config = ConfigDict(extra="forbid")

    manifest: Path  # its rows (every split pooled) are dealt into folds
    folds: int = Field(5, ge=2)
    fold_seed: int = 0
    val_fraction: float = Field(0.15, gt=0, lt=1)  # of each fold's non-test lesions
    train_config: Path  # classifier YAML shared by every arm
    train_overrides: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # classifier seeds
    gans: dict[str, Path] = Field(min_length=1)  # arm name -> GAN YAML, trained on every fold
    gan_overrides: list[str] = Field(default_factory=list)
    oversample: float = Field(3.0, ge=1)  # candidates generated per synthetic image needed
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    n_boot: int = Field(2000, ge=100)


def run_kfold_ablation(
    cfg: KFoldAblationConfig, out_dir: Path | str, *,
    callbacks: Callable[[str], TrainCallbacks | None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) every fold and write ``kfold.json`` and ``kfold.md``.

    Args:
        cfg: The ablation.
        out_dir: ``fold-<i>/``: ``manifest.json``, ``runs/<arm>-seed-<s>``, ``gans/<arm>``,
            ``candidates/<arm>-seed-<s>``, ``synthetic/<arm>-seed-<s>``, ``eval/...``.
        callbacks: ``callbacks(name)`` -> training progress hooks (name: fold, arm, seed).
        progress: ``progress(description, done, total)``.

    Returns:
        The report written to ``kfold.json``.

    Raises:
        ConfigError: an arm named like the reference, or a fold manifest on disk that differs
            from the one these settings make (another source, fold count or seed).
    """
    from skinedge.data import load_manifest
    from skinedge.data.folds import fold_manifests
    from skinedge.errors import ConfigError
    from skinedge.utils.config import dump_config

    if REFERENCE in cfg.gans:
        raise ConfigError(f"gans: {REFERENCE!r} is the reference arm's name; name the GAN arm "
                          "otherwise (e.g. gan-stylegan2)")
    out_dir = Path(out_dir)
    source = load_manifest(cfg.manifest)
    folds = fold_manifests(source, cfg.folds, seed=cfg.fold_seed, val_fraction=cfg.val_fraction)
    paths = [out_dir / f"fold-{i}" / "manifest.json" for i in range(len(folds))]
    for i, (fold, path) in enumerate(zip(folds, paths)):
        if path.is_file() and load_manifest(path, verify=False).split_hash != fold.split_hash:
            raise ConfigError(f"{path} is another split than fold {i} of these settings "
                              "(manifest, folds, fold_seed, val_fraction changed?); use a new "
                              "--out")
    atomic_write_text(out_dir / "kfold.yaml", dump_config(cfg))
    predictions: dict[str, dict[int, list[Any]]] = {}  # arm -> seed -> per-fold results
    for i, (fold, path) in enumerate(zip(folds, paths)):
        folder = path.parent
        if not path.is_file():
            fold.save(path)
        for arm, seed, result in _run_fold(cfg, folder, path, callbacks, progress):
            predictions.setdefault(arm, {}).setdefault(seed, []).append(result)
        if progress:
            progress("folds", i + 1, len(folds))
    report = _pool(cfg, source, predictions)
    atomic_write_text(out_dir / "kfold.json", json.dumps(report, indent=1))
    atomic_write_text(out_dir / "kfold.md", render_kfold_markdown(report))
    return report


def _run_fold(cfg: KFoldAblationConfig, folder: Path, manifest_path: Path, callbacks,
              progress):
    """Train and evaluate every arm and seed on one fold: yields (arm, seed, test result)."""
    from skinedge.data import load_manifest
    from skinedge.evaluate import evaluate_checkpoint
    from skinedge.synth.candidates import needed_counts, select_synthetic
    from skinedge.synth.gan import GANConfig, train_gan
    from skinedge.synth.gan.networks import CHECKPOINT
    from skinedge.synth.gan.sample import sample_candidates
    from skinedge.train.config import load_train_config
    from skinedge.train.resume import has_trainer_state
    from skinedge.train.trainer import train_classifier
    from skinedge.utils.config import load_config

    manifest = load_manifest(manifest_path)
    base = load_train_config(cfg.train_config, [*cfg.train_overrides,
                                                f"data.manifest={manifest_path}"])
    hooks = callbacks or (lambda name: None)

    def train(name: str, seed: int, **changes: Any) -> Path:
        run = folder / "runs" / f"{name}-seed-{seed}"
        train_classifier(base.model_copy(update={"seed": seed, **changes}), run,
                         resume=has_trainer_state(run), callbacks=hooks(f"{folder.name} {name} "
                                                                        f"seed {seed}"),
                         manifest=manifest)
        return run / "best"

    def evaluated(name: str, seed: int, checkpoint: Path):
        return evaluate_checkpoint(checkpoint, manifest=manifest_path, split="test",
                                   out_dir=folder / "eval" / f"{name}-seed-{seed}")

    references = {seed: train(REFERENCE, seed) for seed in cfg.seeds}
    for seed, checkpoint in references.items():
        yield REFERENCE, seed, evaluated(REFERENCE, seed, checkpoint)
    classifier = references[cfg.seeds[0]]
    quotas = needed_counts(manifest, cfg.selection)
    counts = {c: math.ceil(q * cfg.oversample) for c, q in quotas.items() if q > 0}
    reference_cache: dict = {}
    for arm, gan_config in cfg.gans.items():
        gan_dir = folder / "gans" / arm
        gan_cfg = load_config(gan_config, [*cfg.gan_overrides,
                                           f"data.manifest={manifest_path}"], GANConfig,
                              kind="GAN config")
        started = any(gan_dir.rglob(CHECKPOINT))  # last.pt, or classes/<c>/last.pt per class
        train_gan(gan_cfg, gan_dir, resume=started, manifest=manifest)
        for seed in cfg.seeds:
            candidates = folder / "candidates" / f"{arm}-seed-{seed}"
            if (candidates / "candidates.csv").is_file():
                _check_made_with(candidates / "sample.json", "counts", counts)
            else:
                sample_candidates(gan_dir, counts, candidates, seed=seed, progress=progress)
            kept = folder / "synthetic" / f"{arm}-seed-{seed}"
            if (kept / "synthetic.json").is_file():
                _check_made_with(kept / "selection.json", "config",
                                 cfg.selection.model_dump(mode="json"))
                _check_made_with(kept / "selection.json", "classifier",
                                 str(Path(classifier).resolve()))
            else:
                select_synthetic(candidates, manifest, kept, classifier=classifier,
                                 cfg=cfg.selection, progress=progress,
                                 reference_cache=reference_cache)
            checkpoint = train(arm, seed, data=base.data.model_copy(update={"synthetic": kept}))
            yield arm, seed, evaluated(arm, seed, checkpoint)


def _check_made_with(path: Path, key: str, expected: Any) -> None:
    """Refuse an output made with other settings than this run's (``path``'s ``key``).

    Raises:
        ConfigError: it differs (oversample, selection or seeds changed since it was made).
    """
    from skinedge.errors import ConfigError

    found = json.loads(path.read_text()).get(key)
    if found != expected:
        raise ConfigError(f"{path.parent} was made with another {key} ({found!r}, now "
                          f"{expected!r}): the k-fold settings changed since; use a new --out "
                          f"(or delete {path.parent} to make it again)")


def _pool(cfg: KFoldAblationConfig, source, predictions) -> dict[str, Any]:
    """Concatenate each arm's per-fold test predictions and compare them with the reference."""
    from skinedge.data.folds import dealt_groups
    from skinedge.synth.candidates import needed_counts

    group_of = dealt_groups(source)  # the bootstrap resamples what the folds dealt
    codes = list(source.vocabulary.codes)

    def stacked(results) -> tuple[list[str], np.ndarray, np.ndarray]:
        images = [image for r in results for image in r.images]
        return images, np.concatenate([r.targets for r in results]), \
            np.concatenate([r.probs for r in results])

    images, targets, _ = stacked(predictions[REFERENCE][cfg.seeds[0]])
    preds = {}
    for arm, by_seed in predictions.items():
        preds[arm] = []
        for seed in cfg.seeds:
            arm_images, arm_targets, probs = stacked(by_seed[seed])
            if arm_images != images or not np.array_equal(arm_targets, targets):
                raise ValueError(f"{arm} seed {seed} was tested on other images than "
                                 f"{REFERENCE}; its folds differ: rerun into a new --out")
            preds[arm].append(probs.argmax(axis=1))
    groups = [group_of.get(image, image) for image in images]
    # rare: the classes that selection gives synthetic images to (as in the one-split ablation)
    rare = [c for c, q in needed_counts(source, cfg.selection).items()
            if q > 0 and np.any(targets == codes.index(c))]
    arms = []
    for arm, arm_preds in preds.items():
        stats = pooled_paired_delta(targets, groups, preds[REFERENCE], arm_preds,
                                    classes=[codes.index(c) for c in rare], n_boot=cfg.n_boot)
        recall = stats.pop("recall")
        arms.append({"arm": arm, **stats,
                     "rare_recall": {c: recall[codes.index(c)] for c in rare}})
    return {
        "manifest": str(cfg.manifest), "split_hash": source.split_hash, "folds": cfg.folds,
        "fold_seed": cfg.fold_seed, "seeds": cfg.seeds, "n": int(len(targets)),
        "lesions": len(set(groups)), "reference": REFERENCE, "rare_classes": rare,
        "gans": {k: str(v) for k, v in cfg.gans.items()}, "train_config": str(cfg.train_config),
        "train_overrides": cfg.train_overrides, "gan_overrides": cfg.gan_overrides,
        "arms": arms, "versions": package_versions(),
    }


def pooled_paired_delta(targets: np.ndarray, groups: list[str], reference: list[np.ndarray],
                        arm: list[np.ndarray], *, classes: list[int] = (), n_boot: int = 2000,
                        seed: int = 0) -> dict[str, Any]:
    """Balanced accuracy of an arm and its difference from the reference, averaged over seeds,
    with a standard error for the test images' sampling and for the training seeds.

    Args:
        targets: (N,) class indices of the pooled test images.
        groups: (N,) their lesion ids; whole lesions are resampled.
        reference, arm: Per training seed, (N,) predicted classes; same images, same seeds in
            the same order (seed k of the arm is paired with seed k of the reference).
        classes: Classes whose recall gets an interval too (the rare ones).

    Returns:
        ``balanced_accuracy`` and its bootstrap 95% ``ci``; ``delta`` (arm minus reference);
        ``se_sampling`` (lesion bootstrap), ``se_training`` (standard deviation of the per-seed
        deltas over sqrt(seeds); None with one seed), ``se`` (both combined); ``low``/``high``
        = delta -/+ 1.96 se; ``p_better`` = P(delta > 0) under the normal approximation;
        ``detectable`` = 2.8 se, the true difference found at two-sided 5% with 80% power;
        ``recall``: class -> [recall, low, high, resamples without the class].
    """
    from statistics import NormalDist

    present = np.unique(targets[targets >= 0])

    def balanced(pred: np.ndarray, y: np.ndarray) -> float:
        return balanced_accuracy_of(pred, y, present)

    def recall(pred: np.ndarray, y: np.ndarray, c: int) -> float:
        return float(np.mean(pred[y == c] == c)) if np.any(y == c) else math.nan

    def scores(idx: np.ndarray) -> tuple[float, float, list[float]]:
        y = targets[idx]
        ours = np.mean([balanced(p[idx], y) for p in arm])
        theirs = np.mean([balanced(p[idx], y) for p in reference])
        return ours, ours - theirs, [np.mean([recall(p[idx], y, c) for p in arm]) for c in classes]

    boot = [scores(idx) for idx in lesion_resamples(groups, n_boot, seed)]
    everything = np.arange(len(targets))
    ba, delta, recalls = scores(everything)
    ba_boot = np.array([b[0] for b in boot])
    se_sampling = float(np.std([b[1] for b in boot], ddof=1))
    per_seed = [balanced(a, targets) - balanced(r, targets) for a, r in zip(arm, reference)]
    se_training = float(np.std(per_seed, ddof=1) / math.sqrt(len(per_seed))) \
        if len(per_seed) > 1 else None
    se = math.hypot(se_sampling, se_training or 0.0)
    z = NormalDist().inv_cdf(0.975)
    recall_boot = np.array([b[2] for b in boot]).reshape(n_boot, len(classes))

    def interval(column: np.ndarray) -> list[float | None]:
        seen = column[~np.isnan(column)]
        if not len(seen):
            return [None, None]
        return [float(np.quantile(seen, 0.025)), float(np.quantile(seen, 0.975))]

    return {
        "balanced_accuracy": float(ba),
        "ci": [float(np.quantile(ba_boot, 0.025)), float(np.quantile(ba_boot, 0.975))],
        "delta": float(delta), "se_sampling": se_sampling, "se_training": se_training,
        "se": se, "low": delta - z * se, "high": delta + z * se,
        "p_better": NormalDist().cdf(delta / se) if se > 0 else float(delta > 0),
        "detectable": (z + NormalDist().inv_cdf(0.8)) * se,
        "recall": {c: [None if math.isnan(r) else float(r), *interval(recall_boot[:, j]),
                       int(np.isnan(recall_boot[:, j]).sum())]
                   for j, (c, r) in enumerate(zip(classes, recalls))},
    }


def render_kfold_markdown(report: dict[str, Any]) -> str:
    """The pooled table, what its columns mean and the design's detectable difference."""
    rare = report["rare_classes"]
    lines = [
        f"{report['folds']} lesion-grouped folds of `{report['manifest']}`: {report['n']} test "
        f"predictions ({report['lesions']} lesions) per arm and seed, seeds {report['seeds']}; "
        f"every classifier trained with `{report['train_config']}`"
        + (f" and `{' '.join(report['train_overrides'])}`" if report["train_overrides"] else "")
        + ".", "",
        f"| arm | bal. acc. [95% CI] | Δ vs {report['reference']} [95% CI] | SE sampling / "
        "training | P(Δ > 0) | detectable Δ | "
        + " | ".join(f"recall {c} [95% CI]" for c in rare) + " |",
        "|---|---|---|---|---:|---:|" + "---|" * len(rare),
    ]
    for a in report["arms"]:
        ref = a["arm"] == report["reference"]
        delta = "—" if ref else f"{a['delta']:+.3f} [{a['low']:+.3f}, {a['high']:+.3f}]"
        recalls = " | ".join("n/a" if r[0] is None or r[1] is None else
                             f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]"
                             for r in (a["rare_recall"][c] for c in rare))
        better = "—" if ref else f"{a['p_better']:.2f}"
        detectable = "—" if ref else f"{a['detectable']:.3f}"
        training = "n/a" if a["se_training"] is None else f"{a['se_training']:.3f}"
        errors = "—" if ref else f"{a['se_sampling']:.3f} / {training}"
        lines.append(f"| {a['arm']} | {a['balanced_accuracy']:.3f} [{a['ci'][0]:.3f}, "
                     f"{a['ci'][1]:.3f}] | {delta} | {errors} | {better} | {detectable} | "
                     f"{recalls} |")
    lines += ["", "Δ: the arm's pooled balanced accuracy minus the reference's, averaged over "
                  "seeds; its standard error combines the test images' sampling (a paired "
                  "bootstrap over whole lesions) and the classifiers' training noise (spread of "
                  "the per-seed Δ; n/a with one seed); the interval is Δ ± 1.96 SE and P(Δ > 0) "
                  "its normal approximation. A GAN is trained once per fold: its own training "
                  "noise is in neither part. Detectable Δ: the true difference this design finds "
                  "at two-sided 5% with 80% power, 2.8 SE. Recall intervals: lesion bootstrap."]
    return "\n".join(lines) + "\n"
