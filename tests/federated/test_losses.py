"""FedProx's proximal term and the partial-label loss (ISIC 2020's "benign")."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skinedge.federated.task import ProximalCriterion
from skinedge.train.losses import NOT_POSITIVE, PartialLabelLoss


def test_full_labels_are_cross_entropy():
    logits = torch.randn(6, 7)
    target = torch.tensor([0, 1, 2, 3, 4, 6])
    assert PartialLabelLoss(0)(logits, target) == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-6)


def test_partial_row_costs_minus_log_one_minus_p_mel():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.3, -0.2, 0.1]])
    p_mel = torch.softmax(logits, 1)[0, 0].item()
    loss = PartialLabelLoss(0)(logits, torch.tensor([NOT_POSITIVE]))
    assert loss.item() == pytest.approx(-math.log(1 - p_mel), rel=1e-5)
    # Mixed batch: the mean of the two kinds of rows.
    both = PartialLabelLoss(0)(logits.repeat(2, 1), torch.tensor([NOT_POSITIVE, 1]))
    ce = F.cross_entropy(logits, torch.tensor([1])).item()
    assert both.item() == pytest.approx((-math.log(1 - p_mel) + ce) / 2, rel=1e-5)


def test_partial_loss_is_finite_when_the_model_is_sure_of_melanoma():
    logits = torch.tensor([[60.0, -60, -60, -60, -60, -60, -60]], requires_grad=True)
    loss = PartialLabelLoss(0)(logits, torch.tensor([NOT_POSITIVE]))
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 50
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 0] > 0  # pushes p_mel down


def test_partial_loss_rejects_other_negative_targets():
    with pytest.raises(ValueError):
        PartialLabelLoss(0)(torch.randn(2, 7), torch.tensor([-2, 1]))


def test_proximal_term_is_half_mu_squared_distance_to_the_global_weights():
    model = nn.Linear(3, 2)
    crit = ProximalCriterion(nn.CrossEntropyLoss(), model, mu=0.5)
    assert crit.proximal_term().item() == 0
    with torch.no_grad():
        model.weight.add_(0.1)
        model.bias.sub_(0.2)
    expected = 0.5 / 2 * (6 * 0.1 ** 2 + 2 * 0.2 ** 2)
    assert crit.proximal_term().item() == pytest.approx(expected, rel=1e-5)
    logits, target = model(torch.randn(4, 3)), torch.tensor([0, 1, 0, 1])
    assert crit(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item() + expected, rel=1e-5)
    # Gradient of the term pulls the weights back to the global ones.
    model.zero_grad()
    crit.proximal_term().backward()
    assert torch.allclose(model.weight.grad, torch.full_like(model.weight, 0.5 * 0.1))
    assert ProximalCriterion(nn.CrossEntropyLoss(), model, mu=0.0)(logits, target).item() == \
        pytest.approx(F.cross_entropy(logits, target).item())
