"""One handler for user errors: a ``SkinedgeError`` from any command becomes ``error: <message>``
with its exit code; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import skinedge.cli
from skinedge.cli.main import app
from skinedge.errors import (
    ConfigError,
    DataError,
    MissingBackendError,
    ModelError,
    NotFoundError,
    SkinedgeError,
    UnsupportedHereError,
)

runner = CliRunner()


def text(result) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture
def split_raises(monkeypatch):
    """Make the library call behind `skinedge data split` raise the given exception."""
    import skinedge.data.splitting

    def install(exc: BaseException) -> None:
        def split_folder(*args, **kwargs):
            raise exc

        monkeypatch.setattr(skinedge.data.splitting, "split_folder", split_folder)

    return install


def split(tmp_path: Path):
    return runner.invoke(app, ["data", "split", str(tmp_path), "--out", str(tmp_path / "m.json")])


class _CustomError(SkinedgeError):
    exit_code = 7


@pytest.mark.parametrize(("error", "code"), [
    (ConfigError, 2), (DataError, 2), (ModelError, 2), (NotFoundError, 2),
    (MissingBackendError, 2), (UnsupportedHereError, 2), (_CustomError, 7),
])
def test_a_user_error_from_the_library_is_its_message_and_exit_code(
        split_raises, tmp_path, error, code) -> None:
    # Brackets survive: rich would take "[tflite]" for a style tag.
    message = f"{error.__name__} in labels.csv:3: pip install 'skinedge[tflite]'"
    split_raises(error(message))
    result = split(tmp_path)
    assert result.exit_code == code, result.output
    assert f"error: {message}" in text(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("rows"), ValueError("internal"),
                                   FileNotFoundError("/nowhere"), TypeError("bad call")])
def test_an_internal_error_propagates_as_a_bug(split_raises, tmp_path, error) -> None:
    split_raises(error)
    result = split(tmp_path)
    assert result.exception is error  # not turned into a message and exit 2
    assert result.exit_code == 1
    assert "error:" not in result.output


def test_a_runtime_only_install_is_told_which_extra_trains(split_raises, tmp_path) -> None:
    """Without the `train` extra, a command that needs torch names the extra to install."""
    split_raises(ModuleNotFoundError("No module named 'torch'", name="torch"))
    result = split(tmp_path)
    assert result.exit_code == MissingBackendError.exit_code, result.output
    assert "pip install 'skinedge[train]'" in text(result) and "torch" in text(result)


def test_another_missing_module_is_still_a_bug(split_raises, tmp_path) -> None:
    error = ModuleNotFoundError("No module named 'skinedge.nowhere'", name="skinedge.nowhere")
    split_raises(error)
    assert split(tmp_path).exception is error


def test_a_real_user_error_through_the_entry_point(tmp_path) -> None:
    """The installed command (standalone mode, not CliRunner): message on stderr, exit 2."""
    missing = tmp_path / "absent"
    done = subprocess.run(
        [sys.executable, "-m", "skinedge.cli.main", "data", "split", str(missing),
         "--out", str(tmp_path / "m.json")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: dataset folder {missing} does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_config_value_names_the_file_and_exits_2(tmp_path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("- a list\n- not a mapping\n")
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert f"error: {config}: a config is a mapping" in text(result)


NOT_UTF8 = "image,lesion_id,dx\nISIC_1,HAM_1,n\xe9vus\n".encode("latin-1")


@pytest.mark.parametrize("case", ["labels", "config", "manifest", "gate", "profile"])
def test_unreadable_user_files_are_named_not_tracebacks(case, tmp_path) -> None:
    """Files a user names that are not UTF-8 text, or do not exist: a message and exit 2."""
    bad = tmp_path / "bad.bin"
    bad.write_bytes(NOT_UTF8)
    args = {
        "labels": ["data", "split", str(tmp_path), "--out", str(tmp_path / "m.json")],
        "config": ["train", "--out", str(tmp_path / "run"), "--config", str(bad)],
        "manifest": ["train", "--out", str(tmp_path / "run"), "--manifest", str(bad)],
        "gate": ["bench", str(tmp_path), "--gate", str(bad), "--out", str(tmp_path / "b")],
        "profile": ["bench", str(tmp_path), "--profile", f"{tmp_path / 'absent.yaml'}:x",
                    "--out", str(tmp_path / "b")],
    }[case]
    if case == "labels":
        (tmp_path / "labels.csv").write_bytes(NOT_UTF8)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    named = tmp_path / ("labels.csv" if case == "labels" else
                        "absent.yaml" if case == "profile" else "bad.bin")
    assert "error:" in text(result) and str(named) in text(result)


def test_no_command_module_imports_the_root_app() -> None:
    """Groups are joined in cli/main.py with add_typer; none registers itself into main."""
    offenders = []
    for file in Path(skinedge.cli.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if "skinedge.cli.main" in names:
                offenders.append(f"{file.name}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize(("extra", "hint"), [([], True),
                                             (["--set", "distill.teacher=t", "--set", "optim.lr=x"],
                                              False)])
def test_the_teacher_hint_only_for_a_missing_teacher(tmp_path, extra, hint) -> None:
    """The packaged config's file name says "distill": only the missing field earns the hint."""
    from importlib import resources

    config = resources.files("skinedge.configs") / "ham10000-distill-lite0-cpu.yaml"
    result = runner.invoke(app, ["compress", "distill", "--out", str(tmp_path / "d"),
                                 "--config", str(config), *extra])
    assert result.exit_code == 2, result.output
    assert ("name the teacher with --teacher" in text(result)) is hint
