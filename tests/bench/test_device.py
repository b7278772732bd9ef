"""Profiling on a device: a real sshd on loopback standing in for a board, a fake adb.

The ssh tests start Debian's ``/usr/sbin/sshd`` on 127.0.0.1 (its own host key, config and
port) for a throwaway user made with ``useradd`` (removed afterwards); the "device" runs a
fresh venv of the system Python with only skinedge's torch-free runtime extras
(``runtime-onnx``, ``runtime-litert``), so they need root and ``openssh-server`` (``.ci/run``
installs it) and skip, saying why, without them. The adb test puts a fake ``adb`` on PATH that
records its argv and runs push/shell/pull on this machine; adb is unverified on a phone.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skinedge.bench.device import ADBDevice, LocalDevice, SSHDevice, parse_device
from skinedge.bench.harness import BenchSettings, run_bench
from skinedge.bench.report import write_outputs
from skinedge.errors import ConfigError
from tests.runtimes.torch_free_install import install_runtime_extras

FAST = BenchSettings(threads=1, warmup=1, iterations=5)
SYSTEM_PYTHON = Path("/usr/bin/python3")
SFTP_SERVER = "/usr/lib/openssh/sftp-server"  # scp copies over SFTP (OpenSSH >= 9)


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """An FP32 ONNX and TFLite export of the tiny checkpoint."""
    from skinedge.export import export_checkpoint

    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    out = tmp_path_factory.mktemp("device-exports")
    return {target: export_checkpoint(tiny_checkpoint, target, out_dir=out, verify_images=8).path
            for target in ("onnx", "tflite")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"{argv}: {done.stderr}"


@pytest.fixture(scope="module")
def device_root():
    """A world-readable folder for the device's venv (pytest's tmp folders are root's only)."""
    if not shutil.which("useradd") or not Path("/usr/sbin/sshd").is_file() or os.geteuid():
        pytest.skip("needs root, useradd and /usr/sbin/sshd (apt-get install openssh-server) "
                    "to start a loopback sshd for a throwaway user")
    if not SYSTEM_PYTHON.is_file():
        pytest.skip(f"no {SYSTEM_PYTHON} for the device's venv")
    root = Path(tempfile.mkdtemp(prefix="skinedge-device-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def device_python(device_root) -> Path:
    """The device's Python: a venv of the system Python with skinedge's torch-free runtime
    extras only, installed (not editable) from a copy of this checkout."""
    env_dir = device_root / "venv"
    _run(str(SYSTEM_PYTHON), "-m", "venv", str(env_dir))
    python = env_dir / "bin" / "python"
    install_runtime_extras(python, "runtime-onnx,runtime-litert")
    return python


@pytest.fixture(scope="module")
def sshd(device_root, tmp_path_factory):
    """(user, port, client key, known_hosts) of an sshd on 127.0.0.1 for a throwaway user."""
    user = f"skdev{secrets.token_hex(3)}"
    _run("useradd", "--create-home", "--shell", "/bin/sh", user)
    proc = None
    try:
        _run("usermod", "-p", "*", user)  # no password, but not locked (pubkey login works)
        home = Path(pwd.getpwnam(user).pw_dir)
        conf = tmp_path_factory.mktemp("sshd")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(conf / "host_key"))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(conf / "client_key"))
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        shutil.copy(conf / "client_key.pub", ssh_dir / "authorized_keys")
        (ssh_dir / "authorized_keys").chmod(0o600)
        _run("chown", "-R", f"{user}:", str(ssh_dir))
        port = _free_port()
        host_key = " ".join((conf / "host_key.pub").read_text().split()[:2])
        (conf / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
        (conf / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {conf / 'host_key'}\n"
            f"PidFile {conf / 'sshd.pid'}\nAuthorizedKeysFile .ssh/authorized_keys\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            f"PermitRootLogin no\nAllowUsers {user}\nSubsystem sftp {SFTP_SERVER}\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation folder
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start: {proc.stderr.read() if proc.poll() else ''}")
            time.sleep(0.1)
        yield user, port, conf / "client_key", conf / "known_hosts"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        subprocess.run(["userdel", "--remove", user], capture_output=True)


def _ssh_device(sshd, python) -> SSHDevice:
    user, port, key, known_hosts = sshd
    return SSHDevice(f"ssh://{user}@127.0.0.1:{port}", identity=key, python=str(python),
                     known_hosts=known_hosts)


def _leftovers(user: str) -> list[Path]:
    uid = pwd.getpwnam(user).pw_uid
    return [p for p in Path("/tmp").glob("skinedge-bench.*") if p.stat().st_uid == uid]


@pytest.mark.slow
def test_cli_profiles_onnx_and_tflite_over_ssh_as_rows_of_their_own(
        sshd, device_python, tiny_checkpoint, exports, tmp_path) -> None:
    from skinedge.cli.main import app

    user, port, key, known_hosts = sshd
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, [
        "bench", str(tiny_checkpoint), str(exports["onnx"]), str(exports["tflite"]),
        "--device", f"ssh://{user}@127.0.0.1:{port}", "--device-identity", str(key),
        "--device-known-hosts", str(known_hosts), "--device-python", str(device_python),
        "--iterations", "5", "--warmup", "1", "--limit", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    name = f"ssh:{user}@127.0.0.1:{port}"
    doc = json.loads((out / "bench.json").read_text())
    rows = {r["label"]: r for r in doc["rows"]}
    assert list(rows) == ["torch-fp32", "onnx-fp32", "tflite-fp32",
                          f"onnx-fp32 @ {name}", f"tflite-fp32 @ {name}"]
    for target, backend in (("onnx", "onnxruntime"), ("tflite", "litert")):
        row = rows[f"{target}-fp32 @ {name}"]
        assert row["device"] == name and row["status"] == "ok" and row["backend"] == backend
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["cold_ms"] > 0 and row["load_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["balanced_accuracy"] is None and row["flip_rate"] is None  # latency only
        assert "latency only" in row["reason"]
        assert "device" not in rows[f"{target}-fp32"]  # the local row
    # The device described itself: its own Python (the system one), no torch there.
    device = doc["devices"][name]
    assert device["python_executable"] == str(device_python)
    assert device["runtimes"]["onnxruntime"] and device["runtimes"]["torch"] is None
    assert device["cpu"]["model"] and "no image sent" in device["inputs"]
    table = (out / "bench.md").read_text()
    assert f"| onnx-fp32 @ {name} | ok |" in table and f"| tflite-fp32 @ {name} | ok |" in table
    assert f"- {name}: CPU " in table and "no image sent" in table
    assert _leftovers(user) == []  # the device's temporary folders are gone


@pytest.mark.slow
def test_no_image_goes_to_the_device_unless_asked(sshd, device_python, tiny_checkpoint, exports,
                                                  tmp_path) -> None:
    user = sshd[0]
    quiet = _ssh_device(sshd, device_python)
    result = run_bench([tiny_checkpoint, exports["onnx"]], limit=8, out_dir=tmp_path / "a",
                       settings=FAST, devices=[quiet])
    pushed = [arg for argv in quiet.commands if argv[0] == "scp" for arg in argv[1:-1]]
    assert pushed and not [a for a in pushed if a.endswith(".npy")], quiet.commands
    assert str(exports["onnx"]) in pushed
    assert not [argv for argv in quiet.commands if argv[0] == "scp" and ":" in argv[-2]]  # no pull
    assert result.rows[-1].device == quiet.name and result.rows[-1].flip_rate is None

    told = _ssh_device(sshd, device_python)
    result = run_bench([tiny_checkpoint, exports["onnx"]], limit=8, out_dir=tmp_path / "b",
                       settings=FAST, devices=[told], device_images=True)
    sent = [a for argv in told.commands if argv[0] == "scp" for a in argv if a.endswith(".npy")]
    assert any("inputs-" in a for a in sent) and any("probs.npy" in a for a in sent)
    row = result.rows[-1]
    assert row.label == f"onnx-fp32 @ {told.name}" and row.reason is None
    assert row.flip_rate == 0 and row.balanced_accuracy is not None
    np.testing.assert_allclose(result.probs[row.label], result.probs["onnx-fp32"], atol=1e-5)
    assert result.devices[told.name]["inputs"] == "8 test images sent to the device"
    write_outputs(result, tmp_path / "b")
    assert "8 test images sent to the device" in (tmp_path / "b" / "bench.md").read_text()
    assert _leftovers(user) == []


@pytest.mark.slow
def test_device_errors_name_the_device_and_what_to_install(sshd, device_python, exports) -> None:
    with pytest.raises(ConfigError, match="no Python at '/nowhere/python'"):
        _ssh_device(sshd, "/nowhere/python").describe()
    with pytest.raises(ConfigError, match=r"skinedge is not installed .*pip install"):
        _ssh_device(sshd, SYSTEM_PYTHON).describe()  # the system Python has no skinedge
    device = _ssh_device(sshd, device_python)
    device.describe()
    device.description["modules"]["ai_edge_litert"] = False  # as on a device without it
    with pytest.raises(ConfigError, match=r"pip install 'skinedge\[runtime-litert\]' on the device"):
        device.check_can_run(exports["tflite"])
    device.check_can_run(exports["onnx"])


def test_an_unreachable_host_is_a_config_error_naming_it() -> None:
    if not shutil.which("ssh"):
        pytest.skip("no ssh client")
    device = SSHDevice(f"ssh://nobody@127.0.0.1:{_free_port()}", connect_timeout=5)
    with pytest.raises(ConfigError, match=r"ssh:nobody@127\.0\.0\.1:\d+: cannot reach the device"):
        device.describe()
    assert device.commands[0][:3] == ["ssh", "-o", "BatchMode=yes"]


def test_device_specs_are_checked() -> None:
    assert parse_device("ssh://pi@board:2222").name == "ssh:pi@board:2222"
    assert parse_device("adb:R58M").name == "adb:R58M"
    for bad in ("pi@board", "ssh://", "usb:1", "ssh://pi@board:x"):
        with pytest.raises(ConfigError, match="--device"):
            parse_device(bad)
    with pytest.raises(ConfigError, match="--benchmark-model is for adb"):
        parse_device("ssh://pi@board", benchmark_model=__file__)
    assert parse_device("chromium").name == "chromium"
    with pytest.raises(ConfigError, match="--device chromium takes none of"):
        parse_device("chromium", identity="key")


def test_local_worker_times_random_inputs_without_images(exports) -> None:
    measured = LocalDevice().measure(exports["onnx"], FAST, shape=(3, 32, 32))
    assert "error" not in measured, measured
    assert measured["backend"] == "onnxruntime" and measured["p50_ms"] > 0


FAKE_ADB = """#!{python}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:1] == ["-s"]:
    args = args[2:]
here = lambda p: p.replace("/data/local/tmp", os.environ["FAKE_ADB_ROOT"])
if args[0] == "push":
    for source in args[1:-1]:
        shutil.copy(source, here(args[-1]))
elif args[0] == "pull":
    shutil.copy(here(args[1]), args[2])
elif args[0] == "shell":
    sys.exit(subprocess.run(["sh", "-c", here(args[1])]).returncode)
"""

FAKE_BENCHMARK_MODEL = """#!/bin/sh
for arg; do case $arg in --graph=*) test -f "${arg#--graph=}" || exit 3;; esac; done
echo "INFO: Running benchmark for at least 1 iterations"
echo "INFO: count=1 curr=9000"
echo "INFO: Running benchmark for at least 5 iterations and at least 0 seconds"
echo "INFO: count=5 first=1300 curr=1100 min=1050 max=1300 avg=1150 std=90"
echo "INFO: Inference timings in us: Init: 25000, First inference: 4000, Warmup (avg): 1500, Inference (avg): 1150"
echo "INFO: Memory footprint delta from the start of the tool (MB): init=3.5 overall=7.25"
echo "INFO: Overall peak memory footprint (MB) via periodic monitoring: 12.5"
"""


def test_adb_pushes_runs_benchmark_model_and_the_worker_and_cleans_up(
        exports, tmp_path, monkeypatch) -> None:
    bin_dir, phone = tmp_path / "bin", tmp_path / "phone"
    bin_dir.mkdir()
    phone.mkdir()
    (bin_dir / "adb").write_text(FAKE_ADB.format(python=sys.executable))
    tool = tmp_path / "benchmark_model"
    tool.write_text(FAKE_BENCHMARK_MODEL)
    for script in (bin_dir / "adb", tool):
        script.chmod(0o755)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_ROOT", str(phone))
    device = parse_device("adb:emulator-5554", python=sys.executable, benchmark_model=tool)
    assert isinstance(device, ADBDevice)
    assert device.describe()["runtimes"]["onnxruntime"]
    tflite = device.measure(exports["tflite"], FAST, shape=(3, 32, 32))
    assert tflite == {**tflite, "backend": "benchmark_model", "load_s": 0.025, "cold_ms": 4.0,
                      "mean_ms": 1.15, "p50_ms": None, "iterations": 5, "peak_rss_mb": 12.5,
                      "model_rss_mb": 7.25}
    onnx = device.measure(exports["onnx"], FAST, shape=(3, 32, 32))
    assert onnx["backend"] == "onnxruntime" and onnx["p50_ms"] > 0, onnx
    calls = [["adb", *json.loads(line)] for line in log.read_text().splitlines()]
    assert calls == device.commands
    assert all(argv[:3] == ["adb", "-s", "emulator-5554"] for argv in calls)
    verbs = [(argv[3], argv[4].split()[0]) if argv[3] == "shell" else (argv[3],) for argv in calls]
    assert verbs == [("shell", "command"), ("shell", sys.executable), ("shell", "getprop"),
                     ("shell", "mkdir"), ("push",), ("shell", "chmod"), ("shell", "rm"),
                    ("shell", "mkdir"), ("push",), ("shell", "env"), ("shell", "rm")]
    pushes = [argv for argv in calls if argv[3] == "push"]
    assert pushes[0][4:6] == [str(tool), str(exports["tflite"])]
    assert pushes[1][4:-1] == [str(exports["onnx"])]  # no images: none pushed
    run = next(argv[4] for argv in calls if "--graph=" in argv[-1])
    assert "--num_threads=1" in run and "--num_runs=5" in run and "--warmup_runs=1" in run
    assert all(argv[4].startswith("mkdir -p /data/local/tmp/skinedge-bench.") for argv in calls
               if argv[4].startswith("mkdir"))
    assert list(phone.iterdir()) == []  # the temporary folders are removed


def test_device_options_need_a_device(tmp_path) -> None:
    from skinedge.cli.main import app

    result = CliRunner().invoke(app, ["bench", "--device-images", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "need --device" in " ".join(result.output.split())
