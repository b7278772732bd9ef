"""The projected discriminator: frozen features stay frozen, gradients reach the generator
through them, both generators train against it, and a run saves and reloads it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skinedge.synth.gan import create_gan, load_gans, train_gan
from skinedge.synth.gan.projected import ProjectedDiscriminator, RandomProjector
from skinedge.synth.gan.sample import discriminator_scores
from skinedge.synth.gan.trainer import _optimizers, _train_step
from tests.synth.test_gan import tiny_config

# The packaged ImageNet Lite0 at 32 px (features 8, 4, 2 and 1 px), small heads.
PROJECTED = {"discriminator": "projected", "feature_network": "tf_efficientnet_lite0",
             "projection_channels": 8}


def projected_config(manifest: Path | None = None, **changes):
    model = {**PROJECTED, **changes.pop("model", {})}
    return tiny_config(manifest, resolution=32, model=model, loss={"objective": "hinge",
                       "r1_gamma": 0}, **changes)


def test_discriminator_outputs_patch_logits_of_every_scale() -> None:
    torch.manual_seed(0)
    _, discriminator = create_gan(projected_config(), 3)
    assert isinstance(discriminator, ProjectedDiscriminator)
    logits = discriminator(torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 0]))
    # 8 px -> 5x5 patches; 4, 2 and 1 px -> one logit each
    assert logits.shape == (4, 25 + 1 + 1 + 1)
    # One score per image, the mean of its patches: what selection and sampling read.
    scores = discriminator.score(torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 0]))
    assert scores.shape == (4,)


def test_a_feature_network_of_another_family_is_refused() -> None:
    with pytest.raises(ValueError, match="feature_network"):  # the config's choices
        projected_config(model={"feature_network": "resnet50"})
    with pytest.raises(ValueError, match="not EfficientNet-Lite's"):  # the projector's own
        RandomProjector("resnet18", 8, pretrained="none")


def test_a_training_step_trains_the_heads_and_leaves_the_features_frozen() -> None:
    torch.manual_seed(0)
    cfg = projected_config()
    generator, discriminator = create_gan(cfg, 2)
    frozen = copy.deepcopy(discriminator.projector.state_dict())  # weights and BN statistics
    heads = copy.deepcopy(discriminator.heads.state_dict())
    discriminator.requires_grad_(False)  # as after a generator step: the heads still train
    g_opt, d_opt = _optimizers(cfg, generator, discriminator)
    trained = {id(p) for group in d_opt.param_groups for p in group["params"]}
    assert trained == {id(p) for p in discriminator.heads.parameters()}

    discriminator.train()
    assert not discriminator.projector.training and discriminator.heads.training
    out = _train_step(cfg, 1, generator, discriminator, g_opt, d_opt,
                      torch.rand(8, 3, 32, 32) * 2 - 1, torch.tensor([0, 1] * 4))
    assert set(out) == {"d_loss", "d_real", "d_fake", "g_loss"} and np.isfinite(list(out.values())).all()
    for name, tensor in discriminator.projector.state_dict().items():
        torch.testing.assert_close(tensor, frozen[name], msg=name)
    assert any(not torch.equal(t, heads[n]) for n, t in discriminator.heads.state_dict().items())
    discriminator.requires_grad_(True)  # as the trainer does before each D step
    assert not any(p.requires_grad for p in discriminator.projector.parameters())


def test_the_frozen_network_uses_autograd_only_when_the_images_need_a_gradient() -> None:
    torch.manual_seed(0)
    cfg = projected_config()
    generator, discriminator = create_gan(cfg, 2)
    seen: list[bool] = []
    discriminator.projector.register_forward_hook(
        lambda _m, _i, out: seen.append(out[0].requires_grad))
    labels = torch.tensor([0, 1, 0, 1])
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    discriminator(images, labels).mean().backward()  # D's step: heads only
    fake = generator(torch.randn(4, cfg.model.z_dim), labels)
    discriminator(fake, labels).mean().backward()  # G's step: through the features
    assert seen == [False, True]
    grads = [p.grad for p in generator.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("arch", ["stylegan2", "dcgan"])
def test_both_generators_train_against_it(arch: str) -> None:
    """With the other network fixed, a few hinge steps of each on one batch lower its loss."""
    torch.manual_seed(0)
    cfg = projected_config(model={"arch": arch}, diffaugment=[],
                           optim={"g_lr": 2e-3, "d_lr": 2e-3})
    generator, discriminator = create_gan(cfg, 3)
    g_opt, d_opt = _optimizers(cfg, generator, discriminator)
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    z = torch.randn(8, cfg.model.z_dim)
    generator.eval()  # DCGAN's BatchNorm: same statistics in every evaluation

    def d_loss() -> torch.Tensor:
        fake = generator(z, labels).detach()
        return F.relu(1 - discriminator(real, labels)).mean() + \
            F.relu(1 + discriminator(fake, labels)).mean()

    def g_loss() -> torch.Tensor:
        return -discriminator(generator(z, labels), labels).mean()

    for loss_of, optimizer in ((d_loss, d_opt), (g_loss, g_opt)):  # D's BatchNorm: batch stats
        with torch.no_grad():
            before = float(loss_of())
        for _ in range(5):
            optimizer.zero_grad()
            loss_of().backward()
            optimizer.step()
        with torch.no_grad():
            assert float(loss_of()) < before


def test_a_run_saves_and_reloads_the_discriminator_with_its_projections(
        tiny_manifest, tmp_path) -> None:
    out = tmp_path / "gan"
    cfg = projected_config(tiny_manifest, kimg=0.016, snapshot_kimg=0.016)
    train_gan(cfg, out)
    gan = load_gans(out)["df"]
    trained = torch.load(out / "last.pt", weights_only=True)["discriminator"]
    for name, tensor in gan.discriminator.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], msg=name)  # random CCM/CSM included
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    label = gan.classes.index("df")
    scores = discriminator_scores(gan.discriminator, label, images)
    assert scores.shape == (6,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, discriminator_scores(gan.discriminator, label, images))
