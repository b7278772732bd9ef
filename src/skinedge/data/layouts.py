"""Readers for the dataset layouts users actually download.

Each reader turns a dataset folder into :class:`Record` rows plus a list of
:class:`DataProblem` for rows it could not take. Readers are registered by name; detection
tries them in order and picks the first whose marker file is present. Every image path a reader
takes is resolved with :func:`skinedge.data.paths.resolve_inside`: a row (or a symlink) that
leads outside the folder is an ``outside-root`` problem, never opened, unless the caller opts
in with ``allow_outside_root``.

| layout       | marker                                             | group column       |
|--------------|----------------------------------------------------|--------------------|
| labels-csv   | ``labels.csv`` (image, lesion_id, dx)              | lesion_id/patient  |
| ham10000     | ``HAM10000_metadata.csv`` (+ image folders)        | lesion_id          |
| isic2018     | one-hot CSV: image, MEL, NV, BCC, AKIEC, BKL, ...  | lesion groupings   |
| isic2019     | one-hot CSV: image, MEL, ..., SCC, UNK             | metadata lesion_id |
| isic2020     | ``train.csv`` / ground truth with image_name, target | patient_id       |
| folders      | one sub-folder per class                           | image              |
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from skinedge.data.paths import ImagePathError, resolve_inside
from skinedge.data.records import DataProblem, Record
from skinedge.errors import ConfigError, DataError, NotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: ``reader(root, allow_outside_root=False) -> (records, problems)``
ReaderFn = Callable[..., tuple[list[Record], list[DataProblem]]]


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    detect: Callable[[Path], bool]
    read: ReaderFn


LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, description: str, detect: Callable[[Path], bool]):
    def wrap(fn: ReaderFn) -> ReaderFn:
        LAYOUTS[name] = Layout(name, description, detect, fn)
        return fn

    return wrap


def detect_layout(root: Path) -> str:
    """Name of the first layout whose marker is found in ``root``.

    Raises:
        NotFoundError: root is missing.
        DataError: nothing matched; the message lists what each layout looks for.
    """
    if not root.is_dir():
        raise NotFoundError(f"dataset folder {root} does not exist")
    for layout in LAYOUTS.values():
        if layout.detect(root):
            return layout.name
    expected = "\n".join(f"  {lay.name}: {lay.description}" for lay in LAYOUTS.values())
    raise DataError(
        f"cannot tell the layout of {root}; expected one of:\n{expected}\n"
        "or name it with --layout"
    )


def read_layout(
    root: Path, layout: str | None = None, *, allow_outside_root: bool = False,
) -> tuple[list[Record], list[DataProblem]]:
    """Read a dataset folder with the named (or detected) layout.

    Args:
        root: Dataset folder.
        layout: Layout name; detected when None.
        allow_outside_root: Take image paths (and symlinks) that lead outside ``root``; by
            default each is an ``outside-root`` problem.
    """
    name = layout or detect_layout(root)
    if name not in LAYOUTS:
        raise ConfigError(f"unknown layout {name!r}; choose one of: {', '.join(LAYOUTS)}")
    return LAYOUTS[name].read(root, allow_outside_root=allow_outside_root)


# --------------------------------------------------------------------------- helpers


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Rows of a CSV with their 1-based line numbers (header is line 1).

    Raises:
        DataError: the file cannot be read, or is not UTF-8 text.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [(i, {k: (v or "").strip() for k, v in row.items() if k}) for i, row in
                    enumerate(reader, start=2)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as "
                        "a UTF-8 CSV") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    return header, rows


def _is_inside(root: Path, image: str, source: str, problems: list[DataProblem],
               allow_outside: bool) -> bool:
    """Whether ``image`` may be read; when not, an ``outside-root`` (or ``bad-path``) problem."""
    try:
        resolve_inside(root, image, allow_outside=allow_outside)
    except ImagePathError as exc:
        problems.append(DataProblem(source, exc.kind, exc.reason))
        return False
    return True


def _index_images(root: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Map image stem -> path for every image under root; stems seen twice are ambiguous."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.setdefault(path.stem, []).append(path)
    unique = {stem: paths[0] for stem, paths in found.items() if len(paths) == 1}
    ambiguous = {stem: paths for stem, paths in found.items() if len(paths) > 1}
    return unique, ambiguous


def _resolve_by_id(
    image_id: str, root: Path, index: dict[str, Path], ambiguous: dict[str, list[Path]],
    source: str, problems: list[DataProblem], allow_outside: bool,
) -> str | None:
    stem = Path(image_id).stem if Path(image_id).suffix.lower() in IMAGE_SUFFIXES else image_id
    if stem in ambiguous:
        where = ", ".join(str(p.relative_to(root)) for p in ambiguous[stem])
        problems.append(DataProblem(
            source, "ambiguous-file", f"image {image_id} exists more than once ({where}); "
            "keep one copy"))
        return None
    path = index.get(stem)
    if path is None:
        problems.append(DataProblem(
            source, "missing-file", f"no image file named {stem}.* under {root}; "
            "restore the file or remove the row"))
        return None
    image = path.relative_to(root).as_posix()
    if not _is_inside(root, image, source, problems, allow_outside):  # a symlink leading out
        return None
    return image


def _require_columns(path: Path, header: list[str], needed: tuple[str, ...]) -> None:
    if not header:
        raise DataError(f"{path}: the file is empty (no header row); it needs a header with the "
                        f"columns {list(needed)} and one row per image")
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; found {header}. "
            "Check the file or name another --layout"
        )


def _one_hot_label(
    row: dict[str, str], classes: tuple[str, ...], source: str, problems: list[DataProblem]
) -> str | None:
    try:
        hot = [c for c in classes if float(row[c]) >= 0.5]
    except ValueError:
        problems.append(DataProblem(source, "bad-value", "class columns must be 0 or 1"))
        return None
    if len(hot) != 1:
        problems.append(DataProblem(
            source, "bad-value",
            f"one-hot row has {len(hot)} classes set ({hot}); exactly one must be 1"))
        return None
    return hot[0].lower()


def _find_csv(root: Path, predicate: Callable[[list[str]], bool]) -> Path | None:
    """First CSV in root, or one folder down (the official ISIC zips unpack into a folder)."""
    for path in [*sorted(root.glob("*.csv")), *sorted(root.glob("*/*.csv"))]:
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                header = [h.strip() for h in next(csv.reader(f), [])]
        except (OSError, UnicodeDecodeError):
            continue
        if predicate(header):
            return path
    return None


# --------------------------------------------------------------------------- layouts


@register_layout(
    "labels-csv", "labels.csv with columns image, dx and optionally lesion_id / patient_id",
    lambda root: (root / "labels.csv").is_file(),
)
def read_labels_csv(
    root: Path, *, allow_outside_root: bool = False,
) -> tuple[list[Record], list[DataProblem]]:
    """``labels.csv`` (image, lesion_id, dx), image paths relative to the folder.

    Rows without a lesion_id take the patient_id of the same row, else of ``metadata.csv``
    beside it (the ISIC 2020 sample keeps patients there), else the image itself.
    """
    path = root / "labels.csv"
    header, rows = _read_csv(path)
    _require_columns(path, header, ("image", "dx"))
    patients: dict[str, str] = {}
    meta = root / "metadata.csv"
    if meta.is_file():
        meta_header, meta_rows = _read_csv(meta)
        if "image" in meta_header and "patient_id" in meta_header:
            patients = {r["image"]: r["patient_id"] for _, r in meta_rows if r.get("patient_id")}
    records, problems = [], []
    for line, row in rows:
        source = f"{path.name}:{line}"
        image = row.get("image", "")
        if not image:
            problems.append(DataProblem(source, "bad-value", "empty image column"))
            continue
        # Before looking at the file: a row must not make us probe paths outside the folder.
        if not _is_inside(root, image, source, problems, allow_outside_root):
            continue
        if not (root / image).is_file():
            problems.append(DataProblem(
                source, "missing-file",
                f"image {image} not found in {root}; restore it or remove the row"))
            continue
        group = row.get("lesion_id") or row.get("patient_id") or patients.get(image) or image
        records.append(Record(image, group, row.get("dx", ""), source))
    return records, problems


@register_layout(
    "ham10000", "HAM10000_metadata.csv (image_id, lesion_id, dx) and image folders",
    lambda root: (root / "HAM10000_metadata.csv").is_file()
    or (root / "HAM10000_metadata").is_file(),
)
def read_ham10000(
    root: Path, *, allow_outside_root: bool = False,
) -> tuple[list[Record], list[DataProblem]]:
    """Harvard Dataverse HAM10000: metadata CSV plus ``HAM10000_images_part_{1,2}``."""
    path = root / "HAM10000_metadata.csv"
    if not path.is_file():
        path = root / "HAM10000_metadata"
    header, rows = _read_csv(path)
    _require_columns(path, header, ("image_id", "lesion_id", "dx"))
    index, ambiguous = _index_images(root)
    records, problems = [], []
    for line, row in rows:
        source = f"{path.name}:{line}"
        image = _resolve_by_id(row["image_id"], root, index, ambiguous, source, problems,
                               allow_outside_root)
        if image:
            records.append(Record(image, row["lesion_id"] or image, row["dx"], source))
    return records, problems


_ISIC2018_COLUMNS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
_ISIC2019_COLUMNS = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")


def _is_isic2018(header: list[str]) -> bool:
    return "image" in header and all(c in header for c in _ISIC2018_COLUMNS)


def _is_isic2019(header: list[str]) -> bool:
    return "image" in header and all(c in header for c in _ISIC2019_COLUMNS)


def _read_one_hot(
    root: Path, gt_path: Path, classes: tuple[str, ...], groups: dict[str, str],
    allow_outside: bool,
) -> tuple[list[Record], list[DataProblem]]:
    _, rows = _read_csv(gt_path)
    index, ambiguous = _index_images(root)
    records, problems = [], []
    for line, row in rows:
        source = f"{gt_path.relative_to(root)}:{line}"
        label = _one_hot_label(row, classes, source, problems)
        image = _resolve_by_id(row["image"], root, index, ambiguous, source, problems,
                               allow_outside)
        if label and image:
            records.append(Record(image, groups.get(row["image"]) or image, label, source))
    return records, problems


def _groups_from(root: Path, predicate: Callable[[list[str]], bool], key: str, col: str):
    path = _find_csv(root, predicate)
    if path is None:
        return {}
    _, rows = _read_csv(path)
    return {r[key]: r[col] for _, r in rows if r.get(col)}


@register_layout(
    "isic2018", "ISIC 2018 Task 3 one-hot ground truth (image, MEL, NV, BCC, AKIEC, BKL, DF, VASC)",
    lambda root: _find_csv(root, lambda h: _is_isic2018(h) and "AK" not in h) is not None,
)
def read_isic2018(
    root: Path, *, allow_outside_root: bool = False,
) -> tuple[list[Record], list[DataProblem]]:
    """ISIC 2018 Task 3; lesion ids from ``*LesionGroupings.csv`` when present."""
    gt = _find_csv(root, lambda h: _is_isic2018(h) and "AK" not in h)
    groups = _groups_from(root, lambda h: "image" in h and "lesion_id" in h, "image", "lesion_id")
    return _read_one_hot(root, gt, _ISIC2018_COLUMNS, groups, allow_outside_root)


@register_layout(
    "isic2019", "ISIC 2019 one-hot ground truth (image, MEL, ..., SCC, UNK)",
    lambda root: _find_csv(root, _is_isic2019) is not None,
)
def read_isic2019(
    root: Path, *, allow_outside_root: bool = False,
) -> tuple[list[Record], list[DataProblem]]:
    """ISIC 2019; lesion ids from ``ISIC_2019_Training_Metadata.csv`` when present."""
    gt = _find_csv(root, _is_isic2019)
    groups = _groups_from(
        root, lambda h: "image" in h and "lesion_id" in h and not _is_isic2019(h),
        "image", "lesion_id",
    )
    return _read_one_hot(root, gt, _ISIC2019_COLUMNS, groups, allow_outside_root)


def _is_isic2020(header: list[str]) -> bool:
    # patient_id is required: Kaggle's sample_submission.csv (image_name, target) sorts before
    # train.csv and lists the unlabelled test images with target 0.
    return all(c in header for c in ("image_name", "patient_id", "target"))


@register_layout(
    "isic2020", "ISIC 2020 train.csv / ground truth (image_name, patient_id, target)",
    lambda root: _find_csv(root, _is_isic2020) is not None,
)
def read_isic2020(
    root: Path, *, allow_outside_root: bool = False,
) -> tuple[list[Record], list[DataProblem]]:
    """SIIM-ISIC 2020: binary target (0 benign, 1 melanoma), grouped by patient_id."""
    path = _find_csv(root, _is_isic2020)
    _, rows = _read_csv(path)
    index, ambiguous = _index_images(root)
    records, problems = [], []
    for line, row in rows:
        source = f"{path.name}:{line}"
        if row["target"] not in ("0", "1"):
            problems.append(DataProblem(source, "unknown-label",
                                        f"target {row['target']!r} must be 0 or 1"))
            continue
        image = _resolve_by_id(row["image_name"], root, index, ambiguous, source, problems,
                               allow_outside_root)
        if image:
            label = "mel" if row["target"] == "1" else "benign"
            records.append(Record(image, row.get("patient_id") or image, label, source))
    return records, problems


def _has_class_folders(root: Path) -> bool:
    return any(
        d.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir())
        for d in root.iterdir()
    )


@register_layout(
    "folders", "one sub-folder per class (nv/, mel/, ...) holding its images",
    _has_class_folders,
)
def read_class_folders(
    root: Path, *, allow_outside_root: bool = False,
) -> tuple[list[Record], list[DataProblem]]:
    """One folder per class; every image is its own group (no lesion ids are known).

    A class folder or an image that is a symlink leading outside ``root`` is an
    ``outside-root`` problem.
    """
    records: list[Record] = []
    problems: list[DataProblem] = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                rel = path.relative_to(root).as_posix()
                if _is_inside(root, rel, rel, problems, allow_outside_root):
                    records.append(Record(rel, rel, folder.name, rel))
    return records, problems
