"""Benchmark outputs: terminal table, JSON, Markdown, JUnit XML and a latency/accuracy chart."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from skinedge.bench.gates import GateCheck
from skinedge.bench.harness import BenchResult
from skinedge.bench.rows import CONFIDENT_MARGIN, BenchRow
from skinedge.utils.cpu import cpu_summary, int8_dot_words
from skinedge.utils.io import (
    atomic_write_texts,
    package_versions,
)

COLUMNS = [  # (BenchRow field, header, format)
    ("label", "model", "{}"), ("status", "status", "{}"), ("size_mb", "size MB", "{:.1f}"),
    ("load_s", "load s", "{:.2f}"), ("cold_ms", "cold ms", "{:.1f}"),
    ("p50_ms", "p50 ms", "{:.2f}"), ("p95_ms", "p95 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"), ("model_rss_mb", "model RSS MB", "{:.0f}"),
    ("threads", "threads", "{}"),
    ("accuracy", "acc", "{:.3f}"), ("balanced_accuracy", "bal. acc", "{:.3f}"),
    ("melanoma_auc", "mel AUC", "{:.3f}"), ("balanced_accuracy_drop", "Δ bal. acc", "{:+.3f}"),
    ("melanoma_auc_drop", "Δ mel AUC", "{:+.3f}"), ("flip_rate", "flips", "{:.1%}"),
    ("confident_flip_rate", "confident flips", "{:.1%}"),
]


def cell(row: BenchRow, key: str, fmt: str) -> str:
    value = getattr(row, key)
    if value is None:
        return "-"
    if key.endswith("_drop"):
        value = 0.0 - value  # the change from the reference (negative = worse), never "-0.000"
    return fmt.format(value)


def table_rows(result: BenchResult) -> list[list[str]]:
    return [[cell(row, key, fmt) for key, _, fmt in COLUMNS] for row in result.rows]


def describe_execution(execution: dict | None) -> str:
    """``provider=CPUExecutionProvider``; ``compute_layer_precisions=u8:30 f32:2``; ``-``."""
    def shown(value) -> str:
        if isinstance(value, dict):
            return " ".join(f"{k}:{v}" for k, v in value.items())
        if isinstance(value, list | tuple):
            return " ".join(map(str, value))
        return str(value)

    return ", ".join(f"{key}={shown(value)}" for key, value in (execution or {}).items()) or "-"


def _target_precision(label: str) -> tuple[str, str | None]:
    """``openvino-int8-qac@m.xml`` -> (``openvino``, ``int8``); a device row keeps its device
    with the target (``web-int8 @ chromium`` -> (``web @ chromium``, ``int8``)), so it is
    compared with the FP32 row measured on the same device."""
    name, _, device = label.partition(" @ ")
    target, _, rest = name.partition("@")[0].partition("-")
    return target + (f" @ {device}" if device else ""), rest.partition("-")[0] or None


def int8_slower_notes(result: BenchResult) -> list[str]:
    """A note for every measured INT8 row whose p50 latency is above the FP32 row of the same
    target in this run, saying whether this CPU has an int8 dot product (VNNI/AMX, ARM dotprod)
    and what the runtime chose. Gates are not affected: this says why, it does not judge."""
    fp32: dict[str, BenchRow] = {}
    for row in result.rows:
        target, precision = _target_precision(row.label)
        if precision == "fp32" and row.p50_ms is not None:
            fp32.setdefault(target, row)
    notes = []
    for row in result.rows:
        target, precision = _target_precision(row.label)
        base = fp32.get(target)
        if precision != "int8" or row.p50_ms is None or base is None:
            continue
        if row.p50_ms <= base.p50_ms:
            continue
        cpu = result.cpu or {}
        if " @ " in row.label:  # the host's CPU says nothing of the device's
            why = ("measured on the device, whose CPU and runtime are in its Devices line; "
                   "its runtime's int8 kernels are slower there")
        elif cpu.get("int8_dot") is False:
            why = f"this CPU has {int8_dot_words(cpu)}"
        elif cpu.get("int8_dot"):
            why = (f"although this CPU has an {int8_dot_words(cpu)}: check what the runtime "
                   f"chose ({describe_execution(row.execution)})")
        else:
            why = "this CPU's int8 dot product support is unknown"
        notes.append(f"{row.label}: INT8 slower than FP32 (p50 {row.p50_ms:.2f} ms vs "
                     f"{base.p50_ms:.2f} ms for {base.label}): {why}")
    return notes


def describe_device(name: str, info: dict) -> str:
    """``ssh:pi@board: CPU Cortex-A72, aarch64, ...; OS Linux-6.6...; Python 3.11.2; onnxruntime
    1.20.1, ai-edge-litert 1.2.0; 14 test images sent to the device``."""
    versions = ", ".join(f"{k} {v}" for k, v in (info.get("runtimes") or {}).items()
                         if v is not None)
    parts = [f"CPU {cpu_summary(info['cpu'])}" if info.get("cpu") else "CPU unknown",
             f"OS {info.get('os') or 'unknown'}",
             f"Python {info.get('python') or 'none'}",
             versions or "no runtime versions", info.get("inputs") or ""]
    return f"{name}: " + "; ".join(p for p in parts if p)


def print_table(result: BenchResult, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"skinedge bench on {result.test['source']} "
                        f"({result.test['images']} images)")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="left" if header in ("model", "status") else "right")
    for row, cells in zip(result.rows, table_rows(result)):
        style = None if row.status == "ok" else ("yellow" if row.status == "skipped" else "red")
        table.add_row(*cells, style=style)
    console.print(table)
    console.print(f"CPU: {escape(cpu_summary(result.cpu))}")
    for name, info in result.devices.items():
        console.print(f"device {escape(describe_device(name, info))}")
    for row in result.rows:
        if row.reason:
            # Escaped: reasons quote install hints like pip install 'skinedge[tflite]'.
            console.print(f"[bold]{escape(row.label)}[/]: {row.status}: {escape(row.reason)}")
    for note in int8_slower_notes(result):
        console.print(f"[yellow]note[/]: {escape(note)}")


def render_markdown(result: BenchResult, checks: list[GateCheck] | None = None,
                    command: str | None = None) -> str:
    s = result.settings
    lines = [f"Machine: {cpu_summary(result.cpu)}. Figures are for this CPU only: compare "
             "them with a run on another machine only when both name the same CPU.", "",
             f"Test set: `{result.test['source']}`, {result.test['images']} images"
             + (f" (first {result.test['limited_to']} only)" if result.test.get("limited_to") else "")
             + f". Reference: `{result.reference}` (the source checkpoint in PyTorch). "
             f"Threads: {s.threads or 'default'}"
             + (f", pinned to CPUs {s.cpus}" if s.cpus else "")
             + (f" (profile {s.profile})" if s.profile else "")
             + f"; latency at batch 1 over {s.iterations} runs after {s.warmup} warm-up runs, "
               "model call only (no JPEG decoding or resizing). Peak RSS is the worker process "
               "(Python, NumPy and torch included); model RSS is what loading and running the "
               "model added. Δ columns: change from the reference; flips: share of test images "
               "whose top-1 class differs from it; confident flips: the same among the images "
               f"it answers with a top-1 probability at least {CONFIDENT_MARGIN} above its "
               "second (a flip elsewhere is a near-tie moving).", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    header = [h for _, h, _ in COLUMNS]
    lines += ["| " + " | ".join(header) + " |",
              "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
              for cells in table_rows(result)]
    if result.devices:
        lines += ["", "Devices (rows `LABEL @ DEVICE` were measured there, over ssh or adb; a row "
                  "without scores ran on random inputs, latency only):",
                  *(f"- {describe_device(name, info)}" for name, info in result.devices.items())]
    reasons = [f"- **{r.label}** ({r.status}): {r.reason}" for r in result.rows if r.reason]
    if reasons:
        lines += ["", *reasons]
    if notes := int8_slower_notes(result):
        lines += ["", *(f"- Note: {note}" for note in notes)]
    executions = [f"- **{r.label}** ({r.backend}): {describe_execution(r.execution)}"
                  for r in result.rows if r.measured]
    if executions:
        lines += ["", "Execution each runtime chose on this CPU:", *executions]
    if checks:
        failed = [c for c in checks if not c.passed]
        lines += ["", f"Gate: {len(checks) - len(failed)}/{len(checks)} checks passed"
                  + ("." if not failed else ":")]
        lines += [f"- FAILED {c.message}" for c in failed]
    return "\n".join(lines) + "\n"


def render_junit(result: BenchResult, checks: list[GateCheck]) -> str:
    """The gate's checks as a JUnit XML test suite (one test case per check)."""
    suite = ET.Element("testsuite", name="skinedge-bench", tests=str(len(checks)),
                       failures=str(sum(not c.passed for c in checks)))
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=f"bench.{c.label}", name=c.check)
        if not c.passed:
            ET.SubElement(case, "failure", message=c.message).text = c.message
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def render_plot(result: BenchResult) -> bytes | None:
    """Balanced accuracy against p50 latency, one labelled point per model that ran, as PNG
    bytes; None when no model ran."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in result.rows if r.p50_ms and r.balanced_accuracy is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in points:
        color = "tab:green" if r.status == "ok" else "tab:red"
        ax.scatter(r.p50_ms, r.balanced_accuracy, color=color)
        ax.annotate(r.label, (r.p50_ms, r.balanced_accuracy), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ref = next(r for r in result.rows if r.label == result.reference)
    if ref.balanced_accuracy is not None:
        ax.axhline(ref.balanced_accuracy, color="grey", linestyle="--", linewidth=1,
                   label="reference (PyTorch FP32)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch 1, ms ({result.settings.threads or 'default'} threads, log)")
    ax.set_ylabel("balanced accuracy")
    ax.set_title(f"{result.test['source']} ({result.test['images']} images)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()


def backend_packages() -> tuple[str, ...]:
    """The packages every registered export target and runtime needs (``litert-torch``,
    ``onnxruntime``, ...), whose versions a benchmark records: a new backend is included by
    registering it."""
    from skinedge.export import TARGETS
    from skinedge.runtimes import RUNTIMES

    modules = [*(m for t in TARGETS.values() for m in (*t.requires, *t.int8_requires)),
               *(m for r in RUNTIMES.values() for m in r.requires)]
    return tuple(dict.fromkeys(m.partition(".")[0].replace("_", "-") for m in modules))


def write_outputs(result: BenchResult, out: Path, checks: list[GateCheck] | None = None,
                  command: str | None = None) -> dict[str, Path]:
    """bench.json, bench.md, junit.xml (when gated) and bench.png into ``out``, as one set: every
    file is rendered and written to a temporary first, and renamed into place only when all
    are written, so a failed write (a full disk) leaves the previous set as it was. A file this
    run does not write (no gate: no junit.xml; no model ran: no chart) is removed when an
    earlier run left one, so the folder never mixes two runs.

    Raises:
        WriteError: a full disk, or an ``out`` folder that is not writable.
    """
    import datetime as dt
    from dataclasses import asdict

    doc = {"created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "rows": [row.to_dict() for row in result.rows], "reference": result.reference,
           "test": result.test,
           "settings": asdict(result.settings), "command": command,
           "cpu": result.cpu, "cpu_summary": cpu_summary(result.cpu),
           "devices": result.devices,
           "notes": int8_slower_notes(result),
           "versions": package_versions(backend_packages()),
           "gate": None if checks is None else [c.__dict__ for c in checks]}
    contents: dict[str, tuple[Path, str | bytes]] = {
        "json": (out / "bench.json", json.dumps(doc, indent=2, default=str)),
        "markdown": (out / "bench.md", render_markdown(result, checks, command))}
    if checks is not None:
        contents["junit"] = (out / "junit.xml", render_junit(result, checks))
    if (png := render_plot(result)) is not None:
        contents["chart"] = (out / "bench.png", png)
    atomic_write_texts(dict(contents.values()))
    for kind, name in (("junit", "junit.xml"), ("chart", "bench.png")):
        if kind not in contents:  # an earlier run's would not match this bench.json
            (out / name).unlink(missing_ok=True)
    return {kind: path for kind, (path, _) in contents.items()}
