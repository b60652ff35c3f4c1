"""Talking Models: shapes of the exchange, its round trip, the losses, errors, and a tiny learner."""

from __future__ import annotations

import pytest
import torch

from labkit.infocomm import talking as tk


def _pair(m: int = 3, s: int = 4, t: int = 6, d: int = 5, c: int = 3):
    torch.manual_seed(0)
    student, teacher = tk.MLP(d, s, c), tk.MLP(d, t, c)
    return student, teacher, tk.Codec(s, m), tk.Codec(t, m)


def test_exchange_shapes_and_fusion() -> None:
    student, teacher, sc, tc = _pair()
    x = torch.randn(7, 5)
    ex = tk.exchange(student, teacher, sc, tc, x)
    assert ex.state.shape == ex.own.shape == ex.heard.shape == ex.fused.shape == (7, 4)
    assert ex.question.shape == ex.reply.shape == (7, 3)
    assert ex.read.shape == ex.answer.shape == (7, 6)
    # the student fuses by adding what it heard to its own step
    torch.testing.assert_close(ex.fused, ex.own + ex.heard)
    # messages are tanh-bounded
    assert ex.question.abs().max() < 1 and ex.reply.abs().max() < 1


def test_exchange_round_trip_by_hand() -> None:
    # one input, widths 1: every map is a number, so the round trip can be followed by hand
    student, teacher, sc, tc = _pair(m=1, s=1, t=1, d=1, c=2)
    with torch.no_grad():
        for lin in (student.lower[0], student.upper[0], teacher.lower[0], teacher.upper[0],
                    sc.enc, sc.dec, tc.enc, tc.dec):
            lin.weight.fill_(2.0)
            lin.bias.zero_()
    x = torch.tensor([[0.25]])
    ex = tk.exchange(student, teacher, sc, tc, x)
    state = 0.5                                   # relu(2 * 0.25)
    question = torch.tanh(torch.tensor(2 * state))
    read = 2 * question                           # teacher decoder
    answer = 2 * (0.5 + read)                     # relu(2 (teacher state 0.5 + read))
    reply = torch.tanh(2 * answer)
    heard = 2 * reply
    own = 2 * state
    torch.testing.assert_close(ex.fused, (own + heard).reshape(1, 1))
    torch.testing.assert_close(ex.answer, answer.reshape(1, 1))


def test_gradients_cross_the_exchange_both_ways() -> None:
    # the task loss through the reply reaches the student's lower layer and both codecs,
    # never the frozen teacher
    student, teacher, sc, tc = _pair()
    teacher.requires_grad_(False)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    loss = tk.talking_loss(student, teacher, sc, tc, x, y, torch.randn(4, 5))
    loss.backward()
    for p in (student.lower[0].weight, sc.enc.weight, sc.dec.weight, tc.enc.weight,
              tc.dec.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_distill_loss_zero_transfer_term_is_cross_entropy() -> None:
    student, teacher, _, _ = _pair()
    proj = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 6))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    ce = torch.nn.functional.cross_entropy(student(x), y)
    torch.testing.assert_close(tk.distill_loss(student, teacher, proj, x, y, x, weight=0.0), ce)
    assert tk.distill_loss(student, teacher, proj, x, y, x, weight=1.0) > ce


def test_shifted_digits_relabels_and_splits() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(50, 1, 8, 8, generator=g), torch.arange(50) % 10
    task = tk.shifted_digits(x, y, x[:10], y[:10], n_labels=20, noise=0.0, n_classes=5)
    assert task.x_lab.shape == (20, 64) and task.x_pool.shape == (30, 64)
    assert task.y_lab.max() < 5 and task.n_classes == 5
    torch.testing.assert_close(task.y_test, y[:10] % 5)
    torch.testing.assert_close(task.x_test, x[:10].reshape(10, 64))  # noise 0: unchanged


def test_bad_arguments() -> None:
    student, teacher, sc, tc = _pair()
    with pytest.raises(ValueError, match="message_width"):
        tk.Codec(4, 0)
    with pytest.raises(ValueError, match="share one message width"):
        tk.exchange(student, teacher, sc, tk.Codec(6, 2), torch.randn(2, 5))
    with pytest.raises(ValueError, match="student_codec"):
        tk.exchange(student, teacher, tk.Codec(5, 3), tc, torch.randn(2, 5))
    task = tk.shifted_digits(torch.rand(30, 64), torch.arange(30) % 10, torch.rand(5, 64),
                             torch.arange(5), n_labels=10)
    with pytest.raises(ValueError, match="method"):
        tk.train_downstream("shout", task, teacher)
    with pytest.raises(ValueError, match="message_width"):
        tk.train_downstream("talking", task, teacher, message_width=0)
    with pytest.raises(TypeError, match="teacher"):
        tk.train_downstream("talking", task, student.lower)
    with pytest.raises(ValueError, match="n_labels"):
        tk.shifted_digits(torch.rand(30, 64), torch.arange(30) % 10, torch.rand(5, 64),
                          torch.arange(5), n_labels=30)
    with pytest.raises(ValueError, match="noise"):
        tk.shifted_digits(torch.rand(30, 64), torch.arange(30) % 10, torch.rand(5, 64),
                          torch.arange(5), n_labels=10, noise=-1.0)
    with pytest.raises(ValueError, match="steps"):
        tk.pretrain_teacher(torch.rand(10, 64), torch.arange(10), steps=0)
    with pytest.raises(ValueError, match="width"):
        tk.MLP(64, 0, 5)
    with pytest.raises(ValueError, match="weight"):
        tk.train_downstream("talking", task, teacher, weight=-1.0)
    with pytest.raises(ValueError, match="y must"):
        tk.shifted_digits(torch.rand(30, 64), torch.arange(29) % 10, torch.rand(5, 64),
                          torch.arange(5), n_labels=10)


def test_learns_a_tiny_problem() -> None:
    # two separable blobs; a teacher pre-trained on them; every method beats chance,
    # and the student that talked reaches the teacher's level with the reply
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 8, generator=g) * 2
    y = torch.arange(200) % 2
    x = centres[y] + torch.randn(200, 8, generator=g)
    teacher = tk.pretrain_teacher(x[:150], y[:150], width=32, steps=100, batch=64, lr=1e-2)
    task = tk.DownstreamTask(x[:40], y[:40], x[40:150], x[150:], y[150:], 2)
    for method in tk.METHODS:
        curve = tk.train_downstream(method, task, teacher, message_width=2, student_width=4,
                                    steps=60, eval_every=20, batch=16, pool_batch=32, lr=1e-2)
        assert curve.steps == [0, 20, 40, 60]
        assert curve.accuracy[-1] > 0.85
        assert len(curve.with_reply) == (4 if method == "talking" else 0)
    assert curve.with_reply[-1] > 0.85
