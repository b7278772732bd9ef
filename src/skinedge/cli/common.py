"""What the command modules share: option types, the run-config loader, printing an error.

Commands do not catch errors: a :class:`skinedge.errors.SkinedgeError` that escapes one is
printed by the root group in ``skinedge.cli.main`` (``error: <message>``, its exit code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinedge.errors import ConfigError

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML training config.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config value, e.g. --set optim.lr=3e-4 (repeatable).")]


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, in bold red."""
    from rich.markup import escape

    from skinedge.cli.progress import console

    # Escaped: messages quote rows like "labels.csv:3: [missing-file] ..." and install hints
    # like "pip install 'skinedge[tflite]'", which rich would otherwise take for style tags
    # and silently drop.
    console.print(f"[bold red]error:[/] {escape(message)}")


def print_log(message: str, style: str | None = None) -> None:
    """A library's progress line on stderr, as written (rich markup escaped, so an install hint
    like ``pip install 'skinedge[tflite]'`` keeps its brackets), in ``style`` (e.g. ``dim``)."""
    from rich.markup import escape

    from skinedge.cli.progress import console

    console.print(escape(message), style=style)


def parse_int_list(value: str, option: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``.

    Raises:
        ConfigError: an item is not a whole number (names ``option``).
    """
    try:
        return [int(item) for item in value.split(",")]
    except ValueError:
        raise ConfigError(f"{option} {value!r}: write whole numbers separated by commas, "
                          "e.g. 1,2") from None


def load_run_config(out: Path, config: Path | None, overrides: list[str] | None, resume: bool,
                    shortcuts: dict[str, object], config_class=None):
    """The config of a training-like command: ``--config``, or the run's own ``config.yaml``
    when resuming without one; then ``--set`` overrides; then options that are shortcuts for
    a key (``{"data.manifest": --manifest}``, unset ones skipped)."""
    from skinedge.train.config import TrainConfig, load_train_config

    items = [*(overrides or []), *(f"{k}={v}" for k, v in shortcuts.items() if v is not None)]
    if resume and config is None and (out / "config.yaml").is_file():
        config = out / "config.yaml"
    return load_train_config(config, items, config_class=config_class or TrainConfig)
