"""DDP: `skinedge train` under torch.distributed.run, two CPU processes, gloo backend."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_with_two_processes(manifest, out, *extra: str) -> str:
    """`skinedge train` of timm's tiny network for one epoch under torch.distributed.run, two
    CPU processes; its output (asserting that it succeeded)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()),
        "-m", "skinedge.cli.main", "train", "--out", str(out), "--manifest", str(manifest),
        "--set", "epochs=1", "--set", "preprocess.input_size=32", "--set", "num_workers=0",
        "--set", "model.pretrained=none", "--set", "model.arch=test_efficientnet",
        "--set", "batch_size=8", "--set", "device=cpu", *(a for e in extra for a in ("--set", e)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env,
                          cwd=out.parent)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return log


@pytest.mark.slow
def test_train_with_two_cpu_processes(tiny_manifest, tmp_path) -> None:
    out = tmp_path / "run"
    log = train_with_two_processes(tiny_manifest, out, "max_batches_per_epoch=2")
    assert "cpu x2" in log  # rank 0 reported the world size
    assert log.count("best epoch 1") == 1  # only rank 0 prints the summary
    # rank 0 alone wrote: one of each, no temporary or displaced checkpoint folders left
    assert sorted(p.name for p in out.iterdir()) == [
        "best", "command.json", "config.yaml", "last", "metrics.jsonl", "versions.json"]
    assert (out / "last" / "trainer_state.pt").is_file()
    assert (out / "best" / "card.json").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["epoch"] == 1 and record["best"] is True


@pytest.mark.slow
def test_two_processes_validate_and_keep_one_weight_average(tiny_manifest, tmp_path) -> None:
    # Each rank updates BatchNorm statistics from its own batches, in the model and in the
    # average; rank 0's are handed to every rank before validation, so the sharded validation
    # is the validation of the best/ that rank 0 saves.
    from tests.train.test_ema import revalidated_loss

    out = tmp_path / "run"
    train_with_two_processes(tiny_manifest, out, "max_batches_per_epoch=3", "ema.decay=0.9",
                             "calibrate=false")
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["val_loss"] == pytest.approx(revalidated_loss(out / "best", tiny_manifest),
                                               abs=1e-5)
