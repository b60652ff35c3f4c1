"""Cross-layer protocols: video frames with deadlines over a bursty wireless link.

Paper: "Cross-Layer Protocols for Multimedia Communications over Wireless Networks", 2011,
arXiv:1110.0147 (a survey).

The survey reviews designs in which the link layer learns what the application needs (frame
types, deadlines) and the application learns what the channel is doing (its state, estimated
from acknowledgements), so that ARQ, the transmission rate and the order of packets adapt
together. A survey has no single algorithm, so this module builds a model in which that idea
can be measured:

- a Gilbert-Elliott channel, a two-state Markov chain (good, bad) with a loss probability per
  state, sampled for many independent links at once (rows), with the closed forms of its
  stationary loss rate and of the mean length of its loss bursts;
- a video stream of groups of pictures (GOPs): one I frame then P frames, each P frame
  referring to the frame before it, every frame due a fixed number of slots after it is made;
- two senders over the same channel draws. The layered one sends at one fixed rate, retries a
  packet a fixed number of times and serves packets first in, first out. The cross-layer one
  tracks the probability that the channel is bad from its ACKs (an HMM forward filter),
  picks the rate that maximises the expected delivered packets under that belief, retries a
  packet for as long as its deadline allows, sends I-frame packets before P-frame packets,
  and stops sending P frames whose reference is already lost.

The metric is the share of frames that can be decoded by their deadline. What the miniature
leaves out: real PHY rates and powers, energy, several users sharing the link, delayed or lost
ACKs, and real encoders (frame sizes are fixed).

Shapes: R rows (independent links), T slots, N packets, F frames.
Section: chapter 16, "Cross-layer protocols".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from labkit.validation import check_int, check_real

__all__ = [
    "RATES",
    "GilbertElliott",
    "Protocol",
    "VideoStream",
    "best_fixed_rate",
    "cross_layer",
    "decodable",
    "equal_loss_channel",
    "layered",
    "mean_run_length",
    "sample_channel",
    "simulate",
]

#: Packets sent per slot at each rate. A packet at rate k is lost with probability
#: ``1 - (1 - e)^k`` when a base-rate packet is lost with probability ``e``: the faster
#: modulation carries more packets, each less robustly.
RATES: tuple[int, ...] = (1, 2)


def _probability(name: str, value: object) -> float:
    number = check_real(name, value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return number


@dataclass(frozen=True)
class GilbertElliott:
    """A two-state Markov channel: good (0) and bad (1), with a loss probability in each.

    Args:
        p_gb: probability of moving from good to bad at the next slot.
        p_bg: probability of moving from bad to good at the next slot.
        loss_good: loss probability of a base-rate packet in the good state.
        loss_bad: the same in the bad state.
    """

    p_gb: float
    p_bg: float
    loss_good: float = 0.0
    loss_bad: float = 1.0

    def __post_init__(self) -> None:
        for name in ("p_gb", "p_bg", "loss_good", "loss_bad"):
            object.__setattr__(self, name, _probability(name, getattr(self, name)))
        if self.p_gb + self.p_bg == 0.0:
            raise ValueError("p_gb and p_bg cannot both be 0: the chain would never mix")

    @property
    def bad_share(self) -> float:
        """Stationary probability of the bad state, ``p_gb / (p_gb + p_bg)``."""
        return self.p_gb / (self.p_gb + self.p_bg)

    @property
    def memory(self) -> float:
        """Second eigenvalue ``1 - p_gb - p_bg``: 0 for a memoryless channel."""
        return 1.0 - self.p_gb - self.p_bg

    def losses(self, rate: int = 1) -> np.ndarray:
        """Per-packet loss probability in (good, bad) at ``rate`` packets per slot."""
        rate = check_int("rate", rate, 1)
        return 1.0 - (1.0 - np.array([self.loss_good, self.loss_bad])) ** rate

    def stationary_loss(self) -> float:
        """Long-run share of base-rate packets lost, ``pi_G e_G + pi_B e_B``."""
        pi_b = self.bad_share
        return (1.0 - pi_b) * self.loss_good + pi_b * self.loss_bad

    def mean_burst_length(self) -> float:
        """Mean length of a run of consecutive losses, one packet per slot.

        Losses per slot over runs started per slot: ``pi D1 1 / (pi D0 P D1 1)``
        with ``P`` the transition matrix, ``D1 = diag(e)``, ``D0 = I - D1``;
        for ``e = (0, 1)`` it is the mean stay in the bad state, ``1 / p_bg``.
        """
        pi = np.array([1.0 - self.bad_share, self.bad_share])
        trans = np.array([[1.0 - self.p_gb, self.p_gb],
                          [self.p_bg, 1.0 - self.p_bg]])
        e = self.losses(1)  # (good, bad) loss of a base-rate packet
        lost = float(pi @ e)  # losses per slot
        starts = float((pi * (1.0 - e)) @ trans @ e)  # no loss, then a loss
        if starts == 0.0:
            raise ValueError("the channel never starts a loss burst "
                             "(no losses, or only losses)")
        return lost / starts


def equal_loss_channel(loss: float, memory: float, *, loss_good: float = 0.02,
                       loss_bad: float = 0.8) -> GilbertElliott:
    """The Gilbert-Elliott channel with stationary loss ``loss`` and memory ``1 - p_gb - p_bg``.

    ``memory = 0`` gives independent states, so independent losses at the same rate; as
    ``memory`` approaches 1 the bad spells, and so the loss bursts, grow longer while the
    long-run loss stays ``loss``.
    """
    loss = _probability("loss", loss)
    loss_good = _probability("loss_good", loss_good)
    loss_bad = _probability("loss_bad", loss_bad)
    memory = check_real("memory", memory, 0.0)
    if memory >= 1.0:
        raise ValueError(f"memory must be in [0, 1), got {memory}")
    if not loss_good <= loss <= loss_bad or loss_good == loss_bad:
        raise ValueError(f"loss must lie between loss_good ({loss_good}) and loss_bad "
                         f"({loss_bad}), which must differ; got {loss}")
    pi_b = (loss - loss_good) / (loss_bad - loss_good)
    return GilbertElliott(pi_b * (1 - memory), (1 - pi_b) * (1 - memory), loss_good, loss_bad)


def sample_channel(channels: Sequence[GilbertElliott], n_slots: int, *,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """States and uniform draws of ``len(channels)`` independent links over ``n_slots``.

    The first state comes from the stationary distribution. A packet sent in column ``c`` of
    slot ``t`` on row ``r`` is lost when ``u[r, t, c]`` is below its loss probability, so two
    senders given the same draws face the same channel.

    Returns:
        ``bad`` (R, T) bool and ``u`` (R, T, max(RATES)) float.
    """
    if not channels or not all(isinstance(c, GilbertElliott) for c in channels):
        raise TypeError("channels must be a non-empty sequence of GilbertElliott")
    n_slots = check_int("n_slots", n_slots, 1)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    p_gb = np.array([c.p_gb for c in channels])
    p_bg = np.array([c.p_bg for c in channels])
    flip = rng.random((len(channels), n_slots))
    bad = np.empty((len(channels), n_slots), dtype=bool)
    bad[:, 0] = flip[:, 0] < p_gb / (p_gb + p_bg)
    for t in range(1, n_slots):  # one step of the chain for every row at once
        bad[:, t] = np.where(bad[:, t - 1], flip[:, t] >= p_bg, flip[:, t] < p_gb)
    return bad, rng.random((len(channels), n_slots, max(RATES)))


def mean_run_length(lost: np.ndarray) -> float:
    """Mean length of the runs of ``True`` along the last axis of ``lost``, pooled over rows."""
    arr = np.asarray(lost, dtype=bool)
    if arr.ndim == 1:
        arr = arr[None]
    starts = arr[..., 0].sum() + (arr[..., 1:] & ~arr[..., :-1]).sum()
    if starts == 0:
        raise ValueError("lost holds no loss, so no run")
    return float(arr.sum() / starts)


@dataclass(frozen=True)
class VideoStream:
    """A stream of GOPs: one I frame, then ``gop - 1`` P frames, each referring to the last.

    Frame ``f`` is made at slot ``f * frame_interval`` and is due ``deadline`` slots later:
    its packets may be sent in slots ``[made, made + deadline)``.
    """

    n_gops: int
    gop: int = 6
    i_packets: int = 4
    p_packets: int = 1
    frame_interval: int = 3
    deadline: int = 12

    def __post_init__(self) -> None:
        check_int("n_gops", self.n_gops, 1)
        check_int("gop", self.gop, 1)
        check_int("i_packets", self.i_packets, 1)
        check_int("p_packets", self.p_packets, 1)
        check_int("frame_interval", self.frame_interval, 1)
        if check_int("deadline", self.deadline, -2**62) <= 0:
            raise ValueError(f"deadline must be > 0 slots, got {self.deadline}")

    @property
    def n_frames(self) -> int:
        return self.n_gops * self.gop

    @property
    def n_slots(self) -> int:
        """Slots until the last frame's deadline."""
        return (self.n_frames - 1) * self.frame_interval + self.deadline

    def packets(self) -> dict[str, np.ndarray]:
        """Per packet (N): its ``frame``, ``made`` and ``due`` slots and ``is_i``, by frame."""
        is_i_frame = np.arange(self.n_frames) % self.gop == 0
        sizes = np.where(is_i_frame, self.i_packets, self.p_packets)
        frame = np.repeat(np.arange(self.n_frames), sizes)
        made = frame * self.frame_interval
        return {"frame": frame, "made": made, "due": made + self.deadline,
                "is_i": is_i_frame[frame]}


def decodable(complete: np.ndarray, gop: int) -> np.ndarray:
    """Which frames decode: complete by the deadline and, for a P frame, its reference decodes.

    Args:
        complete: (R, F) or (F,) bool, every packet of the frame arrived before its deadline.
        gop: frames per GOP (F must be a multiple); frame ``k * gop`` is an I frame.

    Returns:
        bool of the same shape: a frame decodes when it and every earlier frame of its GOP are
        complete.
    """
    gop = check_int("gop", gop, 1)
    arr = np.asarray(complete)
    if arr.dtype != bool or arr.ndim not in (1, 2):
        raise TypeError(f"complete must be a 1-D or 2-D bool array, got {arr.dtype} {arr.shape}")
    if arr.shape[-1] % gop:
        raise ValueError(f"the number of frames ({arr.shape[-1]}) must be a multiple of "
                         f"gop ({gop})")
    by_gop = arr.reshape(*arr.shape[:-1], -1, gop)
    return np.logical_and.accumulate(by_gop, axis=-1).reshape(arr.shape)


@dataclass(frozen=True)
class Protocol:
    """What the sender knows and does.

    Args:
        name: a label for tables and figures.
        rate: a fixed rate from :data:`RATES`, or None for each channel's
            :func:`best_fixed_rate` (ignored when ``adaptive_rate``).
        retry_limit: retransmissions allowed after the first try, or None to retry while the
            packet's deadline allows.
        priority: send I-frame packets before P-frame packets (else first in, first out).
        drop_orphans: stop sending P frames whose reference frame is known to be lost.
        adaptive_rate: choose the rate each slot from the channel state estimated from ACKs.
    """

    name: str
    rate: int | None
    retry_limit: int | None
    priority: bool
    drop_orphans: bool
    adaptive_rate: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a string, got {type(self.name).__name__}")
        if self.rate is not None and self.rate not in RATES:
            raise ValueError(f"rate must be one of {RATES} or None, got {self.rate}")
        if self.retry_limit is not None:
            check_int("retry_limit", self.retry_limit, 0)


def layered(rate: int | None = None, retry_limit: int = 7) -> Protocol:
    """The layered sender: fixed rate, fixed retry limit, first in first out.

    The default limit of 7 retries is IEEE 802.11's default short retry limit.
    With ``rate=None`` each channel gets its :func:`best_fixed_rate`, the choice a designer who
    knows only the channel's long-run statistics would make.
    """
    return Protocol("layered", rate, retry_limit, priority=False, drop_orphans=False)


def cross_layer() -> Protocol:
    """The cross-layer sender: estimated state drives rate; ARQ to the deadline; I first."""
    return Protocol("cross-layer", None, None, priority=True, drop_orphans=True,
                    adaptive_rate=True)


def best_fixed_rate(channel: GilbertElliott) -> int:
    """The rate with the most packets delivered per slot on average over the stationary state."""
    pi = np.array([1.0 - channel.bad_share, channel.bad_share])
    goodput = [k * float(pi @ (1.0 - channel.losses(k))) for k in RATES]
    return RATES[int(np.argmax(goodput))]


def simulate(channels: Sequence[GilbertElliott], video: VideoStream, protocol: Protocol, *,
             seed: int = 0) -> np.ndarray:
    """Send ``video`` over every channel (one row each) and return the frames that decode.

    Every row gets its own channel draw from ``seed``; the same ``seed`` gives every protocol
    the same draws. A layered protocol whose ``rate`` is None uses :func:`best_fixed_rate`.

    Returns:
        (R, F) bool, the frames decodable by their deadline.
    """
    if not isinstance(video, VideoStream):
        raise TypeError(f"video must be a VideoStream, got {type(video).__name__}")
    if not isinstance(protocol, Protocol):
        raise TypeError(f"protocol must be a Protocol, got {type(protocol).__name__}")
    bad, u = sample_channel(channels, video.n_slots, seed=seed)
    pk = video.packets()
    n_rows, n_pk = len(channels), len(pk["frame"])
    rows = np.arange(n_rows)
    p_gb = np.array([c.p_gb for c in channels])
    p_bg = np.array([c.p_bg for c in channels])
    loss = np.stack([np.stack([c.losses(k) for c in channels]) for k in RATES])  # (K, R, 2)
    delivered = np.zeros((n_rows, n_pk), dtype=bool)
    tries = np.zeros((n_rows, n_pk), dtype=np.int64)
    broken = np.zeros((n_rows, video.n_frames), dtype=bool)  # frame or its reference lost
    # sort key: FIFO is the packet index; priority puts every I packet first, then deadline
    key = np.arange(n_pk) + (np.where(pk["is_i"], 0, n_pk) if protocol.priority else 0)
    belief = np.array([c.bad_share for c in channels])  # P(bad) before the slot's ACKs
    fixed = np.array([protocol.rate or best_fixed_rate(c) for c in channels])
    # show: start slot
    for t in range(video.n_slots):
        # the packets alive in slot t: made, and not yet due
        lo = np.searchsorted(pk["due"], t, "right")
        hi = np.searchsorted(pk["made"], t, "right")
        if protocol.adaptive_rate:  # the channel estimate picks the rate
            rate = _rate_from_belief(belief, loss)
        else:
            rate = fixed
        ok = ~delivered[:, lo:hi]  # (R, W) still worth sending
        if protocol.retry_limit is not None:  # ARQ: a fixed number of tries
            ok &= tries[:, lo:hi] <= protocol.retry_limit
        if protocol.drop_orphans:  # a P frame with a lost reference is useless
            ok &= ~(broken[:, pk["frame"][lo:hi]] & ~pk["is_i"][lo:hi])
        masked = np.where(ok, key[lo:hi], 2 * n_pk + 1)
        order = np.argsort(masked, axis=1, kind="stable")  # (R, W)
        e = loss[np.searchsorted(RATES, rate), rows]  # (R, 2) loss at rate
        like = np.ones((n_rows, 2))  # P(this slot's ACKs | good, bad)
        for c in range(min(max(RATES), hi - lo)):  # c-th packet of the slot
            send = (c < rate) & ok[rows, order[:, c]]
            lost = u[:, t, c] < e[rows, bad[:, t].astype(int)]
            r, i = rows[send], lo + order[send, c]
            tries[r, i] += 1
            delivered[r[~lost[send]], i[~lost[send]]] = True
            like[send] *= np.where(lost[send, None], e[send], 1 - e[send])
        belief = _filter_step(belief, like, p_gb, p_bg)  # the ACKs' news
        if protocol.drop_orphans:
            _mark_broken(broken, delivered, pk, video, t)
    # show: end slot
    starts = np.searchsorted(pk["frame"], np.arange(video.n_frames))
    complete = np.logical_and.reduceat(delivered, starts, axis=1)  # (R, F)
    return decodable(complete, video.gop)


def _rate_from_belief(belief: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Per row, the rate with the most packets expected through given ``P(bad) = belief``."""
    # show: start rate
    # expected delivered packets at rate k: k * sum_s P(s) (1 - e_k(s))
    p_state = np.stack([1.0 - belief, belief], axis=1)  # (R, 2)
    goodput = np.stack([k * (p_state * (1.0 - loss[i])).sum(1)
                        for i, k in enumerate(RATES)])  # (K, R)
    return np.asarray(RATES)[goodput.argmax(0)]
    # show: end rate


def _filter_step(belief: np.ndarray, like: np.ndarray, p_gb: np.ndarray,
                 p_bg: np.ndarray) -> np.ndarray:
    """One step of the HMM forward filter: condition on the ACKs, then predict the next slot."""
    # show: start filter
    # Bayes: P(bad | ACKs) is proportional to P(ACKs | bad) P(bad)
    post = belief * like[:, 1]
    post = post / (post + (1.0 - belief) * like[:, 0])
    # predict: P(bad next) = P(bad) (1 - p_bg) + P(good) p_gb
    return post * (1.0 - p_bg) + (1.0 - post) * p_gb
    # show: end filter


def _mark_broken(broken: np.ndarray, delivered: np.ndarray, pk: dict[str, np.ndarray],
                 video: VideoStream, t: int) -> None:
    """Frames known lost after slot ``t``, and the P frames that refer to them, in place."""
    due_now = pk["due"] == t + 1  # packets whose last chance was slot t
    if due_now.any():
        frames = pk["frame"][due_now]
        np.logical_or.at(broken.T, frames, ~delivered[:, due_now].T)
    # along each GOP a P frame inherits its reference's loss, up to the newest frame made
    first = max(0, (t + 1 - video.deadline) // video.frame_interval)
    newest = min((t + 1) // video.frame_interval, video.n_frames - 1)
    for f in range(first + 1, newest + 1):
        if f % video.gop:
            broken[:, f] |= broken[:, f - 1]
