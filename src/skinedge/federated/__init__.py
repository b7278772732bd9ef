"""Federated training across sites with Flower: only model parameters leave a site.

``simulate_federation(cfg, out)`` runs every site on this machine (Flower's simulation engine);
``deploy_federation(cfg, out)`` starts a real SuperLink and one SuperNode process per site on
loopback and submits the run with ``flwr run``. Both run the same ServerApp
(:mod:`skinedge.federated.server_app`) and ClientApp (:mod:`skinedge.federated.client_app`),
which share :mod:`skinedge.federated.task`. Names are imported on first use (PEP 562): importing
this package does not import flwr, ray or torch.
"""

from skinedge.utils.lazy import lazy_exports

_EXPORTS = {
    "DPSection": "config", "FederatedConfig": "config", "SecAggSection": "config",
    "SiteSpec": "config", "load_federated_config": "config", "read_federation": "config",
    "deploy_federation": "deploy",
    "experiment_sites": "experiment_sites",
    "PrivacySpent": "privacy", "gaussian_epsilon": "privacy",
    "FederatedRunError": "simulate", "simulate_federation": "simulate",
    "SiteData": "sites", "load_site": "sites",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
