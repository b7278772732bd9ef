"""ONNX: FP32 through the torch.export-based exporter, INT8 as a QDQ graph quantized by NNCF.

The INT8 graph is laid out for ONNX Runtime's CPU kernels: activations per tensor and uint8,
so that every convolution and residual sum becomes QLinearConv/QLinearAdd
(:func:`skinedge.compress.quantize.unsigned_qdq`); the runtime's ``execution()`` counts them.

The card is stored in the model's ``metadata_props`` under the key that the ONNX Runtime backend
reads (:data:`skinedge.runtimes.onnxruntime.CARD_KEY`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from skinedge.compress.quantize import quantize_onnx, resolve_overflow_fix
from skinedge.export.base import Exported, ExportJob, register_target
from skinedge.models.card import ArtifactInfo, ModelCard, TensorSpec
from skinedge.runtimes.onnxruntime import CARD_KEY
from skinedge.utils.backends import require
from skinedge.utils.io import package_versions

OPSET = 18
QAT_OPSET = 17  # the TorchScript exporter, for NNCF's stripped quantizers
INPUT, OUTPUT = "image", "logits"
#: The modules an ONNX export needs (the `onnx` extra); the ONNX-based targets share them.
ONNX_REQUIRES = ("onnx", "onnxruntime", "onnxscript")


def write_onnx(job: ExportJob, path: Path, *, signed_activations: bool = False) -> dict:
    """Write the job's model as ONNX (QDQ INT8 when ``job.precision == 'int8'``); returns details."""
    import torch

    onnx = require("onnx", "onnx")
    if job.options.quantizer == "qat":
        return _write_qat_onnx(job, path)
    require("onnxscript", "onnx")  # the torch.export-based exporter translates with it
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            job.model, (job.example,), dynamo=True, opset_version=OPSET,
            input_names=[INPUT], output_names=[OUTPUT], verbose=False)
    if program is None:  # pragma: no cover - torch returns None only for the legacy exporter
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    details = {"opset": OPSET, "exporter": "torch.onnx.export(dynamo=True)"}
    if job.precision == "int8":
        # TensorRT's GPU kernels do not saturate: keep NNCF's default there.
        overflow_fix = resolve_overflow_fix(
            "first_layer_only" if signed_activations else job.options.overflow_fix)
        model = quantize_onnx(onnx.load(str(path)), job.calibration.images, input_name=INPUT,
                              signed_activations=signed_activations, overflow_fix=overflow_fix,
                              float_first=job.options.float_first)
        details["overflow_fix"] = overflow_fix
        details["float_first"] = job.options.float_first
        onnx.save(model, str(path))
        details["quantizer"] = "nncf.quantize (PTQ, QDQ, symmetric int8 weights per channel)"
        details["activations"] = (
            "int8 per tensor (NNCF's uint8 Q/DQ rewritten for TensorRT)" if signed_activations
            else "uint8 per tensor (NNCF's int8 Q/DQ moved by 128: ONNX Runtime's U8S8 kernels)")
    return details


def _write_qat_onnx(job: ExportJob, path: Path) -> dict:
    """A quantization-aware trained model as QDQ ONNX: NNCF strips its fake quantizers to
    native torch quantize/dequantize ops, which the TorchScript exporter writes as Q/DQ
    (torch.export cannot trace NNCF's hooks). BatchNorm is not folded into the convolutions,
    so ONNX Runtime keeps those in float: this file suits Q/DQ consumers such as TensorRT;
    on CPUs the OpenVINO IR of the same checkpoint is the fast INT8 form."""
    import torch

    from skinedge.models.quantized import import_nncf
    from skinedge.models.temperature import TemperatureScaled, split_temperature

    nncf = import_nncf()
    # The calibration temperature wraps the quantized model (its weight ranges were trained,
    # so it cannot go into the head's weights): strip inside, wrap again.
    model, temperature = split_temperature(job.model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        stripped = nncf.strip(model, do_copy=True, strip_format=nncf.StripFormat.NATIVE,
                              example_input=job.example)
        if temperature != 1.0:
            stripped = TemperatureScaled(stripped, temperature)
        torch.onnx.export(stripped.eval(), (job.example,), str(path), dynamo=False,
                          opset_version=QAT_OPSET, input_names=[INPUT], output_names=[OUTPUT])
    quantization = job.card.training.get("quantization", {})
    return {"opset": QAT_OPSET, "exporter": "nncf.strip(NATIVE) + torch.onnx.export(dynamo=False)",
            "variant": "qat", "quantizer": "NNCF quantization-aware training (from the checkpoint)",
            "overflow_fix": quantization.get("overflow_fix")}


def embed_card(path: Path, card: ModelCard) -> None:
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[CARD_KEY] = card.to_json()
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = f"{card.architecture} skin-lesion classifier ({card.artifact.precision})"
    onnx.save(model, str(path))


def artifact_info(job: ExportJob, target: str, details: dict, *, extra_versions=()) -> ArtifactInfo:
    """The card section shared by the ONNX-based targets (float NCHW input, logits out)."""
    size = job.card.preprocess.input_size
    return ArtifactInfo(
        target=target, precision=job.precision, source_checkpoint=job.source,
        source_weights_sha256=job.card.weights_sha256,
        input=TensorSpec(name=INPUT, shape=[job.batch_size, 3, size, size], layout="NCHW",
                         dtype="float32"),
        output=TensorSpec(name=OUTPUT, shape=[job.batch_size, job.card.num_classes], layout="NC",
                          dtype="float32", kind="logits"),
        calibration=job.calibration_info, details=details,
        versions=package_versions(("onnx", "onnxruntime", "onnxscript", "nncf", *extra_versions)))


@register_target(
    name="onnx", suffix=".onnx", extra="onnx", requires=ONNX_REQUIRES,
    precisions=("fp32", "int8"), default_precision="fp32", from_qat=True,
    # 2: INT8 activations per tensor and uint8 (ONNX Runtime integer kernels); 3: FLOAT_FIRST
    revision=3,
    description="ONNX (opset 18), static input shape; INT8 as an NNCF-calibrated QDQ graph")
def export_onnx(job: ExportJob) -> Exported:
    path = job.workdir / f"{job.stem}.onnx"
    card = job.card_for(artifact_info(job, "onnx", write_onnx(job, path)))
    embed_card(path, card)
    return Exported(path, [path], card)

