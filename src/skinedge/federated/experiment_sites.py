"""The experiment's sites: disjoint slices of the shared ISIC samples that differ as clinics do.

From ``DATA`` (``../shared/data``: ``ham10000-sample``, ``isic2019-sample``, ``isic2020-sample``):

* HAM10000 is split by lesion into train/val/test (seeded, stratified, 0.7/0.1/0.2); its
  ``test`` lesions are the one held-out test split every model of the experiment is scored on,
  and no site ever sees them. The train/val lesions go to two sites by a seeded hash of the
  lesion id, *skewed by diagnosis* as two clinics' case mixes are: ``ham-pigmented`` (a
  pigmented-lesion clinic) takes 75% of the mel/nv/df lesions and 25% of the rest,
  ``ham-general`` (general dermatology: keratinocyte lesions, vascular) the other way round.
* ``isic2019``: the ISIC 2019 sample (other hospitals, other cameras), split 85/15 by lesion
  (by image where it has no lesion ids). Its ak/scc rows would map to akiec (see
  :mod:`skinedge.federated.sites`); this sample holds bkl/mel/nv only.
* ``isic2020``: the ISIC 2020 sample, grouped by patient, labels mel / benign (partial).

Each site is written as its own manifest (``SITES/<name>.json``); rows whose image bytes equal
a test image or an earlier site's are left out and counted (:func:`experiment_sites` returns
how many), never silently dropped.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from skinedge.federated.config import SiteSpec

#: Diagnoses the pigmented-lesion clinic sees most of.
PIGMENTED = ("mel", "nv", "df")
#: Share of a diagnosis's lesions the pigmented-lesion clinic takes.
SKEW = 0.75


def _unit(text: str, seed: int) -> float:
    """A seeded hash of ``text`` in [0, 1)."""
    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:12], 16) / 16 ** 12


def experiment_sites(data_root: Path | str, out_dir: Path | str, *, seed: int = 0,
                     max_images: int | None = None) -> tuple[list[SiteSpec], Path, dict[str, Any]]:
    """Write the experiment's site manifests and the HAM10000 test manifest.

    Args:
        data_root: Folder holding ``ham10000-sample/``, ``isic2019-sample/``,
            ``isic2020-sample/``.
        out_dir: Where the manifests go.
        seed: Split and assignment seed.
        max_images: Cap on each site's train rows (whole lesions), or None.

    Returns:
        (sites, test manifest path, report: rows per site and split, rows left out and why).

    Raises:
        NotFoundError, DataError: a sample folder is missing or invalid.
    """
    from skinedge.data import make_manifest, read_dataset

    data_root, out_dir = Path(data_root).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ham = make_manifest(read_dataset(data_root / "ham10000-sample", check_images=False),
                        ratios=(0.7, 0.1, 0.2), seed=seed)
    test = replace(ham, rows=ham.subset("test"))
    test_path = test.save(out_dir / "ham10000-test.json")
    seen = {r.sha256 for r in test.rows}
    report: dict[str, Any] = {"test": {"rows": len(test.rows), "lesions": len({r.group for r in
                                                                              test.rows})}}
    sites: list[SiteSpec] = []

    def add(name: str, manifest, rows) -> None:
        kept = [r for r in rows if r.sha256 not in seen]
        seen.update(r.sha256 for r in kept)
        path = replace(manifest, rows=kept).save(out_dir / f"{name}.json")
        report[name] = {"train": sum(r.split == "train" for r in kept),
                        "val": sum(r.split == "val" for r in kept),
                        "left_out_duplicates": len(rows) - len(kept)}
        sites.append(SiteSpec(name=name, data=path, max_images=max_images))

    pool = [r for r in ham.rows if r.split in ("train", "val")]
    pigmented = {r.group for r in pool
                 if _unit(r.group, seed) < (SKEW if r.label in PIGMENTED else 1 - SKEW)}
    add("ham-pigmented", ham, [r for r in pool if r.group in pigmented])
    add("ham-general", ham, [r for r in pool if r.group not in pigmented])
    for name, folder in (("isic2019", "isic2019-sample"), ("isic2020", "isic2020-sample")):
        manifest = make_manifest(read_dataset(data_root / folder, check_images=False),
                                 ratios=(0.85, 0.15, 0.0), seed=seed)
        add(name, manifest, manifest.rows)
    return sites, test_path, report
