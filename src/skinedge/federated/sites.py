"""Sites: each clinic's own rows, mapped into the federation's seven HAM10000 classes.

Every site trains one 7-class model (``isic2018`` vocabulary: mel, nv, bcc, akiec, bkl, df,
vasc), whatever its own labels are:

| site vocabulary | mapping |
|---|---|
| isic2018 (HAM10000) | as is |
| isic2019 | ``ak -> akiec`` and ``scc -> akiec``: HAM's akiec is actinic keratosis *and*
  intraepithelial carcinoma (Bowen's disease, an SCC in situ); an invasive SCC has no HAM class
  of its own and akiec is its nearest (a judgement: such rows teach "keratinocyte lesion, not
  benign"). ``unk`` rows have no class: they are excluded and counted. |
| melanoma (ISIC 2020) | ``mel -> mel``; ``benign`` is a *partial* label (some class other than
  melanoma): its target is :data:`~skinedge.data.classes.NOT_POSITIVE` and the loss is
  ``-log(1 - p_mel)`` (:class:`~skinedge.train.losses.PartialLabelLoss`). |

The mapping is :data:`skinedge.data.classes.LABEL_MAPS`, the one a multi-source split uses
(``skinedge data split A B C``). Rows excluded by it are counted in :attr:`SiteData.excluded`,
never silently dropped.
The experiment's sites (disjoint slices of the shared ISIC samples) are made by
:mod:`skinedge.federated.experiment_sites`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from skinedge.data.classes import get_vocabulary, map_label, target_index
from skinedge.errors import DataError
from skinedge.federated.config import FederatedConfig, SiteSpec

#: The federation's classes: HAM10000 / ISIC 2018 order.
FEDERATION_VOCABULARY = "isic2018"
@dataclass
class SiteRows:
    """One split of a site: image paths (relative to ``root``) and federation targets."""

    images: list[str]
    targets: list[int]  # class index, or NOT_POSITIVE for a partial "not melanoma" row
    groups: list[str]


@dataclass
class SiteData:
    """What a site trains and validates on; built on the site, never sent anywhere."""

    name: str
    root: Path
    vocabulary: str  # the site's own label vocabulary
    train: SiteRows
    val: SiteRows
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> rows
    capped: int = 0  # train rows left out by max_images

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per federation class (and ``not-mel``) in train and val."""
        codes = get_vocabulary(FEDERATION_VOCABULARY).codes
        out = {}
        for split, rows in (("train", self.train), ("val", self.val)):
            c = Counter(rows.targets)
            out[split] = {(codes[t] if t >= 0 else "not-mel"): n for t, n in sorted(c.items())}
        return out


def federation_target(vocabulary: str, label: str) -> int | None:
    """The federation target of a site's label: a class index, NOT_POSITIVE, or None.

    Raises:
        ConfigError: a vocabulary the federation has no mapping for.
    """
    target = FEDERATION_VOCABULARY
    code = map_label(label, vocabulary, target)
    return None if code is None else target_index(get_vocabulary(target), code)


def load_site(spec: SiteSpec, cfg: FederatedConfig) -> SiteData:
    """Read a site's rows from its folder or manifest, map them, cap train at ``max_images``.

    Raises:
        NotFoundError, DataError: the folder or manifest is missing or invalid (as
            ``skinedge data split`` / ``load_manifest`` report them), or the site has no train
            or no val rows left.
    """
    from skinedge.data import load_manifest, make_manifest, read_dataset

    path = Path(spec.data)
    if path.is_file():
        manifest = load_manifest(path)
    else:
        dataset = read_dataset(path, check_images=False)
        manifest = make_manifest(dataset, ratios=(1 - cfg.val_fraction, cfg.val_fraction, 0.0),
                                 seed=cfg.seed)
    vocab = manifest.classes
    excluded: Counter[str] = Counter()
    splits = {}
    for split in ("train", "val"):
        images, targets, groups = [], [], []
        for row in manifest.subset(split):
            target = federation_target(vocab, row.label)
            if target is None:
                excluded[f"label {row.label!r} has no federation class"] += 1
                continue
            images.append(row.image)
            targets.append(target)
            groups.append(row.group)
        splits[split] = SiteRows(images, targets, groups)
    capped = 0
    if spec.max_images is not None and len(splits["train"].images) > spec.max_images:
        before = len(splits["train"].images)
        splits["train"] = cap_rows(splits["train"], spec.max_images, seed=cfg.seed)
        capped = before - len(splits["train"].images)
    if not splits["train"].images or not splits["val"].images:
        raise DataError(f"site {spec.name!r} ({path}): needs train and val rows after mapping "
                        f"its labels; has {len(splits['train'].images)} train and "
                        f"{len(splits['val'].images)} val (excluded: {dict(excluded)})")
    return SiteData(spec.name, manifest.root, vocab, splits["train"], splits["val"],
                    dict(excluded), capped)


def cap_rows(rows: SiteRows, limit: int, *, seed: int = 0) -> SiteRows:
    """At most ``limit`` rows, whole lesions at a time, chosen by a seeded hash of the lesion
    id, keeping every class's share (each class keeps ``limit / total`` of its lesions, at least
    one). Deterministic: the same rows on every machine."""
    by_target: dict[int, list[str]] = {}
    for target, group in zip(rows.targets, rows.groups):
        if group not in by_target.setdefault(target, []):
            by_target[target].append(group)
    share = limit / len(rows.images)
    keep: set[str] = set()
    for groups in by_target.values():
        ranked = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
        keep.update(ranked[:max(1, round(len(ranked) * share))])
    picked = [i for i, g in enumerate(rows.groups) if g in keep]
    return SiteRows([rows.images[i] for i in picked], [rows.targets[i] for i in picked],
                    [rows.groups[i] for i in picked])
