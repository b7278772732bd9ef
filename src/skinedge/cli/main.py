"""The ``skinedge`` command: thin doors onto the library (parse, call, print).

Each command group is a module with its own ``typer.Typer()``; this module joins them. Root
commands (train, evaluate, explain, quickstart, export, bench) live in modules too, merged into
the root by ``add_typer`` without a name. Heavy imports (torch, timm) happen inside the
commands, so ``skinedge --help`` stays fast.

Errors: a :class:`skinedge.errors.SkinedgeError` that escapes a command (a bad option, config,
file, image or model) is printed as ``error: <message>`` and exits with its ``exit_code``, in one
place: :class:`SkinedgeGroup`; so is an ``OSError`` of a full disk or a read-only file system,
whichever writer met it. Anything else is a bug in skinedge and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from skinedge.cli import (
    compress,
    data,
    deploy,
    ensemble,
    evaluate,
    experiment,
    federated,
    gan,
    pipeline,
    quickstart,
    registry,
    retrain,
    serve,
    train,
)
from skinedge.cli.common import print_error
from skinedge.errors import MissingBackendError, SkinedgeError
from skinedge.utils.io import DISK_ERRNOS, write_error

#: Top-level modules of the ``train`` extra: the core package (the runtime) installs none of them.
TRAIN_EXTRA_MODULES = frozenset({
    "torch", "torchvision", "timm", "safetensors", "sklearn", "matplotlib", "pytorch_grad_cam",
    "cv2",
})


class SkinedgeGroup(TyperGroup):
    """The root command group; the one handler of user errors for every command under it.

    Every subcommand runs inside the root group's ``invoke`` (also under typer's ``CliRunner``),
    so catching here covers the ``skinedge`` entry point and tests alike.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except SkinedgeError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from exc
        except ModuleNotFoundError as exc:
            # A runtime-only install (`pip install skinedge[runtime-onnx]`) running a command
            # that trains, evaluates or exports: say which extra brings the stack.
            if (exc.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
                raise
            print_error(f"this command needs the training stack, and {exc.name} is not "
                        "installed: pip install 'skinedge[train]'")
            raise typer.Exit(MissingBackendError.exit_code) from exc
        except OSError as exc:
            # A full disk or a read-only file system, met by a writer that does not raise
            # WriteError itself (a backend's own file writer): the user's to fix, never a bug.
            # Other OSErrors (a denied read, EIO, a missing file) keep their traceback.
            if exc.errno not in DISK_ERRNOS:
                raise
            error = write_error(exc.filename, exc)
            print_error(str(error))
            raise typer.Exit(error.exit_code) from exc


app = typer.Typer(
    cls=SkinedgeGroup,
    help="skinedge: skin-lesion classifiers from a GPU server to a phone.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
# Root commands, in the order `skinedge --help` lists them, then the groups.
for module in (train, evaluate, quickstart, pipeline, deploy, retrain, serve):
    app.add_typer(module.app)
app.add_typer(data.app, name="data")
app.add_typer(ensemble.app, name="ensemble")
app.add_typer(compress.app, name="compress")
app.add_typer(experiment.app, name="experiment")
app.add_typer(gan.app, name="gan")
app.add_typer(registry.app, name="registry")
app.add_typer(federated.app, name="federated")
app.add_typer(serve.users, name="users")
app.add_typer(serve.feedback, name="feedback")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
