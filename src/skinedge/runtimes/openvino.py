"""OpenVINO on IR files (``.xml`` + ``.bin``; the ``runtime-openvino`` extra).

The card lives in the IR's ``rt_info`` at :data:`RT_INFO_PATH`
(``<rt_info><skinedge><card value=...>``), read from the XML without OpenVINO; the weights are
the ``.bin`` beside it, which must hold every constant the XML points into.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from skinedge.errors import ModelError
from skinedge.models.card import ModelCard
from skinedge.runtimes.base import Runtime, embedded_card, unreadable_artifact
from skinedge.runtimes.registry import register_runtime
from skinedge.utils.backends import require

RT_INFO_PATH = ["skinedge", "card"]
#: Layer types of the compiled (runtime) model whose precision and kernel decide the speed.
_COMPUTE_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"}


@register_runtime
class OpenVINORuntime(Runtime):
    """OpenVINO's CPU plugin with the latency hint, computing in f32 whatever the IR's precision.

    On CPUs with bf16 (AVX512-BF16, AMX) the plugin's default is bf16 compute for every IR:
    an FP16 IR then drifted by up to 0.13 in probability and failed its parity check, and an
    INT8 IR ran the layers it keeps float (``float_first``) in bf16 and failed too
    (docs/RESULTS.md, ``bench-phone-lite0-targets``). FP16 weights and the float layers of INT8
    are meant to be computed in float, as the parity check assumes."""

    backend = "openvino"
    suffixes = (".xml",)
    exports = {"openvino": (".xml",)}
    extra = "runtime-openvino"
    requires = ("openvino",)

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None,
                 device: str = "CPU"):
        super().__init__(path, card, threads)
        ov = require("openvino", self.extra)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if device == "CPU":  # not bf16, the default on CPUs with bf16/AMX
            config["INFERENCE_PRECISION_HINT"] = "f32"
        with unreadable_artifact(path, "OpenVINO"):
            self.compiled = ov.Core().compile_model(str(path), device, config)
            self.request = self.compiled.create_infer_request()

    @classmethod
    def artifact_files(cls, path: Path) -> list[Path]:
        return [Path(path), Path(path).with_suffix(".bin")]

    @staticmethod
    def read_card(path: Path) -> ModelCard:
        """The card from the IR's XML (no OpenVINO needed), after checking that the ``.bin``
        beside it is long enough for every constant the XML points into (a truncated or
        missing ``.bin`` is refused here, not when the model is compiled)."""
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise ModelError(f"{path}: not an OpenVINO IR ({exc}); export it again with "
                             "`skinedge export`") from exc
        node = root.find("rt_info/" + "/".join(RT_INFO_PATH))
        card = embedded_card(None if node is None else node.attrib.get("value"), path,
                             "its rt_info")
        _check_weights_file(path, root)
        return card

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[self.compiled.output(0)]

    def _execution(self) -> dict[str, Any]:
        """The compiled model's ``inference_precision`` (``f32``, ``bf16``, ``f16``), and for
        its convolutions and matrix products the precisions they run in (``u8``/``i8``: int8
        kernels) and the kernels the CPU plugin picked (``brgconv_avx512_core_vnni``,
        ``jit_avx2_I8``: the instructions used)."""
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        doc: dict[str, Any] = {
            "device": ",".join(self.compiled.get_property("EXECUTION_DEVICES")),
            "inference_precision": precision.get_type_name() if hasattr(
                precision, "get_type_name") else str(precision)}
        runs: dict[str, int] = {}
        kernels: set[str] = set()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) in _COMPUTE_LAYERS:
                runs[info["runtimePrecision"].astype(str)] = runs.get(
                    info["runtimePrecision"].astype(str), 0) + 1
                kernels.add(info["primitiveType"].astype(str))
        if runs:
            doc["compute_layer_precisions"] = dict(sorted(runs.items()))
            doc["kernels"] = sorted(kernels)
        return doc


def _check_weights_file(xml: Path, root: ET.Element) -> None:
    """Raise a ModelError when the ``.bin`` is missing or shorter than the XML's constants."""
    needed = 0
    for layer in root.iter("layer"):
        data = layer.find("data")
        if layer.attrib.get("type") != "Const" or data is None:
            continue
        offset, size = data.attrib.get("offset"), data.attrib.get("size")
        if offset is not None and size is not None and offset.isdigit() and size.isdigit():
            needed = max(needed, int(offset) + int(size))
    if needed == 0:
        return
    weights = Path(xml).with_suffix(".bin")
    if not weights.is_file():
        raise ModelError(f"{weights}: missing; the OpenVINO IR {xml} keeps its weights there: "
                         "copy the .bin with the .xml, or export it again with `skinedge export`")
    have = weights.stat().st_size
    if have < needed:
        raise ModelError(f"{weights}: {have} bytes, but {xml} reads weights up to byte {needed}: "
                         "the file is truncated; copy it again, or export it again with "
                         "`skinedge export`")
