"""Binned mutual information, the KDE bound, the symmetric task and the information-plane net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from labkit.infocomm import infoplane as ip


def test_binned_information_by_hand() -> None:
    # four equally likely inputs; one unit with values -0.9, -0.8, 0.8, 0.9 and 2 bins:
    # bin(T) = (0, 0, 1, 1), so I(X;T) = H(bin T) = 1 bit; Y = (0, 0, 1, 1) copies it: 1 bit.
    t = torch.tensor([[-0.9], [-0.8], [0.8], [0.9]])
    y = torch.tensor([0, 0, 1, 1])
    assert ip.binned_information(t, y, bins=2) == pytest.approx((1.0, 1.0))
    # a label independent of the bins carries nothing: Y = (0, 1, 0, 1)
    ixt, ity = ip.binned_information(t, torch.tensor([0, 1, 0, 1]), bins=2)
    assert ixt == pytest.approx(1.0) and ity == pytest.approx(0.0, abs=1e-12)
    # 4 bins (edges -0.5, 0, 0.5) split -0.9 from -0.3: every input has its own cell, 2 bits
    spread = torch.tensor([[-0.9], [-0.3], [0.3], [0.9]])
    assert ip.binned_information(spread, y, bins=4)[0] == pytest.approx(2.0)
    assert ip.binned_information(t, y, bins=4)[0] == pytest.approx(1.0)


def test_binned_information_matches_sklearn_and_obeys_data_processing() -> None:
    g = torch.Generator().manual_seed(1)
    t = torch.tanh(torch.randn(500, 3, generator=g))
    y = torch.randint(0, 2, (500,), generator=g)
    for bins in (2, 5, 30):
        ixt, ity = ip.binned_information(t, y, bins=bins)
        ids = ip.discretise(t, bins, -1.0, 1.0)
        assert ity == pytest.approx(mutual_info_score(ids, y.numpy()) / math.log(2), abs=1e-12)
        assert ity <= ixt + 1e-12 and ixt <= math.log2(500) + 1e-12


def test_discretise_groups_equal_rows() -> None:
    t = torch.tensor([[0.1, 0.2], [0.12, 0.21], [-0.5, 0.2]])
    ids = ip.discretise(t, 4, -1.0, 1.0)
    assert ids[0] == ids[1] and ids[0] != ids[2]


def test_entropy_bits_rows_and_values() -> None:
    assert ip.entropy_bits(np.array([0, 1, 2, 3])) == pytest.approx(2.0)
    assert ip.entropy_bits(np.array([[0, 1], [0, 1], [1, 0], [1, 1]])) == pytest.approx(1.5)


def test_kde_bound_limits() -> None:
    # points far apart: each mixture component alone, the bound is log2 N
    far = torch.arange(8.0)[:, None] * 100
    assert ip.kde_upper_bound(far, noise_var=0.1) == pytest.approx(3.0)
    # all points equal: nothing about X passes
    assert ip.kde_upper_bound(torch.zeros(8, 2), noise_var=0.1) == pytest.approx(0.0, abs=1e-12)
    # more noise, less information
    pts = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    assert ip.kde_upper_bound(pts, noise_var=1.0) < ip.kde_upper_bound(pts, noise_var=0.01)


def test_symmetric_task_balanced_and_invariant() -> None:
    x, y = ip.symmetric_task(seed=3)
    assert x.shape == (4096, 12) and int(y.sum()) == 2048
    assert torch.unique(x, dim=0).shape[0] == 4096
    # flipping the first point of R^3 (bits 0-2) keeps the score, hence the label, of each
    # input up to tie-breaking: compare the scores through the label's majority
    flipped = x.clone()
    flipped[:, :3] = 1 - flipped[:, :3]
    index = (flipped.long() * (2 ** torch.arange(11, -1, -1))).sum(1)
    assert (y[index] == y).float().mean() > 0.95


def test_train_info_net_fits_and_records() -> None:
    x, y = ip.symmetric_task(seed=0)
    run = ip.train_info_net(x, y, n_epochs=60, n_snapshots=5, lr=2e-2, seed=0)
    assert run.epochs[0] == 0 and run.epochs[-1] == 60
    assert [h.shape[1] for h in run.hidden[0]] == list(ip.WIDTHS[1:-1])
    assert run.train_error[-1] < run.train_error[0]
    plane = run.plane(y, bins=30)
    assert plane.shape == (len(run.epochs), 5, 2)
    assert (plane[..., 1] <= plane[..., 0] + 1e-9).all() and (plane[..., 0] <= 12 + 1e-9).all()


def test_bad_arguments() -> None:
    t, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="bins"):
        ip.binned_information(t, y, bins=1)
    with pytest.raises(TypeError, match="bins"):
        ip.binned_information(t, y, bins=2.5)
    with pytest.raises(ValueError, match="high"):
        ip.discretise(t, 4, 1.0, -1.0)
    with pytest.raises(ValueError, match="y must"):
        ip.binned_information(t, torch.zeros(3), bins=4)
    with pytest.raises(ValueError, match="noise_var"):
        ip.kde_upper_bound(t, noise_var=0.0)
    with pytest.raises(ValueError, match="activation"):
        ip.train_info_net(*ip.symmetric_task(), activation="gelu", n_epochs=1)
    with pytest.raises(ValueError, match="x must"):
        ip.train_info_net(torch.zeros(4, 3), y, n_epochs=1)
