"""Pick GAN candidates for the training split: realistic, diverse, never a copy of a patient.

Array-level core, pure numpy and deterministic: the caller reads images, computes features and
copies the kept files. Every candidate gets one ledger row (`Decision`) saying why it was kept
or rejected. Filters run in order, the first failing one is the reason: near-copy of a real
training image (privacy) -> discriminator score below the class's quantile -> classifier
confidence too low. Survivors are then picked greedily per class, trading realism against
distance to the images already kept, up to the class quota.

A GAN trained with flips and rotations (``data.dihedral``) can return a patient's lesion turned
by 90 degrees, which a comparison in one orientation misses; the caller passes the features of
such views of the real images (``real_views``) and every distance to a real image takes the
nearest view.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from skinedge.errors import DataError
from skinedge.utils.io import atomic_write_text

_CHUNK_ELEMENTS = 4_000_000  # distance-matrix elements per chunk (32 MB of float64)
_REJECTION_KINDS = {"near-copy": "near-copy", "discriminator": "discriminator",  # reason prefix
                    "classifier": "classifier", "duplicate": "duplicate", "class quota": "quota"}


class SelectionConfig(BaseModel):
    """How candidates are filtered and how many are kept (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    target: Literal["median", "max"] | int = "median"  # per-class total (real + synthetic)
    max_per_class: int | None = Field(None, ge=0)  # cap on synthetic images kept per class
    # Reject scores below this quantile of the class's candidates' discriminator scores.
    min_discriminator_quantile: float = Field(0.2, ge=0, le=1)
    # Reject when the classifier gives the intended class a lower probability: a number for
    # every class, or "validation": per class, the `validation_quantile` of the probability the
    # classifier gives that class on its real validation images. A classifier unsure of a rare
    # class (df) then holds its candidates to what its real images reach, not to a bar that
    # most real df images miss too; a class it knows well gets a higher bar.
    min_classifier_confidence: float | Literal["validation"] = 0.3
    validation_quantile: float = Field(0.2, ge=0, le=1)
    validation_min_images: int = Field(5, ge=1)  # a class's bar rests on at least this many
    # Near-copy: closer to a real training image than this quantile of the real images' own
    # distances to their nearest real image of another lesion.
    privacy_quantile: float = Field(0.05, ge=0, le=1)
    # Near-copy, locally: closer to its nearest real image than this fraction of that image's
    # own distance to the nearest other lesion. Rare classes lie sparse in feature space, where
    # one global quantile is lax; this adapts to the neighbourhood (0 disables).
    copy_ratio: float = Field(0.5, ge=0, le=1)
    # Duplicate: closer to an already kept image than this quantile of the same distances.
    diversity_quantile: float = Field(0.05, ge=0, le=1)
    # Greedy score = w * realism rank + (1 - w) * diversity rank, both in [0, 1] per class.
    realism_weight: float = Field(0.5, ge=0, le=1)
    # Compare candidates with the real images' flips and 90-degree rotations too (8 views), so
    # a turned or mirrored copy of a patient's lesion is still a near-copy (the caller computes
    # the views' features: `skinedge.synth.candidates.select_synthetic` does).
    dihedral: bool = True

    @field_validator("min_classifier_confidence")
    @classmethod
    def _probability(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0 <= value <= 1:
            raise ValueError(f"min_classifier_confidence={value}: use a probability from 0 to 1 "
                             "or 'validation' (per class, from the real validation images)")
        return value

    @field_validator("target")
    @classmethod
    def _positive_target(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"target={value}: use 'median', 'max' or a positive count")
        return value


@dataclass(frozen=True)
class Candidate:
    """One generated image: ``image`` relative to the candidates folder, intended ``label``."""

    image: str
    label: str
    seed: int
    discriminator_score: float  # raw logit of the class-conditional discriminator; higher=real


@dataclass
class Decision:
    """One ledger row: what was measured for a candidate and whether it was kept."""

    image: str
    label: str
    seed: int
    discriminator_score: float
    classifier_confidence: float
    nearest_real_distance: float
    nearest_real_image: str
    nearest_kept_distance: float | None  # to the closest image kept before it; None if not reached
    kept: bool
    reason: str
    rank: int | None  # order in which it was kept within its class (0-based); None if rejected


@dataclass
class SelectionThresholds:
    """Thresholds computed from the data, for the report.

    Attributes:
        classifier_confidence: Per class, the least probability of the intended class a
            candidate needs.
        confidence_source: Where those come from: the fixed setting, or the validation
            quantile and how many real validation images of each class it was taken over.
    """

    privacy_distance: float
    diversity_distance: float
    quotas: dict[str, int]
    classifier_confidence: dict[str, float] = field(default_factory=dict)
    confidence_source: dict[str, str] = field(default_factory=dict)


def confidence_thresholds(cfg: SelectionConfig, classes: Sequence[str],
                          validation_confidence: dict[str, np.ndarray] | None = None,
                          ) -> tuple[dict[str, float], dict[str, str]]:
    """Per class, the least classifier probability of the intended class a candidate needs,
    and where it comes from.

    Args:
        cfg: Selection config (``min_classifier_confidence``, ``validation_quantile``).
        classes: Classes that have candidates.
        validation_confidence: With ``min_classifier_confidence="validation"``: per class, the
            probability the classifier gives that class on each of its real validation images.

    Raises:
        DataError: ``validation`` without validation probabilities for a class (no real
            validation images of it).
    """
    if cfg.min_classifier_confidence != "validation":
        value = float(cfg.min_classifier_confidence)
        return dict.fromkeys(classes, value), dict.fromkeys(classes, "min_classifier_confidence")
    least = cfg.validation_min_images
    few = [c for c in classes if len((validation_confidence or {}).get(c, ())) < least]
    if few:
        raise DataError(f"min_classifier_confidence=validation needs at least {least} real "
                        f"validation images (validation_min_images) of every class with "
                        f"candidates; fewer of {few}: give a number instead (e.g. --set "
                        "min_classifier_confidence=0.3)")
    q = cfg.validation_quantile
    values = {c: float(np.quantile(validation_confidence[c], q)) for c in classes}
    sources = {c: f"{q:g}-quantile of {len(validation_confidence[c])} real validation images"
               for c in classes}
    return values, sources


def explain_shortfalls(summary: dict[str, dict[str, int]],
                       thresholds: SelectionThresholds) -> dict[str, str]:
    """Per class that kept fewer candidates than its quota, a sentence saying why.

    Args:
        summary: :func:`summarize` of the decisions.
        thresholds: The thresholds used.
    """
    out = {}
    for label, row in summary.items():
        quota = thresholds.quotas.get(label, 0)
        if row["kept"] >= quota:
            continue
        conf = thresholds.classifier_confidence.get(label)
        words = {"near-copy": "near-copies of a real training image",
                 "discriminator": "below the class's discriminator quantile",
                 "classifier": "below classifier confidence "
                               + (f"{conf:.3g}" if conf is not None else "the threshold"),
                 "duplicate": "duplicates of kept images"}
        rejected = [f"{row[kind]} {text}" for kind, text in words.items() if row[kind]]
        text = (f"kept {row['kept']} of a quota of {quota}; of {row['candidates']} candidates, "
                + (", ".join(rejected) if rejected else "none rejected"))
        if row["candidates"] < quota:
            text += f"; fewer candidates than the quota: sample at least {quota}"
        out[label] = text
    return out


def synthetic_quotas(real_counts: dict[str, int], cfg: SelectionConfig,
                     classes: Sequence[str] | None = None) -> dict[str, int]:
    """Synthetic images each class needs: ``max(0, target - real)``, capped by ``max_per_class``.

    Args:
        real_counts: Real training images per class; the median/max target is taken over these
            (a fractional median is rounded up).
        cfg: Selection config.
        classes: Classes to give a quota (default: those of ``real_counts``); one missing
            from ``real_counts`` counts as 0 real images.

    Returns:
        Class -> number of synthetic images to keep.
    """
    if isinstance(cfg.target, int):
        target = cfg.target
    elif not real_counts:
        raise ValueError(f"target={cfg.target!r} needs real class counts; got none")
    else:
        counts = list(real_counts.values())
        target = max(counts) if cfg.target == "max" else math.ceil(float(np.median(counts)))
    quotas = {}
    for name in (real_counts if classes is None else classes):
        quota = max(0, target - real_counts.get(name, 0))
        quotas[name] = quota if cfg.max_per_class is None else min(quota, cfg.max_per_class)
    return quotas


def _nearest(a: np.ndarray, b: np.ndarray, a_codes: np.ndarray | None = None,
             b_codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each row of ``a`` (N, D) to its nearest row of ``b`` (M, D).

    With codes, pairs of equal code are skipped. Computed in row chunks to bound memory.
    Returns the distances (N,) and the indices into ``b`` (N,).
    """
    b_sq = np.einsum("ij,ij->i", b, b)
    dist = np.empty(len(a))
    index = np.empty(len(a), dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(1, len(b)))
    for start in range(0, len(a), step):
        rows = a[start:start + step]
        sq = np.einsum("ij,ij->i", rows, rows)[:, None] + b_sq[None, :] - 2.0 * rows @ b.T
        if a_codes is not None:
            sq[a_codes[start:start + step, None] == b_codes[None, :]] = np.inf
        index[start:start + step] = np.argmin(sq, axis=1)
        dist[start:start + step] = np.sqrt(np.maximum(sq.min(axis=1), 0.0))
    return dist, index


def real_nn_distances(real_features: np.ndarray, real_groups: Sequence[str],
                      views: Sequence[np.ndarray] = ()) -> np.ndarray:
    """For each real image, the distance to its nearest real image of another group.

    Args:
        real_features: (M, D) features of the real training images.
        real_groups: (M,) lesion/patient ids; images of the same lesion are not compared.
        views: (M, D) features of transformed copies of the same images (flips, rotations);
            the distance to another image is then the distance to its nearest view.

    Returns:
        (M,) euclidean distances.
    """
    feats = np.asarray(real_features, dtype=np.float64)
    if feats.ndim != 2 or len(feats) != len(real_groups):
        raise ValueError(f"real_features has shape {feats.shape} but there are "
                         f"{len(real_groups)} real groups; expected ({len(real_groups)}, D)")
    names, codes = np.unique(np.asarray(real_groups, dtype=str), return_inverse=True)
    if len(names) < 2:
        raise DataError(f"need real images of at least 2 lesion groups to measure "
                         f"near-copies; got {len(names)}: add more real training images")
    center = feats.mean(axis=0)  # smaller norms, less cancellation in |a|^2+|b|^2-2ab
    every = np.concatenate([feats, *(np.asarray(v, dtype=np.float64) for v in views)]) - center
    return _nearest(feats - center, every, codes, np.tile(codes, 1 + len(views)))[0]


def _rank01(values: np.ndarray) -> np.ndarray:
    """Average ranks scaled to [0, 1] (highest value -> 1); all-equal values -> 0.5."""
    if len(values) < 2:
        return np.full(len(values), 0.5)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average = (np.cumsum(counts) - counts) + (counts - 1) / 2.0
    return average[inverse] / (len(values) - 1)


def _check_inputs(candidates, cand, conf, disc, real, real_images, real_groups,
                  real_counts, views) -> None:
    n, m = len(candidates), len(real_images)
    if cand.ndim != 2 or len(cand) != n:
        raise ValueError(f"candidate_features has shape {cand.shape}; expected ({n}, D) "
                         f"for {n} candidates")
    if conf.shape != (n,):
        raise ValueError(f"classifier_confidence has shape {conf.shape}; expected ({n},)")
    if real.ndim != 2 or real.shape != (m, cand.shape[1]) or len(real_groups) != m:
        raise ValueError(f"real_features has shape {real.shape}, real_images {m} entries and "
                         f"real_groups {len(real_groups)}; expected ({m}, {cand.shape[1]}), "
                         f"the candidates' feature size, and one group per image")
    for name, view in views.items():
        if view.shape != real.shape:
            raise ValueError(f"real_views[{name!r}] has shape {view.shape}; expected "
                             f"{real.shape}, one row per real image in the same order")
    for name, array in (("candidate_features", cand), ("classifier_confidence", conf),
                        ("discriminator scores", disc), ("real_features", real),
                        *((f"real_views[{k!r}]", v) for k, v in views.items())):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinite values; fix the feature step")
    unknown = sorted({c.label for c in candidates} - set(real_counts))
    if unknown:
        raise ValueError(f"candidate labels {unknown} are not in real_counts "
                         f"{sorted(real_counts)}; give their real count (0 if none)")
    repeated = sorted(k for k, v in Counter(c.image for c in candidates).items() if v > 1)
    if repeated:
        raise ValueError(f"candidate image paths must be unique; repeated: {repeated[:5]}")


def select_candidates(candidates: Sequence[Candidate], candidate_features: np.ndarray,
                      classifier_confidence: np.ndarray, real_features: np.ndarray,
                      real_images: Sequence[str], real_groups: Sequence[str],
                      real_counts: dict[str, int], cfg: SelectionConfig, *,
                      real_views: dict[str, np.ndarray] | None = None,
                      validation_confidence: dict[str, np.ndarray] | None = None,
                      ) -> tuple[list[Decision], SelectionThresholds]:
    """Decide, for every candidate, whether it joins the training split.

    Args:
        candidates: (N,) generated images.
        candidate_features: (N, D) their features.
        classifier_confidence: (N,) probability the classifier gives each intended class.
        real_features: (M, D) features of the real TRAINING images.
        real_images: (M,) their paths, for the ledger.
        real_groups: (M,) their lesion/patient ids.
        real_counts: Real training images per class (all classes).
        cfg: Selection config.
        real_views: Name -> (M, D) features of a transformed copy of every real image, in
            ``real_features`` order (e.g. ``"rotated 90"``). A candidate's nearest real image
            is its nearest view, named in the ledger, and the real images' own cross-lesion
            distances, from which the thresholds come, use the views alike.
        validation_confidence: Per class, the classifier's probability of that class on each
            real validation image of it; needed when ``cfg.min_classifier_confidence`` is
            ``validation`` (see :func:`confidence_thresholds`).

    Returns:
        One `Decision` per candidate, in input order, and the thresholds used.
    """
    cand = np.asarray(candidate_features, dtype=np.float64)
    conf = np.asarray(classifier_confidence, dtype=np.float64)
    real = np.asarray(real_features, dtype=np.float64)
    disc = np.array([c.discriminator_score for c in candidates], dtype=np.float64)
    views = {name: np.asarray(v, dtype=np.float64) for name, v in (real_views or {}).items()}
    _check_inputs(candidates, cand, conf, disc, real, real_images, real_groups, real_counts,
                  views)
    nn = real_nn_distances(real, real_groups, list(views.values()))
    labels = sorted({c.label for c in candidates})
    min_conf, conf_source = confidence_thresholds(cfg, labels, validation_confidence)
    thresholds = SelectionThresholds(
        privacy_distance=float(np.quantile(nn, cfg.privacy_quantile)),
        diversity_distance=float(np.quantile(nn, cfg.diversity_quantile)),
        quotas=synthetic_quotas(real_counts, cfg),
        classifier_confidence=min_conf, confidence_source=conf_source)
    center = real.mean(axis=0)
    view_names = ["", *views]
    every = np.concatenate([real, *views.values()]) - center  # view k of image j: k * M + j
    cand = cand - center
    near_dist, near_row = _nearest(cand, every)
    near_idx, near_view = near_row % len(real), near_row // len(real)
    decisions = [Decision(c.image, c.label, int(c.seed), float(c.discriminator_score),
                          float(conf[i]), float(near_dist[i]), str(real_images[near_idx[i]]),
                          None, False, "", None) for i, c in enumerate(candidates)]
    # Canonical order (class, seed, image): results do not depend on the input order.
    order = sorted(range(len(candidates)),
                   key=lambda i: (candidates[i].label, candidates[i].seed, candidates[i].image))
    for label in labels:
        members = np.array([i for i in order if candidates[i].label == label], dtype=np.int64)
        disc_min = float(np.quantile(disc[members], cfg.min_discriminator_quantile))
        survivors = []
        for i in members:
            d, privacy = decisions[i], thresholds.privacy_distance
            local = cfg.copy_ratio * nn[near_idx[i]]
            view = view_names[near_view[i]]
            copy_of = f"{d.nearest_real_image} {view}" if view else d.nearest_real_image
            if d.nearest_real_distance < privacy:
                d.reason = (f"near-copy of {copy_of} (distance "
                            f"{d.nearest_real_distance:.4g} < threshold {privacy:.4g})")
            elif d.nearest_real_distance < local:
                d.reason = (f"near-copy of {copy_of} (distance "
                            f"{d.nearest_real_distance:.4g} < {cfg.copy_ratio:g} x its distance "
                            f"to the nearest other lesion, {nn[near_idx[i]]:.4g})")
            elif disc[i] < disc_min:
                d.reason = (f"discriminator score {disc[i]:.4g} below the class's "
                            f"{cfg.min_discriminator_quantile:g}-quantile ({disc_min:.4g})")
            elif conf[i] < min_conf[label]:
                d.reason = (f"classifier confidence {conf[i]:.3g} < {min_conf[label]:.3g} "
                            f"({conf_source[label]})")
            else:
                survivors.append(i)
        _greedy_pick(np.array(survivors, dtype=np.int64), cand, disc, conf, decisions,
                     thresholds.quotas.get(label, 0), thresholds.diversity_distance, cfg)
    return decisions, thresholds


def _greedy_pick(idx: np.ndarray, feats: np.ndarray, disc: np.ndarray, conf: np.ndarray,
                 decisions: list[Decision], quota: int, min_distance: float,
                 cfg: SelectionConfig) -> None:
    """Keep up to ``quota`` of one class's survivors ``idx`` (canonical order), best score first."""
    x = feats[idx]
    x_sq = np.einsum("ij,ij->i", x, x)
    realism = (_rank01(disc[idx]) + _rank01(conf[idx])) / 2.0
    nearest = np.full(len(idx), np.inf)
    nearest_at = np.full(len(idx), -1, dtype=np.int64)
    remaining = np.ones(len(idx), dtype=bool)
    kept = 0
    while kept < quota and remaining.any():
        open_ = np.flatnonzero(remaining)
        score = (cfg.realism_weight * realism[open_]
                 + (1.0 - cfg.realism_weight) * _rank01(nearest[open_]))
        j = int(open_[np.argmax(score)])  # first maximum: ties go to the lower (seed, image)
        remaining[j] = False
        d = decisions[idx[j]]
        d.nearest_kept_distance = float(nearest[j]) if np.isfinite(nearest[j]) else None
        if nearest[j] < min_distance:
            d.reason = (f"duplicate of kept {decisions[idx[nearest_at[j]]].image} (distance "
                        f"{nearest[j]:.4g} < threshold {min_distance:.4g})")
            continue
        d.kept, d.reason, d.rank = True, "kept", kept
        kept += 1
        open_ = np.flatnonzero(remaining)
        dots = (x @ x[j])[open_]  # a matvec over all rows: cheaper than copying x[open_]
        dist = np.sqrt(np.maximum(x_sq[open_] + x_sq[j] - 2.0 * dots, 0.0))
        closer = dist < nearest[open_]
        nearest[open_[closer]] = dist[closer]
        nearest_at[open_[closer]] = j
    for j in np.flatnonzero(remaining):
        decisions[idx[j]].reason = f"class quota reached ({quota})"


_FIELDS = [f.name for f in dataclasses.fields(Decision)]


def write_ledger(decisions: Sequence[Decision], path: Path) -> Path:
    """Write one CSV row per decision (header = `Decision` fields); empty cell = None."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_FIELDS)
    for d in decisions:
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v
                         for v in dataclasses.astuple(d)])
    return atomic_write_text(path, buffer.getvalue())


def _parse_row(row: dict[str, str]) -> Decision:
    if row["kept"] not in ("True", "False"):
        raise ValueError(f"kept must be True or False, got {row['kept']!r}")
    typed = {k: float(row[k]) for k in
             ("discriminator_score", "classifier_confidence", "nearest_real_distance")}
    kept_distance = row["nearest_kept_distance"]
    typed |= {"seed": int(row["seed"]), "kept": row["kept"] == "True",
              "nearest_kept_distance": float(kept_distance) if kept_distance else None,
              "rank": int(row["rank"]) if row["rank"] else None}
    return Decision(**(row | typed))


def read_ledger(path: Path) -> list[Decision]:
    """Read a ledger written by `write_ledger`, restoring the field types."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != _FIELDS:
            raise DataError(f"{path}: header {reader.fieldnames} is not a selection ledger's "
                             f"{_FIELDS}; write it with write_ledger")
        decisions = []
        for number, row in enumerate(reader, start=1):
            try:
                if None in row or None in row.values():
                    raise ValueError(f"expected {len(_FIELDS)} cells")
                decisions.append(_parse_row(row))
            except ValueError as err:
                raise DataError(f"{path}: row {number} (line {reader.line_num}) is not a valid "
                                 f"ledger row: {err}") from err
    return decisions


def summarize(decisions: Sequence[Decision]) -> dict[str, dict[str, int]]:
    """Per class: candidates, kept, and rejections per kind (near-copy, discriminator, ...)."""
    summary: dict[str, dict[str, int]] = {}
    for d in sorted(decisions, key=lambda d: d.label):
        row = summary.setdefault(d.label, {"candidates": 0, "kept": 0,
                                           **{k: 0 for k in _REJECTION_KINDS.values()}})
        row["candidates"] += 1
        if d.kept:
            row["kept"] += 1
            continue
        kind = next((v for k, v in _REJECTION_KINDS.items() if d.reason.startswith(k)), None)
        if kind is None:
            raise ValueError(f"decision for {d.image} has an unknown reason {d.reason!r}")
        row[kind] += 1
    return summary
