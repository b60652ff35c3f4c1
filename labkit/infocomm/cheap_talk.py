"""Adversarial cheap talk: a message channel meta-learned to slow down or speed up learners.

Paper: "Adversarial Cheap Talk", 2022, arXiv:2211.11030.

The adversary cannot touch the victim's reward, actions or state. It only appends a message
``f_phi(s)``, a deterministic function of the true state, to what the victim observes. The
victim is an ordinary learner that starts from scratch and treats the message as extra input
features. The adversary's parameters ``phi`` are trained in an outer loop by evolution
strategies (ES) on the victims' mean return over their whole training run: minimised, the
channel harms learning; maximised, it helps. No gradient flows through the victims' training;
ES only needs the scalar outcome of whole training runs.

This module builds that loop at toy scale:

- two games, vectorised in torch over many independent victims: a contextual bandit (one step,
  the rewarded action depends on the state) and a small gridworld (reach the far corner within
  a horizon);
- victims with a linear softmax policy on ``[one_hot(s), f_phi(s)]``, trained by REINFORCE with
  a per-step mean baseline, many at once (batch dimension B); a loop reference that trains one
  victim at a time from the same random draws;
- the message function ``f_phi(s) = tanh(phi[s])``, a table of M numbers per state;
- antithetic ES with a population of at least two.

What it leaves out: neural victims, the paper's MARL and continuous-control suites, messages
that condition on anything but the state, and victims that could learn to ignore the channel
over many lifetimes.

Shapes: B victims, E episodes per update, S states, A actions, M message dimensions.
Section: chapter 16, "CommFormer and Adversarial Cheap Talk".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from labkit.validation import check_int, check_real

__all__ = [
    "Game",
    "bandit",
    "evolve",
    "gridworld",
    "learning_curves",
    "messages",
    "train_victims",
    "train_victims_loop",
    "victim_noise",
    "victim_return",
]


@dataclass(frozen=True)
class Game:
    """A small episodic game with ``n_states`` states and ``n_actions`` actions.

    ``kind`` is ``"bandit"`` (one step; action ``s % n_actions`` pays 1 in state ``s``) or
    ``"grid"`` (a ``size`` x ``size`` grid, actions up, down, left, right; reaching the
    bottom-right cell pays 1 and ends the episode; at most ``horizon`` steps).
    """

    kind: str
    n_states: int
    n_actions: int
    horizon: int
    size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("bandit", "grid"):
            raise ValueError(f"kind must be 'bandit' or 'grid', got {self.kind!r}")
        check_int("n_states", self.n_states, 2)
        check_int("n_actions", self.n_actions, 2)
        check_int("horizon", self.horizon, 1)

    @property
    def n_starts(self) -> int:
        """Start states are drawn uniformly from ``0 .. n_starts - 1``."""
        return self.n_states - 1 if self.kind == "grid" else self.n_states

    def step(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                               torch.Tensor]:
        """Next state, reward and done flag for integer tensors ``s`` and ``a``."""
        if self.kind == "bandit":
            reward = (a == s % self.n_actions).float()
            return s, reward, torch.ones_like(s, dtype=torch.bool)
        n = self.size
        row, col = s // n, s % n
        row = (row + (a == 1).long() - (a == 0).long()).clamp(0, n - 1)
        col = (col + (a == 3).long() - (a == 2).long()).clamp(0, n - 1)
        nxt = row * n + col
        done = nxt == self.n_states - 1
        return nxt, done.float(), done


def bandit(n_states: int = 4, n_actions: int = 4) -> Game:
    """The contextual bandit: state ``s`` rewards action ``s % n_actions``."""
    return Game("bandit", check_int("n_states", n_states, 2),
                check_int("n_actions", n_actions, 2), 1)


def gridworld(size: int = 3, horizon: int | None = None) -> Game:
    """A ``size`` x ``size`` grid; the goal is the last cell; horizon ``2 * size`` by default."""
    size = check_int("size", size, 2)
    horizon = 2 * size if horizon is None else check_int("horizon", horizon, 1)
    return Game("grid", size * size, 4, horizon, size)


def messages(phi: torch.Tensor) -> torch.Tensor:
    """The adversary's deterministic message table ``f_phi(s) = tanh(phi[s])``, shape (..., S, M)."""
    if not isinstance(phi, torch.Tensor) or phi.dim() < 2:
        raise TypeError("phi must be a tensor of shape (..., S, M)")
    return torch.tanh(phi)


def victim_noise(game: Game, n_victims: int, n_updates: int, n_episodes: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """All random draws of a training run: start states (U, B, E), uniforms (U, H, B, E).

    Both :func:`train_victims` and :func:`train_victims_loop` consume these draws, so the two
    give the same victims.
    """
    shape = (check_int("n_updates", n_updates, 1), check_int("n_victims", n_victims, 1),
             check_int("n_episodes", n_episodes, 2))
    starts = torch.randint(game.n_starts, shape, generator=generator)
    u = torch.rand(shape[0], game.horizon, *shape[1:], generator=generator)
    return starts, u


def _check_msgs(game: Game, msgs: torch.Tensor, n_victims: int) -> None:
    if not isinstance(msgs, torch.Tensor) or msgs.dim() != 3:
        raise TypeError("msgs must be a tensor of shape (B, S, M)")
    if msgs.shape[0] != n_victims or msgs.shape[1] != game.n_states:
        raise ValueError(f"msgs must have shape ({n_victims}, {game.n_states}, M), "
                         f"got {tuple(msgs.shape)}")


def train_victims(game: Game, msgs: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor],
                  lr: float = 1.0) -> torch.Tensor:
    """Train B victims from scratch by REINFORCE, all at once; return their curves (B, U).

    Args:
        game: the game.
        msgs: (B, S, M) message table per victim (zeros for no channel).
        noise: the draws of :func:`victim_noise`, with B victims.
        lr: the step size.

    Returns: the mean episode return of each victim at each update, shape (B, U).
    """
    starts, u = noise
    n_upd, n_vic, n_ep = starts.shape
    _check_msgs(game, msgs, n_vic)
    lr = check_real("lr", lr, 0.0, strict=True)
    eye = torch.eye(game.n_states)
    obs_table = torch.cat([eye.expand(n_vic, -1, -1), msgs.float()], dim=-1)  # (B, S, D)
    w = torch.zeros(n_vic, obs_table.shape[-1], game.n_actions)
    curve = torch.zeros(n_vic, n_upd)
    rows = torch.arange(n_vic)[:, None]
    for k in range(n_upd):
        # show: start reinforce
        s = starts[k]                                        # (B, E)
        alive = torch.ones_like(s, dtype=torch.bool)
        xs, dlogp, rews, masks = [], [], [], []
        for t in range(game.horizon):
            x = obs_table[rows, s]                           # (B, E, D): [one_hot(s), f(s)]
            p = torch.softmax(x @ w, dim=-1)                 # (B, E, A)
            a = (p.cumsum(-1) < u[k, t, ..., None]).sum(-1).clamp(max=game.n_actions - 1)
            s_next, r, done = game.step(s, a)
            xs.append(x)
            dlogp.append(torch.nn.functional.one_hot(a, game.n_actions) - p)
            rews.append(r * alive)
            masks.append(alive.float())
            alive = alive & ~done
            s = torch.where(alive, s_next, s)
        rew = torch.stack(rews)                              # (H, B, E)
        ret = rew.flip(0).cumsum(0).flip(0)                  # return to go G_t
        adv = (ret - ret.mean(-1, keepdim=True)) * torch.stack(masks)
        grad = sum(torch.einsum("bed,bea->bda", xs[t] * adv[t, ..., None], dlogp[t])
                   for t in range(game.horizon))
        w = w + lr * grad / n_ep                             # ascend E[G grad log pi]
        curve[:, k] = rew.sum(0).mean(-1)
        # show: end reinforce
    return curve


def train_victims_loop(game: Game, msgs: torch.Tensor,
                       noise: tuple[torch.Tensor, torch.Tensor],
                       lr: float = 1.0) -> torch.Tensor:
    """Reference for :func:`train_victims`: one victim, one episode, one step at a time."""
    starts, u = noise
    n_upd, n_vic, n_ep = starts.shape
    _check_msgs(game, msgs, n_vic)
    n_s, n_a = game.n_states, game.n_actions
    curve = torch.zeros(n_vic, n_upd)
    for b in range(n_vic):
        d = n_s + msgs.shape[-1]
        w = [[0.0] * n_a for _ in range(d)]
        for k in range(n_upd):
            episodes = []
            for e in range(n_ep):
                s = int(starts[k, b, e])
                steps = []
                for t in range(game.horizon):
                    x = [1.0 if i == s else 0.0 for i in range(n_s)]
                    x += [float(v) for v in msgs[b, s]]
                    logits = [sum(x[i] * w[i][j] for i in range(d)) for j in range(n_a)]
                    top = max(logits)
                    ex = [torch.tensor(v - top).exp().item() for v in logits]
                    p = [v / sum(ex) for v in ex]
                    a, acc = n_a - 1, 0.0
                    for j in range(n_a):
                        acc += p[j]
                        if acc >= float(u[k, t, b, e]):
                            a = j
                            break
                    s2, r, done = game.step(torch.tensor(s), torch.tensor(a))
                    steps.append((x, p, a, float(r)))
                    if bool(done):
                        break
                    s = int(s2)
                episodes.append(steps)
            # returns to go, padded with zeros after the episode ends
            ret = [[sum(st[3] for st in ep[t:]) if t < len(ep) else 0.0
                    for t in range(game.horizon)] for ep in episodes]
            base = [sum(ret[e][t] for e in range(n_ep)) / n_ep for t in range(game.horizon)]
            grad = [[0.0] * n_a for _ in range(d)]
            for e, ep in enumerate(episodes):
                for t, (x, p, a, _) in enumerate(ep):
                    adv = ret[e][t] - base[t]
                    for i in range(d):
                        for j in range(n_a):
                            grad[i][j] += x[i] * adv * ((1.0 if j == a else 0.0) - p[j])
            w = [[w[i][j] + lr * grad[i][j] / n_ep for j in range(n_a)] for i in range(d)]
            curve[b, k] = sum(sum(st[3] for st in ep) for ep in episodes) / n_ep
    return curve


def victim_return(game: Game, phis: torch.Tensor, n_victims: int, n_updates: int,
                  n_episodes: int, generator: torch.Generator, lr: float = 1.0) -> torch.Tensor:
    """Mean training return of fresh victims for each adversary in ``phis`` (P, S, M) -> (P,).

    Every adversary meets the same ``n_victims`` victims (the same random draws), so the
    differences between adversaries are not drowned by the victims' own luck.
    """
    if not isinstance(phis, torch.Tensor) or phis.dim() != 3:
        raise TypeError("phis must be a tensor of shape (P, S, M)")
    n_pop = phis.shape[0]
    starts, u = victim_noise(game, n_victims, n_updates, n_episodes, generator)
    noise = (starts.repeat(1, n_pop, 1), u.repeat(1, 1, n_pop, 1))
    msgs = messages(phis).repeat_interleave(n_victims, dim=0)
    curve = train_victims(game, msgs, noise, lr)
    return curve.mean(-1).view(n_pop, n_victims).mean(-1)


def learning_curves(game: Game, phi: torch.Tensor | None, n_victims: int, n_updates: int,
                    n_episodes: int, generator: torch.Generator,
                    lr: float = 1.0) -> torch.Tensor:
    """Curves (B, U) of ``n_victims`` fresh victims facing adversary ``phi`` (S, M).

    ``phi=None`` is the silent channel (all-zero messages, one dimension).
    """
    noise = victim_noise(game, n_victims, n_updates, n_episodes, generator)
    if phi is None:
        msgs = torch.zeros(n_victims, game.n_states, 1)
    else:
        if not isinstance(phi, torch.Tensor) or phi.dim() != 2:
            raise TypeError("phi must be a tensor of shape (S, M) or None")
        msgs = messages(phi).expand(n_victims, -1, -1)
    return train_victims(game, msgs, noise, lr)


def evolve(objective: Callable[[torch.Tensor], torch.Tensor], phi: torch.Tensor, *,
           population: int, generations: int, sigma: float = 0.5, lr: float = 0.3,
           maximise: bool = True,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[float]]:
    """Antithetic evolution strategies on ``objective``, a batch of parameters (P, ...) -> (P,).

    Args:
        objective: scores a population of parameter tensors at once.
        phi: the starting parameters.
        population: an even number >= 2 of perturbed copies per generation (pairs +eps, -eps).
        generations: how many ES steps.
        sigma: the perturbation scale.
        lr: the step size on the normalised gradient estimate.
        maximise: ascend (True) or descend (False) the objective.
        generator: random source.

    Returns: the final parameters and the objective at the mean parameters after each step
    (estimated as the mean score of the population).
    """
    if not isinstance(population, int) or isinstance(population, bool):
        raise TypeError(f"population must be an int, got {type(population).__name__}")
    if population < 2 or population % 2:
        raise ValueError(f"population must be an even number >= 2, got {population}")
    generations = check_int("generations", generations, 1)
    sigma = check_real("sigma", sigma, 0.0, strict=True)
    lr = check_real("lr", lr, 0.0, strict=True)
    # show: start es
    sign = 1.0 if maximise else -1.0
    history: list[float] = []
    for _ in range(generations):
        eps = torch.randn(population // 2, *phi.shape, generator=generator)
        eps = torch.cat([eps, -eps])                         # antithetic pairs
        score = objective(phi + sigma * eps)                 # (P,)
        history.append(float(score.mean()))
        z = sign * (score - score.mean()) / (score.std() + 1e-8)
        grad = torch.einsum("p,p...->...", z, eps) / (population * sigma)
        phi = phi + lr * grad                                # step along the estimate
        # show: end es
    return phi, history
