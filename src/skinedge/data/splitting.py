"""``split_folder``: read, validate and split a labelled folder into a saved manifest."""

from __future__ import annotations

from pathlib import Path

from skinedge.data.images import DEFAULT_MAX_PIXELS
from skinedge.data.manifest import Manifest, make_manifest
from skinedge.data.paths import OUTSIDE_ROOT_HINT
from skinedge.data.reading import read_dataset
from skinedge.data.records import write_problem_report
from skinedge.data.splits import check_ratios


def split_folder(data: Path, out: Path, *, layout=None, classes=None, ratios=(0.7, 0.15, 0.15),
                 seed=0, skip_bad=False, check_images=True, max_pixels=DEFAULT_MAX_PIXELS,
                 progress=None, allow_outside_root=False, label_hint="fix the row", hint="",
                 outside_root_hint=OUTSIDE_ROOT_HINT) -> tuple[Manifest, Path | None]:
    """Split ``data`` into the manifest ``out``; (manifest, skipped-rows report or None).

    ``label_hint``, ``hint`` and ``outside_root_hint`` word the fixes of a bad folder for the
    calling command (see :func:`~skinedge.data.reading.read_dataset`).

    Classes the split cannot serve (empty, one image or lesion, too few lesions for every
    split) are listed by ``manifest.class_warnings()`` and saved in the manifest.
    """
    check_ratios(ratios)  # before the minutes spent decoding every image
    # When the folder has bad rows, every one of them is listed next to the manifest.
    problems_report = out.parent / f"{out.stem}.problems.csv"
    dataset = read_dataset(data, layout=layout, classes=classes, check_images=check_images,
                           skip_bad=skip_bad, max_pixels=max_pixels, progress=progress,
                           allow_outside_root=allow_outside_root, label_hint=label_hint,
                           hint=hint, outside_root_hint=outside_root_hint,
                           problems_report=problems_report)
    manifest = make_manifest(dataset, ratios=ratios, seed=seed,
                             allow_outside_root=allow_outside_root)
    manifest.save(out)
    skipped = None
    if dataset.skipped:
        skipped = write_problem_report(dataset.skipped, out.parent / f"{out.stem}.skipped.csv")
    return manifest, skipped
