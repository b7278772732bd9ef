"""Renderers for the metrics dict of :func:`skinedge.evaluate.metrics.compute_metrics`.

Markdown tables laid out as a dermatology paper shows them, a confusion-matrix PNG, and
:func:`write_report`, which writes all three (plus the JSON) atomically next to each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skinedge.utils.io import atomic_write

__all__ = ["plot_confusion_matrix", "render_markdown", "write_report"]

_REQUIRED_KEYS = (
    "n",
    "accuracy",
    "balanced_accuracy",
    "per_class",
    "macro_auc",
    "melanoma_auc",
    "melanoma_sensitivity_at_spec",
    "ece",
    "confusion_matrix",
    "classes",
)


def render_markdown(
    metrics: dict,
    *,
    title: str = "Evaluation",
    class_names: Mapping[str, str] | None = None,
) -> str:
    """Renders the metrics as Markdown: summary, per-class and confusion-matrix tables.

    Args:
        metrics: dict returned by ``compute_metrics``.
        title: level-1 heading.
        class_names: optional display names by class code (``{"mel": "Melanoma"}``); codes
            without an entry are shown as they are.

    Returns:
        The Markdown text, ending with a newline. Numbers have 3 decimals; ``None`` is "n/a".

    Raises:
        ValueError: if ``metrics`` lacks keys that ``compute_metrics`` produces.
    """
    _check_metrics(metrics)
    classes = list(metrics["classes"])
    names = [_escape(_display_name(code, class_names)) for code in classes]

    summary = [
        ("Images (n)", metrics["n"]),
        ("Accuracy", metrics["accuracy"]),
        ("Balanced accuracy (mean recall)", metrics["balanced_accuracy"]),
        ("Macro AUC (one-vs-rest)", metrics["macro_auc"]),
        ("Melanoma AUC", metrics["melanoma_auc"]),
    ]
    for key, sensitivity in metrics["melanoma_sensitivity_at_spec"].items():
        summary.append((f"Melanoma sensitivity at {_as_percent(key)} specificity", sensitivity))
    detection = metrics.get("task") == "melanoma-detection"
    if detection:
        summary += [("Sensitivity (melanoma is the top-1 class)", metrics["sensitivity"]),
                    ("Specificity (melanoma is not the top-1 class)", metrics["specificity"])]
    calibration = metrics.get("calibration") or {}
    temperature = calibration.get("temperature", 1.0)
    if temperature != 1.0:
        summary.append((f"Expected calibration error (top-1), temperature {temperature:.3g}",
                        metrics["ece"]))
        summary.append(("Expected calibration error (top-1), uncalibrated (T = 1)",
                        calibration["ece_uncalibrated"]))
    else:
        summary.append(("Expected calibration error (top-1)", metrics["ece"]))
    check = metrics.get("lesion_check")
    if check:
        rule = f"{check['method']} above {check['threshold']:.4g}"
        summary.append((f"Lesions refused as not a lesion image ({rule})",
                        check["false_rejection"]))
        summary.append((f"Non-lesion images refused ({check['non_lesion_held_out']} held out "
                        "from the check's choice)", check["detection_held_out"]))

    lines = [f"# {title}", "", "## Summary", ""]
    lines += [f"Note: {note}." for note in metrics.get("notes") or []]
    lines += [""] if metrics.get("notes") else []
    if detection:
        lines += ["Melanoma detection: a multi-class model on melanoma-vs-benign labels. AUC and "
                  "sensitivity at fixed specificity score P(melanoma); accuracy, sensitivity, "
                  "specificity and the confusion matrix score \"melanoma is the top-1 class\".",
                  ""]
    intervals = metrics.get("confidence_intervals")
    if intervals:
        keyed = {"Accuracy": "accuracy", "Balanced accuracy (mean recall)": "balanced_accuracy",
                 "Melanoma AUC": "melanoma_auc"}
        ci_header = f"{intervals['level']:.0%} CI (bootstrap, {intervals['n_boot']} resamples)"
        rows = [[label, _fmt(v), _interval(intervals.get(keyed.get(label, "")))]
                for label, v in summary]
        lines += _table(["Metric", "Value", ci_header], rows, ["l", "r", "r"])
    else:
        lines += _table(["Metric", "Value"], [[label, _fmt(v)] for label, v in summary],
                        ["l", "r"])

    if metrics.get("per_source"):
        lines += ["", "## Per source", ""] + per_source_table(metrics["per_source"])

    lines += ["", "## Per class", ""]
    rows = []
    for code, name in zip(classes, names, strict=True):
        scores = metrics["per_class"][code]
        rows.append(
            [name]
            + [_fmt(scores[k]) for k in ("precision", "recall", "f1", "auc", "support")]
        )
    header = ["Class", "Precision", "Recall (sensitivity)", "F1", "AUC", "Support"]
    lines += _table(header, rows, ["l"] + ["r"] * 5)

    lines += ["", "## Confusion matrix", "", "Rows: true class; columns: predicted class.", ""]
    matrix_rows = [
        [name] + [str(int(count)) for count in counts]
        for name, counts in zip(names, metrics["confusion_matrix"], strict=True)
    ]
    lines += _table(["True \\ Predicted", *names], matrix_rows, ["l"] + ["r"] * len(names))
    return "\n".join(lines) + "\n"


def per_source_table(per_source: Mapping[str, Mapping]) -> list[str]:
    """Markdown lines: one row per source of a multi-source split, with bootstrap intervals.

    A source labelled melanoma vs benign has no balanced accuracy over the model's classes
    (n/a); its melanoma figures score P(melanoma).
    """
    rows = []
    for name, m in per_source.items():
        ci = m.get("confidence_intervals") or {}
        spec = m["melanoma_sensitivity_at_spec"]
        detection = m.get("task") == "melanoma-detection"
        classes = [c for c in m["classes"] if c not in (m.get("classes_absent") or [])]
        mel = m["per_class"].get("mel", {}).get("support") or 0
        rows.append([
            _escape(name),
            "mel vs benign" if detection else ", ".join(classes),
            str(m["n"]), str(mel),
            "n/a" if detection else f"{_fmt(m['balanced_accuracy'])} "
                                    f"({_interval(ci.get('balanced_accuracy'))})",
            f"{_fmt(m['melanoma_auc'])} ({_interval(ci.get('melanoma_auc'))})",
            _fmt(spec.get("0.80")), _fmt(spec.get("0.90")), _fmt(m["ece"]),
        ])
    header = ["Source", "Labels", "Images", "Melanomas", "Balanced accuracy (95% CI)",
              "Melanoma AUC (95% CI)", "Sens. @ 80% spec.", "Sens. @ 90% spec.", "ECE"]
    return _table(header, rows, ["l", "l"] + ["r"] * 7)


def plot_confusion_matrix(
    metrics: dict,
    path: Path,
    *,
    normalize: bool = True,
    class_names: Mapping[str, str] | None = None,
) -> Path:
    """Draws the confusion matrix as an annotated heat map and saves it as a PNG.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch). The file is
    written atomically; missing parent folders are created.

    Args:
        metrics: dict returned by ``compute_metrics``.
        path: where to write the PNG.
        normalize: show each row as fractions of that true class (rows with no images stay 0);
            ``False`` shows raw counts.
        class_names: optional display names by class code.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ValueError: if ``metrics`` lacks keys that ``compute_metrics`` produces.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_metrics(metrics)
    path = Path(path)
    names = [_display_name(code, class_names) for code in metrics["classes"]]
    counts = np.asarray(metrics["confusion_matrix"], dtype=float)  # (C, C)
    if normalize:
        row_sums = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    else:
        values = counts

    size = 2.5 + 0.7 * len(names)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""))
    for (i, j), value in np.ndenumerate(values):
        text = f"{value:.2f}" if normalize else str(int(value))
        color = "white" if image.norm(value) > 0.5 else "black"  # readable on dark cells
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)

    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=150))
    return path


def write_report(
    metrics: dict,
    out_dir: Path,
    *,
    stem: str = "metrics",
    title: str = "Evaluation",
    class_names: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Writes ``STEM.json``, ``STEM.md`` and ``STEM_confusion.png`` into ``out_dir``.

    Each file is written to a temporary file in ``out_dir`` and moved into place with
    ``os.replace``, so a reader never sees a half-written report.

    Args:
        metrics: dict returned by ``compute_metrics``.
        out_dir: output folder, created if missing.
        stem: file-name stem shared by the three files.
        title: heading of the Markdown report.
        class_names: optional display names by class code.

    Returns:
        ``{"json": path, "markdown": path, "confusion_png": path}``.

    Raises:
        ValueError: if ``metrics`` lacks keys or holds NaN/infinity (strict JSON).
    """
    _check_metrics(metrics)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / f"{stem}.json",
        "markdown": out_dir / f"{stem}.md",
        "confusion_png": out_dir / f"{stem}_confusion.png",
    }
    # Render everything before touching the disk, so a bad dict leaves no partial report.
    json_text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    markdown = render_markdown(metrics, title=title, class_names=class_names)
    atomic_write(paths["json"], lambda handle: handle.write(json_text.encode("utf-8")))
    atomic_write(paths["markdown"], lambda handle: handle.write(markdown.encode("utf-8")))
    plot_confusion_matrix(metrics, paths["confusion_png"], class_names=class_names)
    return paths


def _check_metrics(metrics: Mapping) -> None:
    """Raises ValueError naming the keys a metrics dict lacks."""
    missing = [key for key in _REQUIRED_KEYS if key not in metrics]
    if missing:
        raise ValueError(
            f"metrics dict lacks {missing}; "
            "build it with skinedge.evaluate.metrics.compute_metrics."
        )


def _display_name(code: str, class_names: Mapping[str, str] | None) -> str:
    """Display name of a class code, falling back to the code itself."""
    return class_names.get(code, code) if class_names else code


def _interval(bounds: list[float] | None) -> str:
    return "" if not bounds else f"{bounds[0]:.3f} to {bounds[1]:.3f}"


def _fmt(value: Any) -> str:
    """Formats a table cell: ints as they are, floats with 3 decimals, None as "n/a"."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.3f}"


def _as_percent(key: str) -> str:
    """``"0.80"`` -> ``"80%"``; keys that are not numbers pass through."""
    try:
        return f"{float(key) * 100:g}%"
    except ValueError:
        return key


def _escape(text: str) -> str:
    """Escapes characters that would break a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    """Markdown table lines; ``align`` holds "l" or "r" per column."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(cells) + " |" for cells in [header, rule, *rows]]
