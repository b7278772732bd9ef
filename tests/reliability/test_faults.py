"""Faults that lose nothing: a kill, a full disk or a read-only folder while skinedge writes.

Four writes: a checkpoint (``save_checkpoint``, through ``skinedge train``), an ONNX export
(``skinedge export``), a manifest (``skinedge data split``) and the bench reports
(``skinedge bench``). Each fault strikes at the moment of the write, and the tests check what a
user finds afterwards:

- SIGKILL in the middle of the write. The command runs in a subprocess whose write is patched
  to leave half of the bytes, then kill its own process (deterministic: no sleeps). The previous
  file or folder is intact byte for byte, nothing half-written sits where a reader looks (only
  hidden temporary names), and the rerun (``train --resume`` for a checkpoint) completes and
  removes those temporaries.
- A full disk: ``OSError(ENOSPC)`` injected into the write (half the bytes, then the error) and,
  where this machine can mount a small tmpfs (root), a disk that is really full. A clear
  ``error:`` naming the file and exit code 2 (no traceback); the previous output intact;
  nothing half-written left.
- A read-only output folder: ``chmod 0o555`` (as root, which ignores modes, every write under
  the folder raises ``PermissionError`` instead). A clear error naming the folder, exit code 2,
  nothing touched.

Defects in files that other work owns are ``xfail(strict=True)``: the reason says the fix, and
the test flips to a failure (to remove the mark) when it lands. The injection tools live in
``tests/reliability/faults.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skinedge.cli.main import app
from skinedge.errors import SkinedgeError
from tests.conftest import TINY
from tests.reliability.faults import (
    BENCH_REUSES,
    KILL_AT_FSYNC,
    KILL_IN_ONNX_SAVE,
    KILL_IN_SAVE_FILE,
    WIDE,
    copy_of,
    enospc,
    fail_atomic_writes,
    fill,
    hidden,
    refuse_writes_under,
    run_killed,
    small_disk,
    snapshot,
    visible,
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

runner = CliRunner()
NO_SPACE = "no space left on the disk"


# ---------------------------------------------------------------------------------------------
# Running the CLI, and the faults as fixtures.

def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args], env=WIDE)


def said(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def assert_clear_error(result, *names: object) -> str:
    """Exit code 2, ``error: ...`` naming every one of ``names``, no traceback."""
    text = said(result)
    assert result.exit_code == 2, (text, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "error:" in text and "Traceback" not in text, text
    for name in names:
        assert str(name) in text, (name, text)
    return text


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Callable[[], Path]]:
    """``full_disk()``: :func:`small_disk` on ``tmp_path/disk``, for this test."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(small_disk(tmp_path / "disk"))


@pytest.fixture
def read_only(monkeypatch) -> Callable[[Path], Path]:
    """``read_only(folder)``: the folder and its subfolders become read-only for this test."""
    chmodded: list[Path] = []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
                d.chmod(0o555)
                chmodded.append(d)
        else:  # root ignores modes: refuse what the kernel would refuse a user
            refuse_writes_under(monkeypatch, folder)
        return folder

    yield make
    for d in chmodded:
        d.chmod(0o755)


# ---------------------------------------------------------------------------------------------
# Good outputs made once per module: a one-epoch run, its ONNX export, a bench, a manifest.

@pytest.fixture(scope="module")
def run(tiny_manifest, tmp_path_factory) -> Path:
    """A one-epoch training run: config.yaml, metrics.jsonl, best/, last/ (resumable)."""
    from skinedge.train.config import load_train_config
    from skinedge.train.trainer import train_classifier

    cfg = load_train_config(None, [*TINY, "epochs=1", f"data.manifest={tiny_manifest}"])
    return train_classifier(cfg, tmp_path_factory.mktemp("faults") / "run").out_dir


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    """An exports folder holding the run's verified ONNX export and its report."""
    from skinedge.export.api import export_checkpoint

    out = tmp_path_factory.mktemp("faults-export") / "exports"
    export_checkpoint(run / "best", "onnx", out_dir=out, verify_images=8)
    return out


@pytest.fixture(scope="module")
def benched(run, tmp_path_factory):
    """(the bench result, a folder holding its bench.json, bench.md and chart)."""
    from skinedge.bench.harness import BenchSettings, run_bench
    from skinedge.bench.report import write_outputs

    out = tmp_path_factory.mktemp("faults-bench") / "bench"
    result = run_bench([run / "best"], out_dir=out, limit=8,
                       settings=BenchSettings(warmup=1, iterations=2))
    write_outputs(result, out, None, "skinedge bench")
    return result, out


@pytest.fixture(scope="module")
def split_folder(tiny_dataset, tmp_path_factory) -> Path:
    """A folder holding manifest.json, from ``skinedge data split``."""
    folder = tmp_path_factory.mktemp("faults-split") / "split"
    result = cli("data", "split", tiny_dataset, "--out", folder / "manifest.json")
    assert result.exit_code == 0, said(result)
    return folder


@pytest.fixture
def bench_reuses(benched, monkeypatch):
    """``skinedge bench`` writes the module's bench result without measuring again (the
    writes are what these tests are about)."""
    import skinedge.bench.harness

    monkeypatch.setattr(skinedge.bench.harness, "run_bench", lambda *a, **k: benched[0])


def bench_args(run: Path, out: Path) -> list[object]:
    return ["bench", run / "best", "--out", out, "--limit", 8, "--warmup", 1, "--iterations", 2]


def export_args(run: Path, out: Path) -> list[object]:
    return ["export", run / "best", "--target", "onnx", "--out", out, "--verify-images", 8]


# ---------------------------------------------------------------------------------------------
# The manifest: skinedge data split -> Manifest.save -> atomic_write_text.

def test_manifest_kill_mid_write_keeps_the_old_one_and_the_rerun_cleans_up(
        split_folder, tiny_dataset, tmp_path) -> None:
    from skinedge.data.manifest import load_manifest

    folder = copy_of(split_folder, tmp_path / "split")
    manifest = folder / "manifest.json"
    before = snapshot(folder)
    run_killed(KILL_AT_FSYNC, "data", "split", tiny_dataset, "--out", manifest, "--seed", 1,
               PREFIX=".manifest.json.")
    assert visible(snapshot(folder)) == before  # the old manifest, byte for byte
    assert [name for name in hidden(folder) if name.endswith(".tmp")], "the kill left no trace"

    result = cli("data", "split", tiny_dataset, "--out", manifest, "--seed", 1)
    assert result.exit_code == 0, said(result)
    assert hidden(folder) == []  # the dead write's temporary is gone
    assert load_manifest(manifest).seed == 1


def test_manifest_full_disk_is_a_clear_error_and_keeps_the_old_one(
        split_folder, tiny_dataset, tmp_path, monkeypatch) -> None:
    folder = copy_of(split_folder, tmp_path / "split")
    manifest = folder / "manifest.json"
    before = snapshot(folder)
    fail_atomic_writes(monkeypatch, ".manifest.json.")
    result = cli("data", "split", tiny_dataset, "--out", manifest, "--seed", 1)
    assert_clear_error(result, manifest, NO_SPACE)
    assert snapshot(folder) == before  # old manifest intact, no temporary left


def test_manifest_on_a_really_full_disk(split_folder, tiny_dataset, full_disk) -> None:
    disk = full_disk()
    manifest = disk / "manifest.json"
    shutil.copy(split_folder / "manifest.json", manifest)
    fill(disk)
    before = snapshot(disk)
    result = cli("data", "split", tiny_dataset, "--out", manifest, "--seed", 1)
    assert_clear_error(result, manifest, NO_SPACE)
    assert snapshot(disk) == before


def test_manifest_into_a_read_only_folder(split_folder, tiny_dataset, tmp_path, read_only) -> None:
    folder = copy_of(split_folder, tmp_path / "split")
    before = snapshot(folder)
    read_only(folder)
    result = cli("data", "split", tiny_dataset, "--out", folder / "manifest.json", "--seed", 1)
    assert_clear_error(result, folder, "not writable")
    assert snapshot(folder) == before


# ---------------------------------------------------------------------------------------------
# Checkpoints: skinedge train -> save_checkpoint (best/, then last/ with the trainer state).

def test_checkpoint_kill_mid_write_keeps_last_and_resume_completes(run, tmp_path) -> None:
    """(A kill between save_checkpoint's two renames: tests/train/test_trainer.py.)"""
    from skinedge.models.checkpoint import load_checkpoint, load_trainer_state

    folder = copy_of(run, tmp_path / "run")
    last = snapshot(folder / "last")
    run_killed(KILL_IN_SAVE_FILE, "train", "--out", folder, "--resume", "--set", "epochs=2",
               FOLDER=".last.tmp")
    assert snapshot(folder / "last") == last  # the epoch-1 checkpoint, byte for byte
    assert (folder / ".last.tmp" / "model.safetensors").is_file(), "the kill left no trace"
    load_checkpoint(folder / "last")
    assert load_trainer_state(folder / "last")["epoch"] == 1

    result = cli("train", "--out", folder, "--resume", "--set", "epochs=2")
    assert result.exit_code == 0, (said(result), result.exception)
    assert hidden(folder) == []  # .last.tmp/ and .last.old/ are gone
    assert load_trainer_state(folder / "last")["epoch"] == 2
    load_checkpoint(folder / "last")


@pytest.fixture(scope="module")
def checkpoint_out_of_space(run, tmp_path_factory):
    """``train --resume`` whose first checkpoint write runs out of space half-way through the
    weights: (the result, the run folder, its files before)."""
    import safetensors.torch

    folder = copy_of(run, tmp_path_factory.mktemp("faults-ckpt") / "run")
    before = snapshot(folder)
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        real(tensors, filename, metadata)
        os.truncate(filename, os.path.getsize(filename) // 2)
        raise enospc(filename)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safetensors.torch, "save_file", save_file)
        result = cli("train", "--out", folder, "--resume", "--set", "epochs=2")
    return result, folder, before


def test_checkpoint_full_disk_is_a_clear_error_and_keeps_the_previous_one(
        checkpoint_out_of_space) -> None:
    result, folder, before = checkpoint_out_of_space
    assert_clear_error(result, folder, NO_SPACE)
    rewritten = ("config.yaml", "versions.json")  # by the resume, before the first epoch
    now = visible(snapshot(folder))
    assert {k: v for k, v in now.items() if k not in rewritten} == {
        k: v for k, v in before.items() if k not in rewritten}  # best/, last/, metrics intact


def test_checkpoint_full_disk_leaves_nothing_half_written(checkpoint_out_of_space) -> None:
    _, folder, _ = checkpoint_out_of_space
    assert hidden(folder) == []


@pytest.fixture
def checkpoint_on_full_disk(run, full_disk):
    """save_checkpoint over best/ on a really full tmpfs: (the exception, best/, its files
    before, the disk)."""
    from skinedge.models.checkpoint import load_checkpoint, save_checkpoint

    disk = full_disk()
    best = copy_of(run / "best", disk / "best")
    model, card = load_checkpoint(best)
    before = snapshot(best)
    filler = fill(disk)
    with pytest.raises(Exception) as caught:
        save_checkpoint(best, model, card)
    filler.unlink()
    return caught.value, best, before, disk


def test_checkpoint_on_a_really_full_disk_keeps_the_previous_one(checkpoint_on_full_disk) -> None:
    from skinedge.models.checkpoint import load_checkpoint

    _, best, before, _ = checkpoint_on_full_disk
    assert snapshot(best) == before
    load_checkpoint(best)


def test_checkpoint_on_a_really_full_disk_is_a_clear_error(checkpoint_on_full_disk) -> None:
    error, best, _, disk = checkpoint_on_full_disk
    assert isinstance(error, SkinedgeError), repr(error)
    assert NO_SPACE in str(error) and str(best) in str(error)
    assert hidden(disk) == []


def test_resume_into_a_read_only_run_folder(run, tmp_path, read_only) -> None:
    folder = copy_of(run, tmp_path / "run")
    before = snapshot(folder)
    read_only(folder)
    result = cli("train", "--out", folder, "--resume", "--set", "epochs=2")
    assert_clear_error(result, folder, "not writable")
    assert snapshot(folder) == before


def test_a_new_run_in_a_read_only_folder(tiny_manifest, tmp_path, read_only) -> None:
    """The run folder itself cannot be made: a clear error naming its parent folder."""
    parent = tmp_path / "runs"
    parent.mkdir()
    read_only(parent)
    overrides = [arg for o in [*TINY, "epochs=1"] for arg in ("--set", o)]
    result = cli("train", "--out", parent / "run", "--manifest", tiny_manifest, *overrides)
    text = assert_clear_error(result, "not writable")
    assert f"{parent} is not writable" in text, text
    assert list(parent.iterdir()) == []


def test_checkpoint_save_into_a_read_only_folder(run, tmp_path, read_only) -> None:
    from skinedge.models.checkpoint import load_checkpoint, save_checkpoint

    folder = copy_of(run, tmp_path / "run")
    model, card = load_checkpoint(folder / "best")
    before = snapshot(folder)
    read_only(folder)
    with pytest.raises(SkinedgeError, match="not writable") as caught:
        save_checkpoint(folder / "best", model, card)
    assert str(folder) in str(caught.value)
    assert snapshot(folder) == before


# ---------------------------------------------------------------------------------------------
# Exports: skinedge export -> the target writes into a scratch folder -> moved into place.

def test_export_kill_mid_write_keeps_the_artifact_and_the_rerun_cleans_up(
        run, exported, tmp_path) -> None:
    from skinedge.runtimes import load_runtime

    out = copy_of(exported, tmp_path / "exports")
    before = snapshot(out)
    run_killed(KILL_IN_ONNX_SAVE, *export_args(run, out))
    assert visible(snapshot(out)) == before  # the previous artifact and report, byte for byte
    assert hidden(out), "the kill left no trace"

    result = cli(*export_args(run, out))
    assert result.exit_code == 0, (said(result), result.exception)
    assert hidden(out) == []  # the dead export's scratch folder is gone
    runtime = load_runtime(out / "test_efficientnet_fp32.onnx")
    runtime.close()


def test_export_killed_before_its_report_leaves_a_loadable_artifact(run, exported,
                                                                    tmp_path) -> None:
    """A kill after the new files are in place but before their report is written: the old
    report (whose hashes describe the old files) is gone already, so the new artifact is not
    refused as corrupted; the rerun writes its report."""
    from skinedge.runtimes import load_runtime

    out = copy_of(exported, tmp_path / "exports")
    artifact = out / "test_efficientnet_fp32.onnx"
    report = out / "test_efficientnet_fp32.onnx.export.json"
    before = snapshot(out)
    other = copy_of(run / "best", tmp_path / "other" / "best")  # its card names another source
    run_killed(KILL_AT_FSYNC, "export", other, *export_args(run, out)[2:],
               PREFIX=f".{report.name}.")
    assert snapshot(out)[artifact.name] != before[artifact.name]  # the new file is in place
    assert not report.exists()  # ... and no report describes another file
    load_runtime(artifact).close()

    result = cli(*export_args(run, out))
    assert result.exit_code == 0, (said(result), result.exception)
    assert report.is_file() and hidden(out) == []
    load_runtime(artifact).close()


def test_export_full_disk_is_a_clear_error_and_keeps_the_artifact(
        run, exported, tmp_path, monkeypatch) -> None:
    import onnx

    out = copy_of(exported, tmp_path / "exports")
    before = snapshot(out)
    real = onnx.save

    def save(model, f, *args, **kwargs):
        real(model, f, *args, **kwargs)
        os.truncate(f, os.path.getsize(f) // 2)
        raise enospc(f)

    monkeypatch.setattr(onnx, "save", save)
    monkeypatch.setattr(onnx, "save_model", save)
    result = cli(*export_args(run, out))
    assert_clear_error(result, out, NO_SPACE)
    assert snapshot(out) == before  # nothing half-written, the old artifact intact


@pytest.fixture(scope="module")
def export_on_full_disk(run, exported, tmp_path_factory):
    """``skinedge export`` into a folder on a really full disk: (result, out, files before,
    files after)."""
    with small_disk(tmp_path_factory.mktemp("faults-disk") / "disk") as disk:
        out = copy_of(exported, disk / "exports")
        fill(disk)
        before = snapshot(disk)
        result = cli(*export_args(run, out))
        yield result, out, before, snapshot(disk)


def test_export_on_a_really_full_disk(export_on_full_disk) -> None:
    result, _, before, after = export_on_full_disk
    assert_clear_error(result, NO_SPACE)
    assert after == before


def test_export_on_a_really_full_disk_names_the_folder(export_on_full_disk) -> None:
    result, out, _, _ = export_on_full_disk
    assert_clear_error(result, out)


def test_export_into_a_read_only_folder(run, exported, tmp_path, read_only) -> None:
    out = copy_of(exported, tmp_path / "exports")
    before = snapshot(out)
    read_only(out)
    result = cli(*export_args(run, out))
    assert_clear_error(result, out, "not writable")
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------------------
# Bench reports: skinedge bench -> write_outputs (bench.json, bench.md, junit.xml, bench.png).

def test_bench_kill_mid_write_keeps_the_reports_and_the_rerun_cleans_up(
        run, benched, tmp_path, bench_reuses) -> None:
    import pickle

    out = copy_of(benched[1], tmp_path / "bench")
    before = snapshot(out)
    result_file = tmp_path / "result.pickle"
    result_file.write_bytes(pickle.dumps(benched[0]))
    run_killed(BENCH_REUSES + KILL_AT_FSYNC, *bench_args(run, out), PREFIX=".bench.json.",
               RESULT=str(result_file))
    after = visible(snapshot(out))
    assert {k: after[k] for k in ("bench.json", "bench.md")} == {
        k: before[k] for k in ("bench.json", "bench.md")}
    assert [name for name in hidden(out) if name.startswith(".bench.json.")], "no trace"

    result = cli(*bench_args(run, out))  # writes the module's result again (bench_reuses)
    assert result.exit_code == 0, (said(result), result.exception)
    assert hidden(out) == []


@pytest.mark.parametrize("report", ["bench.json", "bench.md"])  # the first and a later one
def test_bench_full_disk_is_a_clear_error_and_keeps_the_set(
        run, benched, tmp_path, monkeypatch, bench_reuses, report) -> None:
    out = copy_of(benched[1], tmp_path / "bench")
    before = snapshot(out)
    fail_atomic_writes(monkeypatch, f".{report}.")
    result = cli(*bench_args(run, out))
    assert_clear_error(result, out / report, NO_SPACE)
    assert snapshot(out) == before


def test_bench_reports_on_a_really_full_disk(run, benched, full_disk, bench_reuses) -> None:
    disk = full_disk()
    out = copy_of(benched[1], disk / "bench")
    fill(disk)
    before = snapshot(disk)
    result = cli(*bench_args(run, out))
    assert_clear_error(result, out, NO_SPACE)
    assert snapshot(disk) == before


def test_bench_into_a_read_only_folder(run, benched, tmp_path, read_only) -> None:
    out = copy_of(benched[1], tmp_path / "bench")
    before = snapshot(out)
    read_only(out)
    result = cli(*bench_args(run, out))
    assert_clear_error(result, out, "not writable")
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------------------
# The CLI's handler: a full disk or a read-only file system from any writer is a message.

@pytest.mark.parametrize(("code", "phrase"), [
    (errno.ENOSPC, NO_SPACE), (errno.EDQUOT, "disk quota is used up"), (errno.EROFS, "read-only file system"),
])
def test_a_full_or_read_only_disk_from_any_writer_is_a_message(
        split_raises, tmp_path, code, phrase) -> None:
    target = tmp_path / "out" / "model.onnx"
    split_raises(OSError(code, os.strerror(code), str(target)))
    result = cli("data", "split", tmp_path, "--out", tmp_path / "m.json")
    assert_clear_error(result, target, phrase)


@pytest.mark.parametrize("error", [
    OSError(errno.EIO, "Input/output error", "/x"), PermissionError(errno.EACCES, "denied", "/x"),
    OSError("no errno"),
])
def test_other_os_errors_stay_bugs(split_raises, tmp_path, error) -> None:
    split_raises(error)
    result = cli("data", "split", tmp_path, "--out", tmp_path / "m.json")
    assert result.exception is error
    assert "error:" not in result.output


# ---------------------------------------------------------------------------------------------
# The io helpers behind these writes.

def test_a_dead_writers_temporary_goes_and_a_live_ones_stays(tmp_path) -> None:
    import subprocess
    import sys

    from skinedge.utils.io import _host, atomic_write_text

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = _host()
    dead = tmp_path / f".report.json.abcd1234.{host}.{gone}.tmp"
    live = tmp_path / f".report.json.efgh5678.{host}.{os.getpid()}.tmp"  # a write in progress
    other = tmp_path / f".report.json.gz.ijkl9012.{host}.{gone}.tmp"  # another file's
    remote = tmp_path / f".report.json.mnop3456.not-{host}.{gone}.tmp"  # another machine's
    for path in (dead, live, other, remote):
        path.write_text("half")
    atomic_write_text(tmp_path / "report.json", "{}")
    assert (tmp_path / "report.json").read_text() == "{}"
    assert not dead.exists() and live.exists() and other.exists() and remote.exists()


def test_a_temporary_whose_pid_is_too_big_does_not_break_writes(tmp_path) -> None:
    from skinedge.utils.io import _host, atomic_write_text

    huge = tmp_path / f".report.json.abcd1234.{_host()}.{10 ** 30}.tmp"
    huge.write_text("half")
    for text in ("{}", "[]"):  # every later write of the path, not only the first
        atomic_write_text(tmp_path / "report.json", text)
        assert (tmp_path / "report.json").read_text() == text
    assert huge.exists()  # not a pid of this system: not ours to remove


def test_only_write_failures_are_blamed_on_a_nearly_full_disk(tmp_path, monkeypatch) -> None:
    """On a disk with under 64 KiB free, a bug (ValueError, an unrelated RuntimeError) stays
    itself; an errno-less OSError or a writer's "write failed" becomes the full-disk error."""
    from skinedge.utils import io

    monkeypatch.setattr(io, "_out_of_space", lambda folder: True)
    out = tmp_path / "model.onnx"
    for bug in (ValueError("bad shape"), RuntimeError("CUDA kernel missing"), KeyError("x")):
        with pytest.raises(type(bug)):
            with io.writing(out):
                raise bug
    for failure in (OSError("requested 10 and written 3"),
                    RuntimeError("PytorchStreamWriter failed writing file data/0")):
        with pytest.raises(io.WriteError, match=f"cannot write {out}: {NO_SPACE}"):
            with io.writing(out):
                raise failure


def test_a_full_scratch_disk_names_the_scratch_folder(tmp_path, monkeypatch) -> None:
    """ENOSPC on a file of another disk (a scratch folder) names that folder, not the output's."""
    from skinedge.utils import io

    out, scratch = tmp_path / "out" / "model.onnx", Path("/scratch/skinedge-x/model.onnx")
    monkeypatch.setattr(io, "_device", lambda path: 2 if str(path).startswith("/scratch") else 1)
    with pytest.raises(io.WriteError) as caught:
        with io.writing(out):
            raise enospc(scratch)
    assert f"{NO_SPACE} holding /scratch/skinedge-x" in str(caught.value)
    monkeypatch.setattr(io, "_device", lambda path: 1)  # the same disk: the output's folder
    with pytest.raises(io.WriteError) as caught:
        with io.writing(out):
            raise enospc(scratch)
    assert f"{NO_SPACE} holding {out.parent}" in str(caught.value)


def test_macos_finder_files_do_not_change_a_folders_hash(tmp_path) -> None:
    from skinedge.utils.io import sha256_tree

    package = tmp_path / "model.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "weights.bin").write_bytes(b"weights")
    before = sha256_tree(package)
    (package / ".DS_Store").write_bytes(b"finder")
    (package / "Data" / "._weights.bin").write_bytes(b"appledouble")
    assert sha256_tree(package) == before
    (package / "Data" / "weights.bin").write_bytes(b"changed")
    assert sha256_tree(package) != before


def test_a_set_of_files_is_written_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    from skinedge.errors import WriteError
    from skinedge.utils.io import atomic_write_texts

    first, second = tmp_path / "bench.json", tmp_path / "bench.md"
    atomic_write_texts({first: "old json", second: "old md"})
    fail_atomic_writes(monkeypatch, ".bench.md.")
    with pytest.raises(WriteError, match=f"cannot write {second}: {NO_SPACE}"):
        atomic_write_texts({first: "new json", second: "new md"})
    assert first.read_text() == "old json" and second.read_text() == "old md"
    assert hidden(tmp_path) == []
