"""What the command modules share: option types, the run-config loader, printing an error.

Commands do not catch errors: a :class:`skinedge.errors.SkinedgeError` that escapes one is
printed by the root group in ``skinedge.cli.main`` (``error: <message>``, its exit code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinedge.errors import ConfigError, NotFoundError

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML training config.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config value, e.g. --set optim.lr=3e-4 (repeatable).")]


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, in bold red."""
    from rich.markup import escape

    from skinedge.cli.progress import console

    # Escaped: messages quote rows like "labels.csv:3: [missing-file] ..." and install hints
    # like "pip install 'skinedge[tflite]'", which rich would otherwise take for style tags
    # and silently drop. soft_wrap: long paths are not folded mid-name, so they can be copied.
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


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


def check_run_to_resume(out: Path) -> None:
    """Refuse ``--resume`` where ``--out`` holds no run: every run writes its ``config.yaml``
    when it starts, so a folder without one (or no folder) has nothing to continue.

    Raises:
        NotFoundError: ``out`` does not exist.
        ConfigError: ``out`` is not a folder, or holds no ``config.yaml``.
    """
    fix = ("point --out at the folder of the stopped run, or start a new run there without "
           "--resume")
    if not out.exists():
        raise NotFoundError(f"--resume: the run folder {out} does not exist, so there is no run "
                            f"to resume; {fix}")
    if not out.is_dir():
        raise ConfigError(f"--resume: --out {out} is a file, not a run folder; {fix}")
    if not (out / "config.yaml").is_file():
        raise ConfigError(f"--resume: {out} holds no run to resume (no config.yaml, which every "
                          f"run writes when it starts); {fix}")


def check_count(value: int | None, option: str, minimum: int, meaning: str) -> None:
    """Refuse a number option below ``minimum`` (None, an unset option, passes).

    Args:
        value: What the user gave.
        option: The option, for the message (``--verify-images``).
        minimum: The smallest value that means something.
        meaning: What the number counts and what its smallest value does, for the message.

    Raises:
        ConfigError: ``value < minimum``; the message names the option and the valid range.
    """
    if value is not None and value < minimum:
        raise ConfigError(f"{option} {value}: {meaning}; give {option} {minimum} or more")


def load_run_config(out: Path, config: Path | None, overrides: list[str] | None, resume: bool,
                    shortcuts: dict[str, object], config_class=None):
    """The config of a training-like command: ``--config``, or the run's own ``config.yaml``
    when resuming without one; then ``--set`` overrides; then options that are shortcuts for
    a key (``{"data.manifest": --manifest}``, unset ones skipped)."""
    from skinedge.train.config import TrainConfig, load_train_config

    if resume:
        check_run_to_resume(out)
    items = [*(overrides or []), *(f"{k}={v}" for k, v in shortcuts.items() if v is not None)]
    if resume and config is None:  # check_run_to_resume found it
        config = out / "config.yaml"
    return load_train_config(config, items, config_class=config_class or TrainConfig)
