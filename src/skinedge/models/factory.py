"""One door to a classifier: ``create_classifier(arch, num_classes, pretrained=...)``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from skinedge.errors import ConfigError
from skinedge.models.pretrained import (
    check_pretrained,
    load_imagenet_weights,
    load_weights_file,
    offline_weights_path,
)


def create_classifier(
    arch: str,
    num_classes: int,
    *,
    pretrained: str = "imagenet",
    drop_rate: float = 0.2,
    head_init_std: float = 1e-3,
) -> tuple[nn.Module, str]:
    """Build a timm classifier with offline weights and a fresh head.

    Args:
        arch: timm model name: ``tf_efficientnet_lite0/1/2`` (offline ImageNet weights),
            ``efficientnet_b4`` (the paper's SE network), ``mobilenetv3_large_100``, any other.
        num_classes: Outputs of the new head.
        pretrained: ``imagenet`` (packaged weights), ``none`` (random init), or a path to a
            local weights file (its head is replaced when the class count differs).
        drop_rate: Dropout before the classifier.
        head_init_std: Std of the new head's weights. A small head keeps first logits near zero;
            timm's default init gave oversized first logits with the Lite weights.

    Returns:
        (model, provenance string of the weights for the model card).

    Raises:
        ConfigError: unknown architecture, no offline weights for it, or a ``pretrained``
            that is neither ``imagenet``, ``none`` nor a file.
        MissingBackendError: the package holding its offline weights is not installed.
        NotFoundError, ModelError: a ``pretrained`` weights file that is missing, or whose
            backbone does not fit the architecture.
    """
    import timm

    if not timm.is_model(arch):
        raise ConfigError(
            f"unknown architecture {arch!r}; see `timm.list_models()` "
            "(e.g. tf_efficientnet_lite0, efficientnet_b4, mobilenetv3_large_100)"
        )
    check_pretrained(pretrained)  # a typo such as "imagnet" fails before a model is built
    fresh_head = False
    if pretrained == "imagenet":
        offline_weights_path(arch)  # fail before building a model that has no offline weights
        model = timm.create_model(arch, pretrained=False, num_classes=1000, drop_rate=drop_rate)
        provenance = load_imagenet_weights(model, arch)
        model.reset_classifier(num_classes)
        fresh_head = True
    elif pretrained == "none":
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                  drop_rate=drop_rate)
        provenance = "none"
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                  drop_rate=drop_rate)
        provenance, head_loaded = load_weights_file(model, Path(pretrained))
        fresh_head = not head_loaded
    head = model.get_classifier()
    if fresh_head and isinstance(head, nn.Linear):
        with torch.no_grad():
            nn.init.normal_(head.weight, std=head_init_std)
            nn.init.zeros_(head.bias)
    return model, provenance
