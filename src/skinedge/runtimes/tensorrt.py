"""TensorRT on serialized engines (``.engine`` / ``.plan``), on the CUDA GPU they were built for.

An engine cannot carry metadata, so its card is a sidecar file, :func:`card_path`
(``model.card.json`` beside ``model.engine``). The I/O buffers are torch CUDA tensors, so this
backend needs torch besides the ``tensorrt`` wheel (from NVIDIA's index).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from skinedge.errors import ModelError, UnsupportedHereError
from skinedge.models.card import ModelCard
from skinedge.runtimes.base import Runtime, card_from_json
from skinedge.runtimes.registry import register_runtime

EXTRA = "tensorrt"


def unavailable_reason() -> str | None:
    """Why an engine cannot be built or run here (None when it can)."""
    if importlib.util.find_spec("tensorrt") is None:
        return ("the tensorrt package is not installed (its wheels come from NVIDIA's index: "
                "pip install 'skinedge[tensorrt]' on the target machine)")
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (TensorRT's I/O buffers here are torch CUDA tensors)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (TensorRT engines build and run on the GPU they target)"
    return None


def card_path(engine: Path) -> Path:
    """The card sidecar of an engine: ``model.engine`` -> ``model.card.json``."""
    return Path(engine).with_suffix(".card.json")


@register_runtime
class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine on a CUDA GPU, with torch tensors as I/O buffers."""

    backend = "tensorrt"
    suffixes = (".engine", ".plan")
    exports = {"tensorrt": (".engine",)}
    extra = EXTRA
    requires = ("tensorrt", "torch")
    needs = ("gpu",)

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
        super().__init__(path, card, threads)
        if reason := unavailable_reason():
            raise UnsupportedHereError(f"{path}: cannot run a TensorRT engine here: {reason}")
        import tensorrt as trt

        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            built = card.artifact.details
            origin = (f"was built with TensorRT {built['tensorrt']} on {built.get('gpu')}"
                      if built.get("tensorrt") else
                      f"was built on its device by {built.get('built_by', 'trtexec')}")
            raise ModelError(f"{path}: TensorRT {trt.__version__} could not load the engine; it "
                             f"{origin}: rebuild it on this device")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    @classmethod
    def artifact_files(cls, path: Path) -> list[Path]:
        return [Path(path), card_path(path)]

    @staticmethod
    def read_card(path: Path) -> ModelCard:
        """The card from the sidecar that ``skinedge export`` wrote beside the engine."""
        sidecar = card_path(path)
        if not sidecar.is_file():
            raise ModelError(f"{path}: no {sidecar.name} beside it: the engine's labels and "
                             f"preprocessing are unknown; keep the card that `skinedge export` "
                             f"wrote")
        return card_from_json(sidecar.read_bytes(), sidecar)  # bad UTF-8: a ModelError too

    def _execution(self) -> dict[str, Any]:
        import torch

        return {"device": torch.cuda.get_device_name(), "tensorrt": self._trt.__version__}

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        trt = self._trt
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        feed = torch.from_numpy(x).cuda().to(dtypes[self.engine.get_tensor_dtype(self.inputs[0])])
        self.context.set_tensor_address(self.inputs[0], feed.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape(self.outputs[0])), device="cuda",
                          dtype=dtypes[self.engine.get_tensor_dtype(self.outputs[0])])
        self.context.set_tensor_address(self.outputs[0], out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        stream.synchronize()
        return out.float().cpu().numpy()
