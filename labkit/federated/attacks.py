"""Byzantine peers and the federated run they attack, on a frozen convolutional trunk.

f of P peers lie about their update. Four attacks, each a function of what the liars can
see (their own data and, for the omniscient one, every honest update):

- ``"sign flip"``: send -10 times the honest gradient of one's own data;
- ``"noise"``: send Gaussian noise, standard deviation ``sigma`` per coordinate;
- ``"label flip"``: send the honest gradient of one's own data with labels y -> 9 - y;
- ``"alie"``, a little is enough (Baruch et al., 2019, arXiv:1902.06156): every liar sends
  mean - z std of the honest updates, per coordinate, with z the quantile
  Phi^-1((P - s) / P), s = floor(P/2 + 1) - f, small enough to hide among them.

The learning task follows Bristle's transfer learning ("Bristle: Decentralized Federated
Learning in Byzantine, Non-i.i.d. Environments"): the digit classifier's two convolutions
are frozen, their features computed once, and only the two linear layers (``fc``, ``head``)
are trained from a fresh start by the P peers together. All peers' gradients are one
batched computation. Server-style rules keep one model; Bristle keeps one per peer.

Shapes: P peers, N samples, F trunk features (512), H hidden width (32), C classes (10),
D trained parameters (F H + H + H C + C).
Section: chapter 13, "Byzantine-robust aggregation".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from labkit.federated.aggregators import aggregate, bristle_aggregate
from labkit.validation import check_int, check_real, check_tensor

__all__ = ["ATTACKS", "FederatedRun", "TrunkTask", "alie_z", "apply_attack",
           "byzantine_heatmap", "init_params", "peer_gradients", "run_federated",
           "trunk_task"]

ATTACKS: tuple[str, ...] = ("sign flip", "noise", "label flip", "alie")


def alie_z(p: int, f: int) -> float:
    """A-little-is-enough's z: Phi^-1((P - s) / P) with s = floor(P/2 + 1) - f."""
    s = math.floor(p / 2 + 1) - f
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((p - s) / p)))


# show: start attacks
def apply_attack(attack: str, grads: torch.Tensor, liars: torch.Tensor, *,
                 flipped: torch.Tensor, sigma: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace the liars' rows of (P, D) honest gradients by their messages.

    ``flipped`` (P, D) holds every peer's gradient on labels 9 - y.
    """
    check_tensor("grads", grads, dims=2, dtype="float", shape="(P, D)")
    check_tensor("liars", liars, dims=1, dtype=torch.bool, shape="(P,)")
    if liars.shape[0] != grads.shape[0] or flipped.shape != grads.shape:
        raise ValueError(f"liars must be (P,) and flipped (P, D) for grads of shape "
                         f"{tuple(grads.shape)}, got {tuple(liars.shape)} and "
                         f"{tuple(flipped.shape)}")
    out = grads.clone()
    f = int(liars.sum())
    if f == 0:
        return out
    honest = grads[~liars]  # (P - f, D)
    if attack == "sign flip":
        out[liars] = -10.0 * grads[liars]
    elif attack == "noise":
        out[liars] = sigma * torch.randn(f, grads.shape[1], generator=generator)
    elif attack == "label flip":
        out[liars] = flipped[liars]
    elif attack == "alie":
        z = alie_z(grads.shape[0], f)
        out[liars] = honest.mean(0) - z * honest.std(0)
    else:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    return out
# show: end attacks


@dataclass(frozen=True)
class TrunkTask:
    """Frozen trunk features split over peers, padded to one (P, N_max, F) batch.

    Attributes:
        feats, labels: (P, N_max, F) features and (P, N_max) labels; padding has mask 0.
        mask: (P, N_max) 1.0 for a real sample.
        test_feats, test_labels: (N_test, F), (N_test,).
        val_feats, val_labels: (P, V, F), (P, V): each peer's few i.i.d. samples of
            every class, on which Bristle's integrator scores updates.
        hidden, n_classes: H and C.
    """

    feats: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    test_feats: torch.Tensor
    test_labels: torch.Tensor
    val_feats: torch.Tensor
    val_labels: torch.Tensor
    hidden: int = 32
    n_classes: int = 10

    @property
    def n_params(self) -> int:
        """D, the number of trained parameters."""
        f, h, c = self.feats.shape[2], self.hidden, self.n_classes
        return f * h + h + h * c + c

    def class_rows(self) -> torch.Tensor:
        """(C, H + 1) positions of each class's output row (weights, then bias)."""
        f, h, c = self.feats.shape[2], self.hidden, self.n_classes
        w2 = f * h + h + torch.arange(c * h).reshape(c, h)
        b2 = f * h + h + c * h + torch.arange(c)
        return torch.cat([w2, b2[:, None]], dim=1)


@torch.no_grad()
def trunk_task(classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
               parts: list[torch.Tensor], test_images: torch.Tensor,
               test_labels: torch.Tensor, *, val_per_class: int = 3,
               seed: int = 0) -> TrunkTask:
    """Run the classifier's frozen convolutions once and pad each peer's features.

    Args:
        classifier: a :class:`~labkit.diffusion.quality.DigitClassifier` (``conv1``,
            ``conv2``, ``fc``, ``head``); its ``fc`` and ``head`` are not used.
        images, labels: (N, 1, 8, 8) training images and (N,) labels.
        parts: P index tensors into the training set, one per peer.
        test_images, test_labels: the held-out set.
        val_per_class: V / C, samples of each class every peer may score updates on
            (Bristle assumes a small i.i.d. set per peer), drawn from the training set.
        seed: seed of that draw.
    """
    check_tensor("images", images, dims=4, dtype="float")
    check_tensor("labels", labels, dims=1, dtype="integer")
    if len(parts) < 2:
        raise ValueError(f"parts must split the data over at least 2 peers, got {len(parts)}")

    def trunk(x: torch.Tensor) -> torch.Tensor:
        h = F.relu(classifier.conv2(F.relu(classifier.conv1(x))))
        return F.max_pool2d(h, 2).flatten(1)  # (N, F)

    feats = trunk(images)
    n_max = max(len(p) for p in parts)
    fx = torch.zeros(len(parts), n_max, feats.shape[1])
    fy = torch.zeros(len(parts), n_max, dtype=torch.long)
    mask = torch.zeros(len(parts), n_max)
    for i, p in enumerate(parts):
        fx[i, :len(p)], fy[i, :len(p)], mask[i, :len(p)] = feats[p], labels[p], 1.0
    val_per_class = check_int("val_per_class", val_per_class, 1)
    g = torch.Generator().manual_seed(seed)
    n_classes = classifier.head.out_features
    val = torch.stack([torch.cat([
        pool[torch.randperm(len(pool), generator=g)[:val_per_class]]
        for pool in (torch.nonzero(labels == c).flatten() for c in range(n_classes))])
        for _ in parts])  # (P, V)
    return TrunkTask(fx, fy, mask, trunk(test_images), test_labels.clone(),
                     feats[val], labels[val],
                     hidden=classifier.fc.out_features,
                     n_classes=classifier.head.out_features)


def _logits(task: TrunkTask, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(Q, D) parameters, (Q, N, F) features -> (Q, N, C) logits."""
    f, h, c = task.feats.shape[2], task.hidden, task.n_classes
    w1 = theta[:, :f * h].reshape(-1, h, f)
    b1 = theta[:, f * h:f * h + h]
    w2 = theta[:, f * h + h:f * h + h + c * h].reshape(-1, c, h)
    b2 = theta[:, -c:]
    hid = torch.relu(torch.bmm(x, w1.transpose(1, 2)) + b1[:, None])  # (Q, N, H)
    return torch.bmm(hid, w2.transpose(1, 2)) + b2[:, None]  # (Q, N, C)


def peer_gradients(task: TrunkTask, theta: torch.Tensor,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
    """(P, D) gradient of each peer's mean loss on its own data, at its own row of theta.

    One batched forward and backward for all peers; ``labels`` (P, N_max) default to the
    task's own.
    """
    labels = task.labels if labels is None else labels
    theta = theta.detach().requires_grad_(True)
    ce = F.cross_entropy(_logits(task, theta, task.feats).flatten(0, 1),
                         labels.flatten(), reduction="none").view_as(task.mask)
    loss = ((ce * task.mask).sum(1) / task.mask.sum(1)).sum()
    (g,) = torch.autograd.grad(loss, theta)
    return g


@torch.no_grad()
def _accuracy(task: TrunkTask, theta: torch.Tensor) -> float:
    logits = _logits(task, theta, task.test_feats.expand(theta.shape[0], -1, -1))
    return (logits.argmax(2) == task.test_labels).float().mean().item()


@torch.no_grad()
def _class_losses(task: TrunkTask, peers: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """(K, Q, C) mean loss per class of Q models per peer on that peer's scoring samples.

    ``thetas`` is (K, Q, D): Q candidate models for each of the K ``peers``; one bmm.
    """
    k, q, d = thetas.shape
    x = task.val_feats[peers]  # (K, V, F)
    y = task.val_labels[peers]  # (K, V)
    xs = x[:, None].expand(k, q, *x.shape[1:]).reshape(k * q, *x.shape[1:])
    logits = _logits(task, thetas.reshape(k * q, d), xs)  # (K Q, V, C)
    ce = F.cross_entropy(logits.transpose(1, 2), y.repeat_interleave(q, 0),
                         reduction="none").view(k, q, -1)  # (K, Q, V)
    onehot = F.one_hot(y, task.n_classes).float()  # (K, V, C)
    return torch.einsum("kqv,kvc->kqc", ce, onehot) / onehot.sum(1, keepdim=True).clamp_min(1)


@dataclass
class FederatedRun:
    """Test accuracy of the honest peers' model(s) after each evaluated round."""

    rounds: list[int]
    accuracy: list[float]

    @property
    def final(self) -> float:
        """Accuracy after the last round."""
        return self.accuracy[-1]


def init_params(task: TrunkTask, *, seed: int = 0) -> torch.Tensor:
    """(D,) fresh He-uniform weights and zero biases for ``fc`` and ``head``."""
    g = torch.Generator().manual_seed(seed)
    f, h, c = task.feats.shape[2], task.hidden, task.n_classes
    w1 = (torch.rand(h * f, generator=g) * 2 - 1) * math.sqrt(6 / f)
    w2 = (torch.rand(c * h, generator=g) * 2 - 1) * math.sqrt(6 / h)
    return torch.cat([w1, torch.zeros(h), w2, torch.zeros(c)])


def run_federated(task: TrunkTask, *, rule: str, attack: str = "sign flip", f: int = 0,
                  rounds: int = 100, lr: float = 0.5, tolerate: int | None = None,
                  keep: int | None = None, sigma: float = 1.0, eval_every: int = 0,
                  seed: int = 0) -> FederatedRun:
    """Train ``fc`` and ``head`` by full-batch gradient steps aggregated with ``rule``.

    The last f peers lie with ``attack``. Server-style rules: one model, every peer's
    gradient at it, ``theta -= lr * aggregate``. ``"Bristle"``: each honest peer keeps its
    own model, applies every received update to it to measure its loss per class, and
    steps along :func:`bristle_aggregate`; liars compute at the honest peers' mean model.

    Args:
        rule: one of :data:`~labkit.federated.aggregators.RULES`.
        attack: one of :data:`ATTACKS`.
        f: number of liars, in [0, P - 1].
        rounds: gradient rounds.
        lr: step size.
        tolerate: the f the rule is told to tolerate (default: ``f``).
        keep: Bristle's k (default: P - ``tolerate``).
        sigma: noise attack's standard deviation.
        eval_every: evaluate every this many rounds (0: only at the end).
        seed: seeds the initialisation and the noise.
    """
    p = task.feats.shape[0]
    f = check_int("f", f, 0, p - 1)
    rounds = check_int("rounds", rounds, 1)
    lr = check_real("lr", lr, 0.0, strict=True)
    tolerate = f if tolerate is None else check_int("tolerate", tolerate, 0, p - 1)
    keep = p - tolerate if keep is None else check_int("keep", keep, 1, p)
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    gen = torch.Generator().manual_seed(seed + 1)
    liars = torch.arange(p) >= p - f
    flip_labels = task.n_classes - 1 - task.labels
    bristle = rule == "Bristle"
    theta = init_params(task, seed=seed).expand(p if bristle else 1, -1).clone()
    rows = task.class_rows()
    familiar = torch.ones(task.n_classes, dtype=torch.bool)  # scored on every class
    log = FederatedRun([], [])
    for t in range(1, rounds + 1):
        if bristle:  # liars see the honest peers' mean model
            at = theta.clone()
            at[liars] = theta[~liars].mean(0)
        else:
            at = theta.expand(p, -1)
        grads = peer_gradients(task, at)
        flipped = peer_gradients(task, at, flip_labels) if attack == "label flip" and f else grads
        sent = apply_attack(attack, grads, liars, flipped=flipped, sigma=sigma,
                            generator=gen)
        if not bristle:
            theta = theta - lr * aggregate(rule, sent, f=tolerate)[None]
        else:
            new = theta.clone()
            peers = torch.nonzero(~liars).flatten()
            steps = torch.cat([torch.zeros(1, sent.shape[1]), sent])  # (1 + P, D)
            cands = theta[peers][:, None] - lr * steps[None]  # (K, 1 + P, D)
            losses = _class_losses(task, peers, cands)  # (K, 1 + P, C)
            for k, i in enumerate(peers.tolist()):
                step = bristle_aggregate(sent, own=i, class_rows=rows,
                                         loss_before=losses[k, 0],
                                         loss_after=losses[k, 1:],
                                         familiar=familiar, keep=keep)
                new[i] = theta[i] - lr * step
            theta = new
        if t == rounds or (eval_every and t % eval_every == 0):
            honest = theta[~liars] if bristle else theta
            log.rounds.append(t)
            log.accuracy.append(_accuracy(task, honest))
    return log


def byzantine_heatmap(acc: dict, *, rules: list[str], fs: list[int]):
    """Accuracy heatmap, rule x f; dropdowns pick the data split and the attack.

    ``acc[(split, attack)][rule][f]`` is a test accuracy in [0, 1].
    """
    import plotly.graph_objects as go

    from labkit.plotting import styled

    keys = list(acc)
    fig = go.Figure()
    for k, key in enumerate(keys):
        z = [[100 * acc[key][r][f] for f in fs] for r in rules]
        fig.add_heatmap(z=z, x=[f"f = {f}" for f in fs], y=rules, zmin=0, zmax=100,
                        colorscale="Viridis", visible=k == 0,
                        text=[[f"{v:.0f}" for v in row] for row in z],
                        texttemplate="%{text}", colorbar=dict(title="accuracy (%)"))
    buttons = [dict(label=f"{s} / {a}", method="update",
                    args=[{"visible": [j == k for j in range(len(keys))]}])
               for k, (s, a) in enumerate(keys)]
    fig.update_layout(updatemenus=[dict(type="dropdown", buttons=buttons, x=0.0,
                                        xanchor="left", y=1.12, yanchor="bottom")],
                      xaxis_title="liars among 10 peers (f)",
                      yaxis_title="aggregation rule", margin=dict(t=110))
    fig.update_yaxes(autorange="reversed")
    return styled(fig, title="Test accuracy (%) of the honest peers' model")
