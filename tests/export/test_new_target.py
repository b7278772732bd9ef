"""Adding a format is one export target and one runtime, registered by their decorators.

The format here is gzipped ONNX (``.onnxz``, a smaller download): an exporter and a runtime of
about 20 lines each, defined in this file, go through the ordinary ``export_checkpoint`` (with
its verification) and ``load_runtime`` without any other file naming them.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from skinedge.export import TARGETS, export_checkpoint  # TARGETS: with the built-in targets
from skinedge.export.base import Exported, ExportJob, register_target
from skinedge.models.card import ModelCard
from skinedge.runtimes import RUNTIMES, Runtime, load_runtime, read_artifact_card, register_runtime


def define_gzipped_onnx() -> None:
    """What ``export/targets/onnxgz.py`` and ``runtimes/onnxgz.py`` would hold."""
    from skinedge.export.targets.onnx import ONNX_REQUIRES, artifact_info, embed_card, write_onnx
    from skinedge.runtimes.base import CARD_KEY, embedded_card

    @register_target(name="onnxgz", suffix=".onnxz", extra="onnx", requires=ONNX_REQUIRES,
                     precisions=("fp32",), default_precision="fp32",
                     description="gzipped ONNX (opset 18)")
    def export_gzipped_onnx(job: ExportJob) -> Exported:
        plain = job.workdir / f"{job.stem}.onnx"
        card = job.card_for(artifact_info(job, "onnxgz", write_onnx(job, plain)))
        embed_card(plain, card)
        path = job.workdir / f"{job.stem}.onnxz"
        path.write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
        return Exported(path, [path], card)

    def session(path: Path):
        import onnxruntime as ort

        return ort.InferenceSession(gzip.decompress(Path(path).read_bytes()),
                                    providers=["CPUExecutionProvider"])

    @register_runtime
    class GzippedOnnxRuntime(Runtime):
        backend, suffixes = "onnxgz", (".onnxz",)
        extra, requires = "runtime-onnx", ("onnxruntime",)

        def __init__(self, path: Path, card: ModelCard, threads: int | None = None):
            super().__init__(path, card, threads)
            self.session = session(path)

        @staticmethod
        def read_card(path: Path) -> ModelCard:
            data = session(path).get_modelmeta().custom_metadata_map.get(CARD_KEY)
            return embedded_card(data, path, f"its '{CARD_KEY}' metadata")

        def _run(self, x: np.ndarray) -> np.ndarray:
            return self.session.run(None, {self.session.get_inputs()[0].name: x})[0]


@pytest.fixture
def gzipped_onnx():
    """The new format registered for one test; both registries as they were afterwards."""
    targets, runtimes = dict(TARGETS), dict(RUNTIMES)
    define_gzipped_onnx()
    yield
    TARGETS.clear(), TARGETS.update(targets)
    RUNTIMES.clear(), RUNTIMES.update(runtimes)
    assert "onnxgz" not in TARGETS and "onnxgz" not in RUNTIMES  # nothing leaks to other tests


@pytest.mark.slow
def test_a_new_format_exports_verifies_and_predicts(gzipped_onnx, tiny_checkpoint, tiny_dataset,
                                                    tmp_path) -> None:
    if reason := TARGETS["onnxgz"].missing_backend("fp32"):
        pytest.skip(reason)
    result = export_checkpoint(tiny_checkpoint, "onnxgz", out_dir=tmp_path, verify_images=14)
    assert result.path.suffix == ".onnxz" and result.verification.status == "passed"
    assert read_artifact_card(result.path).artifact.target == "onnxgz"
    images = sorted((tiny_dataset / "images").glob("*.jpg"))[::5]
    runtime = load_runtime(result.path, threads=1)
    assert runtime.label == "onnxgz-fp32"
    expected = load_runtime(tiny_checkpoint).predict(images)
    np.testing.assert_allclose(runtime.predict(images), expected, atol=1e-4)


def test_the_format_is_registered_for_one_test_only(gzipped_onnx) -> None:
    assert "onnxgz" in TARGETS and "onnxgz" in RUNTIMES
    assert {"onnx", "tflite"} <= set(TARGETS) and {"onnxruntime", "litert"} <= set(RUNTIMES)
