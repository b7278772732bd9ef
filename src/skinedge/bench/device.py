"""Where a model is measured: this machine, a board over ssh, or a phone over adb.

A :class:`Device` describes itself (CPU, OS, Python, runtime versions: the worker's
``--describe``) and measures one artifact: the artifact's files go to a temporary folder on the
device, the torch-free worker (``python -m skinedge.bench.worker``, installed there with
``pip install 'skinedge[runtime-onnx]'`` or ``runtime-litert``) times it, its JSON comes back
and the folder is removed. Test images go to a device only when the caller passes them
(``inputs``); otherwise the worker makes random inputs of the model's shape on the device and
only latency and memory are measured.

:class:`SSHDevice` uses the system ``ssh`` and ``scp`` (``BatchMode=yes``: keys only, never a
password; host keys checked as the user's ssh config says, or against a given known_hosts
file). :class:`ADBDevice` uses ``adb push``/``adb shell``/``adb pull``, and TFLite's
``benchmark_model`` binary for ``.tflite`` files when one is given (it measures latency and
memory only). The adb path is tested against a fake ``adb``, not on a phone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from skinedge.errors import ConfigError

if TYPE_CHECKING:
    from skinedge.bench.harness import BenchSettings

#: Name prefix of the temporary folder made on a device (and the only kind removed there).
TMP_PREFIX = "skinedge-bench."
#: Worker errors that mean the device lacks a package (raised, not a failed row).
_MISSING = "MissingBackendError: "
_INSTALL = ("pip install 'skinedge[runtime-onnx]' (ONNX) or 'skinedge[runtime-litert]' (TFLite) "
            "or 'skinedge[runtime-openvino]' there")


def worker_args(model: str, settings: BenchSettings, *, inputs: str | None = None,
                shape: tuple[int, ...] | None = None, random: int = 16,
                probs: str | None = None) -> list[str]:
    """The worker's arguments (after ``python -m skinedge.bench.worker``): ``inputs`` (.npy),
    or ``random`` inputs of ``shape`` (3, S, S) made where it runs."""
    args = ["--model", model, "--warmup", str(settings.warmup),
            "--iterations", str(settings.iterations)]
    if inputs is not None:
        args += ["--inputs", inputs]
    else:
        args += ["--random", str(random), "--shape", ",".join(map(str, shape))]
    if probs is not None:
        args += ["--probs", probs]
    if settings.threads:
        args += ["--threads", str(settings.threads)]
    if settings.cpus:
        args += ["--cpus", ",".join(map(str, settings.cpus))]
    return args


def parse_worker_output(stdout: str, stderr: str, returncode: int) -> dict:
    """The worker's JSON line, or ``{"error": ...}`` with the last line of its stderr."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker exited {returncode}: {tail}"}
    return json.loads(lines[-1])


def profiled_on_devices(model: Path) -> str | None:
    """Why ``model`` is not measured on devices (None when it is): only artifacts of the
    torch-free runtimes (``runtime-*`` extras) go to a device."""
    from skinedge.runtimes.registry import runtime_class

    cls = runtime_class(model)
    if cls.extra.startswith("runtime-"):
        return None
    return (f"{cls.backend} models are not profiled on devices (only the torch-free runtimes: "
            "ONNX Runtime, OpenVINO, LiteRT)")


class Device(ABC):
    """A machine that runs the worker. ``name``: ``local``, ``ssh:user@host``, ``adb:SERIAL``."""

    name: str = "local"

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """``cpu`` (:func:`~skinedge.utils.cpu.cpu_info` there), ``os``, ``python``,
        ``runtimes`` (package -> version or None).

        Raises:
            ConfigError: the device cannot be reached, or has no usable Python/skinedge.
        """

    @abstractmethod
    def measure(self, model: Path, settings: BenchSettings, *, inputs: Path | None = None,
                shape: tuple[int, ...] | None = None, probs_out: Path | None = None) -> dict:
        """The worker's figures for ``model`` (``{"error": ...}`` when it failed there).

        Args:
            inputs: Preprocessed images (N, 3, S, S) .npy to send; None: random inputs of
                ``shape`` (3, S, S) are made on the device.
            probs_out: Where the probabilities come back to (only with ``inputs``).

        Raises:
            ConfigError: the device lacks the runtime package (the message says what to
                install there), or cannot be reached.
        """

    def check_can_run(self, model: Path) -> None:  # noqa: B027 - optional hook
        """Raise ConfigError when the device (as described) cannot run ``model``'s runtime."""

    def cannot_run(self, model: Path) -> str | None:
        """Why ``model`` is not measured on this kind of device (its row is skipped with it)."""
        return profiled_on_devices(model)


class LocalDevice(Device):
    """This machine, with this Python: each model in a worker process of its own."""

    def describe(self) -> dict[str, Any]:
        from skinedge.bench.worker import describe

        return describe()

    def measure(self, model: Path, settings: BenchSettings, *, inputs: Path | None = None,
                shape: tuple[int, ...] | None = None, probs_out: Path | None = None) -> dict:
        command = [sys.executable, "-m", "skinedge.bench.worker",
                   *worker_args(str(model), settings, inputs=None if inputs is None else
                                str(inputs), shape=shape,
                                probs=None if probs_out is None else str(probs_out))]
        env = dict(os.environ)
        if settings.threads:
            env["OMP_NUM_THREADS"] = str(settings.threads)  # libraries that read only this
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env,
                                  timeout=settings.timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {settings.timeout_s:.0f} s"}
        return parse_worker_output(done.stdout, done.stderr, done.returncode)


class RemoteDevice(Device):
    """A device reached by a command-line tool; every command it ran is in ``commands``."""

    tool: str = ""
    copy_hint: str = ""  # added to a failed copy's message

    def __init__(self, python: str = "python3"):
        self.python = python
        self.commands: list[list[str]] = []
        self.description: dict[str, Any] | None = None

    # What a subclass provides: the argv of a shell command, a push and a pull.
    @abstractmethod
    def _shell_argv(self, command: str) -> list[str]: ...

    @abstractmethod
    def _push_argv(self, paths: list[Path], folder: str) -> list[str]: ...

    @abstractmethod
    def _pull_argv(self, remote: str, local: Path) -> list[str]: ...

    @abstractmethod
    def _unreachable(self, done: subprocess.CompletedProcess) -> bool:
        """Whether a failed command failed to reach the device (not the command there)."""

    def _hint(self) -> str:
        return ""

    def _call(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        self.commands.append(argv)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise ConfigError(f"{self.name}: `{argv[0]}` is not installed on this machine; "
                              f"install it to profile on the device") from exc
        except subprocess.TimeoutExpired as exc:
            raise ConfigError(f"{self.name}: `{shlex.join(argv[:3])} ...` did not finish in "
                              f"{timeout:.0f} s{self._hint()}") from exc
        if done.returncode != 0 and self._unreachable(done):
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"{self.name}: cannot reach the device ({tail}){self._hint()}")
        return done

    def _shell(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self._call(self._shell_argv(command), timeout)

    def _checked(self, argv: list[str], what: str) -> None:
        done = self._call(argv)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"{self.name}: {what} failed ({tail}){self.copy_hint}")

    def _make_tmp(self) -> str:
        done = self._shell(f'mktemp -d "${{TMPDIR:-/tmp}}/{TMP_PREFIX}XXXXXX"')
        folder = done.stdout.strip()
        if done.returncode != 0 or TMP_PREFIX not in folder:
            raise ConfigError(f"{self.name}: cannot make a temporary folder on the device "
                              f"({done.stderr.strip() or folder})")
        return folder

    def _remove_tmp(self, folder: str) -> None:
        if TMP_PREFIX in folder:  # never anything else
            self._shell(f"rm -rf -- {shlex.quote(folder)}")

    def _worker(self, args: list[str], timeout: float,
                threads: int | None = None) -> subprocess.CompletedProcess:
        """Run the worker there; raises ConfigError for a missing Python or skinedge."""
        env = ["env", f"OMP_NUM_THREADS={threads}"] if threads else []  # libraries reading only it
        done = self._shell(shlex.join([*env, self.python, "-m", "skinedge.bench.worker", *args]),
                           timeout)
        if done.returncode != 0 and not done.stdout.lstrip().startswith("{"):
            err = done.stderr
            if "No module named skinedge" in err or "No module named 'skinedge'" in err:
                raise ConfigError(f"{self.name}: skinedge is not installed for {self.python} on "
                                  f"the device: {_INSTALL}, or pass --device-python with the "
                                  "python of a venv that has it")
            if done.returncode == 127 or "not found" in err or "No such file" in err:
                raise ConfigError(f"{self.name}: no Python at {self.python!r} on the device: "
                                  "install python3 there, or pass --device-python PATH")
        return done

    def describe(self) -> dict[str, Any]:
        done = self._worker(["--describe"], timeout=120)
        found = parse_worker_output(done.stdout, done.stderr, done.returncode)
        if "error" in found:
            raise ConfigError(f"{self.name}: the worker could not describe the device: "
                              f"{found['error']}")
        self.description = found
        return found

    def check_can_run(self, model: Path) -> None:
        from skinedge.runtimes.registry import runtime_class

        cls = runtime_class(model)
        modules = (self.description or {}).get("modules") or {}
        for module in cls.requires:
            if modules.get(module) is False:
                raise ConfigError(f"{self.name}: {module} is not installed for {self.python} on "
                                  f"the device, so {model.name} cannot run there: pip install "
                                  f"'skinedge[{cls.extra}]' on the device")

    def measure(self, model: Path, settings: BenchSettings, *, inputs: Path | None = None,
                shape: tuple[int, ...] | None = None, probs_out: Path | None = None) -> dict:
        from skinedge.runtimes.registry import runtime_class

        files = runtime_class(model).artifact_files(model)
        folder = self._make_tmp()
        try:
            sent = [*files, *([inputs] if inputs is not None else [])]
            self._checked(self._push_argv(sent, folder), "copying the model to the device")
            remote_probs = f"{folder}/probs.npy" if inputs is not None and probs_out else None
            args = worker_args(f"{folder}/{model.name}", settings,
                               inputs=None if inputs is None else f"{folder}/{inputs.name}",
                               shape=shape, probs=remote_probs)
            done = self._worker(args, timeout=settings.timeout_s, threads=settings.threads)
            measured = parse_worker_output(done.stdout, done.stderr, done.returncode)
            error = measured.get("error", "")
            if error.startswith(_MISSING):
                raise ConfigError(f"{self.name}: {error[len(_MISSING):]} (on the device, for "
                                  f"{self.python})")
            if remote_probs and "error" not in measured:
                self._checked(self._pull_argv(remote_probs, probs_out),
                              "copying the probabilities back")
            return measured
        finally:
            self._remove_tmp(folder)


def _last_line(done: subprocess.CompletedProcess) -> str:
    return (done.stderr.strip().splitlines() or done.stdout.strip().splitlines()
            or ["no output"])[-1]


class SSHDevice(RemoteDevice):
    """A board reached over ssh (``ssh://user@host[:port]``), with the system ``ssh``/``scp``.

    Args:
        url: ``ssh://user@host[:port]`` (the user defaults to ssh's).
        identity: Private key file (``ssh -i``); default: ssh's own keys and agent.
        python: The device's Python with skinedge's runtime extras (a venv's ``bin/python``).
        known_hosts: A known_hosts file to check the host key against, instead of the user's.
    """

    tool = "ssh"
    copy_hint = (". scp copies over SFTP: the device's sshd_config needs a `Subsystem sftp` "
                 "line, and the device user must be able to write to its TMPDIR (or /tmp)")

    def __init__(self, url: str, *, identity: Path | str | None = None, python: str = "python3",
                 known_hosts: Path | str | None = None, connect_timeout: int = 15):
        super().__init__(python)
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"--device {url!r}: bad port; write ssh://USER@HOST[:PORT]") from exc
        if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"--device {url!r}: write ssh://USER@HOST[:PORT]")
        for what, path in (("--device-identity", identity), ("--device-known-hosts", known_hosts)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{what} {path}: no such file")
        self.user, self.host, self.port = parts.username, parts.hostname, port
        self.identity, self.known_hosts = identity, known_hosts
        self.connect_timeout = connect_timeout
        self.name = ("ssh:" + (f"{self.user}@" if self.user else "") + self.host
                     + (f":{port}" if port else ""))

    def _options(self, port_flag: str) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.identity:
            options += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.port:
            options += [port_flag, str(self.port)]
        return options

    def _target(self, scp: bool = False) -> str:
        host = f"[{self.host}]" if scp and ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def _shell_argv(self, command: str) -> list[str]:
        return ["ssh", *self._options("-p"), self._target(), command]

    def _push_argv(self, paths: list[Path], folder: str) -> list[str]:
        return ["scp", "-q", *self._options("-P"), *map(str, paths),
                f"{self._target(scp=True)}:{folder}/"]

    def _pull_argv(self, remote: str, local: Path) -> list[str]:
        return ["scp", "-q", *self._options("-P"), f"{self._target(scp=True)}:{remote}", str(local)]

    def _unreachable(self, done: subprocess.CompletedProcess) -> bool:
        return done.returncode == 255 and done.args[0] == "ssh" or (
            done.args[0] == "scp" and "lost connection" in done.stderr)

    def _hint(self) -> str:
        return (". Check the host, port and user; that the key (--device-identity) is in the "
                "device user's authorized_keys (passwords are never used); and that the host key "
                "is known (ssh there once by hand, or pass --device-known-hosts FILE)")


class ADBDevice(RemoteDevice):
    """An Android device over adb (``adb:SERIAL``, or ``adb`` for the only one attached).

    ``.tflite`` files are timed by TFLite's ``benchmark_model`` binary when ``benchmark_model``
    is given (latency and memory only: it makes its own random inputs); everything else by the
    Python worker, when the device has ``python`` with skinedge (Termux, a board's Android).
    Unverified on a phone: tested with a fake ``adb`` that runs the commands locally.
    """

    tool = "adb"

    def __init__(self, spec: str, *, python: str = "python3",
                 benchmark_model: Path | str | None = None,
                 tmp_root: str = "/data/local/tmp"):
        super().__init__(python)
        scheme, _, serial = spec.partition(":")
        if scheme != "adb":
            raise ConfigError(f"--device {spec!r}: write adb:SERIAL (see `adb devices`)")
        if benchmark_model is not None and not Path(benchmark_model).is_file():
            raise ConfigError(f"--benchmark-model {benchmark_model}: no such file (TFLite's "
                              "benchmark_model binary for the device's CPU)")
        self.serial, self.benchmark_model, self.tmp_root = serial, benchmark_model, tmp_root
        self.name = f"adb:{serial}" if serial else "adb"
        self.has_python = False

    def _adb(self) -> list[str]:
        return ["adb", "-s", self.serial] if self.serial else ["adb"]

    def _shell_argv(self, command: str) -> list[str]:
        return [*self._adb(), "shell", command]

    def _push_argv(self, paths: list[Path], folder: str) -> list[str]:
        return [*self._adb(), "push", *map(str, paths), f"{folder}/"]

    def _pull_argv(self, remote: str, local: Path) -> list[str]:
        return [*self._adb(), "pull", remote, str(local)]

    def _unreachable(self, done: subprocess.CompletedProcess) -> bool:
        text = done.stderr.lower()
        return any(s in text for s in ("no devices", "not found", "offline", "unauthorized")) \
            and "device" in text

    def _hint(self) -> str:
        return ". Check `adb devices` lists it as `device` (USB debugging allowed)"

    def _make_tmp(self) -> str:
        folder = f"{self.tmp_root}/{TMP_PREFIX}{secrets.token_hex(4)}"
        self._checked(self._shell_argv(f"mkdir -p {shlex.quote(folder)}"),
                      "making a temporary folder on the device")
        return folder

    def describe(self) -> dict[str, Any]:
        from skinedge.utils.cpu import parse_cpuinfo

        found = self._shell(f"command -v {shlex.quote(self.python)}")
        self.has_python = found.returncode == 0 and bool(found.stdout.strip())
        if self.has_python:
            info = super().describe()
        elif self.benchmark_model is None:
            raise ConfigError(f"{self.name}: no Python at {self.python!r} on the device and no "
                              "--benchmark-model: pass TFLite's benchmark_model binary for "
                              "the device, or --device-python with a Python that has skinedge")
        else:
            cpu = self._shell("cat /proc/cpuinfo").stdout
            info = {"cpu": {**parse_cpuinfo(cpu), "arch": self._shell("uname -m").stdout.strip()},
                    "python": None, "runtimes": {"benchmark_model": str(self.benchmark_model)}}
        prop = self._shell("getprop ro.product.model; getprop ro.build.version.release; "
                           "uname -sr").stdout.split("\n")
        android = [line.strip() for line in prop if line.strip()]
        info["os"] = " / ".join(android) or info.get("os")
        self.description = info
        return info

    def check_can_run(self, model: Path) -> None:
        if model.suffix == ".tflite" and self.benchmark_model is not None:
            return
        if not self.has_python:
            raise ConfigError(f"{self.name}: {model.name} needs the Python worker and the "
                              f"device has no {self.python!r}; pass --device-python, or (for "
                              ".tflite) --benchmark-model")
        super().check_can_run(model)

    def measure(self, model: Path, settings: BenchSettings, *, inputs: Path | None = None,
                shape: tuple[int, ...] | None = None, probs_out: Path | None = None) -> dict:
        if model.suffix != ".tflite" or self.benchmark_model is None:
            return super().measure(model, settings, inputs=inputs, shape=shape,
                                   probs_out=probs_out)
        folder = self._make_tmp()
        try:
            tool = f"{folder}/{Path(self.benchmark_model).name}"
            self._checked(self._push_argv([Path(self.benchmark_model), model], folder),
                          "copying benchmark_model and the model to the device")
            command = [tool, f"--graph={folder}/{model.name}",
                       f"--num_threads={settings.threads or -1}",
                       f"--warmup_runs={settings.warmup}", "--warmup_min_secs=0",
                       f"--num_runs={settings.iterations}", "--min_secs=0"]
            done = self._shell(f"chmod +x {shlex.quote(tool)} && {shlex.join(command)}",
                               settings.timeout_s)
            if done.returncode != 0:
                return {"error": f"benchmark_model exited {done.returncode}: {_last_line(done)}"}
            return parse_benchmark_model(done.stdout + "\n" + done.stderr, settings)
        finally:
            self._remove_tmp(folder)


_NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"


def parse_benchmark_model(text: str, settings: BenchSettings) -> dict:
    """The worker's fields from TFLite ``benchmark_model``'s log: ``Inference timings in us:
    Init, First inference, Warmup (avg), Inference (avg)``, the last ``count=... avg=...``
    statistics line (``median``/``p95``/``p99`` when it prints them), and the memory lines.
    Percentiles it does not print stay None (``mean_ms`` is its average)."""
    timings = re.search(r"Inference timings in us: Init: " + _NUMBER + r", First inference: "
                        + _NUMBER + r", Warmup \(avg\): " + _NUMBER + r", Inference \(avg\): "
                        + _NUMBER, text)
    if not timings:
        tail = (text.strip().splitlines() or ["no output"])[-1]
        return {"error": f"benchmark_model printed no 'Inference timings' line: {tail}"}
    init_us, first_us, _, avg_us = map(float, timings.groups())
    stats: dict[str, float] = {}
    for line in text.splitlines():
        if "count=" in line and "avg=" in line:
            stats = {k: float(v) for k, v in re.findall(r"(\w+)=" + _NUMBER, line)}
    delta = re.search(r"Memory footprint delta from the start of the tool \(MB\): init="
                      + _NUMBER + r" overall=" + _NUMBER, text)
    peak = re.search(r"peak memory footprint \(MB\)[^:\n]*: " + _NUMBER, text, re.IGNORECASE)

    def ms(key: str) -> float | None:
        return stats[key] / 1e3 if key in stats else None

    return {"backend": "benchmark_model", "threads": settings.threads, "cpus": None,
            "execution": {"tool": "benchmark_model"}, "load_s": init_us / 1e6,
            "cold_ms": first_us / 1e3, "p50_ms": ms("median"), "p95_ms": ms("p95"),
            "p99_ms": ms("p99"), "mean_ms": avg_us / 1e3,
            "iterations": int(stats.get("count", settings.iterations)),
            "warmup": settings.warmup,
            "peak_rss_mb": float(peak.group(1)) if peak else None,
            "model_rss_mb": float(delta.group(2)) if delta else None}


def parse_device(spec: str, *, identity: Path | str | None = None, python: str | None = None,
                 known_hosts: Path | str | None = None,
                 benchmark_model: Path | str | None = None) -> Device:
    """``ssh://user@host[:port]`` -> :class:`SSHDevice`; ``adb:SERIAL`` -> :class:`ADBDevice`;
    ``chromium`` -> :class:`~skinedge.bench.browser.BrowserDevice`.

    Raises:
        ConfigError: another spelling, or an option that the device kind does not take.
    """
    python = python or "python3"
    if spec.startswith("ssh://"):
        if benchmark_model is not None:
            raise ConfigError("--benchmark-model is for adb devices (TFLite's Android binary); "
                              f"{spec} runs the Python worker")
        return SSHDevice(spec, identity=identity, python=python, known_hosts=known_hosts)
    if spec == "adb" or spec.startswith("adb:"):
        if identity is not None or known_hosts is not None:
            raise ConfigError("--device-identity and --device-known-hosts are for ssh devices, "
                              f"not {spec}")
        return ADBDevice(spec, python=python, benchmark_model=benchmark_model)
    if spec == "chromium":
        if identity or known_hosts or benchmark_model or python != "python3":
            raise ConfigError("--device chromium takes none of --device-identity, "
                              "--device-known-hosts, --device-python, --benchmark-model")
        from skinedge.bench.browser import BrowserDevice

        return BrowserDevice()
    raise ConfigError(f"--device {spec!r}: write ssh://USER@HOST[:PORT] (a board with Python "
                      "and skinedge's runtime extras), adb:SERIAL (an Android device) or "
                      "chromium (web exports in headless Chromium here)")
