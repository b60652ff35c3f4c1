"""Talking Models: a small student learns from a large teacher by exchanging messages.

Paper: "Talking Models: Distill Pre-trained Knowledge to Downstream Models via Interactive
Communication", Zhao, Liu, Gui, An, Hong and Chi, 2023, arXiv:2310.03188.

Knowledge distillation pushes a teacher's states or outputs into a student. When the student is
much smaller and its task has shifted from the teacher's pre-training, much of what the teacher
pushes does not fit. The paper makes the transfer a conversation: each model owns an *encoder*
(its hidden state -> a message in a shared message space) and a *decoder* (any message -> its
own hidden state). The student encodes its state and sends it; the teacher decodes the message
as one of its own states, runs its upper layers on it and encodes the result back; the student
decodes the reply into its own space and fuses it with its state. The reply depends on what
the student itself computed, so the teacher answers the student's question, on the student's
data, in the student's space.

Our reading, in miniature (the abstract fixes the encoder/decoder pairs and the two-way
exchange; the rest is ours): the teacher is frozen and adds what it decodes from the question
to its own lower-layer state of the same input before its upper layer runs; the student and
both codecs are trained on the downstream labels through the exchange, and the student alone
(no teacher at inference) learns, on labelled and unlabelled inputs, to match the
predictions it makes with the reply. Feature distillation through a projection of the
same width is the baseline. The miniature leaves out transformers and text, several rounds
of conversation, and a teacher that adapts.

Shapes: B inputs of D = 64 pixels, S student width (16), T teacher width (512), M message
width, C classes.
Section: chapter 16, "Talking models".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from labkit.validation import check_int, check_real

__all__ = [
    "METHODS",
    "Codec",
    "DownstreamTask",
    "Exchange",
    "accuracy",
    "MLP",
    "TrainCurve",
    "distill_loss",
    "exchange",
    "pretrain_teacher",
    "shifted_digits",
    "talking_loss",
    "train_downstream",
]

METHODS: tuple[str, ...] = ("alone", "distill", "talking")


class MLP(nn.Module):
    """Two ReLU layers and a linear head: ``lower`` (D -> W), ``upper`` (W -> W), ``head``."""

    def __init__(self, d_in: int, width: int, n_classes: int) -> None:
        super().__init__()
        d_in = check_int("d_in", d_in, 1)
        width = check_int("width", width, 1)
        n_classes = check_int("n_classes", n_classes, 2)
        self.width = width
        self.lower = nn.Sequential(nn.Linear(d_in, width), nn.ReLU())
        self.upper = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of inputs (B, D)."""
        return self.head(self.upper(self.lower(x)))


class Codec(nn.Module):
    """A model's encoder (hidden -> message, tanh-bounded) and decoder (message -> hidden)."""

    def __init__(self, hidden: int, message_width: int) -> None:
        super().__init__()
        hidden = check_int("hidden", hidden, 1)
        message_width = check_int("message_width", message_width, 1)
        self.enc = nn.Linear(hidden, message_width)
        self.dec = nn.Linear(message_width, hidden)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Message (B, M) of a hidden state (B, H)."""
        return torch.tanh(self.enc(h))

    def decode(self, m: torch.Tensor) -> torch.Tensor:
        """Hidden state (B, H) read from a message (B, M)."""
        return self.dec(m)


@dataclass(frozen=True)
class DownstreamTask:
    """The student's task: noisy digits, relabelled, few labels.

    Attributes:
        x_lab, y_lab: the labelled inputs (L, D) and their new labels (L,).
        x_pool: unlabelled downstream inputs (U, D), used by distillation and by the exchange.
        x_test, y_test: held-out downstream inputs and labels.
        n_classes: number of downstream classes.
    """

    x_lab: torch.Tensor
    y_lab: torch.Tensor
    x_pool: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int


def shifted_digits(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor,
                   y_test: torch.Tensor, *, n_labels: int = 200, noise: float = 0.6,
                   n_classes: int = 5, seed: int = 0) -> DownstreamTask:
    """The downstream task: the digits with Gaussian pixel noise, labelled ``digit mod n_classes``.

    Args:
        x, y: pre-training images (N, D) (or (N, 1, 8, 8)) in [-1, 1] and digit labels 0..9.
        x_test, y_test: held-out images and digits.
        n_labels: how many of the training inputs keep a (new) label; the rest form the pool.
        noise: standard deviation of the pixel noise (pixels span [-1, 1]).
        n_classes: the new label is the digit modulo ``n_classes`` (2..10; 10 keeps the digits).
        seed: seeds the noise and the choice of labelled inputs.
    """
    x, x_test = x.reshape(x.shape[0], -1), x_test.reshape(x_test.shape[0], -1)
    if y.shape != (x.shape[0],) or y_test.shape != (x_test.shape[0],):
        raise ValueError("y must hold one label per image of x, and y_test one per image "
                         f"of x_test; got {tuple(y.shape)} for {x.shape[0]} images and "
                         f"{tuple(y_test.shape)} for {x_test.shape[0]}")
    n_labels = check_int("n_labels", n_labels, 1, x.shape[0] - 1)
    noise = check_real("noise", noise, 0.0)
    n_classes = check_int("n_classes", n_classes, 2, 10)
    g = torch.Generator().manual_seed(check_int("seed", seed, 0))
    noisy = x + noise * torch.randn(x.shape, generator=g)
    noisy_test = x_test + noise * torch.randn(x_test.shape, generator=g)
    order = torch.randperm(x.shape[0], generator=g)
    lab, pool = order[:n_labels], order[n_labels:]
    return DownstreamTask(noisy[lab], y[lab] % n_classes, noisy[pool], noisy_test,
                          y_test % n_classes, n_classes)


def pretrain_teacher(x: torch.Tensor, y: torch.Tensor, *, width: int = 512, steps: int = 300,
                     batch: int = 128, lr: float = 1e-3, seed: int = 0) -> MLP:
    """A width-``width`` :class:`MLP` trained by Adam on clean digits; returned frozen.

    Args:
        x: images (N, D) or (N, 1, 8, 8); y: their digits (N,).
        width: T; steps: Adam steps on random batches of ``batch`` images; lr; seed.
    """
    x = x.reshape(x.shape[0], -1)
    steps = check_int("steps", steps, 1)
    batch = check_int("batch", batch, 1)
    lr = check_real("lr", lr, 0.0, strict=True)
    torch.manual_seed(check_int("seed", seed, 0))
    net = MLP(x.shape[1], width, int(y.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        pick = torch.randint(0, x.shape[0], (batch,))
        loss = F.cross_entropy(net(x[pick]), y[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    return net


@dataclass(frozen=True)
class Exchange:
    """One round of the conversation for a batch (all (B, .) tensors).

    Attributes:
        state: the student's lower-layer state (B, S); question: its message (B, M).
        read: the question decoded into the teacher's space (B, T), added to the teacher's own
            lower-layer state of the same input.
        answer: the teacher's upper-layer state on that sum (B, T); reply: its message (B, M).
        heard: the reply decoded into the student's space (B, S).
        own: the student's own upper state (B, S); fused: ``own + heard`` (B, S).
    """

    state: torch.Tensor
    question: torch.Tensor
    read: torch.Tensor
    answer: torch.Tensor
    reply: torch.Tensor
    heard: torch.Tensor
    own: torch.Tensor
    fused: torch.Tensor


def exchange(student: MLP, teacher: MLP, student_codec: Codec, teacher_codec: Codec,
             x: torch.Tensor) -> Exchange:
    """Student asks, teacher answers, student fuses: one round of the paper's communication."""
    if student_codec.enc.in_features != student.width:
        raise ValueError("student_codec must encode states of the student's width "
                         f"{student.width}, got {student_codec.enc.in_features}")
    if teacher_codec.enc.in_features != teacher.width:
        raise ValueError("teacher_codec must encode states of the teacher's width "
                         f"{teacher.width}, got {teacher_codec.enc.in_features}")
    if student_codec.enc.out_features != teacher_codec.enc.out_features:
        raise ValueError("the two codecs must share one message width, got "
                         f"{student_codec.enc.out_features} and "
                         f"{teacher_codec.enc.out_features}")
    # show: start exchange
    state = student.lower(x)                   # (B, S) the student's state
    question = student_codec.encode(state)     # (B, M) the student's message
    read = teacher_codec.decode(question)      # (B, T) heard as a teacher state
    answer = teacher.upper(teacher.lower(x) + read)  # (B, T) it thinks on
    reply = teacher_codec.encode(answer)       # (B, M) the teacher's message
    heard = student_codec.decode(reply)        # (B, S) in the student's space
    own = student.upper(state)                 # (B, S) the student's own step
    fused = own + heard                        # (B, S) the student fuses it
    # show: end exchange
    return Exchange(state, question, read, answer, reply, heard, own, fused)


def talking_loss(student: MLP, teacher: MLP, student_codec: Codec, teacher_codec: Codec,
                 x_lab: torch.Tensor, y_lab: torch.Tensor, x_pool: torch.Tensor, *,
                 weight: float = 1.0) -> torch.Tensor:
    """Training loss of the student and both codecs (the teacher stays frozen).

    ``CE(fused) + CE(alone)`` on the labelled batch, plus ``weight * KL(fused || alone)`` on
    the labelled and the unlabelled inputs: the student alone learns the answers it gets
    when it talks (the reply itself is not pushed: gradients stop at the fused prediction).
    """
    x = torch.cat([x_lab, x_pool])
    n = x_lab.shape[0]
    # show: start talking
    ex = exchange(student, teacher, student_codec, teacher_codec, x)
    talked = student.head(ex.fused)            # (B, C) after the conversation
    alone = student.head(ex.own)               # (B, C) the student on its own
    task = (F.cross_entropy(talked[:n], y_lab)
            + F.cross_entropy(alone[:n], y_lab))
    learn = F.kl_div(F.log_softmax(alone, 1),
                     F.log_softmax(talked, 1).detach(),
                     log_target=True, reduction="batchmean")
    return task + weight * learn
    # show: end talking


def distill_loss(student: MLP, teacher: MLP, projection: nn.Module, x_lab: torch.Tensor,
                 y_lab: torch.Tensor, x_pool: torch.Tensor, *,
                 weight: float = 1.0) -> torch.Tensor:
    """Feature distillation (FitNets): ``CE + weight |P(s) - t|^2 / mean(t^2)``.

    ``s`` is the student's lower-layer state, ``t`` the teacher's, ``P`` a learned projection
    S -> M -> T; the squared error is relative to the teacher state's mean square.
    """
    x = torch.cat([x_lab, x_pool])
    # show: start distill
    target = teacher.lower(x)                  # (B, T) the teacher's state
    fit = F.mse_loss(projection(student.lower(x)), target)  # P: S -> M -> T
    fit = fit / target.pow(2).mean().clamp_min(1e-12)
    return F.cross_entropy(student(x_lab), y_lab) + weight * fit
    # show: end distill


@dataclass(frozen=True)
class TrainCurve:
    """Test accuracy during downstream training.

    Attributes:
        steps: the optimiser steps at which the student was evaluated.
        accuracy: the student alone (what is deployed) at each of them.
        with_reply: for ``"talking"``, the student fusing the teacher's reply; else empty.
    """

    steps: list[int]
    accuracy: list[float]
    with_reply: list[float] = field(default_factory=list)


def train_downstream(method: str, task: DownstreamTask, teacher: MLP, *, message_width: int = 8,
                     student_width: int = 16, steps: int = 300, eval_every: int = 25,
                     batch: int = 64, pool_batch: int = 128, lr: float = 3e-3,
                     weight: float = 1.0,
                     seed: int = 0) -> TrainCurve:
    """Train a fresh student on ``task`` by ``method`` and record its test accuracy.

    Args:
        method: ``"alone"`` (labels only), ``"distill"`` (feature distillation through a
            projection S -> M -> T) or ``"talking"`` (the exchange).
        task: the downstream task; teacher: a frozen :func:`pretrain_teacher` model.
        message_width: M, the width of the messages (and of the distillation bottleneck).
        student_width: S; steps: Adam steps; eval_every: evaluation period in steps.
        batch: labelled inputs drawn per step; pool_batch: unlabelled inputs drawn per step
            (used by distill and talking).
        lr: Adam's learning rate; weight: scale of the transfer terms; seed: init and batches.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(task, DownstreamTask):
        raise TypeError(f"task must be a DownstreamTask, got {type(task).__name__}")
    if not isinstance(teacher, MLP):
        raise TypeError(f"teacher must be an MLP, got {type(teacher).__name__}")
    message_width = check_int("message_width", message_width, 1)
    student_width = check_int("student_width", student_width, 1)
    steps = check_int("steps", steps, 1)
    eval_every = check_int("eval_every", eval_every, 1)
    batch = check_int("batch", batch, 1)
    pool_batch = check_int("pool_batch", pool_batch, 1)
    lr = check_real("lr", lr, 0.0, strict=True)
    weight = check_real("weight", weight, 0.0)
    torch.manual_seed(check_int("seed", seed, 0))
    d_in = task.x_lab.shape[1]
    student = MLP(d_in, student_width, task.n_classes)
    s_codec, t_codec = Codec(student_width, message_width), Codec(teacher.width, message_width)
    projection = nn.Sequential(nn.Linear(student_width, message_width),
                               nn.Linear(message_width, teacher.width))
    params = list(student.parameters())
    if method == "talking":
        params += list(s_codec.parameters()) + list(t_codec.parameters())
    elif method == "distill":
        params += list(projection.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    curve = TrainCurve([], [], [])
    n_lab, n_pool = task.x_lab.shape[0], task.x_pool.shape[0]
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            curve.steps.append(step)
            with torch.no_grad():
                curve.accuracy.append(accuracy(student(task.x_test), task.y_test))
                if method == "talking":
                    ex = exchange(student, teacher, s_codec, t_codec, task.x_test)
                    curve.with_reply.append(accuracy(student.head(ex.fused), task.y_test))
        if step == steps:
            break
        pick = torch.randint(0, n_lab, (batch,))
        x_lab, y_lab = task.x_lab[pick], task.y_lab[pick]
        pool = task.x_pool[torch.randint(0, n_pool, (pool_batch,))]
        if method == "talking":
            loss = talking_loss(student, teacher, s_codec, t_codec, x_lab, y_lab, pool,
                                weight=weight)
        elif method == "distill":
            loss = distill_loss(student, teacher, projection, x_lab, y_lab, pool, weight=weight)
        else:
            loss = F.cross_entropy(student(x_lab), y_lab)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return curve


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows of ``logits`` (B, C) whose largest entry is at the label ``y`` (B,)."""
    return float((logits.argmax(1) == y).float().mean())
