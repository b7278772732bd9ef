"""The lesion check's score, without torch: every runtime computes it from its outputs.

How the check is chosen and what it catches: :mod:`skinedge.evaluate.ood`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["METHODS", "NOT_A_LESION", "ood_scores"]

METHODS = ("energy", "msp")
#: What a rejected image is reported as, in place of a diagnosis.
NOT_A_LESION = "not a dermoscopic lesion image"


def ood_scores(logits: np.ndarray, temperature: float = 1.0, method: str = "energy") -> np.ndarray:
    """(N,) scores of (N, C) raw logits, higher for images less like the model's lesions.

    ``logits`` may also be log-probabilities for ``msp`` (a per-row shift changes nothing),
    not for ``energy``, which is the log-normaliser that a shift moves."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1)
    log_norm = np.log(np.exp(z - top[:, None]).sum(axis=1)) + top
    if method == "energy":
        return -log_norm
    if method == "msp":
        return -np.exp(top - log_norm)
    raise ValueError(f"method {method!r}: one of {', '.join(METHODS)}")
