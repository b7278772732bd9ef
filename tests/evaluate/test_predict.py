"""Batch prediction, with and without flip test-time augmentation."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from skinedge.evaluate.predict import predict_probs


class LeftRight(nn.Module):
    """Class 0 logit = mean of the left half, class 1 = mean of the right half: not flip-invariant."""

    def forward(self, x):
        half = x.shape[-1] // 2
        return torch.stack([x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))], dim=1) * 10


def _dataset():
    torch.manual_seed(0)
    images = torch.rand(5, 3, 8, 8)
    images[:, :, :, :4] += 1.0  # the left half is brighter: class 0 wins without TTA
    return TensorDataset(images, torch.zeros(5, dtype=torch.long))


def test_without_tta_rows_are_softmax_of_the_logits():
    data = _dataset()
    probs, targets = predict_probs(LeftRight(), data, batch_size=2)
    expected = torch.softmax(LeftRight()(data.tensors[0]), dim=1).double().numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert targets.tolist() == [0] * 5
    assert (probs[:, 0] > 0.9).all()


def test_flip_tta_averages_the_four_flipped_views():
    data = _dataset()
    probs, _ = predict_probs(LeftRight(), data, batch_size=3, tta="flips")
    x = data.tensors[0]
    views = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)]
    expected = torch.stack([torch.softmax(LeftRight()(v), dim=1) for v in views]).mean(0)
    np.testing.assert_allclose(probs, expected.double().numpy(), atol=1e-6)
    # Horizontal flips swap the halves, so TTA pulls the confident class-0 rows towards 0.5.
    assert (np.abs(probs[:, 0] - 0.5) < 0.01).all()


def test_unknown_tta_mode_is_refused():
    with pytest.raises(ValueError, match="flips"):
        predict_probs(LeftRight(), _dataset(), tta="rotations")
