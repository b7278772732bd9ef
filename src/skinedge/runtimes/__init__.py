"""One inference contract over every format: ``load_runtime(path).predict(images)``.

>>> rt = load_runtime("exports/tf_efficientnet_lite0_int8.tflite", threads=1)
>>> rt.predict(["lesion.jpg"])          # (1, 7) probabilities, columns = rt.card.classes
"""

from __future__ import annotations

from pathlib import Path

from skinedge.models.card import ModelCard
from skinedge.runtimes.base import Runtime, softmax

__all__ = ["FORMATS", "Runtime", "load_runtime", "read_artifact_card", "softmax"]

# suffix -> (target module that reads the card, runtime class name)
FORMATS = {
    ".onnx": ("onnx", "OnnxRuntime"),
    ".xml": ("openvino", "OpenVINORuntime"),
    ".tflite": ("tflite", "TFLiteRuntime"),
    ".mlpackage": ("coreml", "CoreMLRuntime"),
    ".engine": ("tensorrt", "TensorRTRuntime"),
    ".plan": ("tensorrt", "TensorRTRuntime"),
}


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "card.json").is_file()


def read_artifact_card(path: Path | str) -> ModelCard:
    """The model card of a checkpoint folder or an exported artifact, without loading the model."""
    from importlib import import_module

    path = Path(path)
    if _is_checkpoint(path):
        from skinedge.models.checkpoint import load_card

        return load_card(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix not in FORMATS:
        raise ValueError(f"{path}: unknown model format {path.suffix!r}; expected a checkpoint "
                         f"folder or one of {sorted(FORMATS)}")
    module = import_module(f"skinedge.export.targets.{FORMATS[path.suffix][0]}")
    return module.read_card(path)


def load_runtime(path: Path | str, *, threads: int | None = None) -> Runtime:
    """Load a checkpoint folder or an exported artifact behind the common :class:`Runtime`.

    Args:
        path: Checkpoint folder (torch), ``.onnx``, ``.xml`` (OpenVINO IR), ``.tflite``,
            ``.mlpackage`` (Core ML, macOS only) or ``.engine``/``.plan`` (TensorRT).
        threads: Intra-op threads for the backend (None: its default).
    """
    from skinedge.runtimes import backends

    path = Path(path)
    card = read_artifact_card(path)
    if _is_checkpoint(path):
        return backends.TorchRuntime(path, card, threads)
    return getattr(backends, FORMATS[path.suffix][1])(path, card, threads)
