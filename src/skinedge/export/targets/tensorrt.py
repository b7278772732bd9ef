"""TensorRT engines, built from the (QDQ) ONNX graph with TensorRT's Python builder.

Engines are tied to the TensorRT version and the GPU they were built on, so both go into the
card (a sidecar ``.card.json``: a serialized engine has no metadata field). Without the
``tensorrt`` package or a CUDA GPU the export refuses, but still writes what the target device
needs: the TensorRT-ready ONNX (INT8: int8 Q/DQ, as TensorRT's explicit quantization wants),
the exact ``trtexec`` command to build the engine there, and the engine's sealed sidecar card.

Follows TensorRT 10's documented API: networks are always explicit-batch (``create_network(0)``),
INT8 from Q/DQ uses a strongly typed network with no precision flags, FP16 sets
``BuilderFlag.FP16`` (weak typing, deprecated in 10.12 and gone in 11, where the FP16 graph
itself would be needed).
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from skinedge.export.base import Exported, ExportError, ExportJob, register_target
from skinedge.export.targets.onnx import (
    INPUT,
    ONNX_REQUIRES,
    artifact_info,
    embed_card,
    write_onnx,
)
from skinedge.runtimes.tensorrt import card_path, unavailable_reason
from skinedge.utils.io import atomic_write_text

WORKSPACE_MIB = 1024


class TensorRTUnavailable(ExportError):
    """TensorRT or a CUDA GPU is missing here; ``files`` are the ONNX, the trtexec script and
    the sealed card sidecar of the engine the script builds (``<stem>.card.json``)."""

    def __init__(self, message: str, files: list[Path]):
        super().__init__(message)
        self.files = files


def trtexec_command(onnx_path: Path, engine_path: Path, precision: str, input_shape: list[int]) -> str:
    """The trtexec line that builds the same engine on the target device (TensorRT 10)."""
    shape = "x".join(str(d) for d in input_shape)
    args = ["trtexec", f"--onnx={onnx_path.name}", f"--saveEngine={engine_path.name}",
            f"--shapes={INPUT}:{shape}", f"--memPoolSize=workspace:{WORKSPACE_MIB}",
            "--skipInference"]
    if precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args.append("--stronglyTyped")  # Q/DQ graph: precisions come from the graph itself
    return " ".join(shlex.quote(a) for a in args)


def build_engine(onnx_path: Path, engine_path: Path, precision: str) -> dict:
    """Build and serialize an engine with TensorRT's Python builder; returns version and GPU."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision == "int8":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise ExportError("TensorRT could not parse the ONNX graph:\n" + "\n".join(
            f"  node {e.node()}: {e.desc()}" for e in errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_MIB << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT failed to build the engine (its log above says which layer)")
    engine_path.write_bytes(bytes(plan))
    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(),
            "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "portable": False}


@register_target(
    name="tensorrt", suffix=".engine", extra="onnx", requires=ONNX_REQUIRES,
    precisions=("fp32", "fp16", "int8"),
    default_precision="fp16", runs_here=unavailable_reason,
    revision=3,  # 2: INT8 activations per tensor (the ONNX target's quantizer); 3: FLOAT_FIRST
    description="TensorRT engine for the GPU it is built on (INT8 from int8 Q/DQ ONNX)")
def export_tensorrt(job: ExportJob) -> Exported:
    onnx_path = job.workdir / f"{job.stem}.trt.onnx"
    onnx_job = dataclasses.replace(job, precision="int8" if job.precision == "int8" else "fp32")
    details = write_onnx(onnx_job, onnx_path, signed_activations=True)
    engine = job.workdir / f"{job.stem}.engine"
    command = trtexec_command(onnx_path, engine, job.precision, list(job.example.shape))
    script = job.workdir / f"{job.stem}.trtexec.sh"
    atomic_write_text(script, "#!/bin/sh\n# Build the TensorRT engine on the target device "
                              "(TensorRT 10; the engine only runs with that TensorRT and GPU).\n"
                              f'cd "$(dirname "$0")"\n{command}\n')
    # The ONNX carries the card too: whoever builds the engine on the device keeps the labels.
    # Its card is onnx_job's: top-level precision and artifact.precision both say what the
    # ONNX holds (fp32 for an fp16 engine), not what the engine will be built as.
    embed_card(onnx_path, onnx_job.card_for(artifact_info(onnx_job, "onnx", details)))
    sidecar = card_path(engine)  # the script saves engine.name: the runtime reads this beside it
    reason = unavailable_reason()
    if reason is not None:
        # The engine built by the script needs its card beside it (the runtime reads nothing
        # else): the same sealed card as a built engine's, less what only the build knows
        # (TensorRT version and GPU), so it describes the engine the script builds.
        details.update(trtexec=command, portable=False, built_by=script.name)
        card = job.card_for(artifact_info(job, "tensorrt", details,
                                          extra_versions=("tensorrt",)))
        atomic_write_text(sidecar, card.to_json())
        # Summaries (bench rows) keep a message's first line only: it names the script to run.
        raise TensorRTUnavailable(
            f"TensorRT engine not built: {reason}. Wrote the TensorRT-ready ONNX, "
            f"{script.name} and the engine's card {sidecar.name}; on the target device, in the "
            f"folder holding them, run `sh {script.name}` (it writes {engine.name}; keep "
            f"{sidecar.name} beside it).\nThe script runs:\n  {command}",
            [onnx_path, script, sidecar])
    details.update(build_engine(onnx_path, engine, job.precision))
    details["trtexec"] = command
    card = job.card_for(artifact_info(job, "tensorrt", details, extra_versions=("tensorrt",)))
    atomic_write_text(sidecar, card.to_json())
    return Exported(engine, [engine, sidecar, onnx_path, script], card)
