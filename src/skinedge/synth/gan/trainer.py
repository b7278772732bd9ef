"""GAN training: non-saturating logistic (or hinge) loss, lazy R1, generator EMA, DiffAugment.

Every random draw of step ``k`` is seeded from ``(seed, k)``, so a run resumed from its
checkpoint continues exactly as if it had not stopped. Only the train split of the manifest is
read: validation and test images never reach a generator.

A run may start from another run's weights (``init_from``: a fine-tune, e.g. on clinicians'
corrections): the generator, its EMA and the discriminator are loaded, the optimizers, the kimg
counter and the seed are the new run's own, and the source checkpoint (path, sha256, kimg,
split) is recorded in ``versions.json`` and in every checkpoint of the new run.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from skinedge.data.manifest import Manifest
from skinedge.errors import ConfigError, DataError
from skinedge.synth.gan.augment import diff_augment
from skinedge.synth.gan.config import GANConfig
from skinedge.synth.gan.layers import Discriminator
from skinedge.synth.gan.networks import CHECKPOINT, create_gan
from skinedge.synth.gan.sample import save_grid
from skinedge.utils.config import dump_config
from skinedge.utils.io import atomic_write, atomic_write_text, package_versions, sha256_file

_TICK_STEPS = 10  # progress report every this many steps


class GANCallbacks:
    """Progress hooks; every method is optional."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_loading(self, done: int, total: int) -> None: ...
    def on_tick(self, kimg: float, total_kimg: float, record: dict[str, float]) -> None: ...
    def on_snapshot(self, kimg: float, grid: Path) -> None: ...


@dataclass
class GANResult:
    """One trained model: where, how far (kimg), whether the time limit stopped it."""

    out_dir: Path
    kimg: float
    stopped_by_time: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def train_gan(cfg: GANConfig, out_dir: Path | str, *, resume: bool = False,
              callbacks: GANCallbacks | None = None,
              manifest: Manifest | None = None,
              init_from: Path | str | None = None) -> list[GANResult]:
    """Train a class-conditional GAN, or one GAN per class, on a manifest's train split.

    Args:
        cfg: Validated configuration.
        out_dir: Run folder: ``config.yaml``, ``versions.json``, ``last.pt``, ``metrics.jsonl``
            and ``grids/`` (per class under ``classes/<code>/`` when
            ``model.conditioning`` is ``per_class``).
        resume: Continue from ``last.pt``.
        callbacks: Progress hooks.
        manifest: The loaded manifest, when the caller has it.
        init_from: A GAN run to fine-tune: each model starts from the weights of its
            ``last.pt`` there (``classes/<code>/last.pt`` for per-class runs), with fresh
            optimizers and kimg counted from zero. Ignored for a model that already has its
            own ``last.pt`` in ``out_dir`` (a resume continues from that).

    Returns:
        One result per trained model.

    Raises:
        ConfigError: no manifest, unknown classes, a run already in ``out_dir`` without
            ``resume``, a resume with a changed config or split, or an ``init_from`` run
            without a checkpoint or with another model config, resolution or class list.
        DataError: a class without training images.
    """
    from skinedge.train.config import load_data_manifest

    out_dir = Path(out_dir)
    manifest = manifest or load_data_manifest(cfg)  # type: ignore[arg-type]
    codes = list(manifest.vocabulary.codes)
    present = {r.label for r in manifest.subset("train")}
    classes = cfg.data.classes or [c for c in codes if c in present]
    unknown = sorted(set(classes) - set(codes))
    if unknown:
        raise ConfigError(f"data.classes {unknown} are not in the manifest's classes {codes}")
    shown = cfg.data.focus_classes or classes
    outside = [c for c in shown if c not in classes]
    if outside:
        raise ConfigError(f"data.focus_classes {outside} are not among the classes learnt "
                          f"({classes}, data.classes)")
    rows = [r for r in manifest.subset("train") if r.label in shown]
    empty = [c for c in shown if not any(r.label == c for r in rows)]
    if empty:
        raise DataError(f"{cfg.data.manifest}: no training images of class(es) {empty}; "
                         "leave them out with --set data.classes=[...]")
    callbacks = callbacks or GANCallbacks()
    if cfg.model.conditioning == "label":
        groups = [(out_dir, classes)]
    else:
        groups = [(out_dir / "classes" / c, [c]) for c in classes if c in shown]
    started = [folder for folder, _ in groups if (folder / CHECKPOINT).exists()]
    if started and not resume:
        raise ConfigError(f"{out_dir} already holds a GAN run; continue it with --resume, or "
                         "choose another --out (or delete the folder) to start afresh")
    if resume and not started:
        raise ConfigError(f"cannot resume: {out_dir} holds no GAN checkpoint; start without "
                         "--resume")
    sources: dict[Path, dict[str, Any] | None] = {}  # model folder -> the weights it starts from
    for folder, group in groups:  # refuse a changed config before anything is written
        if (folder / CHECKPOINT).exists():
            saved = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)
            _check_resumable(saved, cfg, group, manifest.split_hash, folder / CHECKPOINT)
            sources[folder] = saved.get("init_from")
        elif init_from is not None:
            sources[folder] = _init_source(Path(init_from), cfg, folder, out_dir, group)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", dump_config(cfg))
    versions: dict[str, Any] = package_versions()
    if any(sources.values()):
        versions["init_from"] = {(folder.relative_to(out_dir).as_posix()): source
                                 for folder, source in sources.items() if source}
    atomic_write_text(out_dir / "versions.json", json.dumps(versions, indent=2))
    results = []
    for folder, group in groups:
        group_rows = [r for r in rows if r.label in group]
        results.append(_train_one(cfg, folder, group, [manifest.root / r.image for r in group_rows],
                                  [group.index(r.label) for r in group_rows], manifest.split_hash,
                                  resume, callbacks, len(groups), sources.get(folder)))
    return results


def _init_source(run: Path, cfg: GANConfig, folder: Path, out_dir: Path,
                 classes: list[str]) -> dict[str, Any]:
    """The checkpoint of ``run`` that the model in ``folder`` starts from, checked to fit:
    ``{"run", "path", "sha256", "kimg", "split_hash"}``.

    Raises:
        ConfigError: no such checkpoint, or one with another model config, resolution or
            class list (the field named).
    """
    source = run / folder.relative_to(out_dir) / CHECKPOINT
    where = f"init_from {run}"
    if not source.is_file():
        kind = "per-class" if cfg.model.conditioning == "per_class" else "class-conditional"
        raise ConfigError(f"{where}: no GAN checkpoint {source} for this {kind} run "
                          "(model.conditioning); fine-tune a run made by `skinedge gan train` "
                          "with the same model settings and classes")
    saved = torch.load(source, map_location="cpu", weights_only=True)
    try:
        old = GANConfig.model_validate(saved["config"])
    except (KeyError, ValidationError) as exc:
        raise ConfigError(f"{where}: {source} holds no valid GAN config for this skinedge "
                          "version; start without --init-from") from exc
    pairs = [("resolution", old.resolution, cfg.resolution)] + [
        (f"model.{key}", value, getattr(cfg.model, key))
        for key, value in old.model.model_dump().items()]
    for name, theirs, ours in pairs:
        if theirs != ours:
            raise ConfigError(f"{where}: {name} is {theirs!r} in {source} but {ours!r} here; a "
                              f"fine-tune keeps its source's architecture: set {name}={theirs!r} "
                              "(or train from scratch without --init-from)")
    if list(saved["classes"]) != list(classes):
        raise ConfigError(f"{where}: {source} generates classes {list(saved['classes'])}, this "
                          f"run {classes} (data.classes); give data.classes as the source has "
                          "them and choose the classes to refresh with data.focus_classes")
    return {"run": str(run.resolve()), "path": str(source.resolve()),
            "sha256": sha256_file(source), "kimg": saved["shown"] / 1000,
            "split_hash": saved["split_hash"]}


def _train_one(cfg: GANConfig, out_dir: Path, classes: list[str], paths: Sequence[Path],
               labels: Sequence[int], split_hash: str, resume: bool, callbacks: GANCallbacks,
               models: int, source: dict[str, Any] | None = None) -> GANResult:
    from skinedge.data.arrays import load_thumbnails
    from skinedge.utils.device import resolve_device

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    checkpoint = out_dir / CHECKPOINT
    torch.manual_seed(cfg.seed)
    generator, discriminator = create_gan(cfg, len(classes))
    generator_ema = copy.deepcopy(generator).eval().requires_grad_(False)
    g_opt, d_opt = _optimizers(cfg, generator, discriminator)
    state: dict[str, Any] = {"step": 0, "shown": 0, "seconds": 0.0, "history": []}
    if resume and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        generator.load_state_dict(saved["generator"])
        generator_ema.load_state_dict(saved["generator_ema"])
        discriminator.load_state_dict(saved["discriminator"])
        g_opt.load_state_dict(saved["g_opt"])
        d_opt.load_state_dict(saved["d_opt"])
        state = {k: saved[k] for k in state}
    elif source is not None:  # a fine-tune: the source's weights, this run's optimizers and clock
        saved = torch.load(source["path"], map_location="cpu", weights_only=True)
        generator.load_state_dict(saved["generator"])
        generator_ema.load_state_dict(saved["generator_ema"])
        discriminator.load_state_dict(saved["discriminator"])
    for module in (generator, generator_ema, discriminator):
        module.to(device)
    _optimizer_to(g_opt, device)
    _optimizer_to(d_opt, device)

    total = int(cfg.kimg * 1000)
    time_limit = cfg.time_limit_minutes * 60 / models if cfg.time_limit_minutes else None
    callbacks.on_start({"classes": classes, "images": len(paths), "device": str(device),
                        "kimg": state["shown"] / 1000, "total_kimg": cfg.kimg,
                        "arch": cfg.model.arch, "resolution": cfg.resolution, "out": str(out_dir)})
    if state["shown"] >= total:
        return GANResult(out_dir, state["shown"] / 1000, False, state["history"])
    if time_limit is not None and state["seconds"] >= time_limit:  # budget spent: change nothing
        return GANResult(out_dir, state["shown"] / 1000, True, state["history"])

    real = torch.from_numpy(load_thumbnails(paths, cfg.resolution, progress=callbacks.on_loading))
    real = real.permute(0, 3, 1, 2).contiguous()  # (N, 3, R, R) uint8
    real_labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(real_labels, minlength=len(classes)).double()
    weights = counts[real_labels] ** -cfg.data.balance

    running: dict[str, list[float]] = {}
    next_snapshot = (state["shown"] // _snapshot_every(cfg) + 1) * _snapshot_every(cfg)
    started, stopped_by_time = time.perf_counter(), False
    seconds_before = state["seconds"]
    while state["shown"] < total:
        step = state["step"]
        _seed_step(cfg.seed, step)
        idx = torch.multinomial(weights, cfg.batch_size, replacement=True)
        images = _to_float(real[idx], cfg.data.dihedral).to(device)
        batch_labels = real_labels[idx].to(device)
        losses = _train_step(cfg, step, generator, discriminator, g_opt, d_opt, images,
                             batch_labels)
        _update_ema(generator_ema, generator, cfg, state["shown"])
        state["step"] += 1
        state["shown"] += cfg.batch_size
        state["seconds"] = seconds_before + time.perf_counter() - started
        for k, v in losses.items():
            running.setdefault(k, []).append(v)
        if state["step"] % _TICK_STEPS == 0:
            callbacks.on_tick(state["shown"] / 1000, cfg.kimg, _means(running))
        stopped_by_time = time_limit is not None and state["seconds"] >= time_limit
        if state["shown"] >= next_snapshot or state["shown"] >= total or stopped_by_time:
            record = {"kimg": round(state["shown"] / 1000, 3), "step": state["step"],
                      "minutes": round(state["seconds"] / 60, 2), **_means(running)}
            state["history"].append(record)
            running = {}
            _save(checkpoint, cfg, classes, split_hash, generator, generator_ema, discriminator,
                  g_opt, d_opt, state, source)
            atomic_write_text(out_dir / "metrics.jsonl",
                              "".join(json.dumps(r) + "\n" for r in state["history"]))
            grid = save_grid(generator_ema, classes, cfg.grid_per_class, cfg.seed,
                             out_dir / "grids" / f"grid-{state['shown'] / 1000:07.2f}kimg.png")
            callbacks.on_snapshot(state["shown"] / 1000, grid)
            next_snapshot += _snapshot_every(cfg)
        if stopped_by_time:
            break
    return GANResult(out_dir, state["shown"] / 1000, stopped_by_time, state["history"])


def _train_step(cfg: GANConfig, step: int, generator: nn.Module, discriminator: nn.Module,
                g_opt, d_opt, real: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """One discriminator step (plus R1 every ``r1_interval``) and one generator step, with the
    non-saturating logistic loss or the hinge loss (``loss.objective``); the discriminator's
    logits may be one per image (B,) or patch logits (B, N)."""
    policy = cfg.diffaugment
    mixing = cfg.loss.style_mixing if cfg.model.arch == "stylegan2" else 0.0
    z_shape = (real.shape[0], generator.z_dim)

    # Discriminator: real -> 1, fake -> 0.
    generator.requires_grad_(False)
    discriminator.requires_grad_(True)
    with torch.no_grad():
        fake = generator(torch.randn(z_shape, device=real.device), labels, mixing_prob=mixing)
    logits_real = discriminator(diff_augment(real, policy), labels)
    logits_fake = discriminator(diff_augment(fake, policy), labels)
    if cfg.loss.objective == "hinge":
        d_loss = F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()
    else:
        d_loss = F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()
    out = {"d_loss": d_loss.item(), "d_real": logits_real.mean().item(),
           "d_fake": logits_fake.mean().item()}

    if cfg.loss.r1_gamma > 0 and step % cfg.loss.r1_interval == 0:
        real_ = real.detach().requires_grad_(True)
        logits = discriminator(diff_augment(real_, policy), labels)
        (grad,) = torch.autograd.grad(logits.sum(), real_, create_graph=True)
        penalty = grad.square().sum(dim=(1, 2, 3)).mean()
        d_opt.zero_grad(set_to_none=True)
        (penalty * (cfg.loss.r1_gamma / 2) * cfg.loss.r1_interval).backward()
        d_opt.step()
        out["r1"] = penalty.item()

    # Generator: make D call its images real.
    generator.requires_grad_(True)
    discriminator.requires_grad_(False)
    fake = generator(torch.randn(z_shape, device=real.device), labels, mixing_prob=mixing,
                     update_w_avg=cfg.model.arch == "stylegan2")
    logits_fake = discriminator(diff_augment(fake, policy), labels)
    g_loss = (-logits_fake if cfg.loss.objective == "hinge" else F.softplus(-logits_fake)).mean()
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    g_opt.step()
    out["g_loss"] = g_loss.item()
    return out


def _optimizers(cfg: GANConfig, generator: nn.Module, discriminator: Discriminator):
    o = cfg.optim
    g_opt = torch.optim.Adam(generator.parameters(), lr=o.g_lr, betas=(o.beta1, o.beta2))
    # Lazy R1 (Karras et al. 2020, appendix B): rescale D's Adam so that the occasional
    # regularisation step does not change its effective hyper-parameters.
    ratio = cfg.loss.r1_interval / (cfg.loss.r1_interval + 1) if cfg.loss.r1_gamma > 0 else 1.0
    d_opt = torch.optim.Adam(discriminator.trainable_parameters(), lr=o.d_lr * ratio,
                             betas=(o.beta1 ** ratio, o.beta2 ** ratio))
    return g_opt, d_opt


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, cfg: GANConfig, shown: int) -> None:
    """EMA with a half-life of ``ema_kimg`` (shorter early on: ``ema_rampup``)."""
    half_life = cfg.ema_kimg * 1000
    if cfg.ema_rampup:
        half_life = min(half_life, shown * cfg.ema_rampup)
    beta = 0.5 ** (cfg.batch_size / max(half_life, 1e-8))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def _to_float(images: torch.Tensor, dihedral: bool) -> torch.Tensor:
    """uint8 (B, 3, R, R) -> float in [-1, 1], each image flipped/rotated at random."""
    x = images.float() / 127.5 - 1
    if not dihedral:
        return x
    turns = torch.randint(0, 4, (x.shape[0],)).tolist()
    flips = torch.rand(x.shape[0]).lt(0.5).tolist()
    return torch.stack([
        torch.rot90(img.flip(-1) if f else img, k, dims=(1, 2))
        for img, k, f in zip(x, turns, flips)
    ])


def _seed_step(seed: int, step: int) -> None:
    value = seed * 1_000_003 + step
    torch.manual_seed(value)
    np.random.seed(value % 2**32)


def _snapshot_every(cfg: GANConfig) -> int:
    return max(cfg.batch_size, int(cfg.snapshot_kimg * 1000))


def _means(running: dict[str, list[float]]) -> dict[str, float]:
    return {k: round(float(np.mean(v)), 5) for k, v in running.items()}


def _save(path: Path, cfg: GANConfig, classes: list[str], split_hash: str, generator,
          generator_ema, discriminator, g_opt, d_opt, state: dict[str, Any],
          source: dict[str, Any] | None = None) -> None:
    payload = {
        "kind": "skinedge.gan/1", "config": cfg.model_dump(mode="json"), "classes": classes,
        "init_from": source,
        "split_hash": split_hash, "generator": generator.state_dict(),
        "generator_ema": generator_ema.state_dict(), "discriminator": discriminator.state_dict(),
        "g_opt": g_opt.state_dict(), "d_opt": d_opt.state_dict(), **state,
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def _check_resumable(saved: dict, cfg: GANConfig, classes: list[str], split_hash: str,
                     path: Path) -> None:
    try:
        old = GANConfig.model_validate(saved["config"]).model_dump(mode="json")
    except ValidationError as exc:
        raise ConfigError(f"cannot resume: the config saved in {path} is not valid for this "
                          f"skinedge version ({exc.errors()[0]['msg']}); start a new run "
                          "without --resume") from exc
    new = cfg.model_dump(mode="json")
    for doc in (old, new):  # may change between sessions: where data lies, length, budget
        doc["data"]["root"] = None
        for key in ("kimg", "time_limit_minutes", "snapshot_kimg", "threads", "device"):
            doc.pop(key)
    changed = sorted(k for k in new if old.get(k) != new.get(k))
    if changed:
        raise ConfigError(f"cannot resume {path}: the config changed in {changed} since the run "
                         "started; use the run's own config.yaml or a new output folder")
    if saved["classes"] != classes or saved["split_hash"] != split_hash:
        raise ConfigError(f"cannot resume {path}: it was trained on other classes or another "
                         "split; use its own manifest or a new output folder")


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for per_param in optimizer.state.values():
        for k, v in per_param.items():
            if isinstance(v, torch.Tensor):
                per_param[k] = v.to(device)
