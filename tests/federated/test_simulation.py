"""A three-site federated simulation on tiny images: rounds, checkpoint, card, resume, DP."""

from __future__ import annotations

import json
import os

import pytest

from skinedge.errors import ConfigError
from tests.federated.conftest import tiny_config


def _registry_or_none(tmp_path):
    try:
        import skinedge.registry  # noqa: F401
    except ImportError:
        return None
    return tmp_path / "registry"


def test_three_sites_fedavg_then_resume(tiny_sites, tmp_path):
    from skinedge.federated import simulate_federation
    from skinedge.models import load_checkpoint

    out = tmp_path / "run"
    seen = []
    environment = dict(os.environ)
    summary = simulate_federation(tiny_config(tiny_sites, rounds=1), out, progress=seen.append)
    # Flower's Ray backend sets PYTHONPATH for its workers; the run must not leave it set.
    assert os.environ.get("PYTHONPATH") == environment.get("PYTHONPATH")
    assert summary["rounds"] == 1 and [r["round"] for r in seen] == [1]
    assert seen[0]["sites"] == 3
    # Every site received and sent the parameter arrays once: 3 x their size.
    assert summary["bytes_per_round"]["upload"] == 3 * summary["parameters_bytes"]
    model, card = load_checkpoint(out / "checkpoint")
    assert card.training["federated"] is True and card.training["rounds"] == 1
    assert card.training["strategy"] == "fedavg" and card.classes[0] == "mel"
    first = (out / "rounds" / "last" / "model.safetensors").read_bytes()

    with pytest.raises(ConfigError, match="--resume"):
        simulate_federation(tiny_config(tiny_sites, rounds=2), out)
    with pytest.raises(ConfigError, match="other settings"):
        simulate_federation(tiny_config(tiny_sites, rounds=2, local_epochs=2), out, resume=True)
    # Resumed: round 1 is not trained again, round 2 starts from its checkpoint.
    registry = _registry_or_none(tmp_path)
    seen.clear()
    summary = simulate_federation(tiny_config(tiny_sites, rounds=2), out, resume=True,
                                  progress=seen.append, registry=registry)
    assert [r["round"] for r in seen] == [2] and summary["rounds"] == 2
    lines = (out / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert (out / "rounds" / "last" / "model.safetensors").read_bytes() != first
    if registry is not None:
        from skinedge.registry import Registry

        version = Registry(registry).get(summary["registry_version"])
        assert version.source == "federated" and version.checkpoint is not None


@pytest.mark.slow
def test_fedprox_with_dp_reports_epsilon(tiny_sites, tmp_path):
    from skinedge.federated import gaussian_epsilon, simulate_federation
    from skinedge.models import load_card

    cfg = tiny_config(tiny_sites, rounds=1, strategy="fedprox", proximal_mu=0.1,
                      dp={"enabled": True, "clipping_norm": 0.5, "noise_multiplier": 1.2})
    summary = simulate_federation(cfg, tmp_path / "dp")
    expected = gaussian_epsilon(1.2, 1, cfg.dp.delta).epsilon
    assert summary["epsilon"] == pytest.approx(expected)
    card = load_card(tmp_path / "dp" / "checkpoint")
    assert card.training["differential_privacy"]["epsilon"] == pytest.approx(expected)
    assert card.training["strategy"] == "fedprox"
    # DP exchanges trainable parameters only: no BatchNorm statistics leave a site.
    assert summary["exchanged_arrays"] < 75


@pytest.mark.slow
def test_secure_aggregation(tiny_sites, tmp_path):
    from skinedge.federated import simulate_federation
    from skinedge.models import load_card

    summary = simulate_federation(tiny_config(tiny_sites, rounds=1, secagg={"enabled": True}),
                                  tmp_path / "secagg")
    assert summary["secure_aggregation"] is True and summary["rounds_without_sites"] == []
    assert load_card(tmp_path / "secagg" / "checkpoint").training["secure_aggregation"] is True


def test_dp_and_secagg_together_are_refused(tiny_sites):
    with pytest.raises(ValueError, match="not supported"):
        tiny_config(tiny_sites, dp={"enabled": True}, secagg={"enabled": True})


def test_cli_refuses_a_federation_of_one_site(tiny_sites, tmp_path):
    from typer.testing import CliRunner

    from skinedge.cli.main import app

    sites = tmp_path / "sites.yaml"
    sites.write_text(f"sites:\n  - name: only\n    data: {tiny_sites[0]}\n")
    result = CliRunner().invoke(app, ["federated", "simulate", "--out", str(tmp_path / "run"),
                                      "--sites", str(sites), "--rounds", "1"])
    assert result.exit_code == 2
    assert "at least 2 sites" in result.output
