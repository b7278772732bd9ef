"""Synthetic sets: GAN candidates selected into images the classifier trainer reads.

A synthetic set is a folder with ``images/``, ``synthetic.json`` (one row per kept image: path,
class, seed, sha256; the split it was made for), ``ledger.csv`` (one row per candidate, kept or
rejected and why) and ``selection.json`` (thresholds, counts, the feature network).

Synthetic images only ever join the *train* split: :func:`augmented_train_set` adds them to
the manifest's train rows, validation and test are built from the manifest alone, and
:func:`load_synthetic_set` refuses a set made for another split, from a GAN that learned from
another split, or holding a file identical to any manifest image.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from skinedge.data.manifest import Manifest
from skinedge.train.selection import (
    Candidate,
    Decision,
    SelectionConfig,
    select_candidates,
    summarize,
    synthetic_quotas,
    write_ledger,
)
from skinedge.utils.io import atomic_write_text, sha256_file

SCHEMA = "skinedge.synthetic/1"
SYNTHETIC = "synthetic.json"


@dataclass(frozen=True)
class SyntheticRow:
    image: str  # relative to the set's folder
    label: str
    seed: int
    sha256: str


@dataclass
class SyntheticSet:
    """Kept synthetic images of one split's train classes."""

    root: Path
    split_hash: str
    classes: str  # vocabulary name
    rows: list[SyntheticRow]
    source: dict[str, Any] = field(default_factory=dict)  # GAN, candidates, selection

    @property
    def sha256(self) -> str:
        payload = json.dumps([asdict(r) for r in self.rows], sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.label] = out.get(r.label, 0) + 1
        return out

    def card_info(self) -> dict[str, Any]:
        """What a model card records of the synthetic images it was trained on."""
        return {"path": str(self.root), "sha256": self.sha256, "counts": self.counts(),
                "selection": self.source.get("mode"), "gan": self.source.get("gan")}

    def save(self) -> Path:
        """Write ``synthetic.json`` into the set's folder."""
        doc = {"schema": SCHEMA, "split_hash": self.split_hash, "classes": self.classes,
               "sha256": self.sha256, "counts": self.counts(), "source": self.source,
               "rows": [asdict(r) for r in self.rows]}
        return atomic_write_text(self.root / SYNTHETIC, json.dumps(doc, indent=1))


def load_synthetic_set(path: Path | str, manifest: Manifest, *, verify: bool = True) -> SyntheticSet:
    """Load a synthetic set for training on ``manifest``'s train split.

    Args:
        path: The set's folder (or its ``synthetic.json``).
        manifest: The split it must have been made for.
        verify: Check every file's hash.

    Raises:
        ValueError: unreadable, made for another split or vocabulary, files missing or changed,
            or a file identical to a manifest image (a real image must not pose as synthetic,
            and nothing may reach validation or test twice).
    """
    path = Path(path)
    folder = path.parent if path.name == SYNTHETIC else path
    try:
        doc = json.loads((folder / SYNTHETIC).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder}: not a synthetic set ({exc}); make one with "
                         "`skinedge gan select`") from exc
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{folder / SYNTHETIC}: schema {doc.get('schema')!r} is not {SCHEMA!r}")
    if doc["split_hash"] != manifest.split_hash or doc["classes"] != manifest.classes:
        raise ValueError(
            f"{folder} was selected for split {doc['split_hash'][:12]} ({doc['classes']}), not for "
            f"this manifest's {manifest.split_hash[:12]} ({manifest.classes}); its GAN may have "
            "seen this split's validation or test images. Select again for this manifest.")
    synthetic = SyntheticSet(folder.resolve(), doc["split_hash"], doc["classes"],
                             [SyntheticRow(**r) for r in doc["rows"]], doc.get("source", {}))
    unknown = sorted({r.label for r in synthetic.rows} - set(manifest.vocabulary.codes))
    if unknown:
        raise ValueError(f"{folder / SYNTHETIC}: classes {unknown} are not in the manifest")
    if verify:
        problems = []
        for r in synthetic.rows:
            file = folder / r.image
            if not file.is_file():
                problems.append(f"  {file}: missing")
            elif sha256_file(file) != r.sha256:
                problems.append(f"  {file}: changed since selection")
        real = {row.sha256: row for row in manifest.rows}
        problems += [f"  {folder / r.image}: identical to {real[r.sha256].image} "
                     f"({real[r.sha256].split} split)" for r in synthetic.rows if r.sha256 in real]
        if problems:
            raise ValueError(f"{folder}: {len(problems)} bad synthetic image(s):\n"
                             + "\n".join(problems) + "\nSelect the set again.")
    return synthetic


def augmented_train_set(manifest: Manifest, synthetic: SyntheticSet | None, transform: Callable):
    """The manifest's train split plus the synthetic images, as one ``LesionDataset``.

    Synthetic paths are absolute (``root / absolute`` is the absolute path), real ones relative
    to the manifest's root; validation and test sets are never built here.
    """
    from skinedge.data.dataset import LesionDataset

    rows = manifest.subset("train")
    codes = list(manifest.vocabulary.codes)
    images = [r.image for r in rows]
    targets = [codes.index(r.label) for r in rows]
    if synthetic is not None:
        images += [str(synthetic.root / r.image) for r in synthetic.rows]
        targets += [codes.index(r.label) for r in synthetic.rows]
    return LesionDataset(manifest.root, images, targets, transform)


def read_candidates(folder: Path) -> tuple[list[Candidate], dict[str, Any]]:
    """``candidates.csv`` and ``sample.json`` of a ``skinedge gan sample`` folder.

    Raises:
        ValueError: a missing file or a bad row (named).
    """
    from skinedge.train.gan.sample import CANDIDATES

    try:
        meta = json.loads((folder / "sample.json").read_text())
        text = (folder / CANDIDATES).read_text()
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder}: not a candidates folder ({exc}); make one with "
                         "`skinedge gan sample`") from exc
    candidates = []
    for line, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        try:
            candidates.append(Candidate(row["image"], row["label"], int(row["seed"]),
                                        float(row["discriminator_score"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{folder / CANDIDATES}:{line}: bad row {row} ({exc})") from exc
    return candidates, meta


def select_synthetic(
    candidates_dir: Path | str, manifest: Manifest, out_dir: Path | str, *, classifier: Path,
    cfg: SelectionConfig | None = None, mode: Literal["select", "none"] = "select",
    progress: Callable[[str, int, int], None] | None = None,
    reference_cache: dict[tuple, tuple[np.ndarray, dict[str, np.ndarray]]] | None = None,
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

    Raises:
        ValueError: candidates from a GAN, or a classifier, trained on another split; a
            classifier with other classes; bad inputs.
    """
    from skinedge.data.arrays import load_thumbnails
    from skinedge.data.manifest import check_classes
    from skinedge.evaluate.generative import classifier_features, uint8_to_unit
    from skinedge.models import load_card

    candidates_dir, out_dir, cfg = Path(candidates_dir), Path(out_dir), cfg or SelectionConfig()
    candidates, meta = read_candidates(candidates_dir)
    if meta.get("split_hash") != manifest.split_hash:
        raise ValueError(f"{candidates_dir}: its GAN learned from split "
                         f"{str(meta.get('split_hash'))[:12]}, not this manifest's "
                         f"{manifest.split_hash[:12]}: it may have seen validation or test images")
    codes = list(manifest.vocabulary.codes)
    card = load_card(classifier)
    check_classes(manifest, card.classes, manifest.root, f"classifier {classifier}")
    if card.data.split_hash and card.data.split_hash != manifest.split_hash:
        raise ValueError(f"classifier {classifier} was trained on split "
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
    decisions, thresholds = select_candidates(
        candidates, fake_features, confidence, real_features, [r.image for r in train],
        [r.group for r in train], real_counts, cfg, real_views=real_views)
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
              "summary": summarize(decisions),
              "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
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
