"""Fault injection for tests/reliability/test_faults.py: a kill in the middle of a write, a
full disk, a read-only folder; and what a folder holds before and after.

Kills are deterministic: the command runs in a subprocess with its write patched to leave half
of the bytes and then SIGKILL its own process (:func:`run_killed` with the ``KILL_*`` patches).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from skinedge.utils.io import sha256_file

WIDE = {"COLUMNS": "400"}  # rich wraps long paths at 80 columns otherwise


# What a folder holds.

def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too): relative path -> sha256."""
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def visible(files: dict[str, str]) -> dict[str, str]:
    """The files a reader would take: no part of the path hidden."""
    return {k: v for k, v in files.items() if not any(p.startswith(".") for p in k.split("/"))}


def hidden(folder: Path) -> list[str]:
    """Hidden entries (temporaries such as ``.manifest.json.*.tmp``, ``.last.tmp/``)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*"))


def copy_of(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


# SIGKILL: a subprocess whose write is patched to leave half of its bytes and kill itself.

KILL_PRELUDE = """
import os, signal, sys

def die():
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""

#: Kill inside skinedge.utils.io.atomic_write when it syncs a temporary named PREFIX...
KILL_AT_FSYNC = """
import tempfile
_mkstemp, _fsync, _made = tempfile.mkstemp, os.fsync, {}

def mkstemp(*args, **kwargs):
    fd, name = _mkstemp(*args, **kwargs)
    _made[fd] = (os.path.basename(name), os.fstat(fd).st_ino)
    return fd, name

def fsync(fd):
    name, inode = _made.pop(fd, ("", None))
    if name.startswith(PREFIX) and os.fstat(fd).st_ino == inode:
        os.ftruncate(fd, os.fstat(fd).st_size // 2)  # half of the bytes reached the disk
        die()
    return _fsync(fd)

tempfile.mkstemp, os.fsync = mkstemp, fsync
"""

#: Kill once safetensors has written weights into a folder named FOLDER (half of them kept).
KILL_IN_SAVE_FILE = """
import safetensors.torch
_save_file = safetensors.torch.save_file

def save_file(tensors, filename, metadata=None):
    _save_file(tensors, filename, metadata)
    if os.path.basename(os.path.dirname(filename)) == FOLDER:
        os.truncate(filename, os.path.getsize(filename) // 2)
        die()

safetensors.torch.save_file = save_file
"""

#: ``skinedge bench`` writes the result pickled in RESULT instead of measuring again.
BENCH_REUSES = """
import pickle
import skinedge.bench.harness
with open(RESULT, "rb") as f:
    _result = pickle.load(f)
skinedge.bench.harness.run_bench = lambda *args, **kwargs: _result
"""

#: Kill in the middle of writing an ONNX file (the model's card is embedded with onnx.save).
KILL_IN_ONNX_SAVE = """
import onnx
_save = onnx.save

def save(model, f, *args, **kwargs):
    _save(model, f, *args, **kwargs)
    os.truncate(f, os.path.getsize(f) // 2)
    die()

onnx.save = onnx.save_model = save
"""

KILL_MAIN = """
sys.argv = ["skinedge", *sys.argv[1:]]
from skinedge.cli.main import app
app()
"""


def run_killed(patch: str, *args: object, **names: str) -> subprocess.CompletedProcess:
    """Run ``skinedge ARGS`` in a subprocess with ``patch`` applied (``names`` bound as
    globals, e.g. ``PREFIX``); assert that it died by SIGKILL, i.e. at the patched write."""
    constants = "".join(f"{key} = {value!r}\n" for key, value in names.items())
    code = KILL_PRELUDE + constants + patch + KILL_MAIN
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **WIDE})
    assert done.returncode == -signal.SIGKILL, (
        f"not killed at the write (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done


# A full disk: injected ENOSPC, and a real tmpfs that is full.

def enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def fail_atomic_writes(monkeypatch, prefix: str, nth: int = 1) -> None:
    """The ``nth`` temporary of skinedge.utils.io.atomic_write named ``prefix...`` runs out of
    space when synced (as ext4 or NFS report delayed allocation), with half its bytes written."""
    made: dict[int, str] = {}
    seen = [0]
    real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        made[fd] = name
        return fd, name

    def fsync(fd):
        name = made.pop(fd, "")
        if os.path.basename(name).startswith(prefix):
            seen[0] += 1
            if seen[0] == nth:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                raise enospc(name)
        return real_fsync(fd)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fsync", fsync)


@contextlib.contextmanager
def small_disk(disk: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted on ``disk`` (root only; skips elsewhere); ``fill`` fills it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the injected ENOSPC tests still run")
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write zeros into ``disk/.filler`` until no space is left."""
    filler = disk / ".filler"
    block = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as f:  # unbuffered: a short write, then ENOSPC
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


# A read-only folder: chmod 0o555, or, as root, writes under it refused.

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def refuse_writes_under(monkeypatch, folder: Path) -> None:
    """Creating, opening for writing, renaming or removing anything under ``folder`` raises
    ``PermissionError(EACCES)``, as a 0o555 folder does for a user (Python-level writes only:
    enough for the first write of every command here)."""
    top = os.path.realpath(folder)

    def under(path, dir_fd=None) -> bool:
        if dir_fd is not None or isinstance(path, int):
            return False
        full = os.path.realpath(os.path.join(os.getcwd(), os.fsdecode(os.fspath(path))))
        return full.startswith(top + os.sep)

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(os.fspath(path)))

    real = {name: getattr(os, name) for name in
            ("open", "mkdir", "rename", "replace", "unlink", "remove", "rmdir")}
    real_open = builtins.open

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & WRITE_FLAGS and under(path, dir_fd):
            refuse(path)
        return real["open"](path, flags, mode, dir_fd=dir_fd)

    def mkdir(path, mode=0o777, *, dir_fd=None):
        if under(path, dir_fd) and not os.path.lexists(path):
            refuse(path)
        return real["mkdir"](path, mode, dir_fd=dir_fd)

    def moving(name):
        def move(src, dst, **kwargs):
            if under(src) or under(dst):
                refuse(src)
            return real[name](src, dst, **kwargs)
        return move

    def removing(name):
        def remove(path, **kwargs):
            if under(path, kwargs.get("dir_fd")) and os.path.lexists(path):
                refuse(path)
            return real[name](path, **kwargs)
        return remove

    def open_(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+") and under(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    for name in ("rename", "replace"):
        monkeypatch.setattr(os, name, moving(name))
    for name in ("unlink", "remove", "rmdir"):
        monkeypatch.setattr(os, name, removing(name))
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
