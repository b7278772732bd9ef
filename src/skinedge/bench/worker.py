"""One model's measurements, in a process of its own (``python -m skinedge.bench.worker``).

A fresh process per model keeps peak memory, thread pools and CPU pinning from leaking between
runtimes. Prints one JSON object on stdout; writes the probabilities for every input to
``--probs``.

Torch-free, so that it also runs on a device (``skinedge bench --device``): there the inputs
are either the preprocessed test images (``--inputs``, sent only when the user asks) or random
ones made on the device (``--random N --shape 3,S,S``, latency only). ``--describe`` prints the
machine instead: its CPU (:func:`skinedge.utils.cpu.cpu_info`), OS, Python and the versions of
the runtime packages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MB. Not ``ru_maxrss``: Linux keeps
    that across exec, so a worker would report the peak of the parent it was forked from (it is
    the fallback on a device without ``/proc``: macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def describe() -> dict:
    """This machine for a device report: CPU, OS, Python and the runtime packages' versions
    (``None`` for one not installed), and which runtime modules can be imported."""
    import importlib.metadata
    import importlib.util
    import platform

    from skinedge.runtimes.registry import builtin_runtimes
    from skinedge.utils.cpu import cpu_info

    modules = sorted({m for cls in builtin_runtimes().values() for m in cls.requires})
    versions = {}
    for name in ("skinedge", "numpy", *(m.partition(".")[0].replace("_", "-") for m in modules)):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu_info(), "os": platform.platform(), "python": platform.python_version(),
            "python_executable": sys.executable, "runtimes": versions,
            "modules": {m: importlib.util.find_spec(m.partition(".")[0]) is not None
                        for m in modules}}


def measure(model: str, inputs: str | None, probs_out: str | None, *, threads: int | None,
            cpus: list[int] | None, warmup: int, iterations: int, random: int | None = None,
            shape: tuple[int, ...] | None = None) -> dict:
    """Time ``model``; ``inputs`` (.npy, (N, 3, S, S)) or ``random`` inputs of ``shape``
    (3, S, S), made here; probabilities of every input are saved to ``probs_out`` if given."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    from skinedge.runtimes import load_runtime

    if inputs is not None:
        x = np.load(inputs, mmap_mode="r")
    else:
        x = np.random.default_rng(0).standard_normal((random, *shape), dtype=np.float32)
    rss_before = _status_mb("VmRSS")
    started = time.perf_counter()
    # Not hashed again inside the timed load: run_bench verified every model it was given, and
    # the ones it exported itself were verified against the checkpoint by the export.
    runtime = load_runtime(model, threads=threads, check_files=False)
    load_s = time.perf_counter() - started
    sample = [np.ascontiguousarray(x[i:i + 1]) for i in range(min(len(x), 16))]
    started = time.perf_counter()
    runtime.predict_array(sample[0])
    cold_ms = (time.perf_counter() - started) * 1e3
    for i in range(warmup):
        runtime.predict_array(sample[i % len(sample)])
    latencies = []
    for i in range(iterations):
        one = sample[i % len(sample)]
        started = time.perf_counter()
        runtime.predict_array(one)
        latencies.append((time.perf_counter() - started) * 1e3)
    peak_mb = _status_mb("VmHWM")  # before the full pass over the test set
    if probs_out is not None:
        probs = np.concatenate([runtime.predict_array(np.ascontiguousarray(x[i:i + 32]))
                                for i in range(0, len(x), 32)])
        np.save(probs_out, probs)
    lat = np.asarray(latencies)
    return {
        "label": runtime.label, "backend": runtime.backend, "threads": threads,
        "cpus": sorted(os.sched_getaffinity(0)), "execution": runtime.execution(),
        "load_s": load_s, "cold_ms": cold_ms,
        "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
        "iterations": iterations, "warmup": warmup,
        "peak_rss_mb": peak_mb, "model_rss_mb": peak_mb - rss_before,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--describe", action="store_true",
                        help="print this machine (CPU, OS, Python, runtime versions) and exit")
    parser.add_argument("--model")
    parser.add_argument("--inputs", help=".npy of preprocessed images (N,3,S,S)")
    parser.add_argument("--random", type=int, help="N random inputs instead of --inputs")
    parser.add_argument("--shape", type=lambda s: tuple(int(c) for c in s.split(",")),
                        help="shape of one random input, e.g. 3,224,224")
    parser.add_argument("--probs", help="where to save the probabilities (.npy)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cpus", type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args(argv)
    if args.describe:
        print(json.dumps(describe()))
        return 0
    if not args.model or (args.inputs is None) == (args.random is None) or (
            args.random is not None and not args.shape):
        parser.error("give --model and either --inputs or --random N --shape 3,S,S")
    try:
        result = measure(args.model, args.inputs, args.probs, threads=args.threads, cpus=args.cpus,
                         warmup=args.warmup, iterations=args.iterations, random=args.random,
                         shape=args.shape)
    except Exception as exc:  # reported as the row's status by the harness
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
