"""A checkpoint's calibration temperature inside the model itself, for export.

``card.temperature`` (fitted by :mod:`skinedge.evaluate.calibration`) is applied by skinedge's
runtimes after the model; an exported artifact has it inside instead, so that an app reading
its outputs with its own softmax (MediaPipe, Core ML, the web page) gets calibrated
probabilities as well. The artifact's card says so (``artifact.output.temperature``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class TemperatureScaled(nn.Module):
    """``model(x) / temperature``: for models whose head cannot take the division."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.inverse = 1.0 / temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.inverse


def fold_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """A copy of ``model`` whose outputs are its logits divided by ``temperature``.

    A timm classifier whose head is one ``nn.Linear`` gets the division folded into that
    layer's weight and bias: no extra operation in an exported graph and nothing more to
    quantize. Any other model (an ensemble, whose output is a log of averaged probabilities; a
    model carrying NNCF quantizers, whose weight ranges were trained) is wrapped in
    :class:`TemperatureScaled`. ``temperature`` 1 returns ``model`` itself.
    """
    if temperature == 1.0:
        return model
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    quantized = any("quantizer" in type(m).__name__.lower() for m in model.modules())
    if not isinstance(head, nn.Linear) or quantized:
        return TemperatureScaled(model, temperature).eval()
    folded = copy.deepcopy(model)
    head = folded.get_classifier()
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)
    return folded.eval()


def split_temperature(model: nn.Module) -> tuple[nn.Module, float]:
    """(the model inside, its temperature) for a :class:`TemperatureScaled` wrapper, else
    (``model``, 1): for exporters that must reach the model itself (NNCF's ``strip``)."""
    if isinstance(model, TemperatureScaled):
        return model.model, 1.0 / model.inverse
    return model, 1.0
