"""Compression: INT8 post-training quantization with NNCF (distillation follows)."""
