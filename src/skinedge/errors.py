"""The errors a user can cause, with one base: :class:`SkinedgeError`.

Library code raises a subclass that names the kind of mistake, with a message that says which
file, row or option is wrong and what to do. The CLI maps every ``SkinedgeError`` to its message
and ``exit_code`` in one handler (``skinedge.cli.main.SkinedgeGroup``); the service will map it
to ``http_status`` (4xx for a client's mistake, 501 for what this install or machine cannot do;
never 500). Anything else that escapes is a bug in skinedge, shown as such (a traceback).

Raise one where a user can cause the problem: a bad option, config, file, image, manifest or
model. Programmer errors (a target registered twice, arrays of mismatched shapes passed by our
own code, broken internal invariants) stay builtins, so that they surface as bugs.

Each subclass also derives from the builtin that callers caught before it existed
(``ValueError``, ``FileNotFoundError``, ``ImportError``, ``RuntimeError``), so
``except ValueError`` keeps working.
"""

from __future__ import annotations


class SkinedgeError(Exception):
    """Base of every error a user can cause."""

    exit_code: int = 2
    http_status: int = 400


class ConfigError(SkinedgeError, ValueError):
    """A bad option, config value, YAML file or ``--set`` override; or options that conflict."""


class DataError(SkinedgeError, ValueError):
    """Bad input data: an image, a labels file, a manifest, a synthetic or candidates set."""

    http_status = 422


class ModelError(SkinedgeError, ValueError):
    """A checkpoint, model card or exported artifact that cannot be used as asked: unreadable,
    inconsistent with its card, or the wrong kind (an ensemble where one model is needed)."""

    http_status = 422


class NotFoundError(SkinedgeError, FileNotFoundError):
    """A file or folder named by the user does not exist."""

    http_status = 404


class MissingBackendError(SkinedgeError, ImportError):
    """An optional package is not installed; the message names the pip extra that brings it."""

    http_status = 501


class UnsupportedHereError(SkinedgeError, RuntimeError):
    """Valid input that this machine cannot run: Core ML off macOS, TensorRT without a GPU."""

    http_status = 501


class WriteError(SkinedgeError, OSError):
    """An output could not be written for a reason the user must fix: the disk is full (or the
    quota used up), the folder is not writable or on a read-only file system. The message
    names the file and the folder; the previous output, if any, is left as it was."""

    http_status = 507  # Insufficient Storage: the server's disk, not the client's request
