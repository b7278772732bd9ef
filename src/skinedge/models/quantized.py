"""INT8 checkpoints from NNCF quantization-aware training: rebuilding their fake quantizers.

Lives with the checkpoints (not in ``compress``) because ``load_checkpoint`` needs it; training
such checkpoints is :mod:`skinedge.compress.qat`.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from skinedge.utils.backends import require


def import_nncf():
    """NNCF, with its quantizer extension allowed to compile for as long as it needs: the
    first forward pass builds a C++ extension (about 2 minutes on 2 cores, then cached per
    torch version under ``TORCH_EXTENSIONS_DIR``); NNCF's default limit of 60 s fails it."""
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    nncf = require("nncf", "quantize")
    require("nncf.torch", "quantize")  # get_config, load_from_config

    return nncf


def restore_quantizers(model: nn.Module, nncf_config: dict[str, Any]) -> nn.Module:
    """The fake-quantized model of a QAT checkpoint, before its state dict is loaded."""
    nncf = import_nncf()
    return nncf.torch.load_from_config(model.eval(), nncf_config)
