"""Tests of labkit.mpc.comm: the message log's counters and the in-memory transport."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import torch

from labkit.mpc.comm import Message, MessageLog, MPCError, MPCTimeout, ThreadTransport
from labkit.mpc.cost import Cost


def _msg(sender, receiver, nbytes, round_, scope, phase="online", kind="open", payload=None):
    return Message(sender, receiver, kind, nbytes, round_, phase, scope, payload)


def test_log_cost_by_scope_hand_example() -> None:
    log = MessageLog.merge([
        [_msg(0, 1, 16, 0, "input", kind="input"), _msg(0, 1, 8, 1, "relu/msb/and"), _msg(0, 1, 8, 2, "relu/mul")],
        [_msg(1, 0, 8, 1, "relu/msb/and"), _msg(1, 0, 8, 2, "relu/mul")],
        [_msg(2, 0, 24, 0, "relu/msb/and", "dealer", "dealer"), _msg(2, 1, 24, 0, "relu/msb/and", "dealer", "dealer")],
    ])
    assert len(log) == 7 and log.messages[0].kind == "input" and log.messages[-1].phase == "dealer"
    assert log.cost() == Cost(3, (32, 16), (24, 24))
    assert log.cost(scope="relu") == Cost(2, (16, 16), (24, 24))
    assert log.cost(scope="relu/msb") == Cost(1, (8, 8), (24, 24))
    assert log.cost(scope="rel") == Cost()  # prefix of a path component does not match
    assert log.select(phase="dealer").cost() == Cost(0, (0, 0), (24, 24))
    assert log.rows()[0] == dict(sender="P0", receiver="P1", kind="input", scope="input", phase="online", round=0, bytes=16)
    with pytest.raises(ValueError, match="phase"):
        log.select(phase="offline")
    with pytest.raises(ValueError, match="keep_payloads"):
        log.containing(torch.tensor([1]))
    with pytest.raises(TypeError):
        log.containing(torch.tensor([1.0]))


def test_containing_finds_verbatim_values() -> None:
    log = MessageLog((_msg(0, 1, 16, 0, "x", payload=torch.tensor([7, 99])),
                      _msg(1, 0, 16, 0, "x", kind="reveal", payload=torch.tensor([5, 6]))))
    assert [m.sender for m in log.containing(torch.tensor([[99]]))] == [0]
    assert log.containing(torch.tensor([5])) == []  # reveals are meant to carry values
    assert len(log.containing(torch.tensor([5]), kinds=("reveal",))) == 1


def _transports(timeout: float = 1.0):
    queues = {(i, j): queue.Queue() for i in range(3) for j in range(3) if i != j}
    abort = threading.Event()
    return [ThreadTransport(r, queues, abort, timeout) for r in range(3)], abort


def test_thread_transport_fifo_per_pair_and_copies() -> None:
    (t0, t1, t2), _ = _transports()
    a = torch.arange(3)
    t0.send(1, a)
    t2.send(1, torch.tensor([9]))
    t0.send(1, torch.tensor([4, 5]))
    a += 100  # the sender's buffer may change after send
    assert t1.recv(0, 3).tolist() == [0, 1, 2]
    assert t1.recv(0, 2).tolist() == [4, 5]
    assert t1.recv(2, 1).tolist() == [9]
    t1.flush()


def test_thread_transport_errors() -> None:
    (t0, t1, _), abort = _transports(timeout=0.3)
    start = time.monotonic()
    with pytest.raises(MPCTimeout, match="no message from party 1"):
        t0.recv(1, 1)
    assert time.monotonic() - start < 2
    t0.send(1, torch.tensor([1, 2]))
    with pytest.raises(MPCError, match="same program"):
        t1.recv(0, 3)
    abort.set()
    with pytest.raises(MPCError, match="aborted"):
        t1.recv(0, 1)
