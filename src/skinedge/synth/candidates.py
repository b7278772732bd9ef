"""Candidates folders and their selection into synthetic sets.

``skinedge gan sample`` writes a candidates folder (``candidates.csv`` + ``sample.json``);
:func:`select_synthetic` scores its images with a classifier, filters them
(:mod:`skinedge.synth.selection`) and writes a synthetic set, which
:mod:`skinedge.data.synthetic` reads for training.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np

from skinedge.data.manifest import Manifest
from skinedge.data.synthetic import SyntheticRow, SyntheticSet
from skinedge.errors import DataError
from skinedge.synth.selection import (
    Candidate,
    Decision,
    SelectionConfig,
    explain_shortfalls,
    select_candidates,
    summarize,
    synthetic_quotas,
    write_ledger,
)
from skinedge.utils.io import atomic_write_text, sha256_file
from skinedge.utils.provenance import created_time


def read_candidates(folder: Path) -> tuple[list[Candidate], dict[str, Any]]:
    """``candidates.csv`` and ``sample.json`` of a ``skinedge gan sample`` folder.

    Raises:
        DataError: a missing file or a bad row (named).
    """
    from skinedge.synth.gan.sample import CANDIDATES

    try:
        meta = json.loads((folder / "sample.json").read_text())
        text = (folder / CANDIDATES).read_text()
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder}: not a candidates folder ({exc}); make one with "
                         "`skinedge gan sample`") from exc
    candidates = []
    for line, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        try:
            candidates.append(Candidate(row["image"], row["label"], int(row["seed"]),
                                        float(row["discriminator_score"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{folder / CANDIDATES}:{line}: bad row {row} ({exc})") from exc
    return candidates, meta


def select_synthetic(
    candidates_dir: Path | str, manifest: Manifest, out_dir: Path | str, *, classifier: Path,
    cfg: SelectionConfig | None = None, mode: Literal["select", "none"] = "select",
    progress: Callable[[str, int, int], None] | None = None,
    reference_cache: dict[tuple, tuple[np.ndarray, dict[str, np.ndarray]]] | None = None,
    classifier_splits: Sequence[str] = (),
) -> SyntheticSet:
    """Score GAN candidates and keep the ones to train on, up to the class quotas.

    Features (for privacy and diversity) and the intended-class confidence come from the
    ``classifier`` checkpoint, trained on real images of this split only. Real train images
    are first reduced to the GAN's resolution, so both sides are compared at the same detail,
    and, with ``cfg.dihedral``, in their 8 flips and 90-degree rotations.

    Args:
        candidates_dir: Output of ``skinedge gan sample``.
        manifest: The split; its train images are the privacy reference.
        out_dir: New synthetic set folder.
        classifier: Checkpoint for features and confidence.
        cfg: Selection settings (quotas, thresholds).
        mode: ``select`` (filters + greedy diversity) or ``none`` (the first candidates by seed
            up to the quota: the "GAN without selection" arm of the ablation). The ledger
            records every measurement in both.
        progress: ``progress(description, done, total)``.
        reference_cache: A dict the caller keeps across calls (the ablation's selections with
            one classifier): the real images' features, and their views', are computed once
            per split, classifier weights, resolution and ``cfg.dihedral``.
        classifier_splits: Split hashes besides this manifest's that the classifier may have
            been trained on: a base split to which this manifest only adds train rows, which
            the caller has checked (``skinedge.synth.refresh``).

    Raises:
        DataError: candidates from a GAN, or a classifier, trained on another split; a
            classifier with other classes; a bad candidates folder or too few real images.
    """
    from skinedge.data.arrays import load_thumbnails
    from skinedge.data.manifest import check_classes
    from skinedge.models import load_card
    from skinedge.synth.metrics import classifier_features, uint8_to_unit

    candidates_dir, out_dir, cfg = Path(candidates_dir), Path(out_dir), cfg or SelectionConfig()
    candidates, meta = read_candidates(candidates_dir)
    if meta.get("split_hash") != manifest.split_hash:
        raise DataError(f"{candidates_dir}: its GAN learned from split "
                         f"{str(meta.get('split_hash'))[:12]}, not this manifest's "
                         f"{manifest.split_hash[:12]}: it may have seen validation or test images")
    codes = list(manifest.vocabulary.codes)
    card = load_card(classifier)
    check_classes(manifest, card.classes, manifest.root, f"classifier {classifier}")
    if card.data.split_hash and card.data.split_hash not in {manifest.split_hash,
                                                             *classifier_splits}:
        raise DataError(f"classifier {classifier} was trained on split "
                         f"{card.data.split_hash[:12]}, not this manifest's "
                         f"{manifest.split_hash[:12]}; use one trained on this split's real images")
    train = manifest.subset("train")
    real_counts = {c: sum(r.label == c for r in train) for c in codes}
    extractor = classifier_features(classifier)
    resolution = int(meta["resolution"])

    def report(what: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(what, done, total)) if progress else None

    # extractor.name holds the classifier's weights hash, so a retrained one misses the cache.
    key = (manifest.split_hash, extractor.name, resolution, cfg.dihedral)
    if reference_cache is not None and key in reference_cache:
        real_features, real_views = reference_cache[key]
    else:
        real = load_thumbnails([manifest.root / r.image for r in train], resolution,
                               progress=report("reading real train images"))
        real_features = extractor(uint8_to_unit(real))
        views = list(dihedral_views(real)) if cfg.dihedral else []
        turned = report("features of flipped and rotated real images")
        real_views = {}
        for i, (name, view) in enumerate(views):
            real_views[name] = extractor(uint8_to_unit(view))
            if turned:
                turned(i + 1, len(views))
        if reference_cache is not None:
            reference_cache[key] = real_features, real_views
    fake = load_thumbnails([candidates_dir / c.image for c in candidates], resolution,
                           progress=report("reading candidates"))
    fake_features, probs = extractor.classify(uint8_to_unit(fake))
    confidence = probs[np.arange(len(candidates)), [codes.index(c.label) for c in candidates]]
    validation = None
    if cfg.min_classifier_confidence == "validation":  # per-class bars from real val images
        val = [r for r in manifest.subset("val") if r.label in {c.label for c in candidates}]
        images = load_thumbnails([manifest.root / r.image for r in val], resolution,
                                 progress=report("reading real validation images"))
        _, val_probs = extractor.classify(uint8_to_unit(images))
        true = np.array([codes.index(r.label) for r in val], dtype=np.int64)
        val_conf = val_probs[np.arange(len(val)), true] if len(val) else np.empty(0)
        validation = {code: val_conf[true == codes.index(code)] for code in codes}
    decisions, thresholds = select_candidates(
        candidates, fake_features, confidence, real_features, [r.image for r in train],
        [r.group for r in train], real_counts, cfg, real_views=real_views,
        validation_confidence=validation)
    if mode == "none":
        decisions = _first_by_seed(decisions, thresholds.quotas)

    rows = []
    for d in decisions:
        if d.kept:
            target = out_dir / "images" / d.image.removeprefix("images/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(candidates_dir / d.image, target)
            rows.append(SyntheticRow(target.relative_to(out_dir).as_posix(), d.label, d.seed,
                                     sha256_file(target)))
    write_ledger(decisions, out_dir / "ledger.csv")
    source = {"mode": mode, "candidates": str(candidates_dir.resolve()), "gan": meta.get("gan"),
              "checkpoints": meta.get("checkpoints"), "features": extractor.name,
              "classifier": str(Path(classifier).resolve()),
              "config": cfg.model_dump(mode="json"), "thresholds": asdict(thresholds),
              "summary": (summary := summarize(decisions)),
              "shortfalls": explain_shortfalls(summary, thresholds),
              "created": created_time()}
    synthetic = SyntheticSet(out_dir.resolve(), manifest.split_hash, manifest.classes, rows, source)
    synthetic.save()
    atomic_write_text(out_dir / "selection.json", json.dumps(source, indent=1))
    return synthetic


def dihedral_views(images: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """The 7 flips and 90-degree rotations of (N, H, W, C) square images other than identity."""
    for flip in (False, True):
        for quarter in range(0 if flip else 1, 4):  # skip the identity
            name = ("mirrored " if flip else "") + (f"rotated {90 * quarter}" if quarter else "")
            view = np.rot90(images[:, :, ::-1] if flip else images, quarter, axes=(1, 2))
            yield name.strip(), np.ascontiguousarray(view)


def _first_by_seed(decisions: list[Decision], quotas: dict[str, int]) -> list[Decision]:
    """Keep the first ``quota`` candidates of each class by seed, whatever they scored."""
    out, kept = [], dict.fromkeys(quotas, 0)
    for d in sorted(decisions, key=lambda d: (d.label, d.seed)):
        take = kept.get(d.label, 0) < quotas.get(d.label, 0)
        kept[d.label] = kept.get(d.label, 0) + take
        note = "kept without selection" if take else f"class quota reached ({quotas.get(d.label, 0)})"
        scored = f"; selection would say: {d.reason}" if d.reason != "kept" else ""
        out.append(Decision(**{**asdict(d), "kept": take, "reason": note + scored,
                               "rank": kept[d.label] - 1 if take else None}))
    order = {d.image: i for i, d in enumerate(decisions)}
    return sorted(out, key=lambda d: order[d.image])


def needed_counts(manifest: Manifest, cfg: SelectionConfig | None = None) -> dict[str, int]:
    """Synthetic images per class to reach the target balance on the train split."""
    train = manifest.subset("train")
    codes = list(manifest.vocabulary.codes)
    return synthetic_quotas({c: sum(r.label == c for r in train) for c in codes},
                            cfg or SelectionConfig(), codes)
