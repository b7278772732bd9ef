"""An exported artifact runs without torch: the runtimes' install is the small one.

Artifacts are exported here (with torch), then predicted on real image files (a) in a
subprocess where importing torch, torchvision or timm raises, and (b) in a fresh virtual
environment with ``pip install -e '.[runtime-onnx]'`` (or -openvino, -litert) and nothing else;
both must give this process's probabilities.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from skinedge.export import TARGETS, ExportError, export_checkpoint
from skinedge.runtimes import RUNTIMES, load_runtime
from tests.runtimes.torch_free_install import HEAVY, install_runtime_extras


def runtime_extras() -> dict[str, str]:
    """target -> the torch-free extra (``runtime-*``) whose runtime runs its artifacts."""
    extras = {}
    for target in TARGETS.values():
        runtime = next(r for r in RUNTIMES.values() if target.suffix in r.suffixes)
        if runtime.extra.startswith("runtime-"):
            extras[target.name] = runtime.extra
    return extras


#: target -> the runtime extra that runs its artifacts (onnx, openvino, tflite today)
RUNTIME_EXTRAS = runtime_extras()

BLOCK_HEAVY = f"""
import importlib.abc, sys

class BlockHeavy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is blocked: a runtime must not need it")
        return None

sys.meta_path.insert(0, BlockHeavy())
"""

PREDICT = f"""
import json, sys
import numpy as np
from skinedge.runtimes import RUNTIMES, load_runtime

artifacts, images, out = json.loads(sys.argv[1])
for i, path in enumerate(artifacts):
    np.save(f"{{out}}/{{i}}.npy", load_runtime(path, threads=1).predict(images))
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


@pytest.fixture(scope="module")
def artifacts(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """target -> an FP32 artifact of the tiny checkpoint, for each target exportable here."""
    out = tmp_path_factory.mktemp("torch-free-exports")
    made = {}
    for target in RUNTIME_EXTRAS:
        if TARGETS[target].missing_backend("fp32"):
            continue
        try:
            made[target] = export_checkpoint(tiny_checkpoint, target, out_dir=out,
                                             verify=False).path
        except ExportError as exc:  # pragma: no cover - reported by the parity test
            pytest.fail(f"{target} export failed: {exc}")
    return made


def image_files(tiny_dataset: Path) -> list[str]:
    return [str(p) for p in sorted((tiny_dataset / "images").glob("*.jpg"))[::4]]


def predict_in(python: str | Path, paths: list[Path], images: list[str], out: Path,
               prelude: str = "") -> list[str]:
    """Run :data:`PREDICT` with ``python``; returns the heavy modules it ended up importing."""
    out.mkdir(parents=True, exist_ok=True)
    args = json.dumps([[str(p) for p in paths], images, str(out)])
    done = subprocess.run([str(python), "-c", prelude + PREDICT, args], capture_output=True,
                          text=True, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_artifacts_predict_the_same_with_torch_blocked(artifacts, tiny_dataset, tmp_path) -> None:
    if not artifacts:
        pytest.skip("no ONNX, OpenVINO or LiteRT backend installed")
    paths, images = list(artifacts.values()), image_files(tiny_dataset)
    loaded = predict_in(sys.executable, paths, images, tmp_path, prelude=BLOCK_HEAVY)
    assert loaded == []
    for i, path in enumerate(paths):
        expected = load_runtime(path, threads=1).predict(images)
        np.testing.assert_allclose(np.load(tmp_path / f"{i}.npy"), expected, rtol=0, atol=1e-6,
                                   err_msg=str(path))


def venv_size_mib(root: Path) -> float:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(RUNTIME_EXTRAS))
def test_fresh_runtime_install_has_no_torch_and_predicts_the_same(
        target, artifacts, tiny_dataset, tmp_path, record_property) -> None:
    if target not in artifacts:
        pytest.skip(f"{target} cannot be exported here")
    extra = RUNTIME_EXTRAS[target]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    installed, seconds = install_runtime_extras(python, extra, editable=True,
                                                project=tmp_path / "project")
    size = venv_size_mib(env_dir)
    record_property("install_seconds", round(seconds, 1))
    record_property("venv_mib", round(size, 1))
    print(f"\n{extra}: venv {size:.0f} MiB, pip install {seconds:.0f} s, "
          f"{len(installed)} distributions")
    images = image_files(tiny_dataset)
    assert predict_in(python, [artifacts[target]], images, tmp_path / "out") == []
    expected = load_runtime(artifacts[target], threads=1).predict(images)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "0.npy"), expected, rtol=0, atol=1e-6)
