"""Compression: distillation into one student (cached teacher logits), NNCF INT8 (post-training,
accuracy-controlled, quantization-aware training) and the report that compares them.

Doors: ``skinedge.compress.distill.distill_classifier``, ``skinedge.compress.api.quantize_checkpoint``,
``skinedge.compress.report.build_compression_report``.
"""
