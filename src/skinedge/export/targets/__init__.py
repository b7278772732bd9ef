"""Built-in export targets; importing this package registers them (backends load lazily)."""

from skinedge.export.targets import coreml, onnx, openvino, tensorrt, tflite  # noqa: F401
