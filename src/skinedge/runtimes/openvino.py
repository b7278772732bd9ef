"""OpenVINO on IR files (``.xml`` + ``.bin``; the ``runtime-openvino`` extra).

The card lives in the IR's ``rt_info`` at :data:`RT_INFO_PATH`
(``<rt_info><skinedge><card value=...>``), read from the XML without OpenVINO.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from skinedge.errors import ModelError
from skinedge.models.card import ModelCard
from skinedge.runtimes.base import Runtime, embedded_card
from skinedge.runtimes.registry import register_runtime
from skinedge.utils.backends import require

RT_INFO_PATH = ["skinedge", "card"]


@register_runtime
class OpenVINORuntime(Runtime):
    """OpenVINO's CPU plugin with the latency hint; an FP32 IR runs in f32 (not bf16)."""

    backend = "openvino"
    suffixes = (".xml",)
    extra = "runtime-openvino"
    requires = ("openvino",)

    def __init__(self, path: Path, card: ModelCard, threads: int | None = None,
                 device: str = "CPU"):
        super().__init__(path, card, threads)
        ov = require("openvino", self.extra)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if card.artifact.precision == "fp32":
            # CPUs with bf16/AMX would otherwise run an FP32 IR in bf16 by default.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = ov.Core().compile_model(str(path), device, config)
        self.request = self.compiled.create_infer_request()

    @staticmethod
    def read_card(path: Path) -> ModelCard:
        """The card from the IR's XML (no OpenVINO needed)."""
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise ModelError(f"{path}: not an OpenVINO IR ({exc})") from exc
        node = root.find("rt_info/" + "/".join(RT_INFO_PATH))
        return embedded_card(None if node is None else node.attrib.get("value"), path,
                             "its rt_info")

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[self.compiled.output(0)]
