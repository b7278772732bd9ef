"""Per-class FID, KID, precision and recall of a trained GAN against its real train images."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from skinedge.data.manifest import Manifest
from skinedge.errors import DataError
from skinedge.utils.io import atomic_write_text, package_versions


def evaluate_gan(
    run_dir: Path | str, manifest: Manifest, out_dir: Path | str, *, per_class: int = 500,
    features: str = "imagenet", seed: int = 1, truncation_psi: float = 1.0,
    device: str = "cpu", progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Generate ``per_class`` images per class and compare them with that class's real train
    images, both at the GAN's resolution, on an offline network's features.

    Args:
        run_dir: GAN run.
        manifest: The split it was trained on (its train images are the reference).
        out_dir: Writes ``quality.json`` and ``quality.md``.
        per_class: Generated images per class (real: all train images of the class).
        features: ``imagenet`` (packaged EfficientNet-Lite0 ImageNet weights) or a classifier
            checkpoint folder.
        seed: Base seed of the generated images (other than the candidates' seed 0 by default).

    Returns:
        The report: rows per class and overall, the feature network's name, provenance.

    Raises:
        DataError: a GAN trained on another split.
    """
    from skinedge.data.arrays import load_thumbnails
    from skinedge.synth.gan.networks import load_gans
    from skinedge.synth.gan.sample import generate, image_seed
    from skinedge.synth.metrics import (
        classifier_features,
        imagenet_features,
        quality_by_class,
        render_quality_markdown,
        uint8_to_unit,
    )

    gans = load_gans(run_dir, device)
    first = next(iter(gans.values()))
    if first.split_hash != manifest.split_hash:
        raise DataError(f"{run_dir} was trained on split {first.split_hash[:12]}, not on this "
                         f"manifest's {manifest.split_hash[:12]}")
    extractor = imagenet_features(device=device) if features == "imagenet" \
        else classifier_features(Path(features), device)
    resolution = first.config.resolution
    real, fake = {}, {}
    for done, (code, gan) in enumerate(gans.items(), start=1):
        paths = [manifest.root / r.image for r in manifest.subset("train") if r.label == code]
        real[code] = extractor(uint8_to_unit(load_thumbnails(paths, resolution)))
        label = gan.classes.index(code)
        images = generate(gan.generator, label, [image_seed(seed, label, i) for i in range(per_class)],
                          truncation_psi=truncation_psi)
        fake[code] = extractor(uint8_to_unit(images))
        if progress:
            progress("features per class", done, len(gans))
    rows = quality_by_class(real, fake, seed=seed)
    report = {
        "gan": str(Path(run_dir).resolve()), "features": extractor.name,
        "checkpoints": {c: {"sha256": g.sha256, "kimg": g.kimg} for c, g in gans.items()},
        "arch": first.config.model.arch, "resolution": resolution, "per_class": per_class,
        "seed": seed, "truncation_psi": truncation_psi, "split_hash": manifest.split_hash,
        "rows": [{k: None if isinstance(v, float) and math.isnan(v) else v
                  for k, v in asdict(r).items()} for r in rows],
        "versions": package_versions(),
    }
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "quality.json", json.dumps(report, indent=1))
    atomic_write_text(out_dir / "quality.md", render_quality_markdown(rows, extractor.name))
    return report
