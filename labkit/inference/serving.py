"""A discrete-event simulator of LLM serving: colocated or disaggregated prefill and decode.

DistServe (Zhong et al., 2024, "DistServe: Disaggregating Prefill and Decoding for
Goodput-optimized Large Language Model Serving", arXiv:2401.09670) observes that a serving
system is judged per request by two latencies: the time to the first token (TTFT, set by the
prefill) and the time per output token after it (TPOT, set by the decode steps). When both
phases share a device, every prefill that joins the batch stalls the decodes running there, so
a tight TPOT objective forces a low load. Putting the phases on different devices removes that
interference, at the price of moving each request's KV cache from the prefill to the decode
device. The paper's measure is *goodput*: the highest request rate at which a target share
(90 %) of requests meets both objectives, per device used (its section 2).

Here requests arrive as a Poisson process with seeded prompt and output lengths, and engines
run continuous batching (Orca, Yu et al., 2022): between two steps, requests join and leave the
batch. A colocated engine gives priority to waiting prefills, which interrupt the running
decodes (vLLM's default schedule). A disaggregated system has ``n_prefill`` prefill engines and
``n_decode`` decode engines; a finished prefill ships ``prompt * kv_bytes_per_token`` bytes over
an :class:`labkit.comm.AlphaBeta` link before its request can decode. Step times come from a
:class:`labkit.inference.costs.StepCost`.

What the miniature leaves out: a real cluster (goodput is simulated), tensor and pipeline
parallelism inside an engine (the paper searches over them), memory limits beyond a cap on the
batch, preemption, and chunked prefill.

Section: chapter 07, "Goodput: DistServe".
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from labkit.comm.costmodel import AlphaBeta
from labkit.validation import check_int, check_real

from .costs import StepCost

__all__ = ["SLO", "Colocated", "Disaggregated", "ServeResult", "Workload", "goodput", "md1_mean_wait",
           "poisson_workload", "simulate"]


@dataclass(frozen=True)
class SLO:
    """Latency objectives of one request, in seconds: time to first token and per output token."""

    ttft: float
    tpot: float

    def __post_init__(self) -> None:
        check_real("ttft", self.ttft, 0.0, strict=True)
        check_real("tpot", self.tpot, 0.0, strict=True)


@dataclass(frozen=True)
class Workload:
    """Requests in arrival order: arrival times (s), prompt tokens, output tokens (>= 1; the first
    output token comes from the prefill)."""

    arrivals: tuple[float, ...]
    prompts: tuple[int, ...]
    outputs: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.arrivals)
        if n == 0 or len(self.prompts) != n or len(self.outputs) != n:
            raise ValueError("arrivals, prompts and outputs must be non-empty and of equal length")
        for name in ("prompts", "outputs"):
            for v in getattr(self, name):
                check_int(f"{name} entry", v, 1)
        if any(b < a for a, b in zip(self.arrivals, self.arrivals[1:])) or self.arrivals[0] < 0:
            raise ValueError("arrivals must be >= 0 and sorted")


def _check_range(name: str, bounds: tuple[int, int]) -> tuple[int, int]:
    if not isinstance(bounds, tuple) or len(bounds) != 2:
        raise TypeError(f"{name} must be a (low, high) tuple of token counts, got {bounds!r}")
    low, high = check_int(f"{name}[0]", bounds[0], 1), check_int(f"{name}[1]", bounds[1], 1)
    if high < low:
        raise ValueError(f"{name} must have low <= high, got {bounds}")
    return low, high


def poisson_workload(rate: float, n: int, *, prompt: tuple[int, int], output: tuple[int, int],
                     seed: int = 0) -> Workload:
    """``n`` requests arriving at ``rate`` per second, lengths uniform in the inclusive ranges.

    The same ``seed`` gives the same lengths and the same unit-rate arrival gaps at every rate
    (the gaps are divided by ``rate``), so a sweep over rates compares like with like.
    """
    rate = check_real("rate", rate, 0.0, strict=True)
    n = check_int("n", n, 1)
    (p0, p1), (o0, o1) = _check_range("prompt", prompt), _check_range("output", output)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    gaps = rng.exponential(1.0, n)
    prompts = rng.integers(p0, p1 + 1, n)
    outputs = rng.integers(o0, o1 + 1, n)
    return Workload(tuple((np.cumsum(gaps) / rate).tolist()), tuple(prompts.tolist()), tuple(outputs.tolist()))


@dataclass(frozen=True)
class Colocated:
    """One device runs both phases; waiting prefills go first and stall the running decodes.

    Attributes:
        cost: step times.
        max_batch: most requests decoding at once.
        prefill_tokens: most prompt tokens in one prefill batch (a longer prompt runs alone).
    """

    cost: StepCost
    max_batch: int = 64
    prefill_tokens: int = 4096

    def __post_init__(self) -> None:
        if not isinstance(self.cost, StepCost):
            raise TypeError(f"cost must be a StepCost, got {type(self.cost).__name__}")
        check_int("max_batch", self.max_batch, 1)
        check_int("prefill_tokens", self.prefill_tokens, 1)

    @property
    def devices(self) -> int:
        return 1


@dataclass(frozen=True)
class Disaggregated:
    """``n_prefill`` prefill devices and ``n_decode`` decode devices joined by ``link``."""

    cost: StepCost
    n_prefill: int = 1
    n_decode: int = 1
    link: AlphaBeta = field(default_factory=lambda: AlphaBeta(0.0, 0.0))
    max_batch: int = 64
    prefill_tokens: int = 4096

    def __post_init__(self) -> None:
        if not isinstance(self.cost, StepCost):
            raise TypeError(f"cost must be a StepCost, got {type(self.cost).__name__}")
        if not isinstance(self.link, AlphaBeta):
            raise TypeError(f"link must be an AlphaBeta, got {type(self.link).__name__}")
        for name in ("n_prefill", "n_decode", "max_batch", "prefill_tokens"):
            check_int(name, getattr(self, name), 1)

    @property
    def devices(self) -> int:
        return self.n_prefill + self.n_decode


@dataclass(frozen=True)
class ServeResult:
    """Per-request latencies (s): ``ttft``, ``tpot`` (0 for one-token outputs), ``finish`` time."""

    ttft: np.ndarray
    tpot: np.ndarray
    finish: np.ndarray

    def attainment(self, slo: SLO, *, skip: int = 0) -> float:
        """Share of requests meeting both objectives, leaving out the first ``skip`` arrivals."""
        if not isinstance(slo, SLO):
            raise TypeError(f"slo must be an SLO, got {type(slo).__name__}")
        skip = check_int("skip", skip, 0, len(self.ttft) - 1)
        met = (self.ttft[skip:] <= slo.ttft) & (self.tpot[skip:] <= slo.tpot)
        return float(np.mean(met))


class _Engine:
    def __init__(self, role: str) -> None:
        self.role = role  # "both", "prefill" or "decode"
        self.waiting: deque[int] = deque()  # prefill queue, or requests waiting to join the decode batch
        self.queued_tokens = 0  # prompt tokens in the prefill queue
        self.ends: list[tuple[int, int]] = []  # heap of (decode step at which r finishes, r)
        self.steps = 0  # decode steps run so far
        self.context = 0  # cached tokens of the running requests
        self.busy = False

    @property
    def running(self) -> int:
        return len(self.ends)

    def join(self, r: int, left: int, cached: int) -> None:
        """Request ``r`` joins the decode batch with ``left`` tokens to go, ``cached`` in cache."""
        heapq.heappush(self.ends, (self.steps + left, r))
        self.context += cached


# show: start step
def _next_step(eng: _Engine, sys: Colocated | Disaggregated, prompt: list[int],
               left: list[int]) -> tuple[str, list[int], float] | None:
    """Pick the engine's next step: ``(phase, requests, seconds)``, or None when idle."""
    if eng.role == "decode":  # continuous batching: admit waiting requests between steps
        while eng.waiting and eng.running < sys.max_batch:
            r = eng.waiting.popleft()
            eng.join(r, left[r], prompt[r])
    room = sys.max_batch - eng.running if eng.role == "both" else len(eng.waiting)
    if eng.role != "decode" and eng.waiting and room > 0:
        batch, tokens = [], 0  # first come, first served, up to the token budget
        while eng.waiting and len(batch) < room and (
                not batch or tokens + prompt[eng.waiting[0]] <= sys.prefill_tokens):
            batch.append(eng.waiting.popleft())
            tokens += prompt[batch[-1]]
        eng.queued_tokens -= tokens
        return "prefill", batch, sys.cost.prefill([prompt[r] for r in batch])
    if eng.running:  # one token for every running request
        return "decode", [], sys.cost.decode(eng.running, eng.context)
    return None
# show: end step


def simulate(system: Colocated | Disaggregated, workload: Workload) -> ServeResult:
    """Run ``workload`` through ``system``; return every request's TTFT, TPOT and finish time."""
    if not isinstance(system, (Colocated, Disaggregated)):
        raise TypeError(f"system must be Colocated or Disaggregated, got {type(system).__name__}")
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be a Workload, got {type(workload).__name__}")
    n = len(workload.arrivals)
    prompt, left = list(workload.prompts), [o - 1 for o in workload.outputs]  # decode steps to go
    first, finish = [0.0] * n, [0.0] * n
    if isinstance(system, Colocated):
        prefills = decodes = [_Engine("both")]
    else:
        prefills = [_Engine("prefill") for _ in range(system.n_prefill)]
        decodes = [_Engine("decode") for _ in range(system.n_decode)]
    events: list[tuple[float, int, str, object]] = [(t, r, "arrive", r) for r, t in enumerate(workload.arrivals)]
    heapq.heapify(events)
    seq = n

    def kick(eng: _Engine, now: float) -> None:
        nonlocal seq
        if eng.busy:
            return
        step = _next_step(eng, system, prompt, left)
        if step is not None:
            eng.busy = True
            seq += 1
            heapq.heappush(events, (now + step[2], seq, "done", (eng, step[0], step[1])))

    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":  # to the prefill engine with the fewest queued tokens, idle first
            eng = min(prefills, key=lambda e: (e.queued_tokens, e.busy))
            eng.waiting.append(data)
            eng.queued_tokens += prompt[data]
            kick(eng, now)
        elif kind == "ready":  # KV cache arrived: join the least loaded decode engine
            eng = min(decodes, key=lambda e: e.running + len(e.waiting))
            eng.waiting.append(data)
            kick(eng, now)
        else:
            eng, phase, batch = data
            eng.busy = False
            if phase == "decode":  # every running request gains a token; some finish
                eng.steps += 1
                eng.context += eng.running
                while eng.ends and eng.ends[0][0] == eng.steps:
                    r = heapq.heappop(eng.ends)[1]
                    finish[r] = now
                    eng.context -= prompt[r] + left[r]
            for r in batch:  # a finished prefill: the first token is out
                first[r] = now
                if left[r] == 0:
                    finish[r] = now
                elif eng.role == "both":
                    eng.join(r, left[r], prompt[r])
                else:  # ship the prompt's KV cache to a decode device
                    seq += 1
                    delay = system.link.message(prompt[r] * system.cost.kv_bytes_per_token)
                    heapq.heappush(events, (now + delay, seq, "ready", r))
            kick(eng, now)
    arrivals = np.asarray(workload.arrivals)
    first_a, finish_a = np.asarray(first), np.asarray(finish)
    outputs = np.asarray(workload.outputs)
    tpot = np.where(outputs > 1, (finish_a - first_a) / np.maximum(outputs - 1, 1), 0.0)
    return ServeResult(ttft=first_a - arrivals, tpot=tpot, finish=finish_a)


def goodput(system: Colocated | Disaggregated, slo: SLO, *, n: int, prompt: tuple[int, int],
            output: tuple[int, int], seed: int = 0, target: float = 0.9, start: float = 1.0,
            iters: int = 8, warmup: float = 0.5) -> float:
    """Highest Poisson rate (requests/s) at which a share ``target`` of requests meets ``slo``.

    Doubles the rate from ``start`` until attainment falls below ``target``, then bisects
    ``iters`` times between the last rate that passed and the first that failed; every rate
    sees the same seeded lengths and arrival gaps. Attainment is counted after the first
    ``warmup`` share of arrivals: an overloaded system falls behind more with every request, and
    the later ones show it in a run of finite length. Returns 0.0 when even
    ``start / 2**iters`` fails. Divide by ``system.devices`` for goodput per device.
    """
    if not isinstance(slo, SLO):
        raise TypeError(f"slo must be an SLO, got {type(slo).__name__}")
    target = check_real("target", target, 0.0, strict=True)
    if target > 1:
        raise ValueError(f"target must be in (0, 1], got {target}")
    start = check_real("start", start, 0.0, strict=True)
    iters = check_int("iters", iters, 1)
    warmup = check_real("warmup", warmup, 0.0)
    if warmup >= 1:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")
    skip = min(int(warmup * n), n - 1)

    # show: start goodput
    def ok(rate: float) -> bool:
        work = poisson_workload(rate, n, prompt=prompt, output=output, seed=seed)
        return simulate(system, work).attainment(slo, skip=skip) >= target

    lo, hi = 0.0, start
    while ok(hi):
        lo, hi = hi, 2 * hi
        if hi > start * 2**30:
            raise ValueError("attainment never falls below target: is the SLO unbounded?")
    if lo == 0.0:  # search downwards for a passing rate
        while hi > start / 2**iters and not ok(hi / 2):
            hi /= 2
        lo = hi / 2
        if not ok(lo):
            return 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo
    # show: end goodput


def md1_mean_wait(rate: float, service: float) -> float:
    """Mean time in queue of an M/D/1 queue (Pollaczek-Khinchine): ``rho s / (2 (1 - rho))``."""
    rate = check_real("rate", rate, 0.0, strict=True)
    service = check_real("service", service, 0.0, strict=True)
    rho = rate * service
    if rho >= 1:
        raise ValueError(f"rate * service must be < 1 for a stable queue, got {rho}")
    return rho * service / (2 * (1 - rho))
