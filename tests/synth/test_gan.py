"""GANs on 16 px images: losses, determinism, resume, and reading the train split only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from skinedge.synth.gan import GANConfig, create_gan, generate, load_gans, train_gan
from skinedge.synth.gan.augment import diff_augment
from skinedge.synth.gan.trainer import _optimizers, _train_step

TINY_GAN = {"resolution": 16, "batch_size": 8, "kimg": 0.16, "snapshot_kimg": 0.08,
            "grid_per_class": 2, "device": "cpu",
            "model": {"channel_base": 128, "channel_max": 32, "z_dim": 16, "w_dim": 32,
                      "mapping_layers": 2}}


def tiny_config(manifest: Path | None = None, **changes) -> GANConfig:
    doc = {**TINY_GAN, **changes}
    doc["model"] = {**TINY_GAN["model"], **changes.get("model", {})}
    if manifest is not None:
        doc["data"] = {"manifest": str(manifest), **changes.get("data", {})}
    return GANConfig.model_validate(doc)


@pytest.mark.parametrize("arch", ["stylegan2", "dcgan"])
def test_training_steps_lower_both_losses_on_a_fixed_batch(arch: str) -> None:
    """With the other network frozen, a few steps of each on one batch lower its loss."""
    torch.manual_seed(0)
    cfg = tiny_config(model={"arch": arch}, diffaugment=[], optim={"g_lr": 2e-3, "d_lr": 2e-3})
    generator, discriminator = create_gan(cfg, 3)
    g_opt, d_opt = _optimizers(cfg, generator, discriminator)
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    z = torch.randn(8, cfg.model.z_dim)

    def d_loss() -> float:
        with torch.no_grad():
            fake = generator(z, labels)
            return float(torch.nn.functional.softplus(-discriminator(real, labels)).mean()
                         + torch.nn.functional.softplus(discriminator(fake, labels)).mean())

    def g_loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.softplus(-discriminator(generator(z, labels),
                                                                       labels)).mean())

    generator.eval()  # DCGAN's BatchNorm: same statistics in every evaluation
    before = d_loss()
    for _ in range(5):
        fake = generator(z, labels).detach()
        loss = (torch.nn.functional.softplus(-discriminator(real, labels)).mean()
                + torch.nn.functional.softplus(discriminator(fake, labels)).mean())
        d_opt.zero_grad()
        loss.backward()
        d_opt.step()
    assert d_loss() < before
    before = g_loss()
    for _ in range(5):
        loss = torch.nn.functional.softplus(-discriminator(generator(z, labels), labels)).mean()
        g_opt.zero_grad()
        loss.backward()
        g_opt.step()
    assert g_loss() < before


def test_a_full_training_step_reports_finite_losses_and_r1() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    generator, discriminator = create_gan(cfg, 2)
    g_opt, d_opt = _optimizers(cfg, generator, discriminator)
    out = _train_step(cfg, 0, generator, discriminator, g_opt, d_opt,
                      torch.rand(8, 3, 16, 16) * 2 - 1, torch.tensor([0, 1] * 4))
    assert set(out) == {"d_loss", "d_real", "d_fake", "r1", "g_loss"}
    assert all(np.isfinite(v) for v in out.values())


@pytest.mark.parametrize("arch", ["stylegan2", "dcgan"])
def test_sampling_is_deterministic_per_seed_whatever_the_batch(arch: str) -> None:
    torch.manual_seed(0)
    generator, _ = create_gan(tiny_config(model={"arch": arch}), 3)
    generator.eval()
    a = generate(generator, 1, [5, 6, 7, 8], batch_size=4)
    b = generate(generator, 1, [7, 8], batch_size=1)
    assert a.shape == (4, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a[2:], b)
    assert not np.array_equal(a[0], a[1])  # other seeds, other images
    c = generate(generator, 2, [5])  # another class from the same latent
    assert not np.array_equal(a[0], c[0])


def test_truncation_pulls_samples_toward_the_class_mean() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    generator, _ = create_gan(cfg, 2)
    z = torch.randn(64, cfg.model.z_dim)
    labels = torch.zeros(64, dtype=torch.long)
    generator(z, labels, update_w_avg=True)  # give w_avg a value
    with torch.no_grad():
        spread = generator(z, labels, noise_mode="const").std(dim=0).mean()
        truncated = generator(z, labels, truncation_psi=0.3, noise_mode="const").std(dim=0).mean()
    assert truncated < spread


def test_style_mixing_changes_outputs_only_when_on() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    generator, _ = create_gan(cfg, 2)
    z, labels = torch.randn(8, cfg.model.z_dim), torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        plain = generator(z, labels, noise_mode="const")
        torch.manual_seed(1)
        mixed = generator(z, labels, noise_mode="const", mixing_prob=1.0)
    assert not torch.allclose(plain, mixed)


def test_diffaugment_keeps_shape_and_lets_gradients_through() -> None:
    torch.manual_seed(0)
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    y = diff_augment(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        diff_augment(x, ["blur"])


def test_config_refuses_bad_resolutions_and_policies() -> None:
    for bad in ({"resolution": 48}, {"resolution": 512}, {"diffaugment": ["zoom"]}):
        with pytest.raises(ValueError):
            GANConfig.model_validate(bad)


@pytest.fixture(scope="module")
def gan_run(tiny_manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gan") / "run"
    train_gan(tiny_config(tiny_manifest), out)
    return out


def test_a_run_writes_checkpoints_grids_and_metrics(gan_run: Path) -> None:
    assert (gan_run / "last.pt").is_file() and (gan_run / "config.yaml").is_file()
    grids = sorted((gan_run / "grids").glob("*.png"))
    assert len(grids) == 2  # one per snapshot (0.08 and 0.16 kimg)
    from PIL import Image

    grid = Image.open(grids[-1])
    assert grid.height == 7 * (16 + 2)  # a row per class
    lines = (gan_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    gans = load_gans(gan_run)
    assert sorted(gans) == sorted(["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"])
    assert gans["df"].kimg == pytest.approx(0.16)


def test_resume_after_a_stop_matches_an_uninterrupted_run(gan_run, tiny_manifest, tmp_path) -> None:
    out = tmp_path / "run"
    train_gan(tiny_config(tiny_manifest, kimg=0.08), out)
    with pytest.raises(ValueError, match="already holds a GAN run"):
        train_gan(tiny_config(tiny_manifest), out)
    train_gan(tiny_config(tiny_manifest), out, resume=True)
    a = torch.load(gan_run / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    assert a["step"] == b["step"]
    for key in ("generator", "generator_ema", "discriminator"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(tensor, b[key][name], msg=f"{key}.{name}")


def test_resume_refuses_a_changed_config(gan_run, tiny_manifest) -> None:
    with pytest.raises(ValueError, match="config changed"):
        train_gan(tiny_config(tiny_manifest, loss={"r1_gamma": 1.0}), gan_run, resume=True)


def test_only_train_images_are_read(make_labels_folder, tmp_path) -> None:
    """Validation and test files are made unreadable: training must not notice."""
    from skinedge.data import load_manifest, make_manifest, read_dataset

    folder = make_labels_folder(per_class=6, codes=("df", "vasc"))
    manifest = make_manifest(read_dataset(folder))
    manifest.save(tmp_path / "manifest.json")
    held_out = [r for r in manifest.rows if r.split != "train"]
    assert held_out
    for r in held_out:
        (manifest.root / r.image).write_bytes(b"not an image")
    manifest = load_manifest(tmp_path / "manifest.json", verify=False)
    train_gan(tiny_config(tmp_path / "manifest.json", kimg=0.016, snapshot_kimg=0.016),
              tmp_path / "gan", manifest=manifest)
    assert (tmp_path / "gan" / "last.pt").is_file()


def test_one_model_per_class(tiny_manifest, tmp_path) -> None:
    cfg = tiny_config(tiny_manifest, kimg=0.016, snapshot_kimg=0.016,
                      model={"conditioning": "per_class"}, data={"classes": ["df", "vasc"]})
    results = train_gan(cfg, tmp_path / "gan")
    assert [r.out_dir.name for r in results] == ["df", "vasc"]
    gans = load_gans(tmp_path / "gan")
    assert sorted(gans) == ["df", "vasc"] and gans["df"] is not gans["vasc"]
    assert gans["df"].classes == ["df"]


def test_unknown_classes_are_refused(tiny_manifest, tmp_path) -> None:
    with pytest.raises(ValueError, match="not in the manifest"):
        train_gan(tiny_config(tiny_manifest, data={"classes": ["xyz"]}), tmp_path / "gan")


def test_candidates_are_written_with_scores_and_reused_after_a_stop(gan_run, tmp_path) -> None:
    from skinedge.synth.candidates import read_candidates
    from skinedge.synth.gan import sample_candidates

    out = tmp_path / "candidates"
    sample_candidates(gan_run, {"df": 5, "vasc": 3}, out, seed=2)
    candidates, meta = read_candidates(out)
    assert [c.label for c in candidates] == ["df"] * 5 + ["vasc"] * 3
    assert len({c.seed for c in candidates}) == 8
    assert all(np.isfinite(c.discriminator_score) for c in candidates)
    assert meta["split_hash"] and meta["checkpoints"]["df"]["sha256"]
    first = (out / candidates[0].image).read_bytes()
    (out / candidates[1].image).unlink()  # as if killed mid-way
    sample_candidates(gan_run, {"df": 5, "vasc": 3}, out, seed=2)
    again, _ = read_candidates(out)
    assert again == candidates and (out / candidates[0].image).read_bytes() == first
    with pytest.raises(ValueError, match="does not generate"):
        sample_candidates(gan_run, {"zzz": 1}, tmp_path / "other")
