"""A rate-limited Markov coding game: a message sent through the actions of an MDP policy.

Paper: "Minimum Entropy Coupling with Bottleneck", Ebrahimi, Chen and Khisti, NeurIPS 2024,
arXiv:2410.21666 (Sec. 5, Markov coding games with a rate limit).

A source draws a message ``M`` and compresses it to a code ``Z = f(M)`` of entropy at most
``R`` (an EBIM encoder, :func:`labkit.infocomm.coupling.greedy_ebim`, or a uniform quantiser as
the baseline). An agent that knows ``Z`` acts in an MDP for ``T`` steps; a receiver sees the
actions (not ``Z``) and decodes ``M``. At every step both hold the receiver's posterior
``b_t`` over ``Z``; the agent couples ``b_t`` with the reference policy ``pi(. | s_t)`` by
greedy minimum-entropy coupling ``P_t`` and draws its action from the row of its own code,
``a_t ~ P_t(z, .) / b_t(z)``. Averaged over ``z ~ b_t`` the action is distributed as
``pi(. | s_t)``, so the MDP's expected reward is exactly the reference policy's; the receiver
updates ``b_{t+1}(z) proportional to P_t(z, a_t)`` and finally picks the message of largest
posterior ``p(m) b_T(f(m)) / p_Z(f(m))``. The reference policy is the maximum-entropy (soft)
optimal policy at temperature ``beta``: a higher temperature gives up reward and lets each
action carry more information.

The MDP (ours, a toy): a corridor of ``n_states`` cells, actions left / stay / right
(deterministic moves, walls at both ends), start in cell 0, reward 1 for every step that ends
in the last cell, minus ``bump`` for walking into a wall.

Shapes: N episodes, K code symbols, A = 3 actions, S states.
Section: chapter 16, "Minimum-entropy coupling with a bottleneck".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labkit.infocomm.coupling import (
    check_distribution,
    entropy,
    greedy_ebim,
    greedy_mec_batch,
    partition_masses,
)
from labkit.validation import check_int, check_real

__all__ = [
    "Corridor",
    "GameResult",
    "ebim_code",
    "play",
    "soft_policy",
    "uniform_quantiser",
    "zipf",
]

MOVES = np.array([-1, 0, 1])  # left, stay, right


@dataclass(frozen=True)
class Corridor:
    """The toy MDP: ``n_states`` cells in a row, reward on reaching the last."""

    n_states: int = 5
    horizon: int = 8
    discount: float = 0.9

    bump: float = 0.5

    def step(self, s: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Next states and rewards of the actions ``a`` in the states ``s`` (both (N,))."""
        want = s + MOVES[a]
        nxt = np.clip(want, 0, self.n_states - 1)
        reward = (nxt == self.n_states - 1) - self.bump * (want != nxt)
        return nxt, reward.astype(np.float64)


def soft_policy(mdp: Corridor, beta: float, *, iters: int = 500) -> np.ndarray:
    """Maximum-entropy policy (S, A) of the MDP at temperature ``beta`` by soft Q-iteration.

    ``Q(s, a) = r(s, a) + gamma V(s')``, ``V(s) = beta log sum_a exp(Q(s, a) / beta)``, and
    ``pi(a | s)`` proportional to ``exp(Q(s, a) / beta)``.
    """
    beta = check_real("beta", beta, 0.0, strict=True)
    s = np.repeat(np.arange(mdp.n_states), 3)
    a = np.tile(np.arange(3), mdp.n_states)
    nxt, r = mdp.step(s, a)
    v = np.zeros(mdp.n_states)
    for _ in range(iters):
        q = (r + mdp.discount * v[nxt]).reshape(mdp.n_states, 3)
        top = q.max(1, keepdims=True)
        v = (top + beta * np.log(np.exp((q - top) / beta).sum(1, keepdims=True)))[:, 0]
    logits = (q - q.max(1, keepdims=True)) / beta
    pi = np.exp(logits)
    return pi / pi.sum(1, keepdims=True)


def zipf(n: int, exponent: float = 1.0) -> np.ndarray:
    """The Zipf distribution over ``n`` messages: ``p(m)`` proportional to ``(m + 1)^-s``."""
    n = check_int("n", n, 1)
    exponent = check_real("exponent", exponent, 0.0)
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


def uniform_quantiser(p_m: np.ndarray, r: float) -> np.ndarray:
    """Baseline code: consecutive messages in K near-equal bins, K the largest with H(Z) <= r.

    Returns the label of every message (K = 1, a constant code, at ``r = 0``).
    """
    p = check_distribution("p_m", p_m)
    rate = check_real("r", r, 0.0)
    if rate > entropy(p) + 1e-9:
        raise ValueError(f"r must be in [0, H(M)] = [0, {entropy(p):.4f}] bits, got {r}")
    best = np.zeros(p.size, dtype=np.int64)
    for k in range(1, p.size + 1):
        labels = np.concatenate([np.full(len(b), z) for z, b in
                                 enumerate(np.array_split(np.arange(p.size), k))])
        if entropy(partition_masses(p, labels)) <= rate + 1e-9:
            best = labels
    return best


@dataclass(frozen=True)
class GameResult:
    """Outcome of N episodes: receiver accuracy and MDP return (means and standard errors)."""

    accuracy: float
    accuracy_se: float
    reward: float
    reward_se: float
    code_entropy: float  # H(Z) in bits
    marginal_error: float  # max |sum_z P_t(z, .) - pi(. | s_t)| over every step
    action_counts: np.ndarray  # (S, A) actions taken in every state


def play(mdp: Corridor, pi: np.ndarray, p_m: np.ndarray, labels: np.ndarray,
         n_episodes: int, *, seed: int = 0) -> GameResult:
    """Play ``n_episodes`` games of the code ``labels`` (message -> code) under policy ``pi``.

    Messages, action draws and so the rewards depend only on ``seed`` and ``pi`` for the
    random numbers: two codes played with the same seed share their messages and uniforms.
    """
    p_m = check_distribution("p_m", p_m)
    n = check_int("n_episodes", n_episodes, 2)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != p_m.shape or labels.min() < 0:
        raise ValueError(f"labels must give a code >= 0 for each of the {p_m.size} messages")
    pi = np.asarray(pi, dtype=np.float64)
    if pi.shape != (mdp.n_states, 3):
        raise ValueError(f"pi must have shape ({mdp.n_states}, 3), got {pi.shape}")
    rng = np.random.default_rng(seed)
    msg = rng.choice(p_m.size, size=n, p=p_m)
    u = rng.random((mdp.horizon, n))
    p_z = partition_masses(p_m, labels)
    z = labels[msg]
    rows = np.arange(n)
    belief = np.tile(p_z, (n, 1))  # (N, K), the receiver's posterior over Z
    s = np.zeros(n, dtype=np.int64)
    total = np.zeros(n)
    counts = np.zeros((mdp.n_states, 3), dtype=np.int64)
    worst = 0.0
    for t in range(mdp.horizon):
        # show: start round
        joint = greedy_mec_batch(belief, pi[s])  # (N, K, A), couples b_t and pi(.|s)
        worst = max(worst, float(np.abs(joint.sum(1) - pi[s]).max()))
        row = joint[rows, z]  # the agent's own code's row
        cdf = np.cumsum(row / row.sum(1, keepdims=True), 1)
        a = (u[t][:, None] > cdf[:, :-1]).sum(1)  # inverse-CDF draw
        seen = joint[rows, :, a]  # (N, K): P_t(z, a_t) for every z
        belief = seen / seen.sum(1, keepdims=True)
        # show: end round
        np.add.at(counts, (s, a), 1)
        s, r = mdp.step(s, a)
        total += r
    # Bayes: p(m | actions) is proportional to p(m) b_T(f(m)) / p_Z(f(m))
    post = p_m[None, :] * belief[:, labels] / p_z[labels][None, :]
    correct = (post.argmax(1) == msg).astype(np.float64)
    return GameResult(
        accuracy=float(correct.mean()),
        accuracy_se=float(correct.std(ddof=1) / np.sqrt(n)),
        reward=float(total.mean()),
        reward_se=float(total.std(ddof=1) / np.sqrt(n)),
        code_entropy=entropy(p_z),
        marginal_error=worst,
        action_counts=counts,
    )


def ebim_code(p_m: np.ndarray, r: float) -> np.ndarray:
    """The MEC-B encoder of the game: :func:`greedy_ebim` at rate ``r``."""
    return greedy_ebim(p_m, r)
