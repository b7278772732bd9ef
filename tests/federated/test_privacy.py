"""The site-level DP accountant against closed forms and the exact Gaussian mechanism."""

from __future__ import annotations

import math

import pytest

from skinedge.federated.privacy import gaussian_epsilon, mironov_closed_form


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def exact_gaussian_epsilon(z: float, rounds: int, delta: float) -> float:
    """The exact epsilon of ``rounds`` Gaussian mechanisms (Balle & Wang 2018, Thm. 8): their
    composition is one Gaussian mechanism with noise z / sqrt(rounds)."""
    s = z / math.sqrt(rounds)

    def delta_of(eps: float) -> float:
        return _phi(-eps * s + 1 / (2 * s)) - math.exp(eps) * _phi(-eps * s - 1 / (2 * s))

    lo, hi = 0.0, 500.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize(("z", "rounds", "delta"), [(1.0, 1, 1e-5), (1.0, 10, 1e-5),
                                                     (2.0, 50, 1e-6), (0.8, 4, 1e-3)])
def test_rdp_epsilon_bounds_the_exact_gaussian_epsilon_tightly(z, rounds, delta):
    exact = exact_gaussian_epsilon(z, rounds, delta)
    spent = gaussian_epsilon(z, rounds, delta).epsilon
    assert exact <= spent <= 1.35 * exact + 0.1  # an upper bound, and not a loose one


def test_mironov_conversion_matches_its_closed_form():
    for z, rounds, delta in [(1.0, 1, 1e-5), (1.5, 20, 1e-5), (4.0, 100, 1e-6)]:
        grid = gaussian_epsilon(z, rounds, delta, conversion="mironov").epsilon
        closed = mironov_closed_form(z, rounds, delta)
        assert closed <= grid <= closed * 1.01


def test_known_value_and_monotonicity():
    # z = 1, one release, delta = 1e-5: Mironov's closed form is 0.5 + 2 sqrt(0.5 ln 1e5).
    assert mironov_closed_form(1.0, 1, 1e-5) == pytest.approx(0.5 + 2 * math.sqrt(0.5 * math.log(1e5)))
    assert mironov_closed_form(1.0, 1, 1e-5) == pytest.approx(5.298, abs=1e-3)
    eps = [gaussian_epsilon(1.0, t, 1e-5).epsilon for t in (1, 2, 4, 8)]
    assert eps == sorted(eps)
    assert gaussian_epsilon(2.0, 4, 1e-5).epsilon < gaussian_epsilon(1.0, 4, 1e-5).epsilon
    assert gaussian_epsilon(1.0, 0, 1e-5).epsilon == 0


def test_agrees_with_flowers_rdp_accountant_when_dp_accounting_is_installed():
    pytest.importorskip("dp_accounting", reason="flwr[dp] (dp-accounting) not installed")
    from flwr.serverapp import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        RdpAccountant,
        SamplingMethod,
    )

    accountant = RdpAccountant(PrivacyConfig(1e-5, 4, NeighboringRelation.ADD_OR_REMOVE_ONE,
                                             SamplingMethod.NO_AMPLIFICATION))
    accountant.compose(GaussianPrivacyEvent(1.0, 4, 4), count=5)
    assert gaussian_epsilon(1.0, 5, 1e-5).epsilon == pytest.approx(
        accountant.get_epsilon(1e-5), rel=0.02)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        gaussian_epsilon(0.0, 1, 1e-5)
    with pytest.raises(ValueError):
        gaussian_epsilon(1.0, 1, 1.5)
