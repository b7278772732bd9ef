"""Several dataset folders in one split: HAM10000, ISIC 2019 and ISIC 2020 style folders side by side.

``skinedge data split ham10000-sample isic2019-sample isic2020-sample --classes isic2018``
splits each folder on its own, exactly as ``skinedge data split FOLDER`` would (same seed and
ratios, grouped by its own lesion or patient ids, stratified by its own labels), and then
writes one manifest over all of them:

* the root is the folder that holds them; a row's image and group are prefixed with its folder
  (``isic2020-sample/images/ISIC_0169687.jpg``), and ``source`` names the folder;
* labels are mapped into the chosen vocabulary by :func:`skinedge.data.classes.map_label`
  (ISIC 2019's ``ak`` -> ``akiec``; ISIC 2020's ``benign`` -> the partial label ``not-mel``);
  a label with no class there (ISIC 2019's ``unk``) is a problem row, reported like any other;
* each source records the split hash of its standalone split, so a model trained on one folder
  is scored on the very test images it never saw;
* an image present in two folders (the same bytes, or the same ISIC image id: ISIC 2019 re-ships
  HAM10000) goes, with its whole group, where its copy in the earlier folder went, so a copy
  cannot sit in train while its twin is in test; an earlier folder's rows never move, and a
  group whose copies sit in two splits is left out. Both are counted per source and said.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from skinedge.data.classes import VOCABULARIES, map_label
from skinedge.data.images import DEFAULT_MAX_PIXELS
from skinedge.data.manifest import Manifest, ManifestRow, Source, make_manifest
from skinedge.data.paths import OUTSIDE_ROOT_HINT
from skinedge.data.reading import Dataset, read_dataset
from skinedge.data.records import (
    DataProblem,
    DataValidationError,
    write_problem_report,
)
from skinedge.data.splits import check_ratios
from skinedge.errors import ConfigError, DataError

#: Layout name of a multi-source manifest.
MULTI_SOURCE = "multi-source"

_ISIC_ID = re.compile(r"ISIC_\d{7}")


@dataclass
class SourcesSplit:
    """What :func:`split_folders` made: the manifest, the rows it left out, and notes."""

    manifest: Manifest
    skipped: list[DataProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped_report: Path | None = None


def split_folders(
    folders: Sequence[Path | str], out: Path, *, classes: str | None = None,
    layout: str | None = None, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
    skip_bad: bool = False, check_images: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
    allow_outside_root: bool = False, label_hint: str = "fix the row", hint: str = "",
    outside_root_hint: str = OUTSIDE_ROOT_HINT,
) -> SourcesSplit:
    """Split several folders into one manifest ``out`` (see the module docstring).

    Args:
        folders: Dataset folders, side by side under one parent (their names become the
            sources' names); the first copy of an image shared by two wins.
        classes: Vocabulary of the manifest; by default the first folder's, unless that one
            is melanoma vs benign and another folder has more classes.
        layout: One layout for every folder; detected per folder when None.
        progress: Called with a folder's name; returns the ``progress(done, total)`` callback
            for checking its images (or None).

    Raises:
        ConfigError: fewer than two folders, the same folder twice, folders not side by side,
            or vocabularies with no mapping between them.
        DataValidationError: bad rows in any folder (every one listed; with ``skip_bad`` they
            are left out and returned in ``skipped``), including labels with no class in
            ``classes``.
    """
    check_ratios(ratios)
    roots, names = _source_names(folders)
    problems_report = out.parent / f"{out.stem}.problems.csv"
    datasets: list[Dataset] = []
    for folder, name in zip(folders, names):
        datasets.append(read_dataset(
            folder, layout=layout, check_images=check_images, skip_bad=skip_bad,
            max_pixels=max_pixels, progress=progress(name) if progress else None,
            allow_outside_root=allow_outside_root, label_hint=label_hint, hint=hint,
            outside_root_hint=outside_root_hint, problems_report=problems_report))
    target = classes or default_classes([d.vocabulary.name for d in datasets])
    if target not in VOCABULARIES:
        raise ConfigError(f"unknown class vocabulary {target!r}; choose one of: "
                          f"{', '.join(sorted(VOCABULARIES))}")
    unmapped = [
        DataProblem(r.source if "/" in r.source else f"{name}/{r.source}", "unmapped-label",
                    f"label {r.label!r} ({d.vocabulary.name}) has no class in the {target} "
                    f"classes; {label_hint}")
        for d, name in zip(datasets, names) for r in d.records
        if map_label(r.label, d.vocabulary.name, target) is None
    ]
    if unmapped and not skip_bad:
        report = write_problem_report(unmapped, problems_report)
        raise DataValidationError(unmapped, hint=hint, report=report)
    problems_report.unlink(missing_ok=True)

    parts = [make_manifest(d, ratios=ratios, seed=seed, allow_outside_root=allow_outside_root)
             for d in datasets]
    manifest, notes = combine_manifests(roots[0].parent, names, parts, target)
    manifest.save(out)
    skipped = [p for d in datasets for p in d.skipped] + unmapped
    report = (write_problem_report(skipped, out.parent / f"{out.stem}.skipped.csv")
              if skipped else None)
    return SourcesSplit(manifest, skipped, notes, report)


def default_classes(vocabularies: Sequence[str]) -> str:
    """The first folder's vocabulary, or, when it is melanoma vs benign, the first with classes."""
    rich = [v for v in vocabularies if v != "melanoma"]
    return vocabularies[0] if vocabularies[0] != "melanoma" or not rich else rich[0]


def combine_manifests(root: Path, names: Sequence[str], parts: Sequence[Manifest],
                      classes: str) -> tuple[Manifest, list[str]]:
    """One manifest over the per-folder ``parts`` (each split on its own), labels mapped into
    ``classes``; rows whose label has no class there are left out (the caller reported them).

    Returns:
        (manifest, notes): notes say which rows followed a copy in an earlier source, and
        which were left out because their copies sit in two splits (counted per source in
        ``Source.moved`` and ``Source.dropped``).
    """
    rows: list[ManifestRow] = []
    oriented: list[str] = []
    for name, part in zip(names, parts):
        for r in part.rows:
            label = map_label(r.label, part.classes, classes)
            if label is None:
                continue
            rows.append(ManifestRow(f"{name}/{r.image}", f"{name}/{r.group}", label, r.split,
                                    r.sha256, source=name))
        oriented += [f"{name}/{image}" for image in part.exif_oriented]
    rows, moved, dropped = _follow_copies(rows)
    notes = [f"{n} image(s) of {source} are copies of images in an earlier source (same bytes "
             "or ISIC id), put in that copy's split and kept as rows of both sources; its "
             "splits differ from its standalone split by those rows" for source, n in moved.items()]
    left_out = Counter(r.source for r in dropped)
    notes += [f"{n} image(s) of {source} were left out: copies of theirs in earlier sources sit "
              f"in two splits (e.g. {next(r.image for r in dropped if r.source == source)})"
              for source, n in left_out.items()]
    sources = [Source(name, part.layout, part.classes, part.split_hash, moved.get(name, 0),
                      left_out.get(name, 0)) for name, part in zip(names, parts)]
    manifest = Manifest(root.resolve(), MULTI_SOURCE, classes, parts[0].seed, parts[0].ratios,
                        rows, allow_outside_root=any(p.allow_outside_root for p in parts),
                        exif_oriented=oriented, sources=sources)
    return manifest, notes


def source_of(manifest: Manifest, split_hash: str | None) -> str | None:
    """The source whose standalone split has ``split_hash`` (a model's card), or None."""
    return next((s.name for s in manifest.sources if s.split_hash == split_hash), None)


def _source_names(folders: Sequence[Path | str]) -> tuple[list[Path], list[str]]:
    """The folders, resolved, and their names; they must be distinct siblings."""
    if len(folders) < 2:
        raise ConfigError("a multi-source split needs two or more folders")
    roots = [Path(f).resolve() for f in folders]
    for folder, root in zip(folders, roots):
        if not root.is_dir():
            raise DataError(f"{folder}: not a folder; name dataset folders to split")
    parent = Path(os.path.commonpath(roots))
    if len(set(roots)) < len(roots) or any(r.parent != parent for r in roots):
        listed = ", ".join(str(f) for f in folders)
        raise ConfigError(f"the folders of a multi-source split must be distinct folders side by "
                          f"side in one parent folder (their names name the sources); got "
                          f"{listed}. Put them under one folder (symlinks will do)")
    return roots, [r.name for r in roots]


def _follow_copies(rows: list[ManifestRow]) -> tuple[list[ManifestRow], dict[str, int],
                                                   list[ManifestRow]]:
    """Rows of a later source whose group shares an image (bytes or ISIC id) with an earlier
    source take that copy's split, whole groups at a time; an earlier source's rows never move.
    A group whose copies sit in two splits of earlier sources is left out (it would put one
    image in two splits). Returns (rows kept, moved rows per source, rows left out)."""
    split_of_key: dict[str, str] = {}  # image key -> split, over the sources seen so far
    out, moved, dropped = [], {}, []
    for source in dict.fromkeys(r.source for r in rows):
        mine = [r for r in rows if r.source == source]
        wanted: dict[str, set[str]] = {}
        for r in mine:
            wanted.setdefault(r.group, set()).update(
                split_of_key[key] for key in _keys(r) if key in split_of_key)
        kept = []
        for r in mine:
            splits = wanted[r.group]
            if len(splits) > 1:
                dropped.append(r)
                continue
            if splits and (split := next(iter(splits))) != r.split:
                moved[source] = moved.get(source, 0) + 1
                r = replace(r, split=split)
            kept.append(r)
        for r in kept:
            for key in _keys(r):
                split_of_key.setdefault(key, r.split)
        out += kept
    return out, moved, dropped


def _keys(row: ManifestRow) -> list[str]:
    """What identifies a row's image across sources: its bytes, and its ISIC id if named so."""
    isic = _ISIC_ID.search(Path(row.image).name)
    return [row.sha256, *([isic.group(0)] if isic else [])]
