"""Federated run configuration: YAML file -> validated object -> ``--set a.b=c`` overrides.

One object describes a whole federation (sites, strategy, rounds, privacy, local training). The
server and every client read the same resolved copy (``federation.json`` in the run folder),
so they cannot disagree on the model, its input size or the rounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from skinedge.data.transforms import AugmentConfig, PreprocessConfig
from skinedge.errors import ConfigError
from skinedge.train.config import ModelSection, OptimSection
from skinedge.utils.config import load_config
from skinedge.utils.device import check_device_word
from skinedge.utils.io import atomic_write_text

#: File name of the resolved configuration in a run folder.
FEDERATION_FILE = "federation.json"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteSpec(_Section):
    """One site (a clinic): its name and its own data, which never leaves it.

    ``data`` is a ``labels.csv`` folder (any layout ``skinedge data split`` reads; split by
    lesion into the site's train/val by ``val_fraction``) or a split manifest (its ``train``
    rows train, its ``val`` rows validate; ``test`` rows are never read).
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    data: Path
    max_images: int | None = Field(None, ge=1)  # cap on the site's train rows (whole lesions)


class DPSection(_Section):
    """Client-side clipping with Gaussian noise (Flower's ``fixedclipping_mod`` on each site,
    ``DifferentialPrivacyClientSideFixedClipping`` on the server).

    Each site's update (its new weights minus the global ones) is clipped on the site to L2 norm
    ``clipping_norm``; the server adds Gaussian noise of std ``noise_multiplier *
    clipping_norm / sampled_sites`` to the average. Site-level (epsilon, delta) is reported.
    """

    enabled: bool = False
    clipping_norm: float = Field(1.0, gt=0)
    noise_multiplier: float = Field(1.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)


class SecAggSection(_Section):
    """Secure aggregation (Flower's SecAgg+): the server sees only the sum of masked updates."""

    enabled: bool = False
    num_shares: int = Field(3, ge=3)  # shares of each site's key; <= the number of sites
    reconstruction_threshold: int = Field(2, ge=2)  # shares needed to unmask a dropped site
    clipping_range: float = Field(8.0, gt=0)  # parameters are clipped to +-this, then quantized
    max_weight: float = Field(10_000, gt=0)  # >= a site's train rows (SecAgg+ weighs by them)


class FederatedConfig(_Section):
    """Everything a federated run depends on; written as ``federation.json`` beside its outputs."""

    sites: list[SiteSpec] = Field(default_factory=list)
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    proximal_mu: float = Field(0.01, ge=0)  # FedProx: weight of (mu/2)||w - w_global||^2
    rounds: int = Field(3, ge=1)
    local_epochs: int = Field(1, ge=1)
    fraction: float = Field(1.0, gt=0, le=1)  # of the sites sampled each round
    model: ModelSection = Field(default_factory=ModelSection)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimSection = Field(default_factory=lambda: OptimSection(scheduler="none"))
    class_weights: Literal["none", "inverse", "sqrt_inverse"] = "sqrt_inverse"
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    max_batches_per_epoch: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.15, gt=0, lt=1)  # folder sites: lesions held out for val
    dp: DPSection = Field(default_factory=DPSection)
    secagg: SecAggSection = Field(default_factory=SecAggSection)
    threads: int = Field(1, ge=1)  # torch threads per site process
    device: str = "cpu"
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> FederatedConfig:
        check_device_word(self.device)
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must differ; got {names}")
        if self.dp.enabled and self.secagg.enabled:
            raise ValueError(
                "dp.enabled and secagg.enabled together are not supported: Flower 1.42's "
                "fixedclipping_mod needs the one config record that SecAgg+ messages do not "
                "have; turn one of them off")
        if self.secagg.reconstruction_threshold >= self.secagg.num_shares:
            raise ValueError("secagg.reconstruction_threshold must be below secagg.num_shares")
        return self

    def sampled_sites(self) -> int:
        """Sites trained each round: ``fraction`` of them, at least 2 (all when fewer)."""
        n = len(self.sites)
        return min(n, max(int(n * self.fraction), 2))


def load_federated_config(path: Path | None = None,
                          overrides: list[str] | None = None) -> FederatedConfig:
    """Read a YAML config (optional), apply ``--set`` overrides, validate.

    Raises:
        ConfigError: unreadable YAML or invalid values; the message names the file and field.
    """
    return load_config(path, overrides, FederatedConfig, kind="federated config")


def write_federation(cfg: FederatedConfig, out_dir: Path) -> Path:
    """Write the resolved configuration (site paths made absolute) as ``federation.json``."""
    sites = [s.model_copy(update={"data": Path(s.data).resolve()}) for s in cfg.sites]
    resolved = cfg.model_copy(update={"sites": sites})
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out_dir / FEDERATION_FILE, resolved.model_dump_json(indent=1))


def read_federation(path: Path | str) -> FederatedConfig:
    """The configuration a run folder's ``federation.json`` holds.

    Raises:
        NotFoundError-like ConfigError: the file is missing or not a valid federation.
    """
    path = Path(path)
    if path.is_dir():
        path = path / FEDERATION_FILE
    try:
        return FederatedConfig.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: start the run with `skinedge federated "
                          "simulate` or `skinedge federated deploy`, which write it") from None
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ConfigError(f"{path} is not a valid federation file ({exc}); write it again "
                          "with `skinedge federated simulate --out`") from exc
