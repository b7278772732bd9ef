"""ONNX: FP32 through the torch.export-based exporter, INT8 as a QDQ graph quantized by NNCF.

The card is stored in the model's ``metadata_props`` under ``skinedge.card``; ONNX Runtime shows
it as ``custom_metadata_map``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from skinedge.compress.quantize import quantize_onnx
from skinedge.export.base import Exported, ExportJob, register_target
from skinedge.models.card import ArtifactInfo, ModelCard, TensorSpec
from skinedge.utils.backends import require
from skinedge.utils.io import package_versions

OPSET = 18
INPUT, OUTPUT = "image", "logits"
CARD_KEY = "skinedge.card"


def write_onnx(job: ExportJob, path: Path, *, signed_activations: bool = False) -> dict:
    """Write the job's model as ONNX (QDQ INT8 when ``job.precision == 'int8'``); returns details."""
    import torch

    onnx = require("onnx", "onnx")
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
        model = quantize_onnx(onnx.load(str(path)), job.calibration, input_name=INPUT,
                              signed_activations=signed_activations)
        onnx.save(model, str(path))
        details["quantizer"] = "nncf.quantize (PTQ, QDQ, symmetric int8 weights per channel)"
        details["activations"] = ("int8 (uint8 Q/DQ rewritten for TensorRT)" if signed_activations
                                  else "uint8 after ReLU, int8 elsewhere (NNCF)")
    return details


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


def read_card(path: Path) -> ModelCard:
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == CARD_KEY:
            return ModelCard.from_json(prop.value)
    raise ValueError(f"{path}: no '{CARD_KEY}' metadata: not exported by skinedge, so its labels "
                     f"and preprocessing are unknown; export it with `skinedge export`")


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
        calibration=job.options.get("calibration_info"), details=details,
        versions=package_versions(("onnx", "onnxruntime", "onnxscript", "nncf", *extra_versions)))


@register_target(
    name="onnx", suffix=".onnx", extra="onnx", precisions=("fp32", "int8"),
    default_precision="fp32",
    description="ONNX (opset 18), static input shape; INT8 as an NNCF-calibrated QDQ graph")
def export_onnx(job: ExportJob) -> Exported:
    path = job.workdir / f"{job.stem}.onnx"
    card = job.card_for(artifact_info(job, "onnx", write_onnx(job, path)))
    embed_card(path, card)
    return Exported(path, [path], card)

