"""Installing skinedge's torch-free runtime extras into a fresh venv, for the tests that need a
Python without torch: the runtime install test and the loopback ssh "device"."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "timm")
#: pip's words for an unreachable or incomplete package index: the test skips, saying so.
NO_INDEX = ("NewConnectionError", "Temporary failure in name resolution",
            "Network is unreachable", "No matching distribution")


def copy_project(dest: Path) -> Path:
    """The package's sources and metadata, so the install writes nothing into the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "src", dest / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def install_runtime_extras(python: Path, extras: str, *, editable: bool = False,
                           project: Path | None = None) -> tuple[set[str], float]:
    """``pip install`` a copy of this checkout with ``extras`` (``runtime-onnx,...``) into the
    venv of ``python``; skips when no package index answers, and fails when the install does
    or when torch, torchvision or timm came with it.

    Args:
        editable: ``-e`` install of ``project`` (which then must outlive the venv's use).
        project: Where the copy goes (default: a temporary folder, removed after a non-editable
            install).

    Returns:
        The installed distributions (lower-case names) and the install's wall time in seconds.
    """
    with tempfile.TemporaryDirectory() as tmp:
        source = copy_project(project or Path(tmp) / "project")
        started = time.perf_counter()
        install = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                                  *(["-e"] if editable else []), f"{source}[{extras}]"],
                                 capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if install.returncode != 0 and any(s in install.stderr for s in NO_INDEX):
        pytest.skip(f"no package index for the venv: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not installed & set(HEAVY), installed & set(HEAVY)
    return installed, seconds
