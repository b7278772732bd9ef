"""OpenVINO IR (``.xml`` + ``.bin``): FP32, FP16-compressed weights, or INT8 quantized by NNCF.

Converted from the FP32 ONNX graph, so torch tracing happens once, in one exporter. The card
lives in the IR's ``rt_info`` at the path the OpenVINO backend reads
(:data:`skinedge.runtimes.openvino.RT_INFO_PATH`), readable without OpenVINO.
"""

from __future__ import annotations

import dataclasses

from skinedge.compress.quantize import (
    quantize_openvino,
    quantize_openvino_controlled,
    resolve_overflow_fix,
)
from skinedge.export.base import Exported, ExportJob, register_target
from skinedge.export.targets.onnx import artifact_info, write_onnx
from skinedge.runtimes.openvino import RT_INFO_PATH
from skinedge.utils.backends import require

QUANTIZERS = ("ptq", "qac")  # plain post-training, or with accuracy control


@register_target(
    name="openvino", suffix=".xml", extra="openvino",
    requires=("openvino", "nncf", "onnx", "onnxscript"), precisions=("fp32", "fp16", "int8"),
    default_precision="fp32", quantizers=QUANTIZERS, from_qat=True,
    revision=2,  # 2: the first convolutions stay float (FLOAT_FIRST)
    description="OpenVINO IR; INT8 calibrated by NNCF on the IR (fast INT8 on x86 CPUs)")
def export_openvino(job: ExportJob) -> Exported:
    ov = require("openvino", "openvino")
    if job.options.quantizer == "qat":
        # OpenVINO converts NNCF's fake quantizers to FakeQuantize ops with int8 weights.
        model = ov.convert_model(job.model, example_input=job.example)
        quantization = job.card.training.get("quantization", {})
        details = {"converter": "openvino.convert_model(torch module)", "variant": "qat",
                   "quantizer": "NNCF quantization-aware training (from the checkpoint)",
                   "overflow_fix": quantization.get("overflow_fix")}
        return _save(job, model, details)
    onnx_path = job.workdir / f".{job.stem}.fp32.onnx"
    float_job = dataclasses.replace(job, precision="fp32")
    details = write_onnx(float_job, onnx_path)
    model = ov.convert_model(str(onnx_path))
    onnx_path.unlink()
    overflow_fix = resolve_overflow_fix(job.options.overflow_fix)
    if job.precision == "int8":
        details["overflow_fix"] = overflow_fix
    if job.precision == "int8" and job.options.quantizer == "qac":
        model, control = quantize_openvino_controlled(
            model, job.calibration.images, job.control.images, job.control.float_top1,
            max_drop=job.options.max_drop, overflow_fix=overflow_fix,
            float_first=job.options.float_first)
        details["quantizer"] = "nncf accuracy control (PTQ, sensitive layers back to float)"
        details["float_first"] = job.options.float_first
        details["accuracy_control"] = control
        details["variant"] = "qac"
    elif job.precision == "int8":
        model = quantize_openvino(model, job.calibration.images, overflow_fix=overflow_fix,
                                  float_first=job.options.float_first)
        details["quantizer"] = "nncf.quantize on the OpenVINO model (PTQ, symmetric)"
        details["float_first"] = job.options.float_first
    return _save(job, model, details)


def _save(job: ExportJob, model, details: dict) -> Exported:
    ov = require("openvino", "openvino")
    details["openvino_compress_to_fp16"] = job.precision == "fp16"
    card = job.card_for(artifact_info(job, "openvino", details, extra_versions=("openvino",)))
    model.set_rt_info(card.to_json(), RT_INFO_PATH)
    xml = job.workdir / f"{job.stem}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=job.precision == "fp16")
    return Exported(xml, [xml, xml.with_suffix(".bin")], card)
