"""Split manifests: the one record of which image is in which split.

A manifest is a JSON file (image, group, label, split, sha256 per row, plus the vocabulary,
seed and ratios). Training, evaluation and every later stage read the split from it, on this
machine or another, and :func:`load_manifest` refuses it when it was edited by hand into
something the split never was (unknown splits or labels, an image listed twice, a path out of
the dataset folder, rows that no longer match ``split_hash``) or when an image changed since.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from skinedge.data.classes import NOT_POSITIVE_LABEL, ClassVocabulary, get_vocabulary
from skinedge.data.paths import OPT_IN, OutsideRootError, normalize_image_path, resolve_inside
from skinedge.data.reading import Dataset
from skinedge.data.records import Record
from skinedge.data.splits import SPLITS, check_ratios, sparse_class_warnings, split_groups
from skinedge.errors import ConfigError, DataError
from skinedge.utils.io import atomic_write_text, sha256_file
from skinedge.utils.provenance import created_time

SCHEMA = "skinedge.manifest/1"


@dataclass(frozen=True)
class ManifestRow:
    image: str
    group: str
    label: str  # a class code, or NOT_POSITIVE_LABEL (a partial label) in a multi-source split
    split: str
    sha256: str
    source: str = ""  # the source folder's name in a multi-source split


@dataclass(frozen=True)
class Source:
    """One dataset folder of a multi-source split.

    Attributes:
        name: The folder, relative to the manifest's root (``isic2020-sample``); rows of this
            source have images under it and groups prefixed with it.
        layout: Layout the folder was read with.
        classes: The folder's own vocabulary, mapped into the manifest's by
            :func:`skinedge.data.classes.map_label`.
        split_hash: The split hash of this folder split on its own (``skinedge data split
            FOLDER`` with the same seed and ratios): a model trained on that split is scored
            on the same test images here, but for ``moved`` and ``dropped``.
        moved: Images put in another split than their standalone one, to follow a copy of
            theirs in an earlier source (see :mod:`skinedge.data.sources`).
        dropped: Images left out because their copies in earlier sources sit in two splits.
    """

    name: str
    layout: str
    classes: str
    split_hash: str
    moved: int = 0
    dropped: int = 0


def _row_dict(row: ManifestRow) -> dict:
    """A row as stored; a single-source row has no ``source`` (its hash is as it always was)."""
    out = asdict(row)
    if not out["source"]:
        del out["source"]
    return out


@dataclass
class Manifest:
    """A dataset split; ``root`` is where the images are on this machine."""

    root: Path
    layout: str
    classes: str
    seed: int
    ratios: tuple[float, float, float]
    rows: list[ManifestRow]
    created: str = field(default_factory=created_time)
    # The split was made with --allow-outside-root: rows may name images outside ``root``.
    allow_outside_root: bool = False
    # Images stored sideways or flipped whose EXIF orientation is applied when they are read.
    exif_oriented: list[str] = field(default_factory=list)
    # Several folders in one split (``skinedge data split A B C``); empty for one folder.
    sources: list[Source] = field(default_factory=list)

    @property
    def vocabulary(self) -> ClassVocabulary:
        return get_vocabulary(self.classes)

    @property
    def split_hash(self) -> str:
        """Hash of the rows (not of where they lie): identifies the split across machines."""
        payload = json.dumps([_row_dict(r) for r in self.rows], sort_keys=True).encode()
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

    @property
    def partial(self) -> int:
        """Rows labelled only "not melanoma" (:data:`NOT_POSITIVE_LABEL`)."""
        return sum(r.label == NOT_POSITIVE_LABEL for r in self.rows)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class (and ``not-mel`` when some rows carry that partial label)."""
        table = Counter((r.split, r.label) for r in self.rows)
        labels = [*self.vocabulary.codes, *([NOT_POSITIVE_LABEL] if self.partial else [])]
        return {s: {c: table.get((s, c), 0) for c in labels} for s in SPLITS}

    def source_counts(self) -> dict[str, dict[str, int]]:
        """Images per source and split (a multi-source split; empty otherwise)."""
        table = Counter((r.source, r.split) for r in self.rows)
        return {s.name: {split: table.get((s.name, split), 0) for split in SPLITS}
                for s in self.sources}

    def source_roots(self) -> list[Path]:
        """The dataset folders: each source's, or the root of a single-folder split."""
        return [self.root / s.name for s in self.sources] or [self.root]

    def class_warnings(self) -> list[str]:
        """Classes this split cannot serve: empty, a single image or lesion, or too few lesions
        to appear in every split (see :func:`skinedge.data.splits.sparse_class_warnings`)."""
        return sparse_class_warnings(self.rows, self.vocabulary.codes, self.ratios)

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
            "class_warnings": self.class_warnings(),
            "allow_outside_root": self.allow_outside_root,
            "exif_oriented": self.exif_oriented,
            **({"sources": [asdict(s) for s in self.sources],
                "source_counts": self.source_counts()} if self.sources else {}),
            "rows": [_row_dict(r) for r in self.rows],
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
    allow_outside_root: bool = False,
) -> Manifest:
    """Split a dataset by group and record every file's hash.

    ``allow_outside_root`` records that the dataset was read with ``--allow-outside-root``, so
    that :func:`load_manifest` accepts its rows that lie outside the root.

    Files with identical bytes under different names (ISIC 2019 re-ships HAM10000 images, ISIC
    2020 lists duplicates) put their groups together, so a copy cannot sit in train while its
    twin is in test. The ``group`` column keeps the original lesion/patient id.
    """
    hashes = _hash_files(dataset.root, [r.image for r in dataset.records], progress)
    merged = merge_groups_sharing_files(dataset.records, hashes)
    assignment = split_groups(
        [Record(r.image, merged[r.group], r.label, r.source) for r in dataset.records],
        ratios, seed)
    rows = [
        ManifestRow(r.image, r.group, r.label, assignment[merged[r.group]], hashes[r.image])
        for r in dataset.records
    ]
    kept = {r.image for r in dataset.records}
    return Manifest(dataset.root.resolve(), dataset.layout, dataset.vocabulary.name, seed,
                    tuple(ratios), rows, allow_outside_root=allow_outside_root,
                    exif_oriented=[image for image in dataset.exif_rotated if image in kept])


def merge_groups_sharing_files(records: Sequence[Record], hashes: dict[str, str]) -> dict[str, str]:
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
    allow_outside_root: bool = False,
) -> Manifest:
    """Load a manifest, check it against itself, and check that its images are unchanged.

    Args:
        path: Manifest JSON.
        root: Where the images are on this machine; defaults to the recorded root, then to
            ``$SKINEDGE_DATA/<folder name of the recorded root>``.
        verify: Hash every file and refuse the manifest when one is missing or changed.
        allow_outside_root: Accept rows whose image lies outside the root (also accepted when
            the manifest records that its split was made with ``--allow-outside-root``).

    Raises:
        DataError: not a manifest of this schema; a missing or mistyped field; a row with an
            unknown split or label, an image listed twice or lying outside the root; rows that
            do not match the stored ``split_hash``. One line per kind of problem.
        ManifestMismatchError: files missing or changed; lists every one.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable manifest ({exc}); restore it, or make a new "
                        "one with `skinedge data split`") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not a manifest (a JSON {_json_kind(doc)}, not an object); "
                        "make a new one with `skinedge data split`")
    if doc.get("schema") != SCHEMA:
        raise DataError(f"{path}: schema {doc.get('schema')!r} is not {SCHEMA!r}")
    try:
        fields = _ManifestDoc.model_validate(doc)
    except ValidationError as exc:
        raise _invalid(path, _schema_problems(exc, doc)) from None
    sources = [Source(**s.model_dump()) for s in fields.sources]
    manifest = Manifest(
        root=_resolve_root(Path(fields.root), root, sources), layout=fields.layout,
        classes=fields.classes, seed=fields.seed, ratios=fields.ratios,
        rows=[ManifestRow(**r.model_dump()) for r in fields.rows], created=fields.created,
        allow_outside_root=fields.allow_outside_root, exif_oriented=fields.exif_oriented,
        sources=sources,
    )
    problems = _row_problems(manifest, allow_outside_root or fields.allow_outside_root)
    if fields.split_hash != manifest.split_hash:
        problems.add(f"split_hash {fields.split_hash[:12]} does not match its rows "
                     f"({manifest.split_hash[:12]}): the rows were edited after the split; "
                     "make a new split with `skinedge data split`")
    if problems:
        raise _invalid(path, problems)
    if verify:
        _verify(manifest, path, progress)
    return manifest


class _RowDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str
    group: str
    label: str
    split: str
    sha256: str
    source: str = ""


class _SourceDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    layout: str
    classes: str
    split_hash: str
    moved: int = 0
    dropped: int = 0


class _ManifestDoc(BaseModel):
    """The fields :func:`load_manifest` reads (``counts`` and the like are derived: ignored)."""

    created: str
    root: str
    layout: str
    classes: str
    seed: int
    ratios: tuple[float, float, float]
    split_hash: str
    allow_outside_root: bool = False
    exif_oriented: list[str] = []
    sources: list[_SourceDoc] = []
    rows: list[_RowDoc]


class _Problems:
    """A manifest's problems, one line per kind: a count and the first few rows."""

    SHOWN = 3

    def __init__(self) -> None:
        self._kinds: dict[str, tuple[list[str], str]] = {}

    def add(self, kind: str, where: str | None = None, hint: str = "") -> None:
        where_list, _ = self._kinds.setdefault(kind, ([], hint))
        if where is not None:
            where_list.append(where)

    def __bool__(self) -> bool:
        return bool(self._kinds)

    def lines(self) -> list[str]:
        out = []
        for kind, (where, hint) in self._kinds.items():
            line = f"  {kind}"
            if where:
                count = f" ({len(where)} rows)" if len(where) > 1 else ""
                more = f"; ... ({len(where) - self.SHOWN} more)" if len(where) > self.SHOWN else ""
                line += f"{count}: " + "; ".join(where[:self.SHOWN]) + more
            out.append(line + (f"; {hint}" if hint else ""))
        return out


def _invalid(path: Path, problems: _Problems) -> DataError:
    return DataError(f"{path}: not a valid manifest:\n" + "\n".join(problems.lines())
                     + "\nRestore the manifest, or make a new split with `skinedge data split`.")


def _json_kind(value: object) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _schema_problems(exc: ValidationError, doc: dict) -> _Problems:
    """pydantic's errors, grouped by field; rows named by their index and image."""
    problems = _Problems()
    rows = doc.get("rows") if isinstance(doc.get("rows"), list) else []
    for error in exc.errors():
        loc, message = error["loc"], error["msg"]
        if error["type"] == "missing":
            message = "missing"
        if len(loc) >= 2 and loc[0] == "rows" and isinstance(loc[1], int):
            name = ".".join(map(str, loc[2:]))
            kind = f"field {name!r} of a row: {message}" if name else f"row: {message}"
            problems.add(kind, _row_name(loc[1], rows[loc[1]]))
        else:
            problems.add(f"field {'.'.join(map(str, loc[:1]))!r}: {message}")
    return problems


def _row_name(index: int, row: object) -> str:
    image = row.get("image") if isinstance(row, dict) else None
    return f"rows[{index}] {image}" if isinstance(image, str) else f"rows[{index}]"


def _row_problems(manifest: Manifest, allow_outside_root: bool) -> _Problems:
    """What a hand edit can break in well-typed rows: splits, labels, duplicates, paths."""
    problems = _Problems()
    try:
        check_ratios(manifest.ratios)
    except ConfigError as exc:
        problems.add(f"field 'ratios': {exc}")
    try:
        codes = manifest.vocabulary.codes
    except ConfigError as exc:
        problems.add(f"field 'classes': {exc}")
        codes = None
    if not manifest.rows:
        problems.add("field 'rows': no rows")
    seen: dict[str, list[int]] = defaultdict(list)
    sources = {s.name for s in manifest.sources}
    for name, n in Counter(s.name for s in manifest.sources).items():
        if n > 1:
            problems.add(f"source {name!r} listed {n} times")
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            problems.add(f"source name {name!r} is not a folder name",
                         hint="a source is a folder directly under the root")
    labels = codes
    if codes is not None and sources and manifest.vocabulary.positive in codes:
        labels = (*codes, NOT_POSITIVE_LABEL)
    for i, r in enumerate(manifest.rows):
        name = f"rows[{i}] {r.image}"
        if r.split not in SPLITS:
            problems.add("unknown split", f"{name}: {r.split!r}",
                         hint=f"valid splits are {', '.join(SPLITS)}")
        if labels is not None and r.label not in labels:
            problems.add(f"label not in the {manifest.classes} classes", f"{name}: {r.label!r}",
                         hint=f"valid labels are {', '.join(labels)}")
        if r.source and r.source not in sources:
            problems.add("row of no listed source", f"{name}: {r.source!r}",
                         hint=f"sources are {', '.join(sorted(sources)) or 'none (one folder)'}")
        elif r.source and not normalize_image_path(r.image).startswith(f"{r.source}/"):
            problems.add("row outside its source's folder", f"{name}: source {r.source!r}",
                         hint="a source's images lie in its folder under the root")
        seen[normalize_image_path(r.image)].append(i)
        try:
            resolve_inside(manifest.root, r.image, allow_outside=allow_outside_root)
        except OutsideRootError as exc:
            problems.add("image outside the dataset folder", f"{name}: resolves to {exc.resolved}",
                         hint=f"images must lie inside {manifest.root} (a split made with "
                         f"`skinedge data split {OPT_IN}` records that opt-in)")
    for image, indices in seen.items():
        if len(indices) > 1:
            where = " and ".join(f"rows[{i}] ({manifest.rows[i].split})" for i in indices)
            problems.add("image listed more than once", f"{image} in {where}",
                         hint="an image belongs to one row of one split")
    return problems


def _resolve_root(recorded: Path, override: Path | str | None,
                  sources: Sequence[Source] = ()) -> Path:
    """Where the images are: ``override``, the recorded root, or under ``$SKINEDGE_DATA``
    (the recorded folder's name there; for a multi-source split, ``$SKINEDGE_DATA`` itself
    when it holds every source folder)."""
    if override is not None:
        return Path(override).resolve()
    if recorded.is_dir():
        return recorded
    env = os.environ.get("SKINEDGE_DATA")
    if env and sources and all((Path(env) / s.name).is_dir() for s in sources):
        return Path(env).resolve()
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
            + "\nRestore the original files; if they moved, set SKINEDGE_DATA to the folder "
            f"that holds {manifest.root.name}/ (or, for training, "
            "`skinedge train --set data.root=FOLDER`); or make a new split with "
            "`skinedge data split` (results of the old split are then not comparable)."
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
