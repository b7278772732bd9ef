"""``skinedge data``: split a dataset folder by lesion, download the public archives."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinedge.data.images import DEFAULT_MAX_PIXELS
from skinedge.errors import ConfigError

app = typer.Typer(help="Dataset folders: grouped splits and downloads.", no_args_is_help=True)


@app.command("split")
def split(
    data: Annotated[list[Path], typer.Argument(help="Dataset folder (labels.csv, HAM10000, ISIC 2018/2019/2020 or class folders); several side by side make one multi-source split.")],
    out: Annotated[Path, typer.Option(help="Manifest JSON to write.")],
    layout: Annotated[str | None, typer.Option(help="Layout name; detected when omitted.")] = None,
    classes: Annotated[str | None, typer.Option(help="isic2018, isic2019 or melanoma; inferred when omitted (several folders: their labels are mapped into it).")] = None,
    ratios: Annotated[tuple[float, float, float], typer.Option(help="train val test fractions.")] = (0.7, 0.15, 0.15),
    seed: Annotated[int, typer.Option(help="Shuffle seed of the split.")] = 0,
    skip_bad: Annotated[bool, typer.Option(help="Leave bad rows out and list them in skipped.csv beside the manifest.")] = False,
    check_images: Annotated[bool, typer.Option(help="Decode every image to catch broken files now.")] = True,
    max_pixels: Annotated[int, typer.Option(help="Refuse images larger than this (decompression bombs).")] = DEFAULT_MAX_PIXELS,
    allow_outside_root: Annotated[bool, typer.Option(
        "--allow-outside-root", help="Accept image paths and symlinks that lead outside the folder (a folder you trust).")] = False,
) -> None:
    """Make a stratified train/val/test split grouped by lesion (or patient) id, as a manifest.

    Several folders (HAM10000, ISIC 2019, ISIC 2020 style, side by side) are each split on
    their own, as one folder would be, and written as one manifest with their labels mapped
    into one vocabulary: ISIC 2020's 'benign' becomes the partial label 'not-mel'.
    """
    from rich.markup import escape

    from skinedge.cli.progress import CountProgress, console, make_progress
    from skinedge.data.classes import VOCABULARIES
    from skinedge.data.sources import split_folders
    from skinedge.data.splitting import split_folder

    label_hint = ("fix the row, or choose the class vocabulary with --classes "
                  f"({', '.join(VOCABULARIES)})")
    notes: list[str] = []
    with make_progress() as progress:
        if len(data) == 1:
            manifest, skipped_path = split_folder(
                data[0], out, layout=layout, classes=classes, ratios=ratios, seed=seed,
                skip_bad=skip_bad, check_images=check_images, max_pixels=max_pixels,
                progress=CountProgress(progress, "checking images"),
                allow_outside_root=allow_outside_root, label_hint=label_hint)
        else:
            made = split_folders(
                data, out, layout=layout, classes=classes, ratios=ratios, seed=seed,
                skip_bad=skip_bad, check_images=check_images, max_pixels=max_pixels,
                progress=lambda name: CountProgress(progress, f"checking {name}"),
                allow_outside_root=allow_outside_root, label_hint=label_hint)
            manifest, skipped_path, notes = made.manifest, made.skipped_report, made.notes
    console.print(_counts_table(manifest))
    if manifest.sources:
        console.print(_sources_table(manifest))
    if manifest.partial:
        console.print(f"{manifest.partial} image(s) are labelled only melanoma vs benign: their "
                      "'benign' is the partial label 'not-mel' (some class other than melanoma), "
                      "which training scores as -log(1 - p_mel)")
    for note in notes:
        console.print(f"[yellow]{escape(note)}[/]")
    if manifest.ungrouped:
        console.print(f"[yellow]{manifest.ungrouped} of {len(manifest.rows)} images have no "
                      "lesion or patient id: each is its own group, so photos of one lesion may "
                      "fall in different splits[/]")
    if manifest.duplicate_files:
        console.print(f"[yellow]{manifest.duplicate_files} images are byte-identical copies of "
                      "another; each set was kept within one split[/]")
    if manifest.exif_oriented:
        console.print(f"{len(manifest.exif_oriented)} image(s) carry an EXIF orientation (phone "
                      f"photos stored sideways, e.g. {manifest.exif_oriented[0]}); they are read "
                      "turned upright, as a photo viewer shows them (listed in the manifest)")
    for warning in manifest.class_warnings():
        console.print(f"[yellow]warning: {escape(warning)}[/]")
    if skipped_path:
        console.print(f"[yellow]skipped rows are listed in {skipped_path}[/]")
    console.print(f"manifest: {out} (split hash {manifest.split_hash[:12]})")


def _counts_table(manifest):
    from rich.table import Table

    table = Table(title=f"{manifest.root.name}: {manifest.layout}, {manifest.classes}")
    table.add_column("split")
    codes = list(next(iter(manifest.counts().values())))
    for code in codes:
        table.add_column(code, justify="right")
    table.add_column("images", justify="right")
    table.add_column("groups", justify="right")
    for split_name, counts in manifest.counts().items():
        groups = {r.group for r in manifest.rows if r.split == split_name}
        table.add_row(split_name, *[str(counts[c]) for c in codes], str(sum(counts.values())),
                      str(len(groups)))
    return table


@app.command("download")
def download(
    name: Annotated[str, typer.Argument(help="ham10000, isic2018-test or isic2020.")],
    dest: Annotated[Path, typer.Option(help="Folder to download and unpack into.")],
) -> None:
    """Fetch an official public archive, with checksums and resume (needs internet)."""
    from skinedge.cli.progress import console, make_progress
    from skinedge.data.download import DATASETS, download_dataset

    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    source = DATASETS[name]
    console.print(f"{source.description}\nlicence: {source.licence}\ncite: {source.citation}")
    tasks: dict[str, int] = {}
    with make_progress() as progress:
        def report(filename: str, done: int, total: int | None) -> None:
            if filename not in tasks:
                tasks[filename] = progress.add_task(filename, total=total, status="")
            progress.update(tasks[filename], completed=done, total=total)

        folder = download_dataset(name, dest, progress=report)
    if name == "isic2018-test":  # the challenge never published these labels
        console.print(f"ready: {folder} (images only, unlabelled: for predictions, not metrics)")
    else:
        console.print(f"ready: {folder}  (next: skinedge data split {folder} "
                      f"--out {folder}/manifest.json)")


def _sources_table(manifest):
    from rich.table import Table

    table = Table(title="images per source")
    for column in ("source", "classes", "train", "val", "test"):
        table.add_column(column, justify="left" if column in ("source", "classes") else "right")
    by_source = manifest.source_counts()
    for source in manifest.sources:
        counts = by_source[source.name]
        table.add_row(source.name, source.classes, *(str(counts[s]) for s in ("train", "val", "test")))
    return table
