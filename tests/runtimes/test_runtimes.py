"""The runtime contract's own rules: dispatch by format through the registry, clear errors,
int8 I/O arithmetic, and an import that needs no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skinedge.models.card import TensorSpec
from skinedge.runtimes import RUNTIMES, Runtime, load_runtime, read_artifact_card, softmax
from skinedge.runtimes.base import dequantize_output, quantize_input
from skinedge.runtimes.registry import register_runtime, runtime_class


def test_torch_runtime_predicts_probabilities_from_image_files(tiny_checkpoint, tiny_dataset) -> None:
    runtime = load_runtime(tiny_checkpoint, threads=1)
    images = sorted((tiny_dataset / "images").glob("*.jpg"))[:5]
    probs = runtime.predict(images)
    assert probs.shape == (5, 7) and runtime.label == "torch-fp32"
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-9)
    # The same answer as the checkpoint run directly on the card's evaluation transform.
    import torch

    from skinedge.data import build_eval_transform, load_rgb
    from skinedge.models import load_checkpoint

    model, card = load_checkpoint(tiny_checkpoint)
    transform = build_eval_transform(card.preprocess)
    with torch.no_grad():
        direct = torch.softmax(model(torch.stack([transform(load_rgb(p)) for p in images])), 1)
    np.testing.assert_allclose(probs, direct.numpy(), atol=1e-5)


def test_unknown_format_and_missing_file_are_named(tmp_path) -> None:
    (tmp_path / "model.pb").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"model\.pb: unknown model format"):
        read_artifact_card(tmp_path / "model.pb")
    with pytest.raises(FileNotFoundError, match="gone.onnx"):
        load_runtime(tmp_path / "gone.onnx")


def test_an_onnx_file_without_a_card_is_refused_with_the_fix(tmp_path) -> None:
    pytest.importorskip("onnxscript")
    import torch

    path = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(path), dynamo=True)
    with pytest.raises(ValueError, match="not exported by skinedge.*skinedge export"):
        read_artifact_card(path)


def test_wrong_input_shape_is_refused(tiny_checkpoint) -> None:
    runtime = load_runtime(tiny_checkpoint)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, 32, 32\)"):
        runtime.predict_array(np.zeros((1, 3, 64, 64), np.float32))


def test_int8_inputs_round_trip_with_scale_and_zero_point() -> None:
    spec = TensorSpec(name="x", shape=[1, 4], layout="NC", dtype="int8", scale=0.02, zero_point=-3)
    x = np.array([[-1.0, 0.0, 0.5, 9.0]], np.float32)
    q = quantize_input(x, spec)
    assert q.dtype == np.int8 and q.tolist() == [[-53, -3, 22, 127]]  # 9.0 saturates
    np.testing.assert_allclose(dequantize_output(q, spec)[0, :3], x[0, :3], atol=0.01)


def test_softmax_is_stable_for_large_logits() -> None:
    probs = softmax(np.array([[1000.0, 0.0], [-5.0, -5.0]]))
    np.testing.assert_allclose(probs, [[1.0, 0.0], [0.5, 0.5]])


def test_every_backend_module_registers_its_runtime_by_suffix(tiny_checkpoint, tmp_path) -> None:
    assert set(RUNTIMES) == {"torch", "onnxruntime", "openvino", "litert", "coreml", "tensorrt",
                             "executorch", "web"}
    for backend, cls in RUNTIMES.items():
        assert cls.__module__ == f"skinedge.runtimes.{backend}"  # one file per backend
        assert cls.extra and cls.requires
    for suffix, backend in {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "litert",
                            ".mlpackage": "coreml", ".engine": "tensorrt", ".plan": "tensorrt",
                            ".pte": "executorch"}.items():
        (tmp_path / f"model{suffix}").touch()
        assert runtime_class(tmp_path / f"model{suffix}").backend == backend
    (tmp_path / "model.web").mkdir()  # the web export is a folder (a static page)
    assert runtime_class(tmp_path / "model.web").backend == "web"
    assert runtime_class(tiny_checkpoint).backend == "torch"


def test_a_taken_suffix_or_a_runtime_without_read_card_is_refused() -> None:
    class SecondOnnx(Runtime):
        backend, suffixes = "second-onnx", (".onnx",)

        @staticmethod
        def read_card(path: Path):
            raise NotImplementedError

        def _run(self, x):
            return x

    class NoCard(Runtime):
        backend, suffixes = "no-card", (".nocard",)

        def _run(self, x):
            return x

    with pytest.raises(TypeError, match=r"\.onnx is already onnxruntime's"):
        register_runtime(SecondOnnx)
    with pytest.raises(TypeError, match="does not implement read_card"):
        register_runtime(NoCard)
    assert "second-onnx" not in RUNTIMES and "no-card" not in RUNTIMES


def test_importing_the_runtimes_imports_no_torch() -> None:
    code = ("import sys, skinedge.runtimes as r, skinedge.models.card, skinedge.data.transforms\n"
            "assert len(r.RUNTIMES) >= 6\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_onnx_card_reads_with_onnxruntime_alone(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """The `runtime-onnx` extra is onnxruntime without onnx: the card comes from its session."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import importlib.util

    from onnx import TensorProto, helper

    card = read_artifact_card(tiny_checkpoint)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    helper.set_model_props(model, {"skinedge.card": card.to_json()})
    onnx.save(model, str(tmp_path / "card.onnx"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` fails, as in that install
    assert read_artifact_card(tmp_path / "card.onnx") == card


def _identity_onnx(path: Path, card_json: str, op: str = "Identity") -> Path:
    """A tiny ONNX graph (one node) that carries ``card_json`` as its skinedge card."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    helper.set_model_props(model, {"skinedge.card": card_json})
    onnx.save(model, str(path))
    return path


def test_an_edited_embedded_card_is_refused_naming_the_artifact(tiny_checkpoint, tmp_path) -> None:
    import json

    from skinedge.errors import ModelError

    pytest.importorskip("onnxruntime")
    card = read_artifact_card(tiny_checkpoint)
    doc = json.loads(card.to_json())
    doc["classes"] = doc["classes"][::-1]  # melanoma AUC would be read off another output
    path = _identity_onnx(tmp_path / "edited.onnx", json.dumps(doc))
    for read in (read_artifact_card, load_runtime):
        with pytest.raises(ModelError) as caught:
            read(path)
        assert str(path) in str(caught.value)
        assert "'integrity' hash does not match" in str(caught.value)
        assert "export it again with `skinedge export`" in str(caught.value)


def test_a_truncated_onnx_file_is_a_model_error_naming_it(tiny_checkpoint, tmp_path) -> None:
    from skinedge.errors import ModelError

    pytest.importorskip("onnxruntime")
    path = _identity_onnx(tmp_path / "cut.onnx", read_artifact_card(tiny_checkpoint).to_json())
    path.write_bytes(path.read_bytes()[:-40])
    for read in (read_artifact_card, load_runtime):
        with pytest.raises(ModelError) as caught:
            read(path)
        assert str(path) in str(caught.value) and "could not load it" in str(caught.value)
        assert "export it again" in str(caught.value)


def test_an_onnx_file_onnxruntime_cannot_load_is_a_model_error(tiny_checkpoint, tmp_path) -> None:
    from skinedge.errors import ModelError

    pytest.importorskip("onnxruntime")
    path = _identity_onnx(tmp_path / "odd.onnx", read_artifact_card(tiny_checkpoint).to_json(),
                          op="NoSuchOperator")
    read_artifact_card(path)  # the file parses: only the runtime refuses it
    with pytest.raises(ModelError, match="ONNX Runtime could not load it") as caught:
        load_runtime(path)
    assert str(path) in str(caught.value)
    # Not a damaged file: the message names the other cause and its check, not only "corrupted".
    assert "use an operation this ONNX Runtime version lacks" in str(caught.value)
    assert "check the installed ONNX Runtime version" in str(caught.value)


def _linear_pte(path: Path, card_json: str | None) -> Path:
    """A tiny ExecuTorch program (one Linear, XNNPACK), with ``card_json`` as its card or none."""
    pytest.importorskip("executorch")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from skinedge.runtimes.executorch import CARD_METHOD

    methods = {} if card_json is None else {
        CARD_METHOD: torch.frombuffer(bytearray(card_json.encode()), dtype=torch.uint8)}
    program = torch.export.export(torch.nn.Linear(3, 2).eval(), (torch.zeros(1, 3),))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                       constant_methods=methods)
    path.write_bytes(edge.to_executorch().buffer)
    return path


def test_a_pte_without_a_card_or_truncated_is_a_model_error_naming_it(tiny_checkpoint,
                                                                      tmp_path) -> None:
    from skinedge.errors import ModelError

    with pytest.raises(ModelError, match="not exported by skinedge.*skinedge export"):
        read_artifact_card(_linear_pte(tmp_path / "foreign.pte", None))
    card = read_artifact_card(tiny_checkpoint)
    path = _linear_pte(tmp_path / "cut.pte", card.to_json())
    assert read_artifact_card(path) == card  # the card method, read back
    path.write_bytes(path.read_bytes()[:-200])
    for read in (read_artifact_card, load_runtime):
        with pytest.raises(ModelError) as caught:
            read(path)
        assert str(path) in str(caught.value) and "ExecuTorch could not load it" in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_openvino_computes_every_precision_in_f32_on_cpu(precision, tiny_checkpoint,
                                                          tmp_path) -> None:
    """Not bf16, the CPU plugin's default where the CPU has it (AVX512-BF16, AMX): FP16 weights
    and the float layers of INT8 are computed in float, as the parity check assumes."""
    from skinedge.export import TARGETS, export_checkpoint

    if TARGETS["openvino"].missing_backend(precision):
        pytest.skip("openvino not installed")
    result = export_checkpoint(tiny_checkpoint, "openvino", precision=precision,
                               out_dir=tmp_path, calibration_images=16, verify_images=0)
    runtime = load_runtime(result.path, threads=1)
    assert runtime.execution()["inference_precision"] == "f32"
