"""ONNX Runtime Web's files (the wasm build): pinned, checked, kept in a local cache.

The web page runs the model with ``onnxruntime-web`` (CPU, WebAssembly with SIMD), whose files
ship inside every exported ``.web`` folder so that the page works offline. They are about 15 MB
(the ``.wasm`` is most of it), too large to keep in the repository, so they come from the npm
registry once, by an explicit command (CI runs it in ``.ci/run``)::

    python -m skinedge.export.web

which runs ``npm pack onnxruntime-web@VERSION``, checks the tarball's sha256 and each file's,
and keeps the files in :func:`ort_web_cache` (``~/.cache/skinedge/onnxruntime-web-VERSION``, or
``$SKINEDGE_ORT_WEB``). Exports only read that folder: nothing is downloaded while exporting.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from skinedge.errors import SkinedgeError
from skinedge.utils.io import sha256_file

#: The pinned npm package.
ORT_WEB_PACKAGE = "onnxruntime-web"
ORT_WEB_VERSION = "1.31.1"
ORT_WEB_LICENCE = "MIT"
#: sha256 of ``npm pack onnxruntime-web@1.31.1`` (the registry's tarball).
ORT_WEB_TARBALL_SHA256 = "bdccdb9fbb9ab537247c0c734e9b1d2b1b338b4f2a09faa58f0dc1cfa27c312c"
#: The files the page loads (from the tarball's ``package/dist/``) and their sha256: the CPU
#: (WebAssembly) build of the API, its Emscripten loader and the SIMD wasm binary.
ORT_WEB_FILES = {
    "ort.wasm.min.js": "b8a78c408c40da65fdc8ba0846f7b2948e92a4c6d6b23cc8e4165e428ad95443",
    "ort-wasm-simd-threaded.mjs": "30ed0b5cd1182ede931fea448afb567d4dc705ec957af09f108a2be5f770dac3",
    "ort-wasm-simd-threaded.wasm": "4b884c203b0fa48d057be3332c65513ff85aa3c5bddd6946acc0fab7ecda001d",
}
FETCH_COMMAND = "python -m skinedge.export.web"
ENV = "SKINEDGE_ORT_WEB"


class OrtWebMissing(SkinedgeError, FileNotFoundError):
    """ONNX Runtime Web's files are not in the local cache (or differ from the pinned ones)."""

    http_status = 501


def ort_web_cache() -> Path:
    """Where the pinned files are kept: ``$SKINEDGE_ORT_WEB``, else
    ``$XDG_CACHE_HOME/skinedge/onnxruntime-web-VERSION`` (``~/.cache`` by default)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "skinedge" / f"{ORT_WEB_PACKAGE}-{ORT_WEB_VERSION}"


def ort_web_problem(folder: Path | None = None) -> str | None:
    """Why the cached files cannot be used (None: all there, each with its pinned sha256).
    Checks sizes first and hashes the files only when asked to (:func:`ort_web_files`)."""
    folder = folder or ort_web_cache()
    absent = [name for name in ORT_WEB_FILES if not (folder / name).is_file()]
    if absent:
        return (f"ONNX Runtime Web {ORT_WEB_VERSION} is not in {folder} (missing "
                f"{', '.join(absent)}); fetch it once with `{FETCH_COMMAND}` (runs `npm pack "
                f"{ORT_WEB_PACKAGE}@{ORT_WEB_VERSION}`; needs npm), or set ${ENV} to a folder "
                f"holding {', '.join(ORT_WEB_FILES)}")
    return None


def ort_web_files(folder: Path | None = None) -> list[Path]:
    """The pinned files, checked against their sha256.

    Raises:
        OrtWebMissing: a file is missing or differs from the pinned one; the message names the
            folder and the command that fetches them.
    """
    folder = folder or ort_web_cache()
    if problem := ort_web_problem(folder):
        raise OrtWebMissing(problem)
    files = []
    for name, expected in ORT_WEB_FILES.items():
        if sha256_file(folder / name) != expected:
            raise OrtWebMissing(f"{folder / name}: its sha256 differs from the pinned "
                                f"{ORT_WEB_PACKAGE} {ORT_WEB_VERSION} file; delete {folder} and "
                                f"fetch it again with `{FETCH_COMMAND}`")
        files.append(folder / name)
    return files


def fetch_ort_web(folder: Path | None = None, *, npm: str = "npm") -> Path:
    """Fetch the pinned package with ``npm pack`` (network: the npm registry) and keep its
    files in ``folder``; a no-op when they are there already. Returns the folder.

    Raises:
        OrtWebMissing: npm is missing or fails, or the tarball's sha256 is not the pinned one.
    """
    folder = folder or ort_web_cache()
    if ort_web_problem(folder) is None:
        try:
            ort_web_files(folder)
            return folder
        except OrtWebMissing:
            pass  # a damaged file: fetch again
    if shutil.which(npm) is None:
        raise OrtWebMissing(f"npm is not installed (it fetches {ORT_WEB_PACKAGE}@"
                            f"{ORT_WEB_VERSION}); install it (Debian: apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        spec = f"{ORT_WEB_PACKAGE}@{ORT_WEB_VERSION}"
        done = subprocess.run([npm, "pack", spec, "--silent", "--pack-destination", tmp],
                              capture_output=True, text=True, check=False)
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise OrtWebMissing(f"`npm pack {spec}` failed: {done.stderr.strip()[-500:]}")
        digest = hashlib.sha256(tarballs[0].read_bytes()).hexdigest()
        if digest != ORT_WEB_TARBALL_SHA256:
            raise OrtWebMissing(f"`npm pack {spec}` gave a tarball with sha256 {digest}, not "
                                f"the pinned {ORT_WEB_TARBALL_SHA256}; not using it")
        staging = Path(tmp) / "files"
        staging.mkdir()
        with tarfile.open(tarballs[0]) as tar:
            for name in ORT_WEB_FILES:
                member = tar.extractfile(f"package/dist/{name}")
                if member is None:
                    raise OrtWebMissing(f"{spec} has no dist/{name}")
                (staging / name).write_bytes(member.read())
        ort_web_files(staging)  # every file's own sha256
        folder.mkdir(parents=True, exist_ok=True)
        for name in ORT_WEB_FILES:
            shutil.copyfile(staging / name, folder / name)
    return folder
