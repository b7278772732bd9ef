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
(c) ``corrected-cases``: the held-out corrected cases, judged by log-loss (the cross-entropy of
    each model's calibrated probabilities for the clinicians' label), a proper score that moves
    with every case rather than only with the few whose top-1 answer changes. The candidate
    must have (1) lower log-loss than the base, and (2) lower log-loss than the label prior
    (the class frequencies of the corrections that joined train: what a model that ignores
    the image predicts), both predicting among the classes the feedback uses, each beyond
    chance: a one-sided paired bootstrap of the mean gain, p < ``alpha``; and (3) an accuracy
    gain of at least ``min_gain`` (0: not lower than the base's). (2) is what labels that carry
    no information fail: shuffled labels cannot be predicted from the images better than their
    frequencies, while a candidate that merely became less sure of itself can beat an
    overconfident base on them. Each model's temperature was fitted on the trusted validation
    split when it was trained. Top-1 figures and the exact sign test (McNemar's) on the cases
    only one model gets right are reported beside.
(d) ``deployment-budgets``: every check of the deployment's bench gate (latency, parity) and
    every export of the base version's targets passed.

Pure NumPy: the caller computes the predictions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N,) each case's log-loss, ``-log p(label)``, with p floored at 1e-12."""
    y_true = np.asarray(y_true, dtype=np.int64)
    picked = np.asarray(probs, dtype=np.float64)[np.arange(len(y_true)), y_true]
    return -np.log(np.clip(picked, 1e-12, 1.0))


def class_counts(counts: Mapping[str, int], classes: Sequence[str]) -> np.ndarray:
    """(C,) ``counts`` (label code -> cases) by class index; codes not in ``classes`` ignored."""
    out = np.zeros(len(classes), dtype=np.float64)
    for code, n in counts.items():
        if code in classes:
            out[list(classes).index(code)] += n
    return out


def label_prior(train_counts: np.ndarray, y_true: np.ndarray, *,
                smoothing: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The classes the feedback uses (those of ``train_counts`` or of the held-out labels
    ``y_true``, as indices) and their frequencies in ``train_counts``, each count plus
    ``smoothing`` so that a class seen only among the held-out cases keeps some probability."""
    counts = np.asarray(train_counts, dtype=np.float64)
    used = np.flatnonzero((counts > 0) | (np.bincount(y_true, minlength=len(counts)) > 0))
    prior = counts[used] + smoothing
    return used, prior / prior.sum()


def paired_gain(reference: np.ndarray, candidate: np.ndarray, *, n_boot: int, level: float,
                seed: int) -> dict[str, Any]:
    """Mean per-case gain ``reference - candidate`` (of a loss: positive is better), its
    paired-bootstrap interval and one-sided p-value (the share of resampled means at or
    below 0, counting the observed sample as one of them)."""
    gains = np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.concatenate([  # 200 resamples at a time: a large held-out set stays small
        gains[rng.integers(0, len(gains), (min(200, n_boot - done), len(gains)))].mean(axis=1)
        for done in range(0, n_boot, 200)])
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return {"gain": float(gains.mean()), "interval": [float(lo), float(hi)],
            "p": float((1 + (means <= 0).sum()) / (n_boot + 1))}


def corrected_cases_gate(y_true: np.ndarray, candidate: np.ndarray, base: np.ndarray,
                         train_counts: np.ndarray, *, min_gain: float, source: str,
                         alpha: float | None = None, n_boot: int = 2000, level: float = 0.95,
                         seed: int = 0) -> GateResult:
    """Gate (c): better than the base on the held-out corrected cases, and better than the
    corrections' label prior, beyond chance (module docstring).

    Args:
        y_true: (N,) the clinicians' labels, class indices.
        candidate: (N, C) the candidate's calibrated probabilities.
        base: (N, C) the base model's.
        train_counts: (C,) the corrections that joined train, by class
            (:func:`class_counts`): their frequencies are the label prior.
        min_gain: Accuracy gain required (0: not lower than the base's).
        source: The held-out manifest.
        alpha: Largest one-sided p-value of both log-loss gains; None reports them without
            requiring them.
        n_boot, level, seed: The paired bootstrap.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    candidate, base = np.asarray(candidate), np.asarray(base)
    n_classes = candidate.shape[1]
    top_c, top_b = candidate.argmax(1), base.argmax(1)
    acc_c, acc_b = float((top_c == y_true).mean()), float((top_b == y_true).mean())
    loss_c, loss_b = log_loss(y_true, candidate), log_loss(y_true, base)
    # Against the prior, both predict among the classes the feedback uses: the prior knows
    # which those are (a clinic that sends only mel/nv/bkl), the model does not.
    used, prior = label_prior(train_counts, y_true)
    within = np.searchsorted(used, y_true)
    restricted = candidate[:, used] / np.clip(candidate[:, used].sum(1, keepdims=True),
                                              1e-12, None)
    loss_r = log_loss(within, restricted)
    loss_0 = log_loss(within, np.broadcast_to(prior, restricted.shape))
    boot = {"n_boot": n_boot, "level": level, "seed": seed}  # the same resamples for both
    over_base = paired_gain(loss_b, loss_c, **boot)
    over_prior = paired_gain(loss_0, loss_r, **boot)
    fixed = int(((top_c == y_true) & (top_b != y_true)).sum())
    broken = int(((top_c != y_true) & (top_b == y_true)).sum())
    figures = {"n": len(y_true), "source": source, "min_gain": min_gain, "alpha": alpha,
               "candidate_log_loss": float(loss_c.mean()), "base_log_loss": float(loss_b.mean()),
               "prior_log_loss": float(loss_0.mean()), "prior": [float(p) for p in prior],
               "prior_classes": [int(k) for k in used],
               "candidate_log_loss_within_prior_classes": float(loss_r.mean()),
               "log_loss_gain": over_base, "log_loss_gain_over_prior": over_prior,
               "level": level, "n_boot": n_boot,
               "candidate_accuracy": acc_c, "base_accuracy": acc_b, "accuracy_gain": acc_c - acc_b,
               "candidate_balanced_accuracy": balanced_accuracy(y_true, top_c, n_classes),
               "base_balanced_accuracy": balanced_accuracy(y_true, top_b, n_classes),
               "fixed_by_candidate": fixed, "broken_by_candidate": broken,
               "sign_test_p": sign_test(fixed, broken)}
    figures["balanced_accuracy_gain"] = (figures["candidate_balanced_accuracy"]
                                         - figures["base_balanced_accuracy"])
    what = (f"log-loss {loss_c.mean():.4f} vs base {loss_b.mean():.4f} (gain "
            f"{over_base['gain']:+.4f}, p={over_base['p']:.3g}); among the {len(used)} "
            f"classes the feedback uses {loss_r.mean():.4f} vs label prior {loss_0.mean():.4f} "
            f"(gain {over_prior['gain']:+.4f}, p={over_prior['p']:.3g}); "
            f"accuracy {acc_c:.4f} vs {acc_b:.4f} ({fixed} fixed, {broken} broken) on "
            f"{len(y_true)} held-out cases")
    title = "Better on the held-out corrected cases"
    failed = []
    if alpha is not None and over_base["p"] >= alpha:
        failed.append("no lower log-loss than the base beyond chance (p >= alpha "
                      f"{alpha:g})")
    if alpha is not None and over_prior["p"] >= alpha:
        failed.append("it predicts the labels no better than their class frequencies alone "
                      f"do (p >= alpha {alpha:g}), as with labels that carry no information "
                      "about the images")
    if acc_c - acc_b < min_gain:
        failed.append(f"accuracy gain {acc_c - acc_b:+.4f} is below min_gain {min_gain:g}")
    if failed:
        return GateResult("corrected-cases", title, False, f"{what}: " + "; ".join(failed),
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
