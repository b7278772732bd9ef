"""Image paths from labels files and manifests stay inside their dataset folder.

A labels row or a hand-edited manifest can name ``../../etc/passwd`` or an absolute path; a
symlink inside the folder can point anywhere. Following them would let a folder handed in by a
user (or a service client) make skinedge read, hash and report on files it was never given.
Every image path is therefore resolved (symlinks included) and refused when it lands outside
the dataset root, unless the caller opts in (``--allow-outside-root``).
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from skinedge.errors import DataError

#: What to tell a user whose folder really does keep images elsewhere.
OPT_IN = "--allow-outside-root"
#: The last line of an error with ``outside-root`` rows, for commands that take :data:`OPT_IN`;
#: a command without it passes its own wording (``read_dataset(outside_root_hint=...)``).
OUTSIDE_ROOT_HINT = f"For a folder you trust, rerun with {OPT_IN} to read images outside it."


def normalize_image_path(image: str) -> str:
    """The one spelling of an image path that records, manifests and duplicate checks use.

    ``./images/a.jpg``, ``images//a.jpg`` and ``images/x/../a.jpg`` all become
    ``images/a.jpg``, so the same file listed twice is caught as a duplicate however it was
    written. Only the text is normalised; nothing is resolved on disk (see
    :func:`resolve_inside` for that).

    Args:
        image: Path as written in a labels file or manifest.

    Returns:
        The path with ``.``, repeated separators and ``x/..`` segments collapsed.
    """
    return posixpath.normpath(image)


class ImagePathError(DataError):
    """An image path that cannot be used as written; ``kind`` and ``reason`` feed a
    :class:`~skinedge.data.records.DataProblem`."""

    kind = "bad-path"

    def __init__(self, root: Path, image: str, reason: str):
        self.root = root
        self.image = image
        self.reason = reason
        super().__init__(reason)


class OutsideRootError(ImagePathError):
    """An image path that resolves outside its dataset folder."""

    kind = "outside-root"

    def __init__(self, root: Path, image: str, resolved: Path):
        self.resolved = resolved
        super().__init__(
            root, image,
            f"path {image!r} resolves to {resolved}, outside the dataset folder {root}; move "
            "the image into the folder")


def resolve_inside(root: Path | str, image: str, *, allow_outside: bool = False) -> Path:
    """The file ``image`` names, relative to ``root``.

    Args:
        root: Dataset folder.
        image: Path as written in the labels file or manifest. Relative paths, ``..`` segments,
            absolute paths and symlinks are all accepted when they resolve inside ``root``;
            whatever resolves outside it is refused unless ``allow_outside``.
        allow_outside: Accept paths outside ``root`` (the user opted in).

    Returns:
        ``root / image`` (not resolved, so messages show the path the user wrote).

    Raises:
        OutsideRootError: the resolved path (symlinks followed) is not under the resolved root.
        ImagePathError: the path cannot be resolved (a symlink loop, a NUL byte).
    """
    root = Path(root)
    path = root / image
    if allow_outside:
        return path
    try:
        real_root = root.resolve()
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: symlink loop (3.11)
        raise ImagePathError(root, image, f"path {image!r} cannot be resolved ({exc}); fix the "
                                          "path or the link") from exc
    if not resolved.is_relative_to(real_root):
        raise OutsideRootError(root, image, resolved)
    return path
