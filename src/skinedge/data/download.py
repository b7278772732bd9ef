"""Fetch the public skin-lesion archives: HAM10000, the ISIC 2018 Task 3 test set, ISIC 2020.

One door: :func:`download_dataset` (or :func:`download_files` for any list of
:class:`RemoteFile`). Files land in ``dest`` as the publishers ship them, so skinedge's layout
readers recognise the folder:

* ``ham10000``: ``HAM10000_metadata.csv``, ``HAM10000_images_part_1/``, ``HAM10000_images_part_2/``
  (the Dataverse zips hold bare JPEGs; each is unpacked into a folder named after the zip).
* ``isic2018-test``: ``ISIC2018_Task3_Test_Input/ISIC_*.jpg``.
* ``isic2020``: ``train/ISIC_*.jpg`` and ``ISIC_2020_Training_GroundTruth_v2.csv``.

Integrity: a file is checked against the MD5/SHA-256 its publisher documents. Where nothing is
published the checksum is ``None``; after the first download its SHA-256 is written to
``dest/SHA256SUMS`` (``sha256sum -c`` format) and every later run verifies against that line. A
file that fails a check is deleted and :class:`DownloadError` names the expected and actual value.

Robustness: downloads go to ``NAME.part`` and resume with an HTTP ``Range`` request after an
interruption (a server that ignores ``Range`` makes it start over); transient failures are retried
with exponential backoff. Archives are unpacked into a hidden staging folder, rejecting absolute
and ``..`` members (zip-slip), then moved into place; a marker file ``.NAME.extracted`` records
completion, so a run killed mid-extraction is redone and a finished one is skipped. Only the
standard library touches the network; nothing happens at import time.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from skinedge.errors import ConfigError, SkinedgeError
from skinedge.utils.io import atomic_write_text

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as ``progress(filename, bytes_done, bytes_total_or_None)`` while a file downloads."""

SUMS_FILENAME = "SHA256SUMS"
_CHUNK = 1 << 20
# Harvard Dataverse answers urllib's default User-Agent with 403, so always send our own.
_USER_AGENT = "skinedge-data-download/0.1 (+python-urllib)"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class DownloadError(SkinedgeError, RuntimeError):
    """A file could not be fetched, verified or unpacked; the message says which and what to do."""


class _Transient(Exception):
    """A failure worth retrying; the next attempt resumes from what is on disk."""


def _parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _is_safe_relative(name: str) -> bool:
    parts = _parts(name)
    absolute = name.startswith(("/", "\\")) or (bool(parts) and ":" in parts[0])
    return not absolute and ".." not in parts


@dataclass(frozen=True)
class RemoteFile:
    """One file of a published dataset.

    Attributes:
        url: Where the publisher serves the file.
        filename: Name it is saved under in ``dest`` (a plain name, no folders).
        sha256: SHA-256 the publisher documents, if any.
        md5: MD5 the publisher documents, if any (Harvard Dataverse publishes MD5).
        size: Size in bytes the publisher documents, if any; checked like a checksum.
        extract: Unpack this zip or tar archive after it passes verification.
        extract_to: Folder under ``dest`` to unpack into (``"."`` is ``dest`` itself).
    """

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    extract: bool = False
    extract_to: str = "."

    def __post_init__(self) -> None:
        name = self.filename
        if _parts(name) != [name] or name == ".." or ":" in name:
            raise ValueError(f"RemoteFile.filename must be a plain name, got {self.filename!r}")
        if not _is_safe_relative(self.extract_to):
            raise ValueError(f"RemoteFile.extract_to must stay in dest, got {self.extract_to!r}")


@dataclass(frozen=True)
class DatasetSource:
    """A downloadable dataset: its files plus what a user must honour and cite."""

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    licence: str
    citation: str
    homepage: str


_DATAVERSE = "https://dataverse.harvard.edu/api/access/datafile/"
_ISIC_BUCKET = "https://isic-challenge-data.s3.amazonaws.com/"
_CC_BY_NC = "CC BY-NC 4.0 (https://creativecommons.org/licenses/by-nc/4.0/)"
_HAM_CITATION = (
    "Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset, a large collection of multi-source "
    "dermatoscopic images of common pigmented skin lesions. Sci Data 5, 180161 (2018). "
    "https://doi.org/10.1038/sdata.2018.161"
)

DATASETS: dict[str, DatasetSource] = {
    "ham10000": DatasetSource(
        name="ham10000",
        description="HAM10000 (Harvard Dataverse v4): 10,015 dermoscopic images, 7 classes, "
        "lesion ids; about 2.8 GB.",
        files=(
            # Dataverse ingests the metadata CSV as a .tab table; ?format=original returns the
            # uploaded CSV, which is the file the published MD5 and size describe.
            RemoteFile(
                url=_DATAVERSE + "4338392?format=original",
                filename="HAM10000_metadata.csv",
                md5="8f85fb1aa29d80a2797247e434deb79d",
                size=690_218,
            ),
            RemoteFile(
                url=_DATAVERSE + "3172585",
                filename="HAM10000_images_part_1.zip",
                md5="4639bfa73ab251610530a97c898e6e46",
                size=1_366_522_108,
                extract=True,
                extract_to="HAM10000_images_part_1",
            ),
            RemoteFile(
                url=_DATAVERSE + "3172584",
                filename="HAM10000_images_part_2.zip",
                md5="da43d6cc50f6613013be07e8986b384b",
                size=1_403_566_547,
                extract=True,
                extract_to="HAM10000_images_part_2",
            ),
        ),
        licence=_CC_BY_NC,
        citation=_HAM_CITATION,
        homepage="https://doi.org/10.7910/DVN/DBW86T",
    ),
    "isic2018-test": DatasetSource(
        name="isic2018-test",
        description="ISIC 2018 Task 3 test input: the challenge's dermoscopic test images, "
        "without labels.",
        files=(
            RemoteFile(
                url=_ISIC_BUCKET + "2018/ISIC2018_Task3_Test_Input.zip",
                filename="ISIC2018_Task3_Test_Input.zip",
                extract=True,
            ),
        ),
        licence=_CC_BY_NC,
        citation="Codella N, Rotemberg V, Tschandl P, et al. Skin Lesion Analysis Toward Melanoma "
        "Detection 2018: A Challenge Hosted by the International Skin Imaging Collaboration "
        "(ISIC). arXiv:1902.03368 (2019); and " + _HAM_CITATION,
        homepage="https://challenge.isic-archive.com/data/#2018",
    ),
    "isic2020": DatasetSource(
        name="isic2020",
        description="SIIM-ISIC 2020 training set: 33,126 JPEG images from 2,056 patients with "
        "the v2 ground truth (patient and lesion ids); the zip is about 23 GB.",
        files=(
            RemoteFile(
                url=_ISIC_BUCKET + "2020/ISIC_2020_Training_JPEG.zip",
                filename="ISIC_2020_Training_JPEG.zip",
                extract=True,
            ),
            RemoteFile(
                url=_ISIC_BUCKET + "2020/ISIC_2020_Training_GroundTruth_v2.csv",
                filename="ISIC_2020_Training_GroundTruth_v2.csv",
            ),
        ),
        licence=_CC_BY_NC,
        citation="International Skin Imaging Collaboration. SIIM-ISIC 2020 Challenge Dataset. "
        "doi:10.34970/2020-ds01 (2020); Rotemberg V, et al. A patient-centric dataset of images "
        "and metadata for identifying melanomas using clinical context. Sci Data 8, 34 (2021). "
        "https://doi.org/10.1038/s41597-021-00815-z",
        homepage="https://challenge.isic-archive.com/data/#2020",
    ),
}


def download_dataset(
    name: str, dest: Path, *, progress: ProgressCallback | None = None, **kw
) -> Path:
    """Download, verify and unpack one of :data:`DATASETS` into ``dest``.

    Args:
        name: A key of :data:`DATASETS` (``"ham10000"``, ``"isic2018-test"``, ``"isic2020"``).
        dest: Folder the dataset lands in (created if needed); point the readers at it.
        progress: Optional :data:`ProgressCallback`.
        **kw: Passed to :func:`download_files` (``retries``, ``timeout``, ``backoff``).

    Returns:
        ``dest``, now holding the dataset in its official layout.

    Raises:
        ConfigError: ``name`` is not a known dataset.
        DownloadError: A file could not be fetched, failed verification or could not be unpacked.
    """
    source = DATASETS.get(name)
    if source is None:
        raise ConfigError(f"Unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}.")
    download_files(source.files, Path(dest), progress=progress, **kw)
    return Path(dest)


def download_files(
    files: Iterable[RemoteFile],
    dest: Path,
    *,
    progress: ProgressCallback | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> list[Path]:
    """Make sure every file is in ``dest``, verified, and unpacked where asked.

    A file already present and passing its checksum (published, or the line in ``SHA256SUMS``
    from an earlier run) is not fetched again; an archive whose marker says it was unpacked is
    not unpacked again (nor fetched, if the user deleted it afterwards to save space).

    Args:
        files: The files to fetch.
        dest: Target folder, created if needed.
        progress: Optional :data:`ProgressCallback`.
        retries: Extra attempts after a failed one; an attempt that made progress resets the count.
        timeout: Seconds to wait for the server on connect and on each read.
        backoff: Seconds before the first retry, doubled for each further one.

    Returns:
        The path of every file in ``dest``, in the order given.

    Raises:
        DownloadError: With the URL or file and what the user can do about it.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for remote in files:
        path = dest / remote.filename
        marker = dest / f".{remote.filename}.extracted"
        if not (remote.extract and marker.exists() and not path.exists()):
            _ensure_file(remote, path, progress, retries, timeout, backoff)
        if remote.extract and not marker.exists():
            _extract(path, dest / remote.extract_to)
            atomic_write_text(marker, f"{remote.url}\n")
        paths.append(path)
    return paths


def _ensure_file(remote, path, progress, retries, timeout, backoff) -> None:
    recorded = _read_sums(path.parent).get(remote.filename)
    if path.exists():
        problem, sha256 = _check(remote, path, recorded)
        if problem:
            raise DownloadError(
                f"{path} is already there but {problem}. Delete or move it away and run again "
                f"to download a fresh copy from {remote.url}."
            )
        _report(progress, remote.filename, path.stat().st_size, path.stat().st_size)
    else:
        part = path.with_name(path.name + ".part")
        _fetch_with_retries(remote, part, progress, retries, timeout, backoff)
        problem, sha256 = _check(remote, part, recorded)
        if problem:
            part.unlink()
            raise DownloadError(
                f"{remote.filename} downloaded from {remote.url} {problem}. The corrupt download "
                "was deleted; run again to fetch it afresh. If it fails again the file changed at "
                f"the source (if {SUMS_FILENAME} holds the expected value, delete that line)."
            )
        os.replace(part, path)
    _record_sha256(path.parent, remote.filename, sha256)


def _check(remote: RemoteFile, path: Path, recorded: str | None) -> tuple[str | None, str]:
    """Return (what is wrong with ``path`` or None, its sha256); the file is read once."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"has {size} bytes, expected {remote.size}", ""
    sha256, md5 = _digests(path)
    for kind, expected, actual in (
        ("sha256", remote.sha256, sha256),
        ("md5", remote.md5, md5),
        (f"sha256 (from {SUMS_FILENAME} of an earlier download)", recorded, sha256),
    ):
        if expected and expected.lower() != actual:
            return f"fails its {kind} check: expected {expected.lower()}, got {actual}", sha256
    return None, sha256


def _fetch_with_retries(remote, part, progress, retries, timeout, backoff) -> None:
    failures, last = 0, None
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_once(remote, part, progress, timeout)
            return
        except urllib.error.HTTPError as exc:
            if exc.code not in _RETRY_STATUS:
                raise DownloadError(
                    f"{remote.url} answered HTTP {exc.code} ({exc.reason}) for {remote.filename}. "
                    "The publisher may have moved the file: check the dataset homepage, download "
                    "it by hand and pass the folder with --data or SKINEDGE_DATA."
                ) from None
            last = exc
        except (_Transient, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            last = exc
        grew = part.exists() and part.stat().st_size > before
        failures = 0 if grew else failures + 1
        if failures > retries:
            break
        time.sleep(min(backoff * 2 ** max(failures - 1, 0), 60.0))
    kept = f" The partial download {part} is kept and resumed next time." if part.exists() else ""
    raise DownloadError(
        f"Could not download {remote.filename} from {remote.url} ({last}).{kept} If this machine "
        f"cannot reach that host, download the file elsewhere and copy it into {part.parent} "
        "(it is verified and reused), or put the whole dataset in a folder and pass it with "
        "--data or SKINEDGE_DATA."
    ) from last


def _fetch_once(remote: RemoteFile, part: Path, progress, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if remote.size is not None and offset > remote.size:
        part.unlink()
        offset = 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(remote.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:
            raise
        total = _content_range(exc.headers.get("Content-Range"))[1]
        exc.close()
        if total in (None, offset):
            return  # the .part is already whole; verification decides whether it is right
        part.unlink()
        raise _Transient(f"partial file is longer than the remote one ({total} bytes)") from None
    with response:
        partial = response.status == 206
        start, total = _content_range(response.headers.get("Content-Range") if partial else None)
        if offset and partial:
            if start != offset:
                part.unlink()
                raise _Transient(f"server resumed at byte {start}, not {offset}")
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # no Range asked, or the server ignored it: start over
        if total is None:
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length else remote.size
        done = offset
        _report(progress, remote.filename, done, total)
        try:
            out = part.open(mode)
        except OSError as exc:
            raise DownloadError(f"Cannot write {part}: {exc}.") from exc
        with out:
            while chunk := response.read(_CHUNK):
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise DownloadError(f"Cannot write {part}: {exc}. Free some space.") from exc
                done += len(chunk)
                _report(progress, remote.filename, done, total)
    if total is not None and done < total:
        raise _Transient(f"connection closed after {done} of {total} bytes")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes 100-199/200`` or ``bytes */200`` into (start, total)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    first = span.split("-")[0]
    return (int(first) if first.isdigit() else None), (int(total) if total.isdigit() else None)


def _extract(archive: Path, target: Path) -> None:
    staging = archive.parent / f".{archive.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)  # left over from a run killed mid-extraction
    staging.mkdir()
    try:
        try:
            if archive.name.endswith(".zip"):
                _unzip(archive, staging)
            elif archive.name.endswith(_TAR_SUFFIXES):
                _untar(archive, staging)
            else:
                raise DownloadError(f"Cannot unpack {archive}: expected a .zip or .tar(.gz) file.")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            archive.unlink()
            _record_sha256(archive.parent, archive.name, None)
            raise DownloadError(
                f"{archive} is not a readable archive ({exc}); it was deleted, run again to "
                "download it afresh."
            ) from exc
        target.mkdir(parents=True, exist_ok=True)
        for entry in staging.iterdir():
            _merge_move(entry, target / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unzip(archive: Path, staging: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not _is_mac_junk(m.filename)]
        for member in members:  # check every name before writing anything
            _check_member(member.filename, archive)
        for member in members:
            parts = _parts(member.filename)
            if not parts:
                continue
            out = staging.joinpath(*parts)
            if member.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)


def _untar(archive: Path, staging: Path) -> None:
    with tarfile.open(archive) as tf:
        members = [m for m in tf.getmembers() if not _is_mac_junk(m.name)]
        for member in members:
            _check_member(member.name, archive)
            if not (member.isfile() or member.isdir()):
                raise DownloadError(
                    f"{archive} contains a link or special file {member.name!r}; refusing to "
                    "unpack it. Delete the archive and download it again from the publisher."
                )
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tf.extractall(staging, members=members, **extra)


def _check_member(name: str, archive: Path) -> None:
    if not _is_safe_relative(name):
        raise DownloadError(
            f"{archive} contains an unsafe member {name!r} (absolute path or '..'); refusing to "
            "unpack it. The archive is not what the publisher ships: delete it and download again."
        )


def _is_mac_junk(name: str) -> bool:
    """macOS resource forks (``__MACOSX/``, ``._x.jpg``) would look like broken images."""
    parts = _parts(name)
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].startswith("._"))


def _merge_move(src: Path, dst: Path) -> None:
    if src.is_dir() and dst.is_dir() and not dst.is_symlink():
        for child in src.iterdir():
            _merge_move(child, dst / child.name)
    else:
        os.replace(src, dst)


def _digests(path: Path) -> tuple[str, str]:
    """Return (sha256, md5) of a file, read once."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


def _read_sums(folder: Path) -> dict[str, str]:
    sums_path = folder / SUMS_FILENAME
    if not sums_path.exists():
        return {}
    sums = {}
    for line in sums_path.read_text().splitlines():
        digest, _, name = line.strip().partition(" ")
        if digest and name:
            sums[name.strip().lstrip("*")] = digest.lower()
    return sums


def _record_sha256(folder: Path, filename: str, sha256: str | None) -> None:
    """Set (or with ``None`` drop) the SHA256SUMS line of ``filename``."""
    sums = _read_sums(folder)
    if sums.get(filename) == sha256:
        return
    sums.pop(filename, None)
    if sha256:
        sums[filename] = sha256
    atomic_write_text(folder / SUMS_FILENAME, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


def _report(progress: ProgressCallback | None, name: str, done: int, total: int | None) -> None:
    if progress is not None:
        progress(name, done, total)
