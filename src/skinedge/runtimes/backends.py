"""One :class:`Runtime` per format. Heavy packages are imported when a model is loaded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from skinedge.models.card import ModelCard
from skinedge.runtimes.base import Runtime, dequantize_output, quantize_input
from skinedge.utils.backends import require


class TorchRuntime(Runtime):
    """A skinedge checkpoint folder run by PyTorch (the reference every artifact is held to)."""

    backend = "torch"

    def __init__(self, path: Path, card: ModelCard | None = None, threads: int | None = None,
                 device: str = "cpu"):
        import torch

        from skinedge.models.checkpoint import load_checkpoint
        from skinedge.utils.device import resolve_device

        if threads:
            torch.set_num_threads(threads)  # process-wide in torch
        self.model, loaded = load_checkpoint(path)
        super().__init__(path, card or loaded, threads)
        self.device = resolve_device(device)
        self.model.to(self.device).eval()

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


class OnnxRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
        super().__init__(path, card, threads)
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


class OpenVINORuntime(Runtime):
    backend = "openvino"

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None,
                 device: str = "CPU"):
        super().__init__(path, card, threads)
        ov = require("openvino", "openvino")
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if card.artifact.precision == "fp32":
            # CPUs with bf16/AMX would otherwise run an FP32 IR in bf16 by default.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = ov.Core().compile_model(str(path), device, config)
        self.request = self.compiled.create_infer_request()

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[self.compiled.output(0)]


class TFLiteRuntime(Runtime):
    """LiteRT interpreter (XNNPACK on CPU). NHWC input; int8 tensors (de)quantized here."""

    backend = "litert"

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
        super().__init__(path, card, threads)
        litert = require("ai_edge_litert.interpreter", "tflite")
        self.interpreter = litert.Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def _run(self, x: np.ndarray) -> np.ndarray:
        spec = self.card.artifact
        if spec.input.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(quantize_input(x, spec.input)))
        self.interpreter.invoke()
        return dequantize_output(self.interpreter.get_tensor(self.output), spec.output)


class CoreMLRuntime(Runtime):
    """Core ML; predicts on macOS only. Input arrays are turned back into the RGB images the
    model declares (its normalisation runs inside the model)."""

    backend = "coreml"

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
        super().__init__(path, card, threads)
        if sys.platform != "darwin":
            raise RuntimeError(f"{path}: Core ML prediction needs macOS (Core ML's runtime is "
                               f"Apple's); on Linux the package loads only as a spec "
                               f"(coremltools.models.MLModel(path, skip_model_load=True))")
        ct = require("coremltools", "coreml")
        self.model = ct.models.MLModel(str(path))

    def _run(self, x: np.ndarray) -> np.ndarray:
        from PIL import Image

        pre, art = self.card.preprocess, self.card.artifact
        mean = np.asarray(pre.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(pre.std, dtype=np.float32)[:, None, None]
        rows = []
        for image in x:
            rgb = np.clip((image * std + mean) * 255 + 0.5, 0, 255).astype(np.uint8)
            out = self.model.predict({art.input.name: Image.fromarray(rgb.transpose(1, 2, 0))})
            probs = out[art.output.name]
            rows.append([probs[c] for c in self.card.classes])
        return np.asarray(rows, dtype=np.float32)

    @property
    def batch_size(self) -> int | None:
        return 1


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine on a CUDA GPU, with torch tensors as I/O buffers."""

    backend = "tensorrt"

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
        super().__init__(path, card, threads)
        from skinedge.export.targets.tensorrt import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise RuntimeError(f"{path}: cannot run a TensorRT engine here: {reason}")
        import tensorrt as trt

        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            built = card.artifact.details
            raise RuntimeError(f"{path}: TensorRT {trt.__version__} could not load the engine; it "
                               f"was built with TensorRT {built.get('tensorrt')} on "
                               f"{built.get('gpu')}: rebuild it on this device")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

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
