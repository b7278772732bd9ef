"""Turning a device setting (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``) into a torch device.

The one place where a device word from a config or an option becomes a ``torch.device``.
torch is imported inside the functions: ``skinedge.utils`` stays importable without it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from skinedge.errors import ConfigError, UnsupportedHereError

if TYPE_CHECKING:
    import torch

#: The device words a config or option accepts (``mps`` only where torch supports it).
DEVICE_WORDS = ("auto", "cpu", "cuda", "cuda:N", "mps")

_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _setting(word: str, option: str) -> str:
    """``device='tpu'`` for a config key, ``--device 'tpu'`` for a command-line option."""
    return f"{option} {word!r}" if option.startswith("--") else f"{option}={word!r}"


def _use(option: str, words: str) -> str:
    return f"use {option} {words}" if option.startswith("--") else f"use {option}={words}"


def check_device_word(word: str, option: str = "device") -> str:
    """``word`` if it is one of :data:`DEVICE_WORDS`; a syntax check that needs no torch.

    Whether the device exists on this machine is checked by :func:`resolve_device`.

    Raises:
        ConfigError: not a device word; the message lists the valid ones.
    """
    if not isinstance(word, str) or not _DEVICE_RE.fullmatch(word):
        raise ConfigError(f"{_setting(word, option)} is not a device; "
                          f"{_use(option, 'auto | cpu | cuda | cuda:N (N = GPU index) | mps')} "
                          "(mps on Apple silicon only)")
    return word


def resolve_device(name: str, local_rank: int = 0, option: str = "device") -> torch.device:
    """``auto`` picks CUDA when available; a bare ``cuda`` means this process's local rank.

    Args:
        name: A device word: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        local_rank: This process's GPU under ``torchrun`` (for a bare ``cuda``).
        option: How the user set ``name``, for messages: a config key (``device``) or a
            command-line option (``--device``).

    Raises:
        ConfigError: not a device word.
        UnsupportedHereError: a valid device this machine does not have (CUDA without a
            visible GPU, a GPU index past the last one, MPS off Apple silicon).
    """
    import torch

    check_device_word(name, option)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedHereError(
                f"{_setting(name, option)}: no CUDA GPU is visible (torch.cuda.is_available() "
                f"is False); {_use(option, 'cpu')} or auto")
        count = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= count:
            visible = ("only cuda:0 is visible" if count == 1 else
                       f"only {count} CUDA GPUs are visible, cuda:0 to cuda:{count - 1}")
            raise UnsupportedHereError(f"{_setting(name, option)}: {visible}; "
                                       f"{_use(option, 'cuda')}, a visible cuda:N, or auto")
        torch.cuda.set_device(device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UnsupportedHereError(
            f"{_setting(name, option)}: MPS is not available here "
            f"(torch.backends.mps.is_available() is False; it needs Apple silicon); "
            f"{_use(option, 'cpu')} or auto")
    return device
