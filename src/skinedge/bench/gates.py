"""Budgets a benchmark must meet: the CI gate.

A gate file lists rules; each rule applies to the rows whose label (``target-precision``, e.g.
``openvino-int8``, ``torch-fp32``) matches its glob, and every budget it sets must hold::

    # gates.yaml
    require: [onnx-fp32, openvino-int8, tflite-int8]   # these rows must exist with status ok
    rules:
      - match: "*-int8"
        p95_ms: 10                    # warm latency at batch 1, 95th percentile
        max_balanced_accuracy_drop: 0.01   # vs the reference model, absolute
        max_flip_rate: 0.03           # share of test images whose top-1 differs from the reference
        max_confident_flip_rate: 0.01 # the same among those it answers with a lead of 0.2 or more
      - match: "*"
        allow_skipped: true           # Core ML off macOS, TensorRT without a GPU

Nothing passes by checking nothing: unknown keys are refused (a typo cannot disable a budget),
so is a gate with no rule and no required row, and a rule that sets no budget; a rule whose
glob matches no benchmarked row (``onxn-*``) is a failed check.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from skinedge.bench.rows import BenchRow
from skinedge.errors import ConfigError
from skinedge.utils.config import read_yaml_mapping


class GateRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: str = "*"
    p50_ms: float | None = Field(None, gt=0)
    p95_ms: float | None = Field(None, gt=0)
    p99_ms: float | None = Field(None, gt=0)
    cold_ms: float | None = Field(None, gt=0)
    peak_rss_mb: float | None = Field(None, gt=0)
    size_mb: float | None = Field(None, gt=0)
    max_accuracy_drop: float | None = Field(None, ge=0)
    max_balanced_accuracy_drop: float | None = Field(None, ge=0)
    max_melanoma_auc_drop: float | None = Field(None, ge=0)
    max_flip_rate: float | None = Field(None, ge=0, le=1)
    max_confident_flip_rate: float | None = Field(None, ge=0, le=1)
    min_balanced_accuracy: float | None = Field(None, ge=0, le=1)
    allow_skipped: bool = False  # rows that cannot run here (status "skipped") pass, if any
    # matching rule allows it (and the row is not in `require`)

    @model_validator(mode="after")
    def _sets_something(self) -> GateRule:
        if not self.allow_skipped and all(getattr(self, budget) is None for budget in _LIMITS):
            raise ValueError(f"rule {self.match!r} sets no budget: add one of "
                             f"{', '.join(_LIMITS)}, or allow_skipped: true")
        return self


class Gates(BaseModel):
    model_config = ConfigDict(extra="forbid")

    require: list[str] = Field(default_factory=list)
    rules: list[GateRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _checks_something(self) -> Gates:
        if not self.require and not self.rules:
            raise ValueError("the gate checks nothing: list rows under `require:` or budgets "
                             "under `rules:`")
        return self


@dataclass(frozen=True)
class GateCheck:
    label: str
    check: str  # budget name, "status", "present", or "matches" (a rule that matched no row)
    passed: bool
    message: str


# budget -> (BenchRow field, "max" if the value must not exceed the budget, "min" otherwise, unit)
_LIMITS = {
    "p50_ms": ("p50_ms", "max", "ms"), "p95_ms": ("p95_ms", "max", "ms"),
    "p99_ms": ("p99_ms", "max", "ms"), "cold_ms": ("cold_ms", "max", "ms"),
    "peak_rss_mb": ("peak_rss_mb", "max", "MB"), "size_mb": ("size_mb", "max", "MB"),
    "max_accuracy_drop": ("accuracy_drop", "max", ""),
    "max_balanced_accuracy_drop": ("balanced_accuracy_drop", "max", ""),
    "max_melanoma_auc_drop": ("melanoma_auc_drop", "max", ""),
    "max_flip_rate": ("flip_rate", "max", ""),
    "max_confident_flip_rate": ("confident_flip_rate", "max", ""),
    "min_balanced_accuracy": ("balanced_accuracy", "min", ""),
}
#: Row fields a device measures without images; the others need labelled images.
_LATENCY_KEYS = {"p50_ms", "p95_ms", "p99_ms", "cold_ms", "peak_rss_mb", "size_mb"}


def load_gates(path: Path | str) -> Gates:
    doc = read_yaml_mapping(path, "gate file", "rules: [...]")
    try:
        return Gates.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from exc


def check_gates(gates: Gates, rows: Sequence[BenchRow]) -> list[GateCheck]:
    """Every budget against every matching row; a failed check's message says what and by how much."""
    checks: list[GateCheck] = []
    by_label = {row.label: row for row in rows}
    for label in gates.require:
        row = by_label.get(label)
        if row is None:
            checks.append(GateCheck(label, "present", False, f"{label}: required but not benchmarked"))
            continue
        ok = row.status == "ok"
        checks.append(GateCheck(label, "status", ok, f"{label}: {row.status}"
                                + (f" ({row.reason})" if row.reason else "")))
    labels = sorted(by_label)
    for rule in gates.rules:
        if not any(fnmatch.fnmatchcase(label, rule.match) for label in labels):
            checks.append(GateCheck(rule.match, "matches", False,
                                    f"rule {rule.match!r} matches no benchmarked row (rows: "
                                    f"{', '.join(labels) or 'none'}); fix its match glob"))
    for row in rows:
        rules = [r for r in gates.rules if fnmatch.fnmatchcase(row.label, r.match)]
        if rules and row.status != "ok":  # one status check per row, however many rules match
            if row.label not in gates.require:  # required rows were checked above
                allowed = row.status == "skipped" and any(r.allow_skipped for r in rules)
                checks.append(GateCheck(row.label, "status", allowed, f"{row.label}: "
                                        f"{row.status}" + (f" ({row.reason})"
                                                           if row.reason else "")))
            continue
        for rule in rules:
            checks.extend(_check_row(rule, row))
    return checks


def _check_row(rule: GateRule, row: BenchRow) -> list[GateCheck]:
    label = row.label
    checks = []
    for budget, (key, kind, unit) in _LIMITS.items():
        limit = getattr(rule, budget)
        if limit is None:
            continue
        value = getattr(row, key)
        if value is None:
            why = (" (the device ran random inputs, latency only: add --device-images to "
                   "score it there, or narrow the rule's match to this machine's rows)"
                   if row.device and key not in _LATENCY_KEYS else "")
            checks.append(GateCheck(label, budget, False,
                                    f"{label}: {key} was not measured{why}"))
            continue
        passed = value <= limit if kind == "max" else value >= limit
        relation = ("<=" if passed else ">") if kind == "max" else (">=" if passed else "<")
        checks.append(GateCheck(label, budget, passed,
                                f"{label}: {key} {value:.4g}{unit} {relation} {limit:g}{unit}"))
    return checks
