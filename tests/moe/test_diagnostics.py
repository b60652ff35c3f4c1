"""Router diagnostics: entropies and mutual information on hand-checked examples."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.moe.diagnostics import (layer_mutual_information, max_entropy, mutual_information, selection_entropy,
                                    token_entropy)


def test_token_entropy_uniform_and_certain():
    assert token_entropy(torch.full((3, 4), 0.25)) == pytest.approx(math.log(4))
    assert token_entropy(torch.eye(4)) == pytest.approx(0.0, abs=1e-12)


def test_selection_entropy_ignores_drops():
    experts = torch.tensor([[0, 1], [2, 3], [-1, -1]])
    assert selection_entropy(experts, 4) == pytest.approx(math.log(4))
    assert selection_entropy(torch.tensor([[1], [1]]), 4) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no assignment"):
        selection_entropy(torch.full((2, 1), -1), 4)


def test_mutual_information_hand_checked():
    a = torch.tensor([0, 0, 1, 1])
    assert mutual_information(a, a, 2, 2) == pytest.approx(math.log(2))  # a copy: I = H = log 2
    assert mutual_information(a, torch.tensor([0, 1, 0, 1]), 2, 2) == pytest.approx(0.0)  # independent
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 5, (1000,), generator=g), torch.randint(0, 3, (1000,), generator=g)
    assert 0 <= mutual_information(x, y, 5, 3) <= math.log(3)


def test_mutual_information_bad_inputs():
    with pytest.raises(ValueError, match="equal length"):
        mutual_information(torch.tensor([0, 1]), torch.tensor([0]), 2, 2)
    with pytest.raises(ValueError, match="out of range"):
        mutual_information(torch.tensor([0, 2]), torch.tensor([0, 1]), 2, 2)
    with pytest.raises(ValueError, match="at least one"):
        mutual_information(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 2, 2)


def test_layer_mutual_information_follows_the_chain():
    g = torch.Generator().manual_seed(0)
    l0 = torch.randint(0, 4, (400,), generator=g)
    trace = torch.stack([l0, l0, torch.randint(0, 4, (400,), generator=g)], dim=1)[:, :, None]  # (N, 3, 1)
    mi = layer_mutual_information(trace, 4)
    assert len(mi) == 2 and mi[0] > 1.3 and mi[1] < 0.05  # copied, then independent
    assert max_entropy(4) == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="N, L, k"):
        layer_mutual_information(trace[:, :, 0], 4)
