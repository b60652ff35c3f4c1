"""Adaptive bitrate streaming and a language model as its controller (NetLLM).

Paper: *Large Language Model Adaptation for Networking* (Wu et al., 2024, arXiv:2402.02338).
NetLLM keeps a pretrained language model frozen, feeds it networking state through a small
encoder as input vectors (not as text), adapts it with low-rank adapters, and reads the
decision from a task head in one forward pass instead of decoding an answer token by token.
For adaptive bitrate streaming (ABR) it learns offline from trajectories of existing
controllers, in the manner of a decision transformer: each step is a return-to-go, a state
and an action, and at test time the model is asked for a high return.

The simulator is a miniature of Pensieve's: a video of ``N_CHUNKS`` chunks of ``CHUNK_S``
seconds, each encoded at one of ``BITRATES_KBPS``; a chunk downloads at the throughput the
trace gives for that slot; the buffer drains while downloading and gains ``CHUNK_S`` per chunk,
capped at ``BUFFER_CAP_S``. Per chunk, the linear QoE is

``q_n = R_n - mu * T_n - |R_n - R_{n-1}|`` (R in Mbit/s, T the stall in s, mu = 4.3).

Traces come from a Markov-modulated process (:data:`REGIMES`): a hidden state with its own
mean throughput switches at random, and each slot draws log-normal noise around the mean.
All controllers run on a batch of traces in lockstep (every trace is one session).

What the miniature leaves out: time-based traces and round-trip times, startup delay
policies, real video sizes, the paper's Llama 2 (a 0.1M-parameter byte GPT here), its
multimodal encoders and its online evaluation on real traces.

Shapes: N traces, C = ``N_CHUNKS`` chunks, L = ``len(BITRATES_KBPS)`` levels, F features,
K steps in the model's window, D model width.
Section: chapter 18, "A language model as a bitrate controller: NetLLM".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from labkit.diffusion.lora import LoRA, lora_branches, lora_targets
from labkit.lm.gpt import GPT
from labkit.runtime import seed_everything
from labkit.validation import check_int

__all__ = ["BITRATES_KBPS", "N_CHUNKS", "REGIMES", "NetLLMPolicy", "Observation", "Rollout", "bba",
           "chunk_qoe", "experience", "make_traces", "mpc", "rate_based", "simulate", "train_netllm"]

BITRATES_KBPS = (300, 750, 1200, 1850, 2850, 4300)
N_CHUNKS = 48
CHUNK_S = 4.0
BUFFER_CAP_S = 60.0
REBUF_PENALTY = 4.3
HISTORY = 6
N_FEATURES = HISTORY + 4
_RATES = np.array(BITRATES_KBPS, dtype=np.float64) / 1000.0  # Mbit/s

REGIMES: dict[str, tuple[tuple[float, ...], float, float]] = {
    # state means (Mbit/s), switch probability per chunk, log-normal sigma
    "broadband": ((1.0, 2.0, 3.5, 5.0), 0.10, 0.15),
    "cellular": ((0.4, 1.2, 3.0, 6.0), 0.30, 0.35),
    "congested": ((0.3, 0.8, 1.6), 0.15, 0.25),
}


def check_levels(levels: object) -> np.ndarray:
    """``levels`` as an int array, each a valid index into :data:`BITRATES_KBPS`.

    Raises:
        ValueError: a level outside ``[0, len(BITRATES_KBPS))`` (an unknown bitrate).
    """
    arr = np.asarray(levels)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"levels must be integer bitrate indices, got dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= len(BITRATES_KBPS))]
    if bad.size:
        raise ValueError(f"unknown bitrate level {int(bad.flat[0])}: levels index BITRATES_KBPS "
                         f"{BITRATES_KBPS} (0 to {len(BITRATES_KBPS) - 1})")
    return arr.astype(np.int64)


def make_traces(regime: str, n: int, *, seed: int, length: int = N_CHUNKS) -> np.ndarray:
    """``n`` Markov-modulated throughput traces (Mbit/s per chunk slot) of ``regime``.

    Returns:
        (n, length) float64.
    """
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {tuple(REGIMES)}, got {regime!r}")
    check_int("n", n, 1)
    check_int("length", length, 1)
    means, p_switch, sigma = REGIMES[regime]
    rng = np.random.default_rng(seed)
    state = rng.integers(0, len(means), n)
    out = np.empty((n, length))
    for t in range(length):
        switch = rng.random(n) < p_switch
        state = np.where(switch, rng.integers(0, len(means), n), state)
        out[:, t] = np.asarray(means)[state] * np.exp(sigma * rng.standard_normal(n) - sigma**2 / 2)
    return out


def chunk_qoe(level: np.ndarray, previous: np.ndarray, rebuffer_s: np.ndarray) -> np.ndarray:
    """Pensieve's linear QoE of one chunk: bitrate - 4.3 * stall - |bitrate change| (Mbit/s)."""
    level, previous = check_levels(level), check_levels(previous)
    # show: start qoe
    rate, prev = _RATES[level], _RATES[previous]
    return rate - REBUF_PENALTY * rebuffer_s - np.abs(rate - prev)
    # show: end qoe


@dataclass
class Observation:
    """What a controller sees before choosing chunk ``t``'s bitrate (N sessions at once).

    Attributes:
        t: chunk index.
        throughput: (N, t) measured throughputs of the chunks so far (Mbit/s).
        buffer_s: (N,) buffer level in seconds.
        last_level: (N,) level of the previous chunk (0 before the first).
    """

    t: int
    throughput: np.ndarray
    buffer_s: np.ndarray
    last_level: np.ndarray

    def features(self) -> np.ndarray:
        """(N, F) normalised state: last ``HISTORY`` throughputs, their harmonic mean, the
        buffer, the last level and the share of the video left."""
        n = self.buffer_s.shape[0]
        hist = np.zeros((n, HISTORY))
        k = min(self.t, HISTORY)
        if k:
            hist[:, HISTORY - k:] = self.throughput[:, -k:]
        return np.concatenate([hist / 5.0, _harmonic(self.throughput)[:, None] / 5.0,
                               self.buffer_s[:, None] / 20.0, self.last_level[:, None] / 5.0,
                               np.full((n, 1), (N_CHUNKS - self.t) / N_CHUNKS)], axis=1)


Policy = Callable[[Observation], np.ndarray]


@dataclass
class Rollout:
    """One controller's sessions on N traces.

    Attributes:
        levels: (N, C) chosen levels.
        qoe: (N, C) per-chunk QoE.
        rebuffer_s: (N, C) stalls.
        features: (N, C, F) the state each decision saw.
    """

    levels: np.ndarray
    qoe: np.ndarray
    rebuffer_s: np.ndarray
    features: np.ndarray

    @property
    def session_qoe(self) -> np.ndarray:
        """(N,) mean QoE per chunk of each session."""
        return self.qoe.mean(axis=1)


def simulate(policy: Policy, traces: np.ndarray) -> Rollout:
    """Stream the video over each trace with ``policy`` choosing every chunk's bitrate.

    Raises:
        ValueError: a trace shorter than the video, or a policy returning an unknown bitrate.
    """
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim != 2:
        raise ValueError(f"traces must be (N, slots), got shape {traces.shape}")
    if traces.shape[1] < N_CHUNKS:
        raise ValueError(f"a trace of {traces.shape[1]} slots is shorter than the video of "
                         f"{N_CHUNKS} chunks")
    if not (traces > 0).all():
        raise ValueError("traces must hold positive throughputs (Mbit/s)")
    n = traces.shape[0]
    buffer = np.zeros(n)
    last = np.zeros(n, dtype=np.int64)
    levels, qoe, stall, feats = (np.zeros((n, N_CHUNKS), dtype=np.int64), np.zeros((n, N_CHUNKS)),
                                 np.zeros((n, N_CHUNKS)), np.zeros((n, N_CHUNKS, N_FEATURES)))
    for t in range(N_CHUNKS):
        obs = Observation(t, traces[:, :t], buffer.copy(), last.copy())
        feats[:, t] = obs.features()
        level = check_levels(policy(obs))
        if level.shape != (n,):
            raise ValueError(f"policy must return ({n},) levels, got shape {level.shape}")
        # show: start step
        download = _RATES[level] * CHUNK_S / traces[:, t]  # seconds
        rebuf = np.maximum(download - buffer, 0.0)
        buffer = np.maximum(buffer - download, 0.0) + CHUNK_S
        buffer = np.minimum(buffer, BUFFER_CAP_S)  # the player waits instead
        qoe[:, t] = chunk_qoe(level, last, rebuf)
        # show: end step
        levels[:, t], stall[:, t], last = level, rebuf, level
    return Rollout(levels=levels, qoe=qoe, rebuffer_s=stall, features=feats)


def _harmonic(thr: np.ndarray, window: int = 5) -> np.ndarray:
    """Harmonic mean of the last ``window`` throughputs (the lowest bitrate's rate if none)."""
    if thr.shape[1] == 0:
        return np.full(thr.shape[0], _RATES[0])
    recent = thr[:, -window:]
    return recent.shape[1] / (1.0 / recent).sum(axis=1)


def bba(obs: Observation, *, reservoir_s: float = 5.0, cushion_s: float = 20.0) -> np.ndarray:
    """Buffer-based adaptation: the lowest level below the reservoir, the highest above
    reservoir + cushion, linear in between."""
    frac = np.clip((obs.buffer_s - reservoir_s) / cushion_s, 0.0, 1.0)
    return np.floor(frac * (len(BITRATES_KBPS) - 1)).astype(np.int64)


def rate_based(obs: Observation) -> np.ndarray:
    """The highest bitrate not above the harmonic mean of the last five throughputs."""
    est = _harmonic(obs.throughput)
    return np.maximum((_RATES[None, :] <= est[:, None]).sum(axis=1) - 1, 0).astype(np.int64)


_PLANS = np.array(list(itertools.product(range(len(BITRATES_KBPS)), repeat=5)), dtype=np.int64)
_PLAN_RATES = _RATES[_PLANS]  # (P, 5) Mbit/s
_PLAN_SWITCH = np.abs(np.diff(_PLAN_RATES, axis=1))  # (P, 4) switches inside each plan


def mpc(obs: Observation) -> np.ndarray:
    """RobustMPC: the first level of the plan over the next five chunks (all L^5 plans
    enumerated) that maximises QoE when every chunk downloads at the harmonic mean divided by
    1 + the largest relative error of the last five such predictions."""
    thr = obs.throughput
    est = _harmonic(thr)
    err = np.zeros(thr.shape[0])
    for j in range(max(1, thr.shape[1] - 5), thr.shape[1]):  # past predictions vs what came
        err = np.maximum(err, np.abs(_harmonic(thr[:, :j]) - thr[:, j]) / thr[:, j])
    # show: start mpc
    est = est / (1.0 + err)  # robust: discount the estimate by its recent error
    steps = min(5, N_CHUNKS - obs.t)
    buffer = np.repeat(obs.buffer_s[:, None], len(_PLANS), 1)  # (N, P)
    # the first chunk's switch is from the level already played
    total = -np.abs(_PLAN_RATES[None, :, 0] - _RATES[obs.last_level][:, None])
    for k in range(steps):
        download = _PLAN_RATES[None, :, k] * (CHUNK_S / est[:, None])  # (N, P) seconds
        rebuf = np.maximum(download - buffer, 0.0)
        buffer = np.minimum(np.maximum(buffer - download, 0.0) + CHUNK_S, BUFFER_CAP_S)
        total += _PLAN_RATES[None, :, k] - REBUF_PENALTY * rebuf
        if k:
            total -= _PLAN_SWITCH[None, :, k - 1]
    return _PLANS[total.argmax(axis=1), 0]
    # show: end mpc


def experience(rollouts: Sequence[Rollout]) -> dict[str, torch.Tensor]:
    """An experience pool from controllers' rollouts, with NetLLM's returns-to-go.

    Rewards are min-max normalised to [0, 1] over the pool, and the return-to-go of step t is
    the undiscounted sum of the rewards from t to the end, divided by 10 (as NetLLM's ABR code
    does).

    Returns:
        ``states`` (M, C, F), ``actions`` (M, C), ``returns`` (M, C) float32/int64, and the
        normalisation ``r_min``, ``r_max`` as 0-d tensors.
    """
    if not rollouts:
        raise ValueError("rollouts must not be empty")
    qoe = np.concatenate([r.qoe for r in rollouts])
    r_min, r_max = qoe.min(), qoe.max()
    # show: start rtg
    reward = (qoe - r_min) / max(r_max - r_min, 1e-9)
    rtg = np.flip(np.cumsum(np.flip(reward, 1), 1), 1) / 10.0  # sum of rewards to come
    # show: end rtg
    return {"states": torch.tensor(np.concatenate([r.features for r in rollouts]), dtype=torch.float32),
            "actions": torch.tensor(np.concatenate([r.levels for r in rollouts])),
            "returns": torch.tensor(rtg.copy(), dtype=torch.float32),
            "r_min": torch.tensor(float(r_min)), "r_max": torch.tensor(float(r_max))}


class NetLLMPolicy(nn.Module):
    """A frozen GPT read through embeddings: return, state and action tokens per step, a LoRA on
    its Linear layers, and either a bitrate head or the GPT's own byte head ("token" answers).

    Args:
        gpt: the backbone (frozen; not changed).
        window: K, steps of history in the context (3 tokens each).
        rank: the LoRA's rank.
        answer: ``"head"`` (a linear head over the L levels) or ``"token"`` (the level written
            as a digit byte through the language-model head).
        seed: seeds the new parameters.
    """

    def __init__(self, gpt: GPT, *, window: int = 6, rank: int = 4, answer: str = "head",
                 seed: int = 0) -> None:
        super().__init__()
        if not isinstance(gpt, GPT):
            raise TypeError(f"gpt must be a labkit.lm.GPT, got {type(gpt).__name__}")
        if answer not in ("head", "token"):
            raise ValueError(f"answer must be 'head' or 'token', got {answer!r}")
        check_int("window", window, 1)
        if 3 * window > gpt.cfg.block_size:
            raise ValueError(f"window={window} needs {3 * window} tokens, more than the GPT's "
                             f"block_size={gpt.cfg.block_size}")
        torch.manual_seed(seed)
        d = gpt.cfg.d_model
        self.gpt, self.window, self.answer = gpt.requires_grad_(False).eval(), window, answer
        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Sequential(nn.Linear(N_FEATURES, d), nn.GELU(), nn.Linear(d, d))
        self.embed_action = nn.Embedding(len(BITRATES_KBPS), d)
        self.embed_step = nn.Embedding(N_CHUNKS, d)
        self.head = nn.Linear(d, len(BITRATES_KBPS))
        targets = [n for n in lora_targets(gpt) if n != "head"]
        mods = dict(gpt.named_modules())
        self.lora_down = nn.ParameterList(
            nn.Parameter((torch.rand(rank, mods[n].in_features) * 2 - 1) / mods[n].in_features ** 0.5)
            for n in targets)
        self.lora_up = nn.ParameterList(nn.Parameter(torch.zeros(mods[n].out_features, rank)) for n in targets)
        self._targets = targets
        self.target_return = 0.0

    def lora(self) -> LoRA:
        """The adapter as a :class:`labkit.diffusion.lora.LoRA` (its factors are the parameters)."""
        return LoRA("netllm", {n: (d, u) for n, d, u in zip(self._targets, self.lora_down, self.lora_up)})

    def forward(self, returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                start: int) -> torch.Tensor:
        """Scores of each step's level from its state token (one pass, no decoding).

        Args:
            returns: (N, K) returns-to-go; states: (N, K, F); actions: (N, K) (the last one is
                not read: the model answers it); start: the chunk index of step 0.

        Returns:
            (N, K, L) level scores (``"head"``) or (N, K, 256) byte scores (``"token"``).
        """
        # show: start forward
        n, k = actions.shape
        step = self.embed_step(torch.arange(start, start + k))  # (K, D)
        tokens = torch.stack([self.embed_return(returns[..., None]) + step,
                              self.embed_state(states) + step,
                              self.embed_action(actions) + step], dim=2)  # (N, K, 3, D)
        seq = tokens.reshape(n, 3 * k, -1)[:, :-1]  # drop the action being decided
        with lora_branches(self.gpt, [self.lora()]):
            if self.answer == "token":
                return self.gpt(None, inputs_embeds=seq).logits[:, 1::3]  # (N, K, 256)
            hidden = self._hidden(seq)
        return self.head(hidden[:, 1::3])  # the state tokens -> (N, K, L)
        # show: end forward

    def _hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """The GPT's final hidden states for ``seq`` (N, T, D), before its byte head."""
        g = self.gpt
        x = seq + g.pos(torch.arange(seq.shape[1]))
        state = None
        for block in g.blocks:
            x, state, _ = block(x, state)
        return g.ln_f(x)

    def decide(self, scores: torch.Tensor) -> np.ndarray:
        """Levels from the last step's scores: argmax over L for the head; for token answers the
        most likely byte minus ``"0"``, which may fall outside the levels (-1 marks those)."""
        if self.answer == "head":
            return scores.argmax(-1).numpy()
        byte = scores.argmax(-1).numpy() - ord("0")
        return np.where((byte >= 0) & (byte < len(BITRATES_KBPS)), byte, -1)

    def controller(self, target_return: float, r_min: float, r_max: float,
                   invalid: list[int] | None = None) -> Policy:
        """A :func:`simulate` policy: asks for ``target_return`` and lowers it by each chunk's
        normalised reward, as a decision transformer does. Invalid token answers are counted
        into ``invalid`` and replaced by the lowest level."""
        hist: dict[str, list] = {}

        @torch.no_grad()
        def policy(obs: Observation) -> np.ndarray:
            n, t = obs.buffer_s.shape[0], obs.t
            if t == 0:
                hist.update(r=[np.full(n, target_return)], s=[obs.features()], a=[])
            else:
                reward = (hist["q"] - r_min) / max(r_max - r_min, 1e-9)
                hist["r"].append(hist["r"][-1] - reward / 10.0)
                hist["s"].append(obs.features())
            k = min(self.window, t + 1)
            r = torch.tensor(np.stack(hist["r"][-k:], 1), dtype=torch.float32)
            s = torch.tensor(np.stack(hist["s"][-k:], 1), dtype=torch.float32)
            a = np.stack(hist["a"][-(k - 1):] + [np.zeros(n, dtype=np.int64)], 1) if k > 1 \
                else np.zeros((n, 1), dtype=np.int64)
            level = self.decide(self(r, s, torch.tensor(a), t - k + 1)[:, -1])
            if invalid is not None:
                invalid.append(int((level < 0).sum()))
            level = np.maximum(level, 0)
            prev = hist["a"][-1] if hist["a"] else np.zeros(n, dtype=np.int64)
            hist["a"].append(level)
            # the QoE this chunk will earn is known to the controller after the download;
            # the simulator's formula is applied to the observed stall on the next call
            hist["pending"] = (level, prev, obs.buffer_s)
            return level

        def wrapped(obs: Observation) -> np.ndarray:
            if obs.t > 0:
                level, prev, buf = hist["pending"]
                thr = obs.throughput[:, -1]
                download = _RATES[level] * CHUNK_S / thr
                hist["q"] = chunk_qoe(level, prev, np.maximum(download - buf, 0.0))
            return policy(obs)
        return wrapped


def train_netllm(policy: NetLLMPolicy, pool: dict[str, torch.Tensor], *, steps: int = 300,
                 batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Fit the embeddings, the head and the LoRA on windows of the experience pool by
    cross-entropy on every step's action (the GPT's weights stay frozen).

    Returns:
        the loss of every step.
    """
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    gen = seed_everything(seed)
    k = policy.window
    params = [p for n, p in policy.named_parameters() if not n.startswith("gpt.")]
    opt = torch.optim.Adam(params, lr=lr)
    m = pool["actions"].shape[0]
    losses = []
    policy.train()
    for _ in range(steps):
        start = int(torch.randint(0, N_CHUNKS - k + 1, (1,), generator=gen))
        rows = torch.randint(0, m, (batch_size,), generator=gen)
        sl = slice(start, start + k)
        acts = pool["actions"][rows, sl]
        scores = policy(pool["returns"][rows, sl], pool["states"][rows, sl], acts, start)
        target = acts + ord("0") if policy.answer == "token" else acts
        loss = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    policy.eval()
    return losses
