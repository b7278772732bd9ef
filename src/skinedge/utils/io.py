"""Small file helpers: atomic writes, hashing, version stamps.

A write that fails for a reason the user must fix (a full disk, a folder that is not writable)
raises :class:`skinedge.errors.WriteError` naming the file and the folder: see :func:`writing`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from skinedge.errors import SkinedgeError, WriteError

#: errno values of a full disk or a read-only file system: only a write meets them, and the
#: user (not skinedge) must act, whichever writer met them.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
_DENIED = frozenset({errno.EACCES, errno.EPERM})


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``.

    Readers see the old file or the new one, never half of one. A failed write leaves no
    temporary file behind; one left by a killed writer (``.NAME.XXXXXXXX.HOST.PID.tmp`` whose
    process is gone) is removed by the next write of ``path`` on the same host (a pid means
    nothing on another machine sharing the folder, so those are left alone).

    Raises:
        WriteError: a full disk, a folder that is not writable (see :func:`writing`).
    """
    path = Path(path)
    with writing(path):
        tmp = _stage(path, write)
        try:
            os.replace(tmp, path)
        except BaseException:
            _discard(tmp)
            raise
    _sync_folder(path.parent)
    return path


def atomic_write_texts(files: Mapping[Path | str, str | bytes]) -> list[Path]:
    """Write several files as one set (a run's reports; text as UTF-8, bytes as they are):
    every temporary first, then the renames. Renames start only after every temporary is
    written, so a failed write (a full disk) leaves every previous file as it was. The renames
    themselves are one per file, not one for the set: a failure between them (rare: each
    temporary is beside its file, on the same filesystem) leaves the files renamed so far new
    and the rest as they were.

    Raises:
        WriteError: as :func:`atomic_write`.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            with writing(path):
                data = text.encode() if isinstance(text, str) else text
                staged.append((_stage(Path(path), lambda f, d=data: f.write(d)), Path(path)))
        for tmp, path in staged:
            with writing(path):
                os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            _discard(tmp)
        raise
    for folder in dict.fromkeys(path.parent for _, path in staged):
        _sync_folder(folder)
    return [path for _, path in staged]


def _stage(path: Path, write: Callable[[IO[bytes]], Any]) -> str:
    """A synced temporary beside ``path`` holding what ``write`` wrote; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=f".{_host()}.{os.getpid()}.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _discard(tmp)
        raise
    return tmp


def _discard(tmp: str) -> None:
    with contextlib.suppress(OSError):
        Path(tmp).unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the file system can sync a folder)."""
    with contextlib.suppress(OSError):
        fsync_path(folder)


def _host() -> str:
    """This machine's name as it goes into a temporary's name (no dots: the name is split on
    them)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _remove_dead_temporaries(path: Path) -> None:
    """Temporaries of ``path`` left by writers on this host that were killed mid-write (their
    process is gone); those of a running writer, of another host (a shared folder: its pids
    cannot be probed from here) and any name not in the ``.NAME.RANDOM.HOST.PID.tmp`` form
    are kept."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        parts = tmp.name[len(prefix):-len(".tmp")].rsplit(".", 2)
        if len(parts) != 3:
            continue
        random, host, pid = parts
        if (random and "." not in random and host == _host() and pid.isdigit()
                and not _running(int(pid))):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _running(pid: int) -> bool:
    """Whether process ``pid`` may be running; True (keep the file) whenever unsure."""
    if os.name != "posix":  # os.kill(pid, 0) is no probe on Windows: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # another user's process, or a pid this
        return True  # system cannot have (too big for a C int): not ours to remove
    return True


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a write of ``path`` that fails for a reason the user must fix into
    :class:`WriteError`: a full disk or quota (also when a backend's writer says so in its own
    words, as safetensors, ``torch.save`` and ``np.save`` do), a folder that is not writable,
    a read-only file system. Anything else propagates unchanged (a bug stays a bug)."""
    try:
        yield
    except SkinedgeError:
        raise
    except Exception as exc:
        error = write_error(path, exc)
        if error is None:
            raise
        raise error from exc


def check_writable(folder: Path | str) -> Path:
    """Make ``folder`` (with its parents) and check that a file can be created in it and that
    its disk is not full: before a long job (a benchmark) that writes its outputs there.

    Raises:
        WriteError: the folder is not writable, on a read-only file system, or on a full disk.
    """
    folder = Path(folder)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".skinedge-write-check.",
                                     suffix=f".{os.getpid()}.tmp")
        os.close(fd)
        os.unlink(probe)
        if _out_of_space(folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return folder


def write_error(path: Path | str | None, exc: BaseException) -> WriteError | None:
    """The :class:`WriteError` for ``exc`` met while writing ``path``; None when ``exc`` is
    not a full disk, a denied write or a read-only file system."""
    code = exc.errno if isinstance(exc, OSError) else None
    target = Path(path) if path is not None else None
    if (code is None and target is not None and _backend_write_failure(exc)
            and _out_of_space(target.parent)):
        code = errno.ENOSPC  # a backend's own words ("unexpected pos", "requested and written")
    if code not in DISK_ERRNOS | _DENIED:
        return None
    # The folder that refused: where the failing entry (a temporary, a scratch folder) was
    # being made; for a full disk, the output's own folder (the same disk), unless the failing
    # file is on another disk (a scratch folder under $TMPDIR): then that file's folder.
    failed = Path(exc.filename) if isinstance(exc, OSError) and exc.filename else None
    where = failed or target
    if code in (errno.ENOSPC, errno.EDQUOT) and target is not None:
        elsewhere = failed is not None and None not in (
            _device(failed), _device(target)) and _device(failed) != _device(target)
        where = failed if elsewhere else target
    folder = str(where.parent) if where is not None else "the output folder"
    what = f"cannot write {target}" if target is not None else "cannot write the output"
    if code in (errno.ENOSPC, errno.EDQUOT):
        full = "no space left" if code == errno.ENOSPC else "your disk quota is used up"
        message = (f"{what}: {full} on the disk holding {folder}; free some space there, or "
                   "write the output to another folder")
    elif code == errno.EROFS:
        message = (f"{what}: {folder} is on a read-only file system; write the output to "
                   "another folder")
    else:
        message = (f"{what}: {folder} is not writable (permission denied); change its "
                   "permissions, or write the output to another folder")
    error = WriteError(message)
    error.errno = code
    return error


#: Words of a backend's writer failing without an errno (torch.save: "unexpected pos ...",
#: "file write failed"; numpy: "requested and written"), lower case.
_WRITE_WORDS = ("writ", "unexpected pos", "no space", "storagefull", "serializ")


def _backend_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` can be a writer's own report of a full disk (so a full disk explains
    it): an OSError without errno, safetensors' SafetensorError, or a RuntimeError that talks
    about writing. Any other exception (a bug) is never blamed on the disk."""
    if isinstance(exc, OSError):
        return exc.errno is None
    if type(exc).__name__ == "SafetensorError":
        return True
    return isinstance(exc, RuntimeError) and any(
        word in str(exc).lower() for word in _WRITE_WORDS)


def _device(path: Path) -> int | None:
    """The st_dev of the disk holding ``path`` (its nearest existing folder); None if unknown."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return folder.stat().st_dev
    except OSError:
        return None


def _out_of_space(folder: Path) -> bool:
    """Whether the disk holding ``folder`` is (all but) full."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (AttributeError, OSError):  # no statvfs on Windows
        return False
    return st.f_blocks > 0 and st.f_bavail * st.f_frsize < 1 << 16


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def fsync_path(path: Path | str) -> None:
    """Flush a file's or a folder's entry to disk (so a rename survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_symlink(link: Path | str, target: Path | str) -> Path:
    """``link`` -> ``target`` (a relative link), replacing whatever link was there atomically."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target, link.parent), target_is_directory=Path(target).is_dir())
    os.replace(tmp, link)
    return link


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: Path | str) -> str:
    """sha256 of a folder (``.mlpackage``): over each file's relative POSIX path and sha256, in
    sorted order, so it names the same content on every machine; a file: :func:`sha256_file`.
    macOS Finder metadata (``.DS_Store``, ``._*`` AppleDouble files), added when a folder is
    copied on a Mac or to a non-Apple disk, is left out: it is not the model."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(f for f in path.rglob("*") if f.is_file() and not _finder_metadata(f)):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _finder_metadata(file: Path) -> bool:
    return file.name == ".DS_Store" or file.name.startswith("._")


_VERSIONED = ("skinedge", "torch", "torchvision", "timm", "numpy", "pillow", "scikit-learn")


def path_size(path: Path | str) -> int:
    """Bytes of a file, or of every file under a folder (``.mlpackage``, checkpoints)."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of the packages that decide a result, plus Python and the platform."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in (*_VERSIONED, *extra):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
