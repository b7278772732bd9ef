"""Synthetic sets as data: kept GAN images that join a manifest's train split.

Made by :func:`skinedge.synth.candidates.select_synthetic`; read here, so the trainer never
imports GAN code.

A synthetic set is a folder with ``images/``, ``synthetic.json`` (one row per kept image: path,
class, seed, sha256; the split it was made for), ``ledger.csv`` (one row per candidate, kept or
rejected and why) and ``selection.json`` (thresholds, counts, the feature network).

Synthetic images only ever join the *train* split: :func:`augmented_train_set` adds them to
the manifest's train rows, validation and test are built from the manifest alone, and
:func:`load_synthetic_set` refuses a set made for another split, from a GAN that learned from
another split, or holding a file identical to any manifest image.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skinedge.data.classes import target_index
from skinedge.data.manifest import Manifest
from skinedge.errors import DataError
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
        DataError: unreadable, made for another split or vocabulary, files missing or changed,
            or a file identical to a manifest image (a real image must not pose as synthetic,
            and nothing may reach validation or test twice).
    """
    path = Path(path)
    folder = path.parent if path.name == SYNTHETIC else path
    try:
        doc = json.loads((folder / SYNTHETIC).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder}: not a synthetic set ({exc}); make one with "
                         "`skinedge gan select`") from exc
    if doc.get("schema") != SCHEMA:
        raise DataError(f"{folder / SYNTHETIC}: schema {doc.get('schema')!r} is not {SCHEMA!r}")
    if doc.get("split_hash") != manifest.split_hash or doc.get("classes") != manifest.classes:
        raise DataError(
            f"{folder} was selected for split {str(doc.get('split_hash'))[:12]} ({doc.get('classes')}), not for "
            f"this manifest's {manifest.split_hash[:12]} ({manifest.classes}); its GAN may have "
            "seen this split's validation or test images. Select again for this manifest.")
    try:
        synthetic = SyntheticSet(folder.resolve(), doc["split_hash"], doc["classes"],
                                 [SyntheticRow(**r) for r in doc["rows"]], doc.get("source", {}))
    except (KeyError, TypeError) as exc:
        raise DataError(f"{folder / SYNTHETIC}: not a valid synthetic set (bad or missing field "
                        f"{exc}); select it again with `skinedge gan select`") from exc
    unknown = sorted({r.label for r in synthetic.rows} - set(manifest.vocabulary.codes))
    if unknown:
        raise DataError(f"{folder / SYNTHETIC}: classes {unknown} are not in the manifest")
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
            raise DataError(f"{folder}: {len(problems)} bad synthetic image(s):\n"
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
    targets = [target_index(manifest.vocabulary, r.label) for r in rows]
    if synthetic is not None:
        images += [str(synthetic.root / r.image) for r in synthetic.rows]
        targets += [codes.index(r.label) for r in synthetic.rows]
    return LesionDataset(manifest.root, images, targets, transform)
