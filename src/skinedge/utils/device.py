"""Turning a device setting (``auto``, ``cpu``, ``cuda``, ``cuda:1``) into a torch device."""

from __future__ import annotations

import torch

from skinedge.errors import ConfigError, UnsupportedHereError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; a bare ``cuda`` means this process's local rank.

    Raises:
        ConfigError: not a device name torch knows.
        UnsupportedHereError: a CUDA device on a machine where torch sees no GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a device ({exc}); use auto, cpu, cuda or "
                          "cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedHereError(f"device {name!r}: torch sees no CUDA GPU here; use auto or cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
