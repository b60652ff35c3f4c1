"""The information plane: how much a layer keeps about the input and about the label.

Paper: "Opening the Black Box of Deep Neural Networks via Information", Shwartz-Ziv and Tishby,
2017, arXiv:1703.00810.

Every hidden layer ``T`` of a network is a deterministic function of the input ``X``, so for a
discrete, uniform ``X`` the mutual information ``I(X;T)`` is the entropy of ``T`` itself, and
``I(T;Y)`` measures how much of the label survives. The paper estimates both by binning each
unit's activation (Sec. 3) and plots each layer as a point of the plane ``(I(X;T), I(T;Y))``
as training runs: first both rise (fitting), then ``I(X;T)`` falls (compression). Binning makes
``I(X;T)`` depend on the bins, not only on the network; a second estimator adds Gaussian noise
to the layer and bounds ``I(X;T)`` from above by a kernel density (pairwise KL) bound.

The miniature keeps the paper's setting (all 4096 inputs of 12 bits, a balanced binary label
from a symmetric rule, a tanh 12-10-7-5-4-3-2 net trained full batch) but trains with Adam for
a few thousand epochs, not SGD for ten thousand, and on every input (no held-out split).

Shapes: N inputs (4096 = 2^12), D input bits (12), H units of a layer, S snapshots.
Section: chapter 16, "The information plane".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.validation import check_int, check_real

__all__ = [
    "InfoPlaneRun",
    "binned_information",
    "discretise",
    "entropy_bits",
    "kde_upper_bound",
    "symmetric_task",
    "train_info_net",
]

WIDTHS: tuple[int, ...] = (12, 10, 7, 5, 4, 3, 2)


def symmetric_task(*, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``2^12`` inputs of 12 bits and a balanced binary label from a symmetric rule.

    The rule (ours; the paper's used 12 points on a sphere and O(3) symmetry): read the bits as
    +-1, group them into four points of R^3, ``p_k = (x_{3k}, x_{3k+1}, x_{3k+2})``, fixed unit
    vectors ``u_k`` drawn once from ``seed``; the score ``sum_k (u_k . p_k)^2`` is unchanged by
    flipping any point (a reflection), and the label is 1 for the upper half of the scores
    (ties broken by the input's index, so exactly half the inputs are positive).

    Returns:
        ``x`` (N, 12) float in {0, 1} and ``y`` (N,) int64 in {0, 1}.
    """
    seed = check_int("seed", seed, 0)
    n = 2**12
    bits = (torch.arange(n)[:, None] >> torch.arange(11, -1, -1)) & 1  # (N, 12)
    x = bits.float()
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(4, 3, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    points = (2 * x.double() - 1).view(n, 4, 3)
    score = ((points * u).sum(-1) ** 2).sum(-1)  # (N,)
    order = torch.argsort(score, stable=True)
    y = torch.zeros(n, dtype=torch.int64)
    y[order[n // 2:]] = 1
    return x, y


def entropy_bits(labels: np.ndarray) -> float:
    """Entropy in bits of the empirical distribution of the rows (or values) of ``labels``."""
    arr = np.asarray(labels)
    if arr.ndim == 2:
        arr = _row_ids(arr.astype(np.int64))
    _, counts = np.unique(arr, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def discretise(t: torch.Tensor, bins: int, low: float, high: float) -> np.ndarray:
    """Each row of ``t`` (N, H) as one integer id of its binned units (equal bins on [low, high]).

    Raises:
        ValueError: ``bins`` below 2 or ``high <= low``.
    """
    bins = check_int("bins", bins, 2)
    low = check_real("low", low)
    high = check_real("high", high)
    if high <= low:
        raise ValueError(f"high must be above low, got low={low}, high={high}")
    edges = torch.linspace(low, high, bins + 1)[1:-1]
    codes = torch.bucketize(t.detach().float().cpu(), edges).numpy()  # (N, H) in [0, bins)
    return _row_ids(codes.astype(np.int32))


def _row_ids(codes: np.ndarray) -> np.ndarray:
    """One integer per distinct row of ``codes`` (N, K), via a byte view of each row."""
    rows = np.ascontiguousarray(codes)
    packed = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))[:, 0]
    _, ids = np.unique(packed, return_inverse=True)
    return ids.reshape(-1)


def binned_information(t: torch.Tensor, y: torch.Tensor, *, bins: int = 30,
                       low: float = -1.0, high: float = 1.0) -> tuple[float, float]:
    """``(I(X;T), I(T;Y))`` in bits of a layer ``t`` (N, H) over all N equally likely inputs.

    ``T`` is a function of ``X`` and ``X`` is uniform, so ``I(X;T) = H(bin(T))``; and
    ``I(T;Y) = H(bin(T)) + H(Y) - H(bin(T), Y)`` (the paper's Sec. 3 estimator).
    """
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise ValueError("t must be a 2-D tensor (N, H) of a layer's activations")
    if not isinstance(y, torch.Tensor) or y.shape != (t.shape[0],):
        raise ValueError(f"y must be a tensor of shape ({t.shape[0]},), one label per row of t")
    # show: start binned
    ids = discretise(t, bins, low, high)  # one id per input: its binned layer
    labels = y.cpu().numpy()
    h_t = entropy_bits(ids)  # = I(X;T): T is a function of a uniform X
    h_y = entropy_bits(labels)
    h_ty = entropy_bits(np.stack([ids, labels], axis=1))
    return h_t, h_t + h_y - h_ty  # I(X;T), I(T;Y)
    # show: end binned


def kde_upper_bound(t: torch.Tensor, *, noise_var: float = 0.1) -> float:
    """Upper bound in bits on ``I(X; T + Z)``, ``Z ~ N(0, noise_var I)``, from pairwise KL.

    With ``N`` equally likely inputs the noisy layer is a mixture of Gaussians centred on the
    rows ``h_i``; Kolchinsky and Tracey's bound gives
    ``I <= -(1/N) sum_i log (1/N) sum_j exp(-|h_i - h_j|^2 / (2 noise_var))``,
    at most ``log2 N``.
    """
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise ValueError("t must be a 2-D tensor (N, H) of a layer's activations")
    noise_var = check_real("noise_var", noise_var, 0.0, strict=True)
    h = t.detach().double()
    d2 = torch.cdist(h, h) ** 2  # (N, N)
    n = h.shape[0]
    log_mean = torch.logsumexp(-d2 / (2 * noise_var), dim=1) - math.log(n)
    return float(-log_mean.mean() / math.log(2))


class InfoNet(nn.Module):
    """The paper's fully connected net, 12-10-7-5-4-3-2, with tanh or ReLU hidden units."""

    def __init__(self, activation: str = "tanh", *, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
        self.act = torch.tanh if activation == "tanh" else F.relu
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (N, 2) and the hidden layers' activations, first to last."""
        hidden = []
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
            hidden.append(x)
        return self.layers[-1](x), hidden


@dataclass(frozen=True)
class InfoPlaneRun:
    """Snapshots of one training run.

    Attributes:
        epochs: the S epochs at which the layers were recorded.
        hidden: ``hidden[s][l]`` is layer l's activations (N, H_l) at ``epochs[s]``.
        train_error: fraction of inputs misclassified at each snapshot.
        activation: ``"tanh"`` or ``"relu"``.
    """

    epochs: list[int]
    hidden: list[list[torch.Tensor]]
    train_error: list[float]
    activation: str

    def plane(self, y: torch.Tensor, *, bins: int = 30) -> np.ndarray:
        """``(S, L, 2)`` array of ``(I(X;T), I(T;Y))`` per snapshot and hidden layer.

        tanh layers are binned on [-1, 1]; ReLU layers on [0, the layer's largest activation
        over the run] (fixed bins per layer, as for tanh).
        """
        n_layers = len(self.hidden[0])
        out = np.zeros((len(self.epochs), n_layers, 2))
        for layer in range(n_layers):
            if self.activation == "tanh":
                low, high = -1.0, 1.0
            else:
                top = max(float(snap[layer].max()) for snap in self.hidden)
                low, high = 0.0, max(top, 1e-6)
            for s, snap in enumerate(self.hidden):
                out[s, layer] = binned_information(snap[layer], y, bins=bins, low=low,
                                                   high=high)
        return out


def snapshot_epochs(n_epochs: int, n_snapshots: int) -> list[int]:
    """About ``n_snapshots`` epochs from 0 to ``n_epochs``, log-spaced (dense early)."""
    n_epochs = check_int("n_epochs", n_epochs, 1)
    n_snapshots = check_int("n_snapshots", n_snapshots, 2)
    grid = np.unique(np.round(np.geomspace(1, n_epochs + 1, n_snapshots)).astype(int) - 1)
    return [int(e) for e in grid]


def train_info_net(x: torch.Tensor, y: torch.Tensor, *, activation: str = "tanh",
                   n_epochs: int = 3000, n_snapshots: int = 40, lr: float = 3e-3,
                   seed: int = 0) -> InfoPlaneRun:
    """Train :class:`InfoNet` full batch on ``(x, y)`` and record every hidden layer.

    Args:
        x: (N, 12) inputs; y: (N,) labels in {0, 1}.
        activation: ``"tanh"`` (the paper's) or ``"relu"``.
        n_epochs: full-batch Adam steps; n_snapshots: about how many recordings (log-spaced).
        lr: Adam's learning rate; seed: initialisation.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != WIDTHS[0]:
        raise ValueError(f"x must be a (N, {WIDTHS[0]}) tensor")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError("y must be a (N,) tensor of labels, one per row of x")
    lr = check_real("lr", lr, 0.0, strict=True)
    seed = check_int("seed", seed, 0)
    keep = set(snapshot_epochs(n_epochs, n_snapshots))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices of 4096 x 12: extra threads only add overhead
    try:
        return _train(x, y, activation, n_epochs, keep, lr, seed)
    finally:
        torch.set_num_threads(threads)


def _train(x: torch.Tensor, y: torch.Tensor, activation: str, n_epochs: int,
           keep: set[int], lr: float, seed: int) -> InfoPlaneRun:
    torch.manual_seed(seed)
    net = InfoNet(activation)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    epochs, hidden, errors = [], [], []
    for epoch in range(n_epochs + 1):
        logits, layers = net(x)
        if epoch in keep:
            epochs.append(epoch)
            hidden.append([h.detach().clone() for h in layers])
            errors.append(float((logits.argmax(1) != y).float().mean()))
        if epoch == n_epochs:
            break
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return InfoPlaneRun(epochs, hidden, errors, activation)
