"""Core ML ML program (``.mlpackage``): FP32, FP16, or FP16 compute with INT8 weights.

The input is declared as an RGB image of the model's input size, with the card's normalisation
inside the model, so an iOS app hands camera frames (resized and cropped as the card says)
straight to Vision/Core ML. The output is a classifier: class label plus class probabilities.
Conversion runs on Linux; prediction needs macOS (Core ML's runtime is Apple's).
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from skinedge.export.base import Exported, ExportError, ExportJob, register_target
from skinedge.models.card import ArtifactInfo, TensorSpec
from skinedge.runtimes.coreml import CARD_KEY, unavailable_reason
from skinedge.utils.backends import require
from skinedge.utils.io import package_versions

INPUT, LABEL = "image", "label"


class _ImageClassifier(nn.Module):
    """0-255 RGB in, probabilities out: normalisation and softmax inside the graph."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("scale", 1 / (255 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x * self.scale - self.shift), dim=-1)


@register_target(
    name="coreml", suffix=".mlpackage", extra="coreml", requires=("coremltools",),
    precisions=("fp32", "fp16", "int8"), default_precision="fp16",
    runs_here=unavailable_reason, int8_extra=None,
    int8_calibrated=False,
    description="Core ML ML program with an image input (iOS 16+); INT8 = int8 weights")
def export_coreml(job: ExportJob) -> Exported:
    ct = require("coremltools", "coreml")
    pre = job.card.preprocess
    size = pre.input_size
    wrapped = _ImageClassifier(job.model, pre.mean, pre.std).eval()
    example = torch.rand(job.batch_size, 3, size, size) * 255
    chatter = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stderr(chatter):
            traced = torch.jit.trace(wrapped, example)
            model = ct.convert(
                traced,
                inputs=[ct.ImageType(name=INPUT, shape=tuple(example.shape),
                                     color_layout=ct.colorlayout.RGB)],
                classifier_config=ct.ClassifierConfig(list(job.card.classes),
                                                      predicted_feature_name=LABEL),
                convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                compute_precision=(ct.precision.FLOAT32 if job.precision == "fp32"
                                   else ct.precision.FLOAT16))
    except Exception as exc:  # coremltools raises bare errors naming the unsupported op
        raise ExportError(f"coremltools could not convert the model: {exc}") from exc
    details = {"converter": "coremltools.convert (TorchScript trace)", "deployment": "iOS16",
               "compute_precision": "fp32" if job.precision == "fp32" else "fp16"}
    if job.precision == "int8":
        from coremltools.optimize.coreml import (
            OpLinearQuantizerConfig,
            OptimizationConfig,
            linear_quantize_weights,
        )

        with contextlib.redirect_stderr(chatter):
            model = linear_quantize_weights(model, config=OptimizationConfig(
                global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")))
        details["quantizer"] = "coremltools linear_quantize_weights (int8 weights, fp16 compute)"
    probs_name = _probabilities_output(model)
    info = ArtifactInfo(
        target="coreml", precision=job.precision, source_checkpoint=job.source,
        source_weights_sha256=job.card.weights_sha256,
        input=TensorSpec(name=INPUT, shape=[job.batch_size, 3, size, size], layout="NCHW",
                         dtype="image"),
        output=TensorSpec(name=probs_name, shape=[job.batch_size, job.card.num_classes],
                          layout="NC", dtype="float32", kind="probabilities"),
        details=details, versions=package_versions(("coremltools",)))
    card = job.card_for(info)
    model.user_defined_metadata[CARD_KEY] = card.to_json()
    model.short_description = (f"{card.architecture} skin-lesion classifier ({job.precision}); "
                               f"decision support only")
    model.input_description[INPUT] = (
        f"RGB dermoscopy image, {size}x{size}, resized ({pre.resize_mode}) as the card says")
    path = job.workdir / f"{job.stem}.mlpackage"
    model.save(str(path))
    return Exported(path, [path], card)


def _probabilities_output(model) -> str:
    """Name of the class-probabilities output (coremltools names it after the traced graph)."""
    names = [o.name for o in model.get_spec().description.output]
    others = [n for n in names if n != LABEL]
    if len(others) != 1:
        raise ExportError(f"unexpected Core ML outputs {names}; expected {LABEL!r} and one "
                          f"probabilities dictionary")
    return others[0]
