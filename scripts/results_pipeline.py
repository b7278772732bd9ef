"""The `skinedge pipeline` section of docs/RESULTS.md, read from a pipeline run folder.

Used by scripts/results.py (``--update --pipeline RUN``); never edit by hand. Render it after
a rerun of the same command with nothing changed: the table then shows each stage's wall time
when it ran and, beside it, what the cached rerun took.
"""

from __future__ import annotations

import json
from pathlib import Path


def render_pipeline(run: Path) -> list[str]:
    """Stages and their wall times, the gate, the bench rows and the evaluation."""
    report = json.loads((run / "pipeline.json").read_text())
    stages = report["stages"]
    bench = _stage(run, "bench")
    bench_json = json.loads(Path(bench["files"]["json"]).read_text())
    evaluate = _stage(run, "evaluate") if (run / "evaluate").exists() else None
    versions = report["versions"]
    cached = all(s["status"] == "cached" for s in stages)
    gate = report["gate"]
    lines = [
        f"## Pipeline: {run.name}", "",
        f"- command: `{report['command']}`",
        f"- this run: {report['started']} to {report['finished']}; "
        + ("every stage came from the cache" if cached else
           f"{sum(s['status'] == 'ran' for s in stages)} of {len(stages)} stages ran"),
        f"- machine: {bench_json['cpu_summary']}",
        "- versions: " + ", ".join(f"{k} {versions[k]}" for k in
                                   ("skinedge", "python", "torch", "timm", "onnxruntime",
                                    "openvino", "nncf", "executorch") if k in versions),
        f"- report: `{run / 'report.html'}`",
        *(["- **settings changed on the command line** (`--set`, in the command above): these "
            "are not the packaged config's figures"] if "--set" in report["command"] else []),
        "",
        "| stage | wall time when it ran (s) | this run (s) | this run |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {s['name']} | {s['seconds']:.1f} | {s['this_run_seconds']:.1f} | "
              f"{s['status']} |" for s in stages]
    total = sum(s["seconds"] or 0 for s in stages)
    rerun = sum(s["this_run_seconds"] or 0 for s in stages)
    lines += [f"| **all** | **{total:.0f}** ({total / 60:.1f} min) | **{rerun:.1f}** | |", "",
              "Gate: " + ("none" if gate is None else "passed" if gate["passed"] else
                          "failed: " + "; ".join(gate["failed"]))]
    lines += [f"- {name} failed: {reason}" for name, reason in report["failures"].items()]
    lines += ["", f"Bench ({bench_json['test'].get('images', '?')} images of "
                  f"{bench_json['test'].get('source', 'the test split')}, "
                  f"{bench_json['settings'].get('iterations')} timed runs, batch 1):", "",
              "| artifact | status | p50 (ms) | size (MB) | bal. acc. | top-1 flips |",
              "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['label']} | {r['status']} | {_f(r['p50_ms'], '.2f')} | "
              f"{_f(r['size_mb'], '.1f')} | {_f(r['balanced_accuracy'], '.3f')} | "
              f"{_f(r['flip_rate'], '.3f')} |" for r in bench["rows"]]
    if evaluate:
        lines += ["", f"Every model on the {evaluate['split']} split:", "",
                  "| model | synthetic images | bal. acc. | 95% interval | mel AUC |",
                  "|---|---|---:|---|---:|"]
        for name, m in evaluate["models"].items():
            metrics = m["metrics"]
            ci = (metrics.get("confidence_intervals") or {}).get("balanced_accuracy")
            synthetic = ("yes" if m["synthetic"] else "no") if name.startswith("member-") \
                else "—"
            lines.append(f"| {name} | {synthetic} | "
                         f"{metrics['balanced_accuracy']:.3f} | "
                         + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + " | "
                         f"{_f(metrics.get('melanoma_auc'), '.3f')} |")
    return lines + [""]


def _stage(run: Path, name: str) -> dict:
    return json.loads((run / name / "stage.json").read_text())


def _f(value, spec: str) -> str:
    return "" if value is None else format(value, spec)
