"""The federated task, shared by the ServerApp and the ClientApp: model, data, train, test.

What travels is :func:`exchanged_state`: the model's trainable parameters and, without DP, the
BatchNorm running statistics of the trainable stages; frozen stages (identical everywhere, from
the same offline weights) and integer counters never leave. With DP the BatchNorm layers are
kept in eval mode during local training (their running statistics are data aggregates that the
clipping and noise would not cover, and noise on a running variance can make it negative), so
only clipped, noised parameters leave a site.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from skinedge.data import LesionDataset, build_eval_transform, build_train_transform
from skinedge.data.classes import get_vocabulary
from skinedge.federated.config import FederatedConfig
from skinedge.federated.sites import FEDERATION_VOCABULARY, SiteData, SiteRows
from skinedge.train import loop
from skinedge.train.losses import NOT_POSITIVE, PartialLabelLoss, class_weights
from skinedge.train.optim import freeze_stages


def classes() -> tuple[str, ...]:
    """The federation's class codes, in output order."""
    return get_vocabulary(FEDERATION_VOCABULARY).codes


def build_model(cfg: FederatedConfig) -> tuple[nn.Module, str]:
    """The federation's classifier with its frozen stages, identical on every machine (seeded
    head), and where its starting weights came from."""
    from skinedge.models import create_classifier

    torch.manual_seed(cfg.seed)
    model, provenance = create_classifier(
        cfg.model.arch, len(classes()), pretrained=cfg.model.pretrained,
        drop_rate=cfg.model.drop_rate, head_init_std=cfg.model.head_init_std)
    freeze_stages(model, cfg.model.freeze_stages)
    return model.to(memory_format=torch.channels_last), provenance


def exchanged_keys(model: nn.Module, cfg: FederatedConfig) -> list[str]:
    """State-dict keys that cross the wire: trainable parameters, plus (without DP) the
    running mean/var of BatchNorm layers whose parameters train."""
    keys = [name for name, p in model.named_parameters() if p.requires_grad]
    if not cfg.dp.enabled and not cfg.secagg.enabled:
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(
                    p.requires_grad for p in module.parameters(recurse=False)):
                keys += [f"{name}.running_mean", f"{name}.running_var"]
    return keys


def exchanged_state(model: nn.Module, cfg: FederatedConfig) -> dict[str, np.ndarray]:
    """The arrays a site sends: ``{key: float32 array}`` for :func:`exchanged_keys`."""
    state = model.state_dict()
    return {k: state[k].detach().cpu().float().numpy().copy() for k in exchanged_keys(model, cfg)}


def load_exchanged_state(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Put received arrays into ``model`` (other entries keep their values).

    Raises:
        ValueError: an array names no entry of the model or has another shape.
    """
    state = model.state_dict()
    for key, value in arrays.items():
        if key not in state or tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"received array {key!r} {tuple(value.shape)} does not fit the "
                             "model; the server and the sites must use the same config")
        state[key].copy_(torch.from_numpy(np.asarray(value)).to(state[key].dtype))


class ProximalCriterion(nn.Module):
    """FedProx: ``base(logits, targets) + mu / 2 * ||w - w_global||^2`` over the trainable
    parameters (Li et al. 2018), the global weights copied when the round starts."""

    def __init__(self, base: nn.Module, model: nn.Module, mu: float):
        super().__init__()
        self.base, self.mu = base, mu
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._anchor = [p.detach().clone() for p in self._params]

    def proximal_term(self) -> torch.Tensor:
        """``mu / 2 * sum ||w - w_global||^2``."""
        total = sum(((p - a) ** 2).sum() for p, a in zip(self._params, self._anchor))
        return self.mu / 2 * total

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.base(logits, targets)
        return loss + self.proximal_term() if self.mu > 0 else loss


def _train_mode_frozen_stages(model: nn.Module) -> None:
    """Training mode, with the BatchNorm layers of frozen stages in eval mode: their running
    statistics are never exchanged, so they must not drift on a site either."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters(recurse=False)):
            module.eval()


def _frozen_bn_train_mode(model: nn.Module) -> None:
    """Training mode with every BatchNorm in eval mode (running statistics not updated)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _dataset(site: SiteData, rows: SiteRows, transform) -> LesionDataset:
    return LesionDataset(site.root, rows.images, rows.targets, transform)


@dataclass
class LocalResult:
    """What one site's local training did (scalars only: these are sent as metrics)."""

    loss: float
    images: int  # images trained on, all epochs
    examples: int  # train rows of the site
    update_norm: float  # L2 norm of (new - global) over the trainable parameters, unclipped


def train_local(model: nn.Module, site: SiteData, cfg: FederatedConfig, *, server_round: int,
                proximal_mu: float = 0.0) -> LocalResult:
    """Train ``model`` (holding the global weights) on the site's train rows for
    ``cfg.local_epochs`` epochs through :func:`skinedge.train.loop.fit_epoch`."""
    from skinedge.train.config import TrainConfig
    from skinedge.train.optim import build_optimizer

    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device if cfg.device != "auto" else "cpu")
    model.to(device)
    before = exchanged_state(model, cfg)
    counts = [site.train.targets.count(i) for i in range(len(classes()))]
    base = PartialLabelLoss(classes().index("mel"), class_weights(counts, cfg.class_weights))
    criterion = ProximalCriterion(base, model, proximal_mu).to(device)
    optimizer = build_optimizer(model, TrainConfig(optim=cfg.optim, model=cfg.model))
    train_set = _dataset(site, site.train, build_train_transform(cfg.preprocess, cfg.augment))
    train_mode = (_frozen_bn_train_mode if (cfg.dp.enabled or cfg.secagg.enabled)
                  else _train_mode_frozen_stages)
    total, seen = 0.0, 0
    for local_epoch in range(1, cfg.local_epochs + 1):
        epoch = (server_round - 1) * cfg.local_epochs + local_epoch
        loop.seed_epoch(cfg.seed, epoch)
        loader = loop.epoch_loader(train_set, batch_size=cfg.batch_size, epoch=epoch,
                                   seed=cfg.seed, device=device)
        stats = loop.fit_epoch(model, loader, criterion, optimizer, device=device,
                               max_batches=cfg.max_batches_per_epoch, epoch=epoch,
                               train_mode=train_mode)
        total += stats.loss * stats.images
        seen += stats.images
    after = exchanged_state(model, cfg)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    norm = math.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in after
                         if k in trainable))
    return LocalResult(total / max(seen, 1), seen, len(site.train.images), norm)


@dataclass
class LocalEvaluation:
    """A site's validation of the global model (scalars only)."""

    loss: float  # partial-label negative log-likelihood
    accuracy: float  # over fully labelled rows (nan when none)
    melanoma_auc: float  # mel vs the rest, partial rows included (nan when undefined)
    examples: int


def evaluate_local(model: nn.Module, site: SiteData, cfg: FederatedConfig) -> LocalEvaluation:
    """Score the model on the site's val rows."""
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device if cfg.device != "auto" else "cpu")
    model.to(device)
    dataset = _dataset(site, site.val, build_eval_transform(cfg.preprocess))
    result = loop.validate(model, dataset, device=device, batch_size=cfg.eval_batch_size)
    probs, targets = result.probs, result.targets
    mel = classes().index("mel")
    full = targets >= 0
    p_true = np.where(full, probs[np.arange(len(targets)), np.clip(targets, 0, None)],
                      1 - probs[:, mel])
    loss = float(-np.log(np.clip(p_true, 1e-12, 1)).mean())
    accuracy = float((probs[full].argmax(1) == targets[full]).mean()) if full.any() else math.nan
    is_mel = targets == mel
    auc = (float(roc_auc_score(is_mel, probs[:, mel])) if 0 < is_mel.sum() < len(targets)
           else math.nan)
    return LocalEvaluation(loss, accuracy, auc, len(targets))


def label_summary(site: SiteData) -> dict[str, int]:
    """Train rows per federation class (``not-mel`` for partial rows)."""
    codes = classes()
    return {(codes[t] if t != NOT_POSITIVE else "not-mel"): n
            for t, n in sorted(Counter(site.train.targets).items())}
