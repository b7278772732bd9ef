"""The promotion gates of a retrained candidate, and the report that says why it was (not)
promoted.

Four gates, each a :class:`GateResult`:

(a) ``test-split``: the base manifest's fixed test split, both models on the same images. A
    paired bootstrap resamples the same image indices for both and takes the difference of
    balanced accuracy (candidate - base) in each resample. Refused when the interval's upper
    bound is below 0 (worse beyond what resampling explains) or the point difference is a drop
    larger than ``max_drop``.
(b) ``protected-classes``: on the same test split and resamples, the recall (sensitivity) of
    each protected class, melanoma by default. A balanced accuracy that holds can hide a model
    that misses more melanomas (what corrections that call melanomas naevi teach it); refused
    when a class's recall interval lies below 0 or its recall drops by more than
    ``max_class_drop``. The test split is the one set of trusted labels: the gates below read
    the feedback's own labels, so they cannot see feedback that is wrong.
(c) ``corrected-cases``: the held-out corrected cases. The candidate must be better than the
    base beyond chance: accuracy higher by more than ``min_gain``, balanced accuracy (over the
    classes present) not lower, and the one-sided exact sign test (McNemar's) on the cases only
    one model gets right at p < ``alpha``. Without the test, one case more out of a hundred
    passes; with it, a candidate that is not better passes with probability at most ``alpha``
    (shuffled labels in the feedback make both models' answers coin flips on the held-out part).
(d) ``deployment-budgets``: every check of the deployment's bench gate (latency, parity) and
    every export of the base version's targets passed.

Pure NumPy: the caller computes the predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class GateResult:
    """One gate: its name, whether it passed, the figures behind it and the reason in words."""

    name: str
    title: str
    passed: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true`` (absent classes are not averaged)."""
    return float(np.nanmean(recalls(y_true, y_pred, n_classes)))


def paired_bootstrap(y_true: np.ndarray, candidate: np.ndarray, base: np.ndarray,
                     n_classes: int, *, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """Balanced accuracy of both models and the interval of their difference.

    Args:
        y_true: (N,) class indices.
        candidate: (N,) the candidate's predicted class indices on the same images.
        base: (N,) the base model's.
        n_classes: Number of classes.
        n_boot: Resamples; each draws N indices with replacement, used for both models.
        level: Central coverage of the interval.
        seed: Resampling seed.

    Returns:
        ``{"n", "candidate", "base", "difference", "interval": [lo, hi], "level", "n_boot"}``.
    """
    y_true, candidate, base = (np.asarray(a, dtype=np.int64) for a in (y_true, candidate, base))
    if not (len(y_true) == len(candidate) == len(base)) or not len(y_true):
        raise ValueError("paired_bootstrap needs predictions of both models on the same images")
    rng = np.random.default_rng(seed)
    n = len(y_true)
    diffs = np.empty(n_boot)
    recall_diffs = np.full((n_boot, n_classes), np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        diffs[b] = (balanced_accuracy(y_true[idx], candidate[idx], n_classes)
                    - balanced_accuracy(y_true[idx], base[idx], n_classes))
        recall_diffs[b] = (recalls(y_true[idx], candidate[idx], n_classes)
                           - recalls(y_true[idx], base[idx], n_classes))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    cand = balanced_accuracy(y_true, candidate, n_classes)
    ref = balanced_accuracy(y_true, base, n_classes)
    per_class = {}
    rec_c, rec_b = recalls(y_true, candidate, n_classes), recalls(y_true, base, n_classes)
    for k in range(n_classes):
        if np.isnan(rec_b[k]):
            continue  # not in the test split
        draws = recall_diffs[:, k][~np.isnan(recall_diffs[:, k])]
        c_lo, c_hi = np.percentile(draws, [tail, 100 - tail])
        per_class[k] = {"n": int((y_true == k).sum()), "candidate": float(rec_c[k]),
                        "base": float(rec_b[k]), "difference": float(rec_c[k] - rec_b[k]),
                        "interval": [float(c_lo), float(c_hi)]}
    return {"n": n, "candidate": cand, "base": ref, "difference": cand - ref,
            "interval": [float(lo), float(hi)], "level": level, "n_boot": n_boot,
            "recall": per_class}


def recalls(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes,) recall per class; NaN for a class absent from ``y_true``."""
    support = np.bincount(y_true, minlength=n_classes)
    hits = np.bincount(y_true, weights=(y_pred == y_true), minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hits / np.maximum(support, 1), np.nan)


def fixed_test_gate(y_true: np.ndarray, candidate: np.ndarray, base: np.ndarray,
                    n_classes: int, *, max_drop: float, n_boot: int, level: float,
                    seed: int, source: str,
                    boot: dict[str, Any] | None = None) -> GateResult:
    """Gate (a): no drop on the fixed test split beyond what its bootstrap interval allows
    (``boot``: :func:`paired_bootstrap` of these predictions, when the caller has it)."""
    boot = boot or paired_bootstrap(y_true, candidate, base, n_classes, n_boot=n_boot,
                                    level=level, seed=seed)
    lo, hi = boot["interval"]
    diff = boot["difference"]
    figures = {**{k: v for k, v in boot.items() if k != "recall"}, "max_drop": max_drop,
               "source": source,
               "candidate_accuracy": float((candidate == y_true).mean()),
               "base_accuracy": float((base == y_true).mean())}
    what = (f"balanced accuracy {boot['candidate']:.4f} vs base {boot['base']:.4f} "
            f"(difference {diff:+.4f}, {level:.0%} paired bootstrap interval "
            f"[{lo:+.4f}, {hi:+.4f}], n={boot['n']})")
    if hi < 0:
        return GateResult("test-split", "No drop on the fixed test split", False,
                          f"{what}: the whole interval is below 0, the candidate is worse",
                          figures)
    if diff < -max_drop:
        return GateResult("test-split", "No drop on the fixed test split", False,
                          f"{what}: a drop of {-diff:.4f} exceeds max_drop {max_drop:g}", figures)
    return GateResult("test-split", "No drop on the fixed test split", True,
                      f"{what}: within the interval and max_drop {max_drop:g}", figures)


def protected_classes_gate(boot: dict[str, Any], classes: Sequence[str],
                           protected: Sequence[str], *, max_class_drop: float,
                           source: str) -> GateResult:
    """Gate (b): no protected class (melanoma) loses recall on the fixed test split beyond its
    bootstrap interval or by more than ``max_class_drop``.

    Args:
        boot: :func:`paired_bootstrap` on the test split (its ``recall`` entry).
        classes: Class codes by index.
        protected: Codes whose recall must hold; codes not in ``classes`` or not in the test
            split are named in the reason and fail the gate (a gate that checks nothing must
            not pass).
        max_class_drop: Largest recall drop allowed, in points of recall (0.05 = 5 points).
        source: The manifest the test split came from.
    """
    title = "No protected class loses sensitivity"
    checks, failed = [], []
    for code in protected:
        k = classes.index(code) if code in classes else None
        row = boot["recall"].get(k) if k is not None else None
        if row is None:
            message = (f"{code}: not in the test split's classes ({', '.join(classes)}); "
                       "set gates.protected to classes the test split holds")
            checks.append({"label": code, "check": "recall", "passed": False,
                           "message": message})
            failed.append(message)
            continue
        lo, hi = row["interval"]
        diff = row["difference"]
        message = (f"{code} recall {row['candidate']:.3f} vs base {row['base']:.3f} "
                   f"({diff:+.3f}, {boot['level']:.0%} interval [{lo:+.3f}, {hi:+.3f}], "
                   f"n={row['n']})")
        if hi < 0:
            message += ": the whole interval is below 0"
        elif diff < -max_class_drop:
            message += f": a drop of {-diff:.3f} exceeds max_class_drop {max_class_drop:g}"
        passed = hi >= 0 and diff >= -max_class_drop
        checks.append({"label": code, "check": "recall", "passed": passed, "message": message,
                       **row})
        if not passed:
            failed.append(message)
    figures = {"protected": list(protected), "max_class_drop": max_class_drop, "source": source,
               "level": boot["level"], "n_boot": boot["n_boot"],
               "recall": {classes[k]: row for k, row in boot["recall"].items()}}
    if not protected:
        return GateResult("protected-classes", title, True,
                          "no class is protected (gates.protected is empty)", figures)
    if failed:
        return GateResult("protected-classes", title, False, "; ".join(failed), figures, checks)
    return GateResult("protected-classes", title, True,
                      "; ".join(c["message"] for c in checks), figures, checks)


def sign_test(fixed: int, broken: int) -> float:
    """One-sided exact sign test (McNemar's exact test) on the cases only one model gets right:
    the probability of ``fixed`` or more of ``fixed + broken`` if either model were as likely to
    win each; 1.0 when no case differs."""
    n = fixed + broken
    return float(sum(math.comb(n, k) for k in range(fixed, n + 1)) / 2**n) if n else 1.0


def corrected_cases_gate(y_true: np.ndarray, candidate: np.ndarray, base: np.ndarray,
                         n_classes: int, *, min_gain: float, source: str,
                         alpha: float | None = None) -> GateResult:
    """Gate (c): better than the base on the held-out corrected cases, by more than chance (the
    sign test's p-value below ``alpha``; ``alpha=None`` reports it without requiring it)."""
    y_true, candidate, base = (np.asarray(a, dtype=np.int64) for a in (y_true, candidate, base))
    acc_c, acc_b = float((candidate == y_true).mean()), float((base == y_true).mean())
    bal_c = balanced_accuracy(y_true, candidate, n_classes)
    bal_b = balanced_accuracy(y_true, base, n_classes)
    figures = {"n": len(y_true), "source": source, "min_gain": min_gain,
               "candidate_accuracy": acc_c, "base_accuracy": acc_b,
               "candidate_balanced_accuracy": bal_c, "base_balanced_accuracy": bal_b,
               "accuracy_gain": acc_c - acc_b, "balanced_accuracy_gain": bal_c - bal_b,
               "fixed_by_candidate": int(((candidate == y_true) & (base != y_true)).sum()),
               "broken_by_candidate": int(((candidate != y_true) & (base == y_true)).sum()),
               "alpha": alpha}
    figures["sign_test_p"] = sign_test(figures["fixed_by_candidate"],
                                       figures["broken_by_candidate"])
    what = (f"accuracy {acc_c:.4f} vs base {acc_b:.4f}, balanced accuracy {bal_c:.4f} vs "
            f"{bal_b:.4f} on {len(y_true)} held-out cases ({figures['fixed_by_candidate']} "
            f"fixed, {figures['broken_by_candidate']} broken; one-sided sign test p="
            f"{figures['sign_test_p']:.3g})")
    title = "Better on the held-out corrected cases"
    if acc_c - acc_b <= min_gain:
        word = "a tie" if acc_c == acc_b else ("worse" if acc_c < acc_b else "not enough")
        return GateResult("corrected-cases", title, False,
                          f"{what}: accuracy gain {acc_c - acc_b:+.4f} is {word} (it must exceed "
                          f"min_gain {min_gain:g})", figures)
    if bal_c < bal_b:
        return GateResult("corrected-cases", title, False,
                          f"{what}: balanced accuracy dropped by {bal_b - bal_c:.4f}", figures)
    if alpha is not None and figures["sign_test_p"] >= alpha:
        return GateResult("corrected-cases", title, False,
                          f"{what}: better, but not beyond chance (p >= alpha {alpha:g})",
                          figures)
    return GateResult("corrected-cases", title, True, f"{what}: better", figures)


def budgets_gate(checks: Sequence[dict[str, Any]], *, gate_file: str | None,
                 applicable: bool = True) -> GateResult:
    """Gate (d): the deployment's latency and parity budgets, and every export, passed.

    Args:
        checks: ``{"label", "check", "passed", "message"}`` per bench-gate check and per export.
        gate_file: The budgets YAML the bench was checked against.
        applicable: False when the base version has no exported artifact (nothing to bench).
    """
    title = "The deployment's latency and parity budgets"
    if not applicable:
        return GateResult("deployment-budgets", title, True,
                          "not applicable: the base version has no exported artifact, so "
                          "neither has the candidate", {"gate_file": gate_file})
    failed = [c for c in checks if not c["passed"]]
    figures = {"gate_file": gate_file, "checks": len(checks), "failed": len(failed)}
    if not checks:
        return GateResult("deployment-budgets", title, False,
                          "no check ran: the gate file checks nothing here", figures, [])
    if failed:
        shown = "; ".join(c["message"] for c in failed[:4])
        more = f" and {len(failed) - 4} more" if len(failed) > 4 else ""
        return GateResult("deployment-budgets", title, False,
                          f"{len(failed)} of {len(checks)} checks failed: {shown}{more}",
                          figures, list(checks))
    return GateResult("deployment-budgets", title, True, f"all {len(checks)} checks passed",
                      figures, list(checks))


@dataclass(frozen=True)
class Decision:
    passed: bool  # every gate passed
    promote: bool  # and promotion was asked for
    reason: str


def decide(gates: Sequence[GateResult], *, promote: bool, deployment: str) -> Decision:
    """Promote only when every gate passed and promotion was asked for; the reason in words."""
    failed = [g for g in gates if not g.passed]
    if failed:
        names = ", ".join(g.name for g in failed)
        return Decision(False, False, f"refused: {len(failed)} gate(s) failed ({names}): "
                        + " | ".join(f"{g.name}: {g.reason}" for g in failed))
    if not promote:
        return Decision(True, False, f"every gate passed; not promoted to {deployment} "
                        "(--no-promote): promote it with `skinedge registry promote`")
    return Decision(True, True, f"every gate passed; promoted to {deployment}")


def render_markdown(report: dict[str, Any]) -> str:
    """``retrain.md``: the decision first, then each gate with its figures."""
    decision = report["decision"]
    data = report["data"]
    lines = [
        f"# Retraining {report['base']} from clinicians' corrections", "",
        f"**Decision: {'promoted' if decision['promoted'] else 'not promoted'}** - "
        f"{decision['reason']}", "",
        f"- base version: `{report['base']}`; candidate: `{report.get('candidate') or 'not yet registered'}`",
        f"- deployment: `{report['deployment']}`; registry: `{report['registry']}`",
        f"- feedback: `{data['folder']}`: {data['train']} case(s) joined the train split, "
        f"{data['holdout']} held out, {data['refused']} refused, {data['duplicates']} already "
        "in the base data (every one listed in `2-data/feedback.json`)",
        f"- fine-tuned {report['training']['epochs']} epoch(s) from the base checkpoint; best "
        f"epoch {report['training']['best_epoch']}",
        "",
        "| gate | passed | reason |", "|---|---|---|",
    ]
    for gate in report["gates"]:
        reason = gate["reason"].replace("|", "\\|")
        lines.append(f"| {gate['title']} (`{gate['name']}`) | {'yes' if gate['passed'] else '**no**'} "
                     f"| {reason} |")
    for gate in report["gates"]:
        if gate["checks"]:
            lines += ["", f"## {gate['title']}: checks", ""]
            lines += [f"- {'pass' if c['passed'] else '**FAIL**'}: {c['message']}"
                      for c in gate["checks"]]
    if data.get("duplicate_examples"):
        lines += ["", "## Feedback already in the base data (not used)", ""]
        lines += [f"- {d['source']} {d['image']} = {d['base_image']} ({d['base_split']})"
                  for d in data["duplicate_examples"]]
    if data.get("refused_examples"):
        lines += ["", "## Refused feedback rows", ""]
        lines += [f"- {p['source']}: [{p['kind']}] {p['message']}"
                  for p in data["refused_examples"]]
    return "\n".join(lines) + "\n"
