"""The runtime registry: one :class:`Runtime` subclass per backend, found by the file it loads.

A backend is a module of this package whose class is decorated with :func:`register_runtime`;
the built-in modules are found by listing the package (no table names them), so adding a format
is adding one file. Third-party code registers its own class the same way.

Integrity: :func:`load_runtime` checks an artifact's files against the sha256 that ``skinedge
export`` recorded in the ``<stem>.<target>.export.json`` report beside them
(:func:`check_artifact_files`), and every card's ``integrity`` is checked when it is read. An
artifact copied somewhere without its report (to a phone) loads unchecked against file hashes;
its card is still checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from skinedge.errors import ModelError, NotFoundError
from skinedge.models.card import ModelCard
from skinedge.runtimes.base import Runtime
from skinedge.utils.io import sha256_tree
from skinedge.utils.lazy import import_submodules

REPORT_SUFFIX = ".export.json"  # `skinedge export` writes <stem>.<target>.export.json

#: backend name -> Runtime class, in registration order.
RUNTIMES: dict[str, type[Runtime]] = {}

_PACKAGE = "skinedge.runtimes"
_builtins_loaded = False


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: register a :class:`Runtime` subclass under its ``backend`` name.

    Raises:
        TypeError: not a Runtime, no backend name, no ``read_card``, a name or suffix taken.
    """
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise TypeError(f"{cls!r} is not a Runtime subclass")
    if not cls.backend:
        raise TypeError(f"{cls.__name__} has no backend name")
    if getattr(cls.read_card, "__isabstractmethod__", False):
        raise TypeError(f"{cls.__name__} does not implement read_card(path)")
    if cls.backend in RUNTIMES:
        raise TypeError(f"runtime backend {cls.backend!r} is registered twice")
    taken = {s: other.backend for other in RUNTIMES.values() for s in other.suffixes}
    for suffix in cls.suffixes:
        if not suffix.startswith("."):
            raise TypeError(f"{cls.__name__}: suffix {suffix!r} must start with a dot")
        if suffix in taken:
            raise TypeError(f"{cls.__name__}: suffix {suffix} is already {taken[suffix]}'s")
    RUNTIMES[cls.backend] = cls
    return cls


def builtin_runtimes() -> dict[str, type[Runtime]]:
    """:data:`RUNTIMES`, after importing every module of this package once (which registers the
    built-in backends; their heavy packages load only when a model does)."""
    global _builtins_loaded
    if not _builtins_loaded:
        import_submodules(_PACKAGE)
        _builtins_loaded = True
    return RUNTIMES


def runtime_class(path: Path | str) -> type[Runtime]:
    """The registered runtime that loads ``path`` (by suffix; a checkpoint folder: torch).

    Raises:
        NotFoundError: ``path`` does not exist.
        ModelError: no registered runtime loads that format.
    """
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{path}: no such model file")
    runtimes = builtin_runtimes().values()
    for cls in runtimes:
        if cls.handles(path):
            return cls
    suffixes = sorted({s for cls in runtimes for s in cls.suffixes})
    if path.is_dir() and not path.suffix:
        raise ModelError(f"{path} is a folder but not a skinedge checkpoint (no card.json); pass "
                         "a folder written by `skinedge train` (e.g. runs/NAME/best), or an "
                         f"exported model ({', '.join(suffixes)})")
    raise ModelError(f"{path}: unknown model format {path.suffix!r}; expected a checkpoint "
                     f"folder or one of {suffixes}")


def read_artifact_card(path: Path | str) -> ModelCard:
    """The model card of a checkpoint folder or an exported artifact, without loading the model."""
    return runtime_class(path).read_card(Path(path))


def export_reports(path: Path | str, cls: type[Runtime] | None = None) -> list[Path]:
    """The export reports (``*.export.json``) that list the artifact ``path``: beside it, or
    one folder up for an artifact that failed verification (moved to ``rejected/``).

    Raises:
        ModelError: an unreadable report of the artifact (:func:`owns_report`); other
            unreadable reports in the folder belong to other artifacts and are passed by.
    """
    return [report for report, _ in _reports_listing(Path(path), cls)]


def _reports_listing(path: Path, cls: type[Runtime] | None) -> list[tuple[Path, list[dict]]]:
    """:func:`export_reports` with each report's ``files`` section, read once."""
    cls = cls or runtime_class(path)
    folders = [path.parent] + ([path.parent.parent] if path.parent.name == "rejected" else [])
    found = []
    for folder in folders:
        for report in sorted(folder.glob(f"*{REPORT_SUFFIX}")):
            if not report.is_file():
                continue
            try:
                files = _report_files(report)
            except ModelError:
                if owns_report(report, path, cls):
                    raise
                continue
            if _listed(files, report, path) is not None:
                found.append((report, files))
    return found


def owns_report(report: Path, path: Path, cls: type[Runtime]) -> bool:
    """Whether ``report`` is the one ``skinedge export`` wrote for the artifact ``path``:
    named ``<stem>.<target>.export.json`` where ``path`` is named ``<stem><ending>`` for an
    ending ``cls.exports`` lists under ``target`` (``arch_fp32.xml``:
    ``arch_fp32.openvino.export.json``, not ``arch_fp32.onnx.export.json``). For a runtime
    without ``exports``: a report named ``<file name>.*``."""
    if not cls.exports:
        return report.name.startswith(f"{path.name}.") and report.name.endswith(REPORT_SUFFIX)
    return any(report.name == f"{path.name[:-len(ending)]}.{target}{REPORT_SUFFIX}"
               for target, endings in cls.exports.items() for ending in endings
               if path.name.endswith(ending) and len(path.name) > len(ending))


def _report_files(report: Path) -> list[dict]:
    try:
        files = json.loads(report.read_text()).get("files", [])
        if not all(isinstance(f, dict) and isinstance(f.get("path"), str) for f in files):
            raise ValueError("'files' is not a list of {path, bytes, sha256}")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError) as exc:
        raise ModelError(f"{report}: not a readable export report ({exc}); export the artifact "
                         "again with `skinedge export`, or delete the report") from exc
    return files


def _listed(files: list[dict], report: Path, file: Path) -> dict | None:
    """The report's entry for ``file`` (matched by its path relative to the report's folder:
    the recorded path is the one given at export time, relative or absolute)."""
    try:
        tail = file.resolve().relative_to(report.parent.resolve()).parts
    except ValueError:
        return None
    for entry in files:
        if Path(entry["path"]).parts[-len(tail):] == tail:
            return entry
    return None


def check_artifact_files(path: Path | str, cls: type[Runtime] | None = None) -> list[Path]:
    """Check an artifact's files (:meth:`Runtime.artifact_files`: an OpenVINO ``.bin`` too)
    against the sha256 recorded in every export report that lists it; returns those reports
    (none: an artifact without its report, e.g. copied to a phone alone, is not checked).

    Raises:
        ModelError: a file that is missing or whose sha256 differs from the report's (changed,
            truncated or corrupted since export), or an unreadable report; the message names
            the file, the report and the fix.
    """
    path = Path(path)
    cls = cls or runtime_class(path)
    parts = cls.artifact_files(path)
    if not parts:  # a checkpoint folder: its card holds the weights' sha256
        return []
    reports = _reports_listing(path, cls)
    hashes: dict[Path, str] = {}
    for report, files in reports:
        for file in parts:
            entry = _listed(files, report, file)
            if entry is None or not entry.get("sha256"):  # reports before hashes: nothing to check
                continue
            if not file.exists():
                raise ModelError(f"{file}: missing, but {report} lists it as part of the "
                                 f"artifact {path.name}; export it again with `skinedge export`")
            if file not in hashes:
                hashes[file] = sha256_tree(file)
            if hashes[file] != entry["sha256"]:
                raise ModelError(f"{file}: its sha256 differs from the one {report} recorded at "
                                 f"export: the file was changed, truncated or corrupted since; "
                                 f"export it again with `skinedge export` (or restore the file "
                                 f"together with its report)")
    return [report for report, _ in reports]


def verify_artifact(path: Path | str) -> ModelCard:
    """The card of a checkpoint folder or artifact, after checking the artifact's files against
    its export report (:func:`check_artifact_files`) and reading its card (integrity-checked;
    a truncated file the backend cannot parse is refused): what a user-given model must pass
    before it is benchmarked. Raises as :func:`load_runtime`, without loading the model."""
    path = Path(path)
    cls = runtime_class(path)
    check_artifact_files(path, cls)
    return cls.read_card(path)


def load_runtime(path: Path | str, *, threads: int | None = None,
                 check_files: bool = True) -> Runtime:
    """Load a checkpoint folder or an exported artifact behind the common :class:`Runtime`.

    The artifact's files are checked against the sha256 in the export report beside them, when
    there is one (:func:`check_artifact_files`); its card's ``integrity`` is checked as it is
    read. An artifact without a report beside it loads after the card check alone.

    Args:
        path: Checkpoint folder (torch), or a file of a registered format: ``.onnx``, ``.xml``
            (OpenVINO IR), ``.tflite``, ``.mlpackage`` (Core ML, macOS only),
            ``.engine``/``.plan`` (TensorRT).
        threads: Intra-op threads for the backend (None: its default).
        check_files: False skips the report check (a caller that ran
            :func:`check_artifact_files` already, so that timed loads do not include hashing).

    Raises:
        NotFoundError: no such file.
        ModelError: an unknown format, an artifact without a skinedge card, an edited card, a
            file that differs from its export report, or one the backend cannot read.
        MissingBackendError: the backend's extra is not installed (the message names it).
    """
    path = Path(path)
    cls = runtime_class(path)
    if check_files:
        check_artifact_files(path, cls)
    return cls.open(path, threads)
