"""ExecuTorch (``.pte``) with the XNNPACK delegate: PyTorch's own on-device runtime, the same file
on Android and iOS.

``torch.export`` -> ``to_edge_transform_and_lower`` with ``XnnpackPartitioner`` ->
``to_executorch``. INT8 is PT2E: ExecuTorch's ``XNNPACKQuantizer`` (symmetric int8, weights per
channel; conv + ReLU6 quantized after the clip, :mod:`skinedge.compress.pt2e`), calibrated in
torch on the training images (quantizer ``pt2e``; ``pt2e-qat`` then fine-tunes it by
quantization-aware distillation to the float model, the fallback), then lowered to XNNPACK's
int8 kernels; input and output stay float32 (NCHW image in, logits out). Operators XNNPACK
cannot take run on ExecuTorch's portable kernels (slower): the export warns and names them.

The card is the program's constant method :data:`~skinedge.runtimes.executorch.CARD_METHOD`,
read by the ExecuTorch backend (:mod:`skinedge.runtimes.executorch`).
"""

from __future__ import annotations

import warnings

from skinedge.export.base import PT2E_QAT, Exported, ExportError, ExportJob, register_target
from skinedge.models.card import ArtifactInfo, TensorSpec
from skinedge.runtimes.executorch import CARD_METHOD, EXTRA, FORWARD
from skinedge.utils.backends import require
from skinedge.utils.io import package_versions

INPUT, OUTPUT = "image", "logits"


def int8_quantizer(float_first: int):
    """The PT2E quantizer of the INT8 export: XNNPACK's, symmetric int8 with weights per
    channel, ReLU6 quantized after its clip, not with the convolution's unclipped range
    (:mod:`skinedge.compress.pt2e`), the first ``float_first`` convolutions left float."""
    require("executorch", EXTRA)
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    from skinedge.compress.pt2e import relu6_fused

    quantizer = relu6_fused(XNNPACKQuantizer)().set_global(
        get_symmetric_quantization_config(is_per_channel=True))
    quantizer.float_first = float_first
    return quantizer


def _quantize_int8(job: ExportJob, sample: tuple):
    """The model with PT2E int8 quantize/dequantize ops, calibrated on ``job.calibration``
    (``pt2e-qat``: then fine-tuned by quantization-aware distillation), and the per-layer SQNR
    of it."""
    import torch

    from skinedge.compress.pt2e import quantize_pt2e

    images = [torch.from_numpy(image[None]) for image in job.calibration.images]
    return quantize_pt2e(job.model, sample, int8_quantizer(job.options.float_first), images,
                         qat=job.qat())


def _lower(job: ExportJob, module, sample: tuple, card_json: bytes):
    """The ExecuTorch program (``forward`` lowered to XNNPACK, the card as a constant method)."""
    import torch

    require("executorch", EXTRA)
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    card = torch.frombuffer(bytearray(card_json), dtype=torch.uint8)
    try:
        with torch.no_grad():
            program = torch.export.export(module, sample)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                           constant_methods={CARD_METHOD: card})
        _warn_undelegated(job, edge)
        return edge.to_executorch()
    except ExportError:
        raise
    except Exception as exc:  # torch.export and the lowering raise many types
        detail = (str(exc).strip().splitlines() or [""])[0][:500]
        raise ExportError(f"ExecuTorch could not export the model ({type(exc).__name__}: "
                          f"{detail}); the operator it names is the one to replace, or export "
                          f"to tflite/onnx instead") from exc


def _warn_undelegated(job: ExportJob, edge) -> None:
    """Warn when compute operators stay outside the XNNPACK delegate (portable kernels)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program(FORWARD).graph_module)
    left = sorted(op for op, b in info.delegation_by_operator.items()
                  if b.non_delegated and op not in ("getitem", "alloc"))
    if not info.num_delegated_subgraphs:
        raise ExportError(f"{job.stem}.pte: XNNPACK took no part of the model; export to "
                          f"tflite/onnx instead")
    if left:
        warnings.warn(f"{job.stem}.pte: {', '.join(left)} run outside XNNPACK, on ExecuTorch's "
                      f"portable kernels (slower on the phone)", UserWarning, stacklevel=3)


@register_target(
    name="executorch", suffix=".pte", extra=EXTRA, requires=("executorch", "torchao"),
    precisions=("fp32", "int8"), default_precision="fp32",
    int8_extra=None, int8_requires=(), quantizers=("pt2e", PT2E_QAT),
    description="ExecuTorch .pte with the XNNPACK delegate (Android and iOS); INT8 via PT2E "
                "with XNNPACKQuantizer",
    # 2: PT2E INT8 quantizes ReLU6 after its clip (compress/pt2e.py); 3: FLOAT_FIRST
    revision=3,
)
def export_executorch(job: ExportJob) -> Exported:
    sample = (job.example,)
    size = job.card.preprocess.input_size
    details = {"exporter": "torch.export + executorch.exir.to_edge_transform_and_lower",
               "delegate": "XNNPACK (XnnpackPartitioner)", "card": f"constant method "
               f"'{CARD_METHOD}' (uint8 tensor of the card's JSON)"}
    module, int8_layers = job.model, None
    if job.precision == "int8":
        module, int8_layers = _quantize_int8(job, sample)
        details["quantizer"] = ("PT2E XNNPACKQuantizer (symmetric int8, weights per channel; "
                                "conv + ReLU6 quantized after the clip); float32 input and output")
        details["float_first"] = job.options.float_first
        details.update(job.qat_details(module))
    info = ArtifactInfo(
        target="executorch", precision=job.precision, source_checkpoint=job.source,
        source_weights_sha256=job.card.weights_sha256,
        input=TensorSpec(name=INPUT, shape=[job.batch_size, 3, size, size], layout="NCHW",
                         dtype="float32"),
        output=TensorSpec(name=OUTPUT, shape=[job.batch_size, job.card.num_classes],
                          layout="NC", dtype="float32", kind="logits"),
        calibration=job.calibration_info, details=details,
        versions=package_versions(("executorch", "torchao")))
    card = job.card_for(info)
    program = _lower(job, module, sample, card.to_json().encode())
    path = job.workdir / f"{job.stem}.pte"
    path.write_bytes(program.buffer)
    return Exported(path, [path], card, int8_layers=int8_layers)
