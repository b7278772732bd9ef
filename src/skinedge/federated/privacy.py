"""Site-level differential privacy: what epsilon a federated run spent.

The mechanism (Flower's client-side fixed clipping): every sampled site clips its update to L2
norm ``C`` (``fixedclipping_mod``), the server averages the ``m`` sampled updates with equal
weights and adds Gaussian noise of std ``z * C / m``
(``DifferentialPrivacyClientSideFixedClipping``). Adding or removing one site's whole data
changes the sum of updates by at most ``C``, so each round is a Gaussian mechanism with noise
multiplier ``z`` on that sum, and the guarantee is per *site* (a clinic's whole contribution),
not per image.

Accounting: Renyi DP (Mironov 2017). One Gaussian release has RDP ``alpha / (2 z^2)`` at every
order ``alpha > 1``; ``T`` rounds compose to ``T alpha / (2 z^2)``; the conversion to
``(epsilon, delta)`` takes the best order of::

    eps(alpha) = rdp(alpha) + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1)

(Balle et al. 2020, Prop. 12 / Canonne-Kamath-Steinke 2020; tighter than Mironov's
``rdp + log(1/delta) / (alpha - 1)``, which :func:`gaussian_epsilon` also offers). No privacy
amplification by sampling is claimed: with ``fraction < 1`` the reported epsilon is an upper
bound. Flower 1.42's own ``RdpAccountant`` computes the same quantity through Google's
``dp-accounting`` package (the ``flwr[dp]`` extra, not installed here); the tests compare the
two when it is present and against closed forms otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: RDP orders searched: fine near 1 (large noise) and up to 4096 (small noise).
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 100 for x in range(1, 100)] + [2 + x / 10 for x in range(0, 100)]
    + list(range(12, 64)) + [2.0 ** k for k in range(6, 13)]
)


@dataclass(frozen=True)
class PrivacySpent:
    """(epsilon, delta) after ``rounds`` Gaussian releases with ``noise_multiplier``."""

    epsilon: float
    delta: float
    rounds: int
    noise_multiplier: float
    order: float  # the RDP order that gave epsilon
    method: str = "rdp-gaussian, no sampling amplification"

    def as_dict(self) -> dict:
        return {"epsilon": self.epsilon, "delta": self.delta, "rounds": self.rounds,
                "noise_multiplier": self.noise_multiplier, "rdp_order": self.order,
                "accounting": self.method, "unit": "site (a clinic's whole data)"}


def gaussian_rdp(noise_multiplier: float, order: float, rounds: int = 1) -> float:
    """RDP of ``rounds`` Gaussian mechanisms (sensitivity 1, std ``noise_multiplier``)."""
    return rounds * order / (2 * noise_multiplier ** 2)


def gaussian_epsilon(noise_multiplier: float, rounds: int, delta: float, *,
                     orders: Sequence[float] = DEFAULT_ORDERS,
                     conversion: str = "balle") -> PrivacySpent:
    """Epsilon spent by ``rounds`` site-level Gaussian releases at ``delta``.

    Args:
        noise_multiplier: Noise std over the clipping norm (``z``).
        rounds: Releases composed (training rounds the noisy average was used in).
        delta: Target delta, in (0, 1).
        orders: RDP orders to optimise over.
        conversion: ``balle`` (tighter, the default) or ``mironov``.

    Raises:
        ValueError: non-positive noise or rounds, delta outside (0, 1), unknown conversion.
    """
    if noise_multiplier <= 0 or rounds < 0 or not 0 < delta < 1:
        raise ValueError("need noise_multiplier > 0, rounds >= 0 and 0 < delta < 1")
    if conversion not in ("balle", "mironov"):
        raise ValueError(f"unknown conversion {conversion!r}; use balle or mironov")
    if rounds == 0:
        return PrivacySpent(0.0, delta, 0, noise_multiplier, float("nan"))
    best, best_order = math.inf, float("nan")
    for order in orders:
        rdp = gaussian_rdp(noise_multiplier, order, rounds)
        if conversion == "mironov":
            eps = rdp + math.log(1 / delta) / (order - 1)
        else:
            eps = (rdp + math.log((order - 1) / order)
                   - (math.log(delta) + math.log(order)) / (order - 1))
        if eps < best:
            best, best_order = eps, order
    return PrivacySpent(max(best, 0.0), delta, rounds, noise_multiplier, best_order)


def mironov_closed_form(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Mironov's conversion minimised over continuous orders: ``T/(2z^2) + sqrt(2 T
    log(1/delta)) / z`` (the best order is ``1 + z sqrt(2 log(1/delta) / T)``)."""
    a = rounds / (2 * noise_multiplier ** 2)
    return a + 2 * math.sqrt(a * math.log(1 / delta))
