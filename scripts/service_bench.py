"""Benchmark the clinician service against the bare runtime, then SIGKILL it mid-load.

Usage:
    python scripts/service_bench.py [--seconds 60] [--clients 32] [--threads N] \
        [--model ARTIFACT] [--data ../shared/data] [--work runs/service-bench] \
        [--out docs/RESULTS.md]

In one run on this machine:

(a) the bare runtime: ``load_runtime(model, threads=--threads)`` (default: the runtime's own,
    every core), one caller thread, each image decoded from its file's bytes (``load_rgb``)
    and predicted alone (``predict([image])``), as the service does per upload; the service
    runs one inference at a time (``ServedModel.predict`` holds a lock), so one caller is what
    it can use. Measured before and again after (b) and (c): the machine is shared, and the
    mean of the two is what (b) is compared with;
(b) the service: ``skinedge serve`` (one worker) as its own process on 127.0.0.1 with the same
    model, ``--clients`` concurrent clients (one account each) posting the same real ISIC
    images and reviewing every case for ``--seconds`` (:mod:`skinedge.service.loadtest`);
    throughput in cases/s against (a), latencies, errors, CPU per case;
(c) the server SIGKILLed (its process group) mid-load and started again on the same data folder
    while the clients carry on; then every acknowledged case and review of (b) and (c) is read
    back, every stored image decoded, and SQLite's ``PRAGMA integrity_check`` run;
(d) where a case's CPU goes: each library step the service takes per case timed alone, against
    the server's CPU per case under load (from /proc), and the throughput the cores allow.

The model, when ``--model`` is not given: EfficientNet-Lite0 at 224 px with the packaged
ImageNet backbone and an untrained 7-class head (no training: the compute is a real model's,
the predictions are meaningless), exported to ONNX FP32 and verified on 16 images; cached in
``--work``. The Markdown section goes to ``--out`` between ``<!-- section: service-bench -->``
markers (replaced, or appended), and the raw figures to ``WORK/service-bench.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from results import replace_section  # scripts/ is on sys.path when run as a script

from skinedge.service.models import inference_threads
from skinedge.service.settings import ServeSettings
from skinedge.utils.io import package_versions

SECTION = "service-bench"
TARGET_RATIO = 0.70
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
VERSIONS = ("fastapi", "uvicorn", "starlette", "onnxruntime", "sqlalchemy", "httpx", "skinedge")


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# The model.

def make_model(work: Path, data_root: Path) -> Path:
    """EfficientNet-Lite0 224 px (ImageNet backbone, untrained head) as ONNX FP32; cached."""
    artifact = work / "export" / "tf_efficientnet_lite0_fp32.onnx"
    if artifact.is_file():
        log(f"model: {artifact} (cached)")
        return artifact
    from skinedge.data import PreprocessConfig, get_vocabulary, make_manifest, read_dataset
    from skinedge.export import export_checkpoint
    from skinedge.models import DataInfo, ModelCard, create_classifier, save_checkpoint

    log("model: building tf_efficientnet_lite0 at 224 px (ImageNet backbone, untrained head)")
    vocab = get_vocabulary("isic2018")
    model, provenance = create_classifier("tf_efficientnet_lite0", vocab.num_classes,
                                          pretrained="imagenet")
    manifest_path = work / "manifest.json"
    manifest = make_manifest(read_dataset(data_root))
    manifest.save(manifest_path)
    card = ModelCard(
        architecture="tf_efficientnet_lite0", classes=list(vocab.codes),
        class_names=vocab.names, vocabulary=vocab.name,
        preprocess=PreprocessConfig(input_size=224), pretrained=provenance,
        data=DataInfo(manifest=str(manifest_path), split_hash=manifest.split_hash,
                      layout=manifest.layout),
        training={"note": "not trained: ImageNet backbone with a fresh head, made by "
                          "scripts/service_bench.py to time the service"},
        versions=package_versions(),
        intended_use="Service benchmark only: an untrained head, its predictions mean nothing.")
    checkpoint = save_checkpoint(work / "checkpoint", model.eval(), card)
    result = export_checkpoint(checkpoint, "onnx", precision="fp32", out_dir=work / "export",
                               manifest=manifest_path, verify_images=16, log=log)
    return result.path


def load_images(data_root: Path, limit: int | None) -> list[tuple[str, bytes]]:
    folder = data_root / "images"
    files = sorted(folder.glob("*.jpg"))[:limit]
    if not files:
        raise SystemExit(f"no JPEG images in {folder}: give --data the folder holding "
                         "ham10000-sample/ (or set SKINEDGE_DATA)")
    return [(f.name, f.read_bytes()) for f in files]


# (a) The bare runtime.

def measure_bare(model: Path, images: list[tuple[str, bytes]], seconds: float,
                 threads: int | None) -> dict:
    """Decode + predict, one image at a time in one thread, for ``seconds``; then predict alone
    on already decoded images for a third of that (what decoding costs)."""
    from skinedge.data.images import load_rgb
    from skinedge.runtimes import load_runtime

    runtime = load_runtime(model, threads=threads)
    for name, data in images[:5]:  # warm-up
        runtime.predict([load_rgb(data, name=name)])
    latencies, start, n, cpu = [], time.perf_counter(), 0, time.process_time()
    while time.perf_counter() - start < seconds:
        name, data = images[n % len(images)]
        began = time.perf_counter()
        runtime.predict([load_rgb(data, name=name)])
        latencies.append((time.perf_counter() - began) * 1000)
        n += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    decoded = [load_rgb(data, name=name) for name, data in images[:32]]
    predict_only, start, m = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 3:
        began = time.perf_counter()
        runtime.predict([decoded[m % len(decoded)]])
        predict_only.append((time.perf_counter() - began) * 1000)
        m += 1
    label = runtime.label
    del runtime
    return {"label": label, "images": n, "seconds": elapsed, "images_per_s": n / elapsed,
            "p50_ms": quantile(latencies, 0.5), "p95_ms": quantile(latencies, 0.95),
            "cpu_ms_per_image": cpu / n * 1000, "load_average": os.getloadavg(),
            "predict_only_per_s": m / (time.perf_counter() - start),
            "predict_only_p50_ms": quantile(predict_only, 0.5)}


def quantile(values: list[float], q: float) -> float:
    """Nearest rank, as :meth:`LoadResult.percentile`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# (d) Where a case's CPU goes.

def measure_steps(model: Path, images: list[tuple[str, bytes]], work: Path,
                  threads: int | None, count: int = 200) -> dict[str, float]:
    """CPU ms of each library step the service takes per case (upload + review), each timed
    alone in this process, one thread, on a scratch store: what is left of the server's CPU per
    case under load is the HTTP stack and the contention between its threads."""
    from skinedge.data.images import load_rgb_oriented, metadata_free
    from skinedge.service.app import open_store
    from skinedge.service.models import ServedModel
    from skinedge.service.settings import ServeSettings

    folder = work / "steps"
    shutil.rmtree(folder, ignore_errors=True)
    settings = ServeSettings(model=model, data_dir=folder, threads=threads)
    store = open_store(settings)
    token = store.add_user("steps")
    served = ServedModel(settings)
    sample = [images[i % len(images)] for i in range(count)]
    try:
        actor = store.actor_for_token(token, "127.0.0.1")
        pictures = [load_rgb_oriented(data, name=name)[0] for name, data in sample[:5]]
        served.predict(pictures[0])  # warm-up
        steps: dict[str, float] = {}

        def timed(name: str, step, calls_per_case: int = 1) -> list:
            began, out = time.process_time(), [step(i) for i in range(count)]
            steps[name] = (time.process_time() - began) / count * 1000 * calls_per_case
            return out

        read = timed("decode and check the upload (`load_rgb_oriented`)",
                     lambda i: load_rgb_oriented(sample[i][1], name=sample[i][0]))
        pictures = [picture for picture, _ in read]
        predictions = timed("inference with preprocessing (`ServedModel.predict`)",
                            lambda i: served.predict(pictures[i]))
        kept = timed("drop the metadata (`metadata_free`: the JPEG's own bytes, or a PNG)",
                     lambda i: metadata_free(sample[i][1], pictures[i], read[i][1]))
        timed("token lookup, twice (`Store.actor_for_token`)",
              lambda i: store.actor_for_token(token, "127.0.0.1"), calls_per_case=2)
        cases = timed("store the case: encrypt, write, audit, commit (`Store.create_case`)",
                      lambda i: store.create_case(
                          actor, kept[i][0], pictures[i].width, pictures[i].height,
                          predictions[i], patient_ref=f"steps-{i}", body_site="back",
                          media_type=kept[i][1]))
        timed("store the review (`Store.review_case`)",
              lambda i: store.review_case(actor, cases[i].id, "verify"))
        return steps
    finally:
        store.close()


# (b) and (c): the service.

class Server:
    """``skinedge serve`` as its own process group on 127.0.0.1 (killable as a whole)."""

    def __init__(self, model: Path, data_dir: Path, port: int, log_file: Path,
                 threads: int | None = None):
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = log_file
        self.command = [sys.executable, "-m", "skinedge.cli.main", "serve", "--model",
                        str(model), "--data-dir", str(data_dir), "--host", "127.0.0.1",
                        "--port", str(port), "--workers", "1"]
        # 32 clients stay far under this; the default (120 per token per minute) would not.
        self.env = {**os.environ, "SKINEDGE_RATE_LIMIT_PER_MINUTE": "10000000"}
        self.env.pop("SKINEDGE_THREADS", None)
        if threads is not None:
            self.env["SKINEDGE_THREADS"] = str(threads)
        self.process: subprocess.Popen | None = None

    def start(self) -> float:
        """Start and wait for /readyz; the seconds that took."""
        import httpx

        began = time.monotonic()
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)
        while time.monotonic() - began < 300:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}; see "
                                 f"{self.log_file}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise SystemExit(f"the server was not ready after 300 s; see {self.log_file}")

    def kill(self) -> int:
        os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def add_accounts(model: Path, data_dir: Path, count: int) -> list[str]:
    from skinedge.service.app import open_store
    from skinedge.service.settings import ServeSettings

    store = open_store(ServeSettings(model=model, data_dir=data_dir))
    try:
        return [store.add_user(f"clinician-{i:02d}") for i in range(count)]
    finally:
        store.close()


def store_check(model: Path, data_dir: Path) -> tuple[str, list[str]]:
    from skinedge.service.app import open_store
    from skinedge.service.settings import ServeSettings

    store = open_store(ServeSettings(model=model, data_dir=data_dir))
    try:
        return store.integrity_check(), store.check_files()
    finally:
        store.close()


def measure_service(args, model: Path, images: list[tuple[str, bytes]]) -> dict:
    from skinedge.service.loadtest import LoadPlan, check_acknowledged, run_load

    data_dir = args.work / "service"
    shutil.rmtree(data_dir, ignore_errors=True)
    tokens = add_accounts(model, data_dir, args.clients)
    server = Server(model, data_dir, free_port(), args.work / "server.log", args.threads)
    server.log_file.unlink(missing_ok=True)
    payloads = [data for _, data in images]
    try:
        startup = server.start()
        log(f"service: ready in {startup:.1f} s at {server.url}; warm-up")
        run_load(LoadPlan(url=server.url, tokens=tokens, images=payloads[:8], clients=2,
                          seconds=3))
        log(f"service: {args.clients} clients for {args.seconds:g} s")
        cpu_before, client_before = server.cpu_seconds(), time.process_time()
        steady = run_load(LoadPlan(url=server.url, tokens=tokens, images=payloads,
                                   clients=args.clients, seconds=args.seconds))
        server_cpu = server.cpu_seconds() - cpu_before
        client_cpu = time.process_time() - client_before
        log(f"service: {len(steady.cases)} cases, {steady.cases_per_s:.2f}/s, "
            f"errors {dict(steady.errors)}")

        kill_at = args.kill_seconds * 0.4
        crash: dict = {"kill_at_s": kill_at}

        def kill_and_restart() -> None:
            crash["returncode"] = server.kill()
            crash["restart_s"] = server.start()

        log(f"kill: {args.clients} clients for {args.kill_seconds:g} s, SIGKILL at "
            f"{kill_at:.1f} s, then restart")
        killer = threading.Timer(kill_at, kill_and_restart)
        killer.start()
        try:
            crashed = run_load(LoadPlan(url=server.url, tokens=tokens, images=payloads,
                                        clients=args.clients, seconds=args.kill_seconds))
        finally:
            killer.join()
        everything = steady.cases + crashed.cases
        log(f"kill: reading back {len(everything)} acknowledged cases")
        check = check_acknowledged(server.url, tokens, everything)
    finally:
        server.stop()
    integrity, unreadable = store_check(model, data_dir)
    restarted_at = kill_at + crash.get("restart_s", 0)
    crash.update({
        "cases_before_kill": sum(c.acknowledged_at < kill_at for c in crashed.cases),
        "cases_after_restart": sum(c.acknowledged_at > restarted_at for c in crashed.cases),
        "load": crashed.summary(), "http_errors": dict(crashed.http_errors),
        "check": asdict(check), "integrity_check": integrity,
        "unreadable_files": unreadable,
    })
    cases = max(1, len(steady.cases))
    return {"startup_s": startup, "steady": steady.summary(),
            "reviews": steady.reviews_acknowledged, "server_cpu_s": server_cpu,
            "client_cpu_s": client_cpu, "server_cpu_ms_per_case": server_cpu / cases * 1000,
            "client_cpu_ms_per_case": client_cpu / cases * 1000, "crash": crash}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The report.

def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model_name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                       if line.startswith("model name")), platform.processor() or "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines()
                      if line.startswith("flags")), []))
    return {"cpu": model_name, "cores": os.cpu_count(),
            "isa": {flag: flag in flags for flag in ISA_FLAGS},
            "load_average": os.getloadavg(), "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": {name: version for name, version in
                         package_versions(extra=VERSIONS).items() if name in VERSIONS}}


def render(doc: dict) -> list[str]:
    m, svc = doc["machine"], doc["service"]
    before, after = doc["bare"]
    bare_rate = (before["images_per_s"] + after["images_per_s"]) / 2
    steady, crash = svc["steady"], svc["crash"]
    ratio = steady["cases_per_s"] / bare_rate
    up, rv = steady["latency_ms"]["upload"], steady["latency_ms"]["review"]
    errors = sum(steady["errors"].values())
    isa = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["isa"].items())
    check, load = crash["check"], crash["load"]
    transport = {k: v for k, v in load["errors"].items() if k not in crash["http_errors"]}
    settings = doc["settings"]
    threads = settings["threads"] or "default"
    loads = ", ".join(f"{x:.2f}" for x in m["load_average"])
    lines = [
        "## Clinician service under load, and killed mid-load (issue 14)", "",
        f"- command: `{doc['command']}`, finished {doc['finished']}",
        f"- machine: {m['cpu']}, {m['cores']} logical cores ({isa}); shared with other work "
        f"(load average {loads} when the run began), and the load client runs on the same "
        "cores as the server",
        f"- versions: python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- model: `{doc['model']}` ({before['label']}; {doc['model_note']})",
        f"- bare runtime: `load_runtime(model, threads={settings['threads']})` ({threads} "
        "intra-op threads), one caller thread, `load_rgb(bytes)` + `predict([image])` per image "
        f"over the same {len(doc['images'])} real ISIC JPEGs, {settings['bare_seconds']:g} s "
        "before and again after the service phases; the service's rate is compared with the "
        "mean of the two. One caller, because the service runs one inference at a time "
        "(`ServedModel.predict` holds a lock). Predict alone (images decoded beforehand): "
        f"{before['predict_only_per_s']:.1f} images/s, p50 {before['predict_only_p50_ms']:.1f} ms.",
        f"- service: `skinedge serve --workers 1` ({settings['service_threads']} inference "
        "threads: its default is half the cores, the rest serve the other requests) as its own "
        f"process on 127.0.0.1; {settings['clients']} concurrent clients (one account and one "
        f"connection each) for {settings['seconds']:g} s, each posting a real image with "
        "patient_ref and body_site, then reviewing the case (verify and correct in turn); a "
        "case counts once its upload is acknowledged (201). Rate limit raised "
        "(`SKINEDGE_RATE_LIMIT_PER_MINUTE`) so that no request is refused for it.",
        "",
        "| | bare runtime (before / after) | service |",
        "|---|---:|---:|",
        f"| images (cases) per second | {before['images_per_s']:.2f} / "
        f"{after['images_per_s']:.2f} | {steady['cases_per_s']:.2f} |",
        f"| service / bare (mean) | | **{ratio:.2f}** (target >= {TARGET_RATIO:.2f}: "
        f"{'met' if ratio >= TARGET_RATIO else 'missed'}) |",
        f"| images (cases) in the run | {before['images']} / {after['images']} | "
        f"{steady['cases']} |",
        f"| per image p50 / p95 ms (service: the upload request, queueing included) | "
        f"{before['p50_ms']:.1f} / {before['p95_ms']:.1f} | {up['p50']:.1f} / {up['p95']:.1f} |",
        f"| review request p50 / p95 ms | | {rv['p50']:.1f} / {rv['p95']:.1f} |",
        f"| reviews acknowledged | | {steady['reviews']} |",
        f"| CPU ms per image (case, with its review) | {before['cpu_ms_per_image']:.1f} / "
        f"{after['cpu_ms_per_image']:.1f} | server {svc['server_cpu_ms_per_case']:.1f}, "
        f"load client {svc['client_cpu_ms_per_case']:.1f} |",
        f"| errors | | {errors}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in steady['errors'].items())})" if errors else "")
        + " |",
        "",
        f"Killed mid-load: {settings['clients']} clients for {settings['kill_seconds']:g} s; at "
        f"{crash['kill_at_s']:.1f} s the server's process group got SIGKILL (exit "
        f"{crash['returncode']}) and was started again on the same data folder (ready in "
        f"{crash['restart_s']:.1f} s) while the clients carried on.",
        "",
        f"- acknowledged in this phase: {load['cases']} cases ({crash['cases_before_kill']} "
        f"before the kill, {crash['cases_after_restart']} after the restart) and "
        f"{load['reviews']} reviews; requests cut or refused while the server was down: "
        + (", ".join(f"{k} {v}" for k, v in transport.items()) or "none")
        + f"; error answers (an HTTP status): {sum(crash['http_errors'].values())}",
        f"- read back after the restart with the owners' tokens, every acknowledged case of both "
        f"phases: {check['cases_found']} of {check['cases']} cases with the acknowledged "
        f"status, {check['reviews_found']} of {check['reviews']} reviews with the acknowledged "
        f"action and label, {check['images_decoded']} of {check['cases']} stored images "
        f"decoded at the case's size; problems: {len(check['problems'])}",
        f"- SQLite `PRAGMA integrity_check`: {crash['integrity_check']}; stored files that do "
        f"not decrypt: {len(crash['unreadable_files'])}",
        "",
    ]
    lines += render_cpu(doc, bare_rate, ratio)
    return lines


def render_cpu(doc: dict, bare_rate: float, ratio: float) -> list[str]:
    """Where a case's CPU goes, and the throughput the cores allow at that cost."""
    svc, steps = doc["service"], doc["steps"]
    cores = doc["machine"]["cores"]
    bare_cpu = sum(b["cpu_ms_per_image"] for b in doc["bare"]) / len(doc["bare"])
    per_case = svc["server_cpu_ms_per_case"] + svc["client_cpu_ms_per_case"]
    rest = svc["server_cpu_ms_per_case"] - sum(steps.values())
    lines = [
        "Where a case's CPU goes (upload and review; each step timed alone in one thread, "
        "CPU ms per case; the rest of the server's CPU under load is the HTTP stack, multipart "
        "parsing, JSON and the threads' contention):", "",
        "| step | CPU ms per case |", "|---|---:|",
        *[f"| {name} | {ms:.1f} |" for name, ms in steps.items()],
        f"| rest: uvicorn, Starlette/FastAPI, pydantic, threads (server under load minus the "
        f"steps) | {rest:.1f} |",
        f"| **server, under load** | **{svc['server_cpu_ms_per_case']:.1f}** |",
        f"| load client (same machine) | {svc['client_cpu_ms_per_case']:.1f} |",
        f"| bare runtime, per image (decode + predict) | {bare_cpu:.1f} |",
        "",
        f"{cores} cores give {cores * 1000} CPU ms per second: at {per_case:.1f} ms per case "
        f"(server and client) they allow at most {cores * 1000 / per_case:.1f} cases/s, "
        f"against the {svc['steady']['cases_per_s']:.2f} measured (other work shares the "
        f"machine). The bare runtime spends {bare_cpu:.1f} CPU ms per image on the same cores: "
        f"while they are the limit, the service keeps about {bare_cpu / per_case:.2f} of its "
        f"throughput (measured {ratio:.2f}); keeping {TARGET_RATIO:.0%} would need the server "
        f"and client together to spend at most {bare_cpu / TARGET_RATIO:.1f} CPU ms per case.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load phase (b)")
    parser.add_argument("--kill-seconds", type=float, default=30.0,
                        help="phase (c): SIGKILL at 40%% of it, restart, clients carry on")
    parser.add_argument("--bare-seconds", type=float, default=20.0,
                        help="phase (a), run before and again after the service")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="inference threads of the "
                        "bare runtime and the server (default: the runtime's default)")
    parser.add_argument("--model", type=Path, help="an exported artifact (default: make "
                        "EfficientNet-Lite0 224 px ONNX FP32 in --work)")
    parser.add_argument("--data", type=Path, help="folder holding ham10000-sample/ (default "
                        "SKINEDGE_DATA or ../shared/data)")
    parser.add_argument("--images", type=int, default=None, help="use the first N images")
    parser.add_argument("--work", type=Path, default=Path("runs/service-bench"))
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    args = parser.parse_args(argv)
    shared = args.data or Path(os.environ.get("SKINEDGE_DATA", "../shared/data"))
    data_root = shared / "ham10000-sample" if (shared / "ham10000-sample").is_dir() else shared
    args.work.mkdir(parents=True, exist_ok=True)
    me = shlex.join(["python", "scripts/service_bench.py",
                     *(sys.argv[1:] if argv is None else argv)])
    doc = {"command": me, "machine": machine(),
           "settings": {"seconds": args.seconds, "kill_seconds": args.kill_seconds,
                        "bare_seconds": args.bare_seconds, "clients": args.clients,
                        "threads": args.threads,
                        "service_threads": inference_threads(ServeSettings(threads=args.threads))}}
    model = args.model or make_model(args.work, data_root)
    doc["model"] = str(model)
    doc["model_note"] = ("given with --model" if args.model else
                         "tf_efficientnet_lite0 at 224 px, ImageNet backbone, untrained head, "
                         "ONNX FP32, made by this script")
    images = load_images(data_root, args.images)
    doc["images"] = [name for name, _ in images]
    doc["bare"] = [bare(model, images, args)]
    doc["service"] = measure_service(args, model, images)
    doc["bare"].append(bare(model, images, args))
    log("steps: each step of a case alone")
    doc["steps"] = measure_steps(model, images, args.work, args.threads)
    doc["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    (args.work / "service-bench.json").write_text(json.dumps(doc, indent=2, default=str))
    lines = render(doc)
    print("\n".join(lines))
    text = args.out.read_text() if args.out.is_file() else "# Measured results\n"
    args.out.write_text(replace_section(text, SECTION, [
        f"Section generated by `{me}` on {doc['finished']}; do not edit by hand.", "",
        *lines]))
    log(f"wrote the {SECTION} section of {args.out} and {args.work / 'service-bench.json'}")
    check = doc["service"]["crash"]["check"]
    ok = (sum(doc["service"]["steady"]["errors"].values()) == 0 and not check["problems"]
          and doc["service"]["crash"]["integrity_check"] == "ok")
    return 0 if ok else 1


def bare(model: Path, images: list[tuple[str, bytes]], args) -> dict:
    log(f"bare runtime: {args.bare_seconds:g} s over {len(images)} images")
    result = measure_bare(model, images, args.bare_seconds, args.threads)
    log(f"bare runtime: {result['images_per_s']:.2f} images/s")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
