"""Split manifests: the one record of which image is in which split.

A manifest is a JSON file (image, group, label, split, sha256 per row, plus the vocabulary,
seed and ratios). Training, evaluation and every later stage read the split from it, on this
machine or another, and :func:`load_manifest` refuses it when an image changed since.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skinedge.data.classes import ClassVocabulary, get_vocabulary
from skinedge.data.reading import Dataset
from skinedge.data.records import Record
from skinedge.data.splits import SPLITS, split_groups
from skinedge.errors import ConfigError, DataError
from skinedge.utils.io import atomic_write_text, sha256_file

SCHEMA = "skinedge.manifest/1"


@dataclass(frozen=True)
class ManifestRow:
    image: str
    group: str
    label: str
    split: str
    sha256: str


@dataclass
class Manifest:
    """A dataset split; ``root`` is where the images are on this machine."""

    root: Path
    layout: str
    classes: str
    seed: int
    ratios: tuple[float, float, float]
    rows: list[ManifestRow]
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def vocabulary(self) -> ClassVocabulary:
        return get_vocabulary(self.classes)

    @property
    def split_hash(self) -> str:
        """Hash of the rows (not of where they lie): identifies the split across machines."""
        payload = json.dumps([asdict(r) for r in self.rows], sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    def subset(self, split: str) -> list[ManifestRow]:
        if split not in (*SPLITS, "all"):
            raise ConfigError(f"unknown split {split!r}; choose one of {(*SPLITS, 'all')}")
        return list(self.rows) if split == "all" else [r for r in self.rows if r.split == split]

    @property
    def ungrouped(self) -> int:
        """Rows without a lesion/patient id: each is its own group, so near-identical photos
        of one lesion could straddle splits."""
        return sum(r.group == r.image for r in self.rows)

    @property
    def duplicate_files(self) -> int:
        """Rows whose bytes equal another row's (kept in one split by make_manifest)."""
        counts = Counter(r.sha256 for r in self.rows)
        return sum(n for n in counts.values() if n > 1)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        table = Counter((r.split, r.label) for r in self.rows)
        return {s: {c: table.get((s, c), 0) for c in self.vocabulary.codes} for s in SPLITS}

    def save(self, path: Path) -> Path:
        doc = {
            "schema": SCHEMA,
            "created": self.created,
            "root": str(self.root),
            "layout": self.layout,
            "classes": self.classes,
            "seed": self.seed,
            "ratios": list(self.ratios),
            "split_hash": self.split_hash,
            "counts": self.counts(),
            "ungrouped_rows": self.ungrouped,
            "duplicate_files": self.duplicate_files,
            "rows": [asdict(r) for r in self.rows],
        }
        return atomic_write_text(path, json.dumps(doc, indent=1))


def check_classes(manifest: Manifest, classes: Sequence[str], where: object,
                  model: object = "the model") -> None:
    """Refuse a manifest whose class vocabulary (codes, in order) is not a model's.

    Raises:
        DataError: naming ``where`` (the manifest) and ``model``.
    """
    codes = list(manifest.vocabulary.codes)
    if codes != list(classes):
        raise DataError(f"{where} has classes {codes} but {model} predicts {list(classes)}")


def make_manifest(
    dataset: Dataset,
    *,
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Split a dataset by group and record every file's hash.

    Files with identical bytes under different names (ISIC 2019 re-ships HAM10000 images, ISIC
    2020 lists duplicates) put their groups together, so a copy cannot sit in train while its
    twin is in test. The ``group`` column keeps the original lesion/patient id.
    """
    hashes = _hash_files(dataset.root, [r.image for r in dataset.records], progress)
    merged = _merge_groups_sharing_files(dataset.records, hashes)
    assignment = split_groups(
        [Record(r.image, merged[r.group], r.label, r.source) for r in dataset.records],
        ratios, seed)
    rows = [
        ManifestRow(r.image, r.group, r.label, assignment[merged[r.group]], hashes[r.image])
        for r in dataset.records
    ]
    return Manifest(dataset.root.resolve(), dataset.layout, dataset.vocabulary.name, seed,
                    tuple(ratios), rows)


def _merge_groups_sharing_files(records: Sequence[Record], hashes: dict[str, str]) -> dict[str, str]:
    """Map group -> representative group, uniting groups that hold byte-identical files."""
    parent = {r.group: r.group for r in records}

    def find(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    first_group_of: dict[str, str] = {}
    for r in records:
        other = first_group_of.setdefault(hashes[r.image], r.group)
        a, b = find(other), find(r.group)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {group: find(group) for group in parent}


class ManifestMismatchError(DataError):
    """The images under the manifest's root are not the ones it was made from."""


def load_manifest(
    path: Path | str,
    *,
    root: Path | str | None = None,
    verify: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Load a manifest and check that its images are unchanged.

    Args:
        path: Manifest JSON.
        root: Where the images are on this machine; defaults to the recorded root, then to
            ``$SKINEDGE_DATA/<folder name of the recorded root>``.
        verify: Hash every file and refuse the manifest when one is missing or changed.

    Raises:
        ManifestMismatchError: files missing or changed; lists every one.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable manifest ({exc})") from exc
    if doc.get("schema") != SCHEMA:
        raise DataError(f"{path}: schema {doc.get('schema')!r} is not {SCHEMA!r}")
    try:
        manifest = Manifest(
            root=_resolve_root(Path(doc["root"]), root),
            layout=doc["layout"], classes=doc["classes"], seed=doc["seed"],
            ratios=tuple(doc["ratios"]), rows=[ManifestRow(**r) for r in doc["rows"]],
            created=doc["created"],
        )
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a valid manifest (bad or missing field {exc}); make a new "
                        "one with `skinedge data split`") from exc
    if verify:
        _verify(manifest, path, progress)
    return manifest


def _resolve_root(recorded: Path, override: Path | str | None) -> Path:
    if override is not None:
        return Path(override).resolve()
    if recorded.is_dir():
        return recorded
    env = os.environ.get("SKINEDGE_DATA")
    if env and (Path(env) / recorded.name).is_dir():
        return (Path(env) / recorded.name).resolve()
    return recorded


def _verify(manifest: Manifest, path: Path, progress) -> None:
    present, missing = [], []
    for r in manifest.rows:
        (present if (manifest.root / r.image).is_file() else missing).append(r)
    hashes = _hash_files(manifest.root, [r.image for r in present], progress)
    changed = [r for r in present if hashes[r.image] != r.sha256]
    if missing or changed:
        lines = [f"  {manifest.root / r.image}: missing" for r in missing]
        lines += [f"  {manifest.root / r.image}: changed since the manifest was made" for r in changed]
        raise ManifestMismatchError(
            f"{path}: {len(missing)} missing and {len(changed)} changed image(s):\n"
            + "\n".join(lines)
            + "\nRestore the original files, point --data at the right folder, or make a new "
            "split with `skinedge data split` (results of the old split are then not comparable)."
        )


def _hash_files(root: Path, images: list[str], progress) -> dict[str, str]:
    out = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for done, (image, digest) in enumerate(
            zip(images, pool.map(lambda i: sha256_file(root / i), images)), start=1
        ):
            out[image] = digest
            if progress:
                progress(done, len(images))
    return out
