"""Sampling a trained GAN: seeded candidates with discriminator scores, and sample grids.

Each image's latent comes from its own seed and the generator's noise is fixed
(``noise_mode="const"``), so an image depends on its seed alone. Candidates are generated in
fixed blocks of ``batch_size`` consecutive seeds, and a resumed run regenerates a missing image
in its own block: CPU kernels may round differently for another batch size, and the same block
gives the same pixels on resume, or a year later for an audit.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from skinedge.errors import ConfigError
from skinedge.synth.gan.layers import Discriminator

CANDIDATES = "candidates.csv"
_SEED_STRIDE = 1_000_000  # class c's i-th image has seed base * 10**7 + c * 10**6 + i


def image_seed(base_seed: int, class_index: int, index: int) -> int:
    """The seed of the ``index``-th image of a class (distinct across classes and bases)."""
    if index >= _SEED_STRIDE:
        raise ConfigError(f"at most {_SEED_STRIDE} images per class and seed")
    return base_seed * 10 * _SEED_STRIDE + class_index * _SEED_STRIDE + index


def latents(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """(N, z_dim) standard normal latents, one generator per seed."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds])


@torch.no_grad()
def generate(generator: nn.Module, label: int, seeds: Sequence[int], *,
             truncation_psi: float = 1.0, batch_size: int = 64) -> np.ndarray:
    """Images of one class as (N, R, R, 3) uint8, one per seed."""
    device = next(generator.parameters()).device
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        z = latents(chunk, generator.z_dim).to(device)
        labels = torch.full((len(chunk),), label, dtype=torch.long, device=device)
        images = generator(z, labels, truncation_psi=truncation_psi, noise_mode="const")
        out.append(to_uint8(images))
    return np.concatenate(out) if out else np.empty((0, 0, 0, 3), np.uint8)


@torch.no_grad()
def discriminator_scores(discriminator: Discriminator, label: int, images: np.ndarray,
                         batch_size: int = 64) -> np.ndarray:
    """Realness logits (N,) of uint8 images (N, R, R, 3) for class ``label``, scored as saved
    (after rounding to 8 bits). Scored in the given order: the minibatch-stddev feature makes a
    score depend on its group of 4 neighbours, so a fixed order keeps scores reproducible."""
    device = next(discriminator.parameters()).device
    scores = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2)
        x = (x.float() / 127.5 - 1).to(device)
        labels = torch.full((len(x),), label, dtype=torch.long, device=device)
        scores.append(discriminator.score(x, labels).float().cpu().numpy())
    return np.concatenate(scores) if scores else np.empty(0, np.float32)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, R, R) in [-1, 1] -> (B, R, R, 3) uint8."""
    x = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _check_reuse(out_dir: Path, settings: dict) -> None:
    """Refuse to mix images of another checkpoint or other settings into a folder."""
    previous = out_dir / "sample.json"
    if not previous.is_file():
        return
    old = json.loads(previous.read_text())
    changed = sorted(k for k in settings if old.get(k) != settings[k])
    if changed:
        raise ConfigError(f"{out_dir} holds candidates made with other {changed}; choose another "
                         "--out (or delete the folder)")


def save_grid(generator: nn.Module, classes: Sequence[str], per_class: int, seed: int,
              path: Path) -> Path:
    """A PNG of ``per_class`` samples per class (one row each, labelled), fixed seeds, so grids
    of successive checkpoints show the same latents improving."""
    from skinedge.utils.io import atomic_write_bytes

    was_training = generator.training
    generator.eval()
    rows = [generate(generator, c, [image_seed(seed, c, i) for i in range(per_class)])
            for c in range(len(classes))]
    generator.train(was_training)
    size = rows[0].shape[1]
    margin = 48
    canvas = Image.new("RGB", (margin + per_class * (size + 2), len(classes) * (size + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (code, images) in enumerate(zip(classes, rows)):
        y = r * (size + 2)
        draw.text((4, y + size // 2 - 6), code, fill="black")
        for i, image in enumerate(images):
            canvas.paste(Image.fromarray(image), (margin + i * (size + 2), y))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def sample_candidates(
    run_dir: Path | str, counts: dict[str, int], out_dir: Path | str, *, seed: int = 0,
    truncation_psi: float = 1.0, batch_size: int = 64, device: str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Generate candidates per class as PNGs with their discriminator scores.

    Writes ``sample.json`` (which GAN, its hash, the settings), then
    ``out_dir/images/<class>/<class>-<seed>.png`` and last ``candidates.csv`` (image, label,
    seed, discriminator_score). Images already on disk from an interrupted run with the same
    checkpoint and settings are reused (they are the same pixels).

    Args:
        run_dir: A GAN run (class-conditional or per-class).
        counts: Class code -> number of candidates.
        out_dir: Candidates folder.
        seed: Base seed; image seeds are :func:`image_seed` of it.
        truncation_psi: Truncation toward the class's mean latent (1 = none).
        progress: ``progress(description, done, total)``.

    Raises:
        ConfigError: a class the GAN does not generate, or a folder made with another
            checkpoint or other settings.
    """
    from skinedge.synth.gan.networks import load_gans
    from skinedge.utils.io import atomic_write_bytes, atomic_write_text, package_versions

    out_dir = Path(out_dir)
    gans = load_gans(run_dir, device)
    unknown = sorted(set(counts) - set(gans))
    if unknown:
        raise ConfigError(f"{run_dir} does not generate class(es) {unknown}; it has {sorted(gans)}")
    first = next(iter(gans.values()))
    settings = {
        "gan": str(Path(run_dir).resolve()),
        "checkpoints": {c: {"path": str(g.path), "sha256": g.sha256, "kimg": g.kimg}
                        for c, g in gans.items()},
        "split_hash": first.split_hash, "arch": first.config.model.arch,
        "resolution": first.config.resolution, "seed": seed, "truncation_psi": truncation_psi,
    }
    _check_reuse(out_dir, settings)
    atomic_write_text(out_dir / "sample.json", json.dumps(
        {**settings, "counts": counts, "versions": package_versions()}, indent=1))
    rows = []
    for code, n in counts.items():
        gan = gans[code]
        label = gan.classes.index(code)
        seeds = [image_seed(seed, label, i) for i in range(n)]
        paths = [out_dir / "images" / code / f"{code}-{s}.png" for s in seeds]
        missing = {i for i, p in enumerate(paths) if not p.is_file()}
        done = n - len(missing)
        for block in sorted({i // batch_size for i in missing}):
            chunk = range(block * batch_size, min(n, (block + 1) * batch_size))
            images = generate(gan.generator, label, [seeds[i] for i in chunk],
                              truncation_psi=truncation_psi, batch_size=batch_size)
            for i, image in zip(chunk, images):
                if i in missing:
                    buffer = io.BytesIO()
                    Image.fromarray(image).save(buffer, format="PNG")
                    atomic_write_bytes(paths[i], buffer.getvalue())
                    done += 1
            if progress:
                progress(f"generating {code}", done, n)
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]) if n else None
        scores = discriminator_scores(gan.discriminator, label, images) if n else []
        rows += [(p.relative_to(out_dir).as_posix(), code, s, float(d))
                 for p, s, d in zip(paths, seeds, scores)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "label", "seed", "discriminator_score"])
    writer.writerows(rows)
    atomic_write_text(out_dir / CANDIDATES, buffer.getvalue())  # last: marks the folder done
    return out_dir / CANDIDATES
