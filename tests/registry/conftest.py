"""Registry fixtures: small fake checkpoints (a sealed card and some weight bytes: the registry
reads cards as JSON and never loads a model) and fake exports laid out as `skinedge export`
writes them (artifact, sidecars, ``<stem>.<target>.export.json`` listing them)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest


def make_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A checkpoint folder whose weights differ per ``seed``."""
    from skinedge.data.transforms import PreprocessConfig
    from skinedge.models.card import ModelCard

    folder.mkdir(parents=True)
    weights = hashlib.sha256(f"weights {seed}".encode()).digest() * 64
    (folder / "model.safetensors").write_bytes(weights)
    card = ModelCard(architecture="test_efficientnet", classes=["mel", "nv"],
                     class_names={"mel": "melanoma", "nv": "nevus"}, vocabulary="ham10000",
                     preprocess=PreprocessConfig(input_size=32),
                     weights_sha256=hashlib.sha256(weights).hexdigest(),
                     metrics={"balanced_accuracy": 0.5 + seed / 100}).sealed()
    (folder / "card.json").write_text(card.to_json())
    return folder


def make_export(folder: Path, stem: str, target: str, parts: dict[str, bytes],
                status: str = "passed") -> Path:
    """Files named ``stem + ending`` for each of ``parts`` (the first is the artifact) and the
    export report listing them; returns the artifact."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for ending, data in parts.items():
        path = folder / f"{stem}{ending}"
        path.write_bytes(data)
        files.append({"path": str(path), "bytes": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
    report = {"target": target, "precision": "fp32", "files": files,
              "verification": {"status": status}}
    (folder / f"{stem}.{target}.export.json").write_text(json.dumps(report))
    return folder / f"{stem}{next(iter(parts))}"


@pytest.fixture
def workspace(tmp_path) -> Callable[..., dict]:
    """``workspace(seed)``: a checkpoint, an ONNX export and an OpenVINO export (xml + bin)."""
    def make(seed: int = 0) -> dict:
        root = tmp_path / f"run{seed}"
        checkpoint = make_checkpoint(root / "best", seed)
        onnx = make_export(root / "exports", "m_fp32", "onnx", {".onnx": b"onnx %d" % seed})
        xml = make_export(root / "exports", "m_fp32", "openvino",
                          {".xml": b"<xml %d/>" % seed, ".bin": b"bin %d" % seed})
        manifest = root / "manifest.json"
        manifest.write_text('{"rows": []}')
        report = root / "eval.json"
        report.write_text('{"balanced_accuracy": 0.7}')
        return {"checkpoint": checkpoint, "onnx": onnx, "xml": xml, "manifest": manifest,
                "report": report}

    return make
