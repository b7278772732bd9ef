"""One model's measurements, in a process of its own (``python -m skinedge.bench.worker``).

A fresh process per model keeps peak memory, thread pools and CPU pinning from leaking between
runtimes. Prints one JSON object on stdout; writes the probabilities for every input to
``--probs``.
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
    that across exec, so a worker would report the peak of the parent it was forked from."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(model: str, inputs: str, probs_out: str, *, threads: int | None, cpus: list[int] | None,
            warmup: int, iterations: int) -> dict:
    if cpus:
        os.sched_setaffinity(0, cpus)
    from skinedge.runtimes import load_runtime

    x = np.load(inputs, mmap_mode="r")
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
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True, help=".npy of preprocessed images (N,3,S,S)")
    parser.add_argument("--probs", required=True, help="where to save the probabilities (.npy)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--cpus", type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        result = measure(args.model, args.inputs, args.probs, threads=args.threads, cpus=args.cpus,
                         warmup=args.warmup, iterations=args.iterations)
    except Exception as exc:  # reported as the row's status by the harness
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
