"""labkit.graphs.bpr: the loss by hand and one epoch of batches."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.graphs.bpr import bpr_batches, bpr_loss


def test_loss_by_hand() -> None:
    assert bpr_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2))
    two_negs = bpr_loss(torch.tensor([1.0]), torch.tensor([[1.0, 1.0]]))
    assert two_negs.item() == pytest.approx(math.log(2))
    assert bpr_loss(torch.tensor([10.0]), torch.tensor([-10.0])).item() < 1e-8
    with pytest.raises(ValueError, match="batch"):
        bpr_loss(torch.zeros(3), torch.zeros(2))


def test_one_epoch_covers_every_pair_once() -> None:
    train = torch.stack([torch.arange(10) % 3, torch.arange(10)])
    seen = []
    for users, pos, neg in bpr_batches(train, 12, batch_size=4, n_neg=2, generator=torch.Generator().manual_seed(0)):
        assert neg.shape == (users.numel(), 2)
        seen += list(zip(users.tolist(), pos.tolist()))
    assert sorted(seen) == sorted(zip(train[0].tolist(), train[1].tolist()))
    with pytest.raises(ValueError, match="batch_size"):
        next(bpr_batches(train, 12, batch_size=0))
