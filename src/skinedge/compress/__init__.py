"""Compression primitives: distillation into one student (cached teacher logits) and NNCF INT8
(post-training, accuracy-controlled, quantization-aware training).

Doors: ``skinedge.compress.distill.distill_classifier``, ``skinedge.compress.qat.prepare_qat``,
``skinedge.compress.quantize`` (NNCF on ONNX and OpenVINO graphs). Quantize-and-export and the
compression report call export and bench, so they live in ``skinedge.pipelines``.
"""
