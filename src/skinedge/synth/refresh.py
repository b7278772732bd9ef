"""Refreshing a GAN and its synthetic set from new images (clinicians' corrections).

:func:`refresh_synthetic` fine-tunes a trained GAN (``train_gan(init_from=...)``) on the rare
classes of a split whose train part grew, samples candidates from it and selects them, as
``skinedge gan train|sample|select`` would::

    OUT/gan/             the fine-tuned run; gan/refreshed.json marks it finished
    OUT/candidates/      candidates.csv (written last: marks it finished), sample.json, images/
    OUT/selected/        the synthetic set for a training config's ``data.synthetic``
                         (synthetic.json, written last, marks it finished)
    OUT/refresh.json     the summary

Each step is skipped when its marker exists, and an interrupted fine-tune resumes from its
``last.pt``, so a killed refresh continues where it stopped.

The split may be a *base* split with train images added (the retrain pipeline's extended
manifest: val and test rows untouched). The source GAN and the selection classifier may have
learnt from that base split, given as ``base_manifest``: the extension is checked row by row,
so neither can have seen a validation or test image of the new split; selection is then told
to accept a classifier of the base split (``select_synthetic(classifier_splits=...)``), and
``refresh.json`` records the check.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skinedge.data.manifest import Manifest
from skinedge.errors import ConfigError, DataError
from skinedge.synth.selection import SelectionConfig
from skinedge.utils.io import atomic_write_text

if TYPE_CHECKING:
    from skinedge.synth.gan.trainer import GANCallbacks

GAN_DONE = "refreshed.json"  # in OUT/gan: the fine-tune finished
SUMMARY = "refresh.json"


def refresh_classes(manifest: Manifest, cfg: SelectionConfig | None = None,
                    new_images: Collection[str] | None = None) -> list[str]:
    """Classes worth refreshing: below the selection target on the train split
    (:func:`skinedge.synth.candidates.needed_counts`) and, with ``new_images`` (manifest image
    paths), among the classes those images add to. In vocabulary order."""
    from skinedge.synth.candidates import needed_counts

    needs = needed_counts(manifest, cfg)
    added = None if new_images is None else {
        r.label for r in manifest.subset("train") if r.image in set(new_images)}
    return [c for c, n in needs.items() if n > 0 and (added is None or c in added)]


def refresh_synthetic(
    gan_run: Path | str, manifest: Path | str, out: Path | str, *,
    classes: Sequence[str] | None = None, new_images: Collection[str] | None = None,
    kimg: float = 20.0, counts: dict[str, int] | None = None, oversample: float = 2.0,
    classifier: Path | str | None = None, base_manifest: Path | str | None = None,
    selection: SelectionConfig | None = None, seed: int = 0, truncation_psi: float = 1.0,
    gan_overrides: Sequence[str] = (), callbacks: GANCallbacks | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune ``gan_run`` on the train images of some classes, sample and select.

    Args:
        gan_run: A ``skinedge gan train`` run (class-conditional or per-class).
        manifest: The split to make a synthetic set for; only its train images of
            ``classes`` are shown to the GAN.
        out: Folder of the steps (see the module docstring).
        classes: Classes to refresh (default: :func:`refresh_classes` of ``new_images``).
        new_images: Train images that are new (manifest paths), for the default ``classes``.
        kimg: Length of the fine-tune, in thousands of real images shown.
        counts: Synthetic images wanted per class (default: what the selection target
            needs); ``oversample`` times as many candidates are generated. Selection keeps at
            most the class quota.
        classifier: Checkpoint for selection (features, confidence, near-copy filter). None:
            no selection, the first ``counts[c]`` candidates of each class by seed are kept
            (no filter runs, not even the near-copy one).
        base_manifest: The split ``gan_run`` and ``classifier`` learnt from, when it is not
            ``manifest``; ``manifest`` must be it plus train images.
        selection: Selection settings (target, thresholds).
        seed: Seed of the fine-tune and of the candidates.
        gan_overrides: ``a.b=c`` applied last to the fine-tune's config (the source run's own,
            with ``kimg``, ``seed`` and the classes set), e.g. ``threads=2``.
        callbacks: Progress hooks of the fine-tune.
        progress: ``progress(description, done, total)`` of sampling and selection.

    Returns:
        The selected set's folder, and the summary written to ``out/refresh.json``: classes,
        kimg, images shown per class, candidates and selected per class, wall seconds.

    Raises:
        ConfigError: no class to refresh, a class the GAN does not generate, a bad override.
        DataError: a GAN or classifier that learnt from a split other than ``manifest`` (or
            ``base_manifest`` when ``manifest`` extends it with train images only).
    """
    from skinedge.data import load_manifest
    from skinedge.synth.gan.networks import load_gans

    started = time.perf_counter()
    gan_run, out = Path(gan_run), Path(out)
    split = load_manifest(manifest)
    base = load_manifest(base_manifest) if base_manifest is not None else None
    if base is not None:
        check_train_extension(base, split, base_manifest, manifest)
    known_splits = {split.split_hash} | ({base.split_hash} if base else set())
    gans = load_gans(gan_run)
    source_splits = {g.split_hash for g in gans.values()}
    if not source_splits <= known_splits:
        raise DataError(f"GAN {gan_run} learnt from split {sorted(h[:12] for h in source_splits)}"
                        f", not from {manifest} ({split.split_hash[:12]})"
                        + (f" or {base_manifest}" if base else "") + ": it may have seen their "
                        "validation or test images; pass base_manifest= the split it learnt "
                        "from, or refresh a GAN trained on this split")
    selection = selection or SelectionConfig()
    classes = list(classes) if classes else refresh_classes(split, selection, new_images)
    if not classes:
        raise ConfigError(f"{manifest}: no class to refresh (none below the selection target "
                          "among the classes the new images add to); name them with classes")
    missing = sorted(set(classes) - set(gans))
    if missing:
        raise ConfigError(f"classes {missing}: GAN {gan_run} does not generate them; it has "
                          f"{sorted(gans)}")
    if counts is None:
        from skinedge.synth.candidates import needed_counts

        counts = {c: n for c, n in needed_counts(split, selection).items() if c in classes}
    wanted = {c: math.ceil(counts.get(c, 0) * oversample) for c in classes}
    wanted = {c: n for c, n in wanted.items() if n > 0}
    if not wanted:
        raise ConfigError(f"classes {classes} already reach the selection target "
                          f"({selection.target}) on {manifest}'s train split: nothing to "
                          "generate; give counts or a larger selection target")
    reused = []

    run = out / "gan"
    if (run / GAN_DONE).is_file():
        reused.append("gan")
    else:
        cfg = _finetune_config(gan_run, gans, split, manifest, classes, kimg, seed, gan_overrides)
        _fine_tune(cfg, gan_run, run, split, callbacks)

    candidates = out / "candidates"
    if (candidates / "candidates.csv").is_file():
        reused.append("candidates")
    else:
        from skinedge.synth.gan.sample import sample_candidates

        sample_candidates(run, wanted, candidates, seed=seed, truncation_psi=truncation_psi,
                          progress=progress)

    selected = out / "selected"
    chooser: dict[str, Any] = {"checkpoint": None}
    if classifier is not None:
        chooser = _selection_classifier(Path(classifier), split, base)
    if (selected / "synthetic.json").is_file():
        reused.append("selected")
    elif classifier is not None:
        from skinedge.synth.candidates import select_synthetic

        select_synthetic(candidates, split, selected, classifier=Path(classifier),
                         cfg=selection, progress=progress,
                         classifier_splits=[base.split_hash] if base else [])
    else:
        _first_by_seed(candidates, split, selected, {c: counts.get(c, 0) for c in wanted})

    kept = json.loads((selected / "synthetic.json").read_text())["counts"]
    shown = {c: sum(r.label == c for r in split.subset("train")) for c in classes}
    new = set(new_images or ())
    summary = {
        "gan_run": str(gan_run.resolve()), "gan": str(run.resolve()),
        "init_from": json.loads((run / "versions.json").read_text()).get("init_from"),
        "manifest": str(manifest), "split_hash": split.split_hash,
        "base_manifest": str(base_manifest) if base else None, "classes": classes,
        "kimg": kimg, "seed": seed, "images": shown,
        "new_images": ({c: sum(r.label == c and r.image in new for r in split.subset("train"))
                        for c in classes} if new_images is not None else None),
        "candidates": wanted, "selected": {c: int(kept.get(c, 0)) for c in classes},
        "selection": "select" if classifier is not None else "none (no classifier)",
        "classifier": chooser, "synthetic": str(selected.resolve()), "reused": reused,
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=1))
    return selected, summary


def check_train_extension(base: Manifest, split: Manifest, base_path: object,
                          path: object) -> None:
    """Refuse ``split`` unless it is ``base`` (same classes, every row unchanged) plus rows in
    its train split.

    Raises:
        DataError: naming both manifests and what differs.
    """
    def key(r) -> tuple[str, str, str, str]:
        return (r.image, r.split, r.label, r.sha256)

    old, new = {key(r) for r in base.rows}, {key(r) for r in split.rows}
    lost = old - new
    outside = sorted(r[0] for r in new - old if r[1] != "train")
    if base.classes != split.classes or lost or outside:
        raise DataError(
            f"{path} is not {base_path} with train images added ({len(lost)} of its rows "
            f"missing or changed, {len(outside)} new rows in val or test"
            + (f", e.g. {outside[0]}" if outside else "")
            + (f"; classes {split.classes} vs {base.classes}" if base.classes != split.classes
               else "")
            + "): a GAN or classifier of the base split may have seen its validation or test "
            "images; use models trained on this split")


def _finetune_config(gan_run: Path, gans: dict, split: Manifest, manifest: Path | str,
                     classes: list[str], kimg: float, seed: int, overrides: Sequence[str]):
    """The source run's own config, on ``manifest``'s train images of ``classes``."""
    from skinedge.synth.gan.config import GANConfig
    from skinedge.utils.config import apply_overrides, load_config, validate_config

    source = load_config(gan_run / "config.yaml", None, GANConfig, kind="GAN config")
    doc = source.model_dump(mode="json")
    first = next(iter(gans.values()))
    if source.model.conditioning == "label":  # the source's labels; images of some of them
        data = {"classes": list(first.classes), "focus_classes": list(classes)}
    else:
        data = {"classes": list(classes), "focus_classes": None}
    doc["data"].update(manifest=str(manifest), root=None, **data)
    doc.update(kimg=kimg, seed=seed, snapshot_kimg=min(source.snapshot_kimg, kimg),
               time_limit_minutes=None)
    doc = apply_overrides(doc, list(overrides))
    return validate_config(GANConfig, doc, f"GAN refresh config (from {gan_run / 'config.yaml'})")


def _fine_tune(cfg, gan_run: Path, run: Path, split: Manifest,
               callbacks: GANCallbacks | None) -> None:
    from skinedge.synth.gan.networks import CHECKPOINT
    from skinedge.synth.gan.trainer import train_gan

    started = (run / CHECKPOINT).is_file() or any((run / "classes").glob(f"*/{CHECKPOINT}"))
    results = train_gan(cfg, run, resume=started, callbacks=callbacks, manifest=split,
                        init_from=gan_run)
    atomic_write_text(run / GAN_DONE, json.dumps(
        {"models": [{"folder": str(r.out_dir), "kimg": r.kimg} for r in results]}, indent=1))


def _selection_classifier(classifier: Path, split: Manifest,
                          base: Manifest | None) -> dict[str, Any]:
    """What the summary records of the selection classifier, once checked: trained on this
    split, or on the base split it extends (checked row by row by the caller)."""
    from skinedge.models import load_card

    card = load_card(classifier)
    info: dict[str, Any] = {"checkpoint": str(classifier.resolve()),
                            "split_hash": card.data.split_hash}
    if not card.data.split_hash or card.data.split_hash == split.split_hash:
        return info
    if base is None or card.data.split_hash != base.split_hash:
        raise DataError(f"classifier {classifier} was trained on split "
                        f"{card.data.split_hash[:12]}, not on this manifest's "
                        f"{split.split_hash[:12]}; pass base_manifest= the split it was trained "
                        "on (this one must only add train images to it), or use a classifier "
                        "of this split")
    info["reason"] = ("trained on the base split; this split only adds train images to it "
                      "(checked row by row)")
    return info


def _first_by_seed(candidates: Path, split: Manifest, out: Path, keep: dict[str, int]) -> None:
    """A synthetic set of the first ``keep[c]`` candidates of each class by seed."""
    from skinedge.data.synthetic import SyntheticRow, SyntheticSet
    from skinedge.synth.candidates import read_candidates
    from skinedge.utils.io import sha256_file

    found, meta = read_candidates(candidates)
    if meta.get("split_hash") != split.split_hash:
        raise DataError(f"{candidates}: made by a GAN of split {str(meta.get('split_hash'))[:12]}"
                        f", not of this manifest's {split.split_hash[:12]}")
    rows = []
    for c in sorted(found, key=lambda c: (c.label, c.seed)):
        if sum(r.label == c.label for r in rows) >= keep.get(c.label, 0):
            continue
        target = out / "images" / c.image.removeprefix("images/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidates / c.image, target)
        rows.append(SyntheticRow(target.relative_to(out).as_posix(), c.label, c.seed,
                                 sha256_file(target)))
    source = {"mode": "none", "candidates": str(candidates.resolve()), "gan": meta.get("gan"),
              "checkpoints": meta.get("checkpoints"), "classifier": None,
              "note": "no classifier: first candidates by seed, no filter"}
    SyntheticSet(out.resolve(), split.split_hash, split.classes, rows, source).save()
