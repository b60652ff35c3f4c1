"""The closed-form costs of labkit.mpc.cost equal the engine's measured counters exactly."""

from __future__ import annotations

import math

import pytest
import torch

import labkit.mpc as mpc
from labkit.mpc.cost import MSB_DEALER_WORDS, MSB_ONLINE_WORDS, MSB_ROUNDS, Cost
from labkit.mpc.programs import op_program


def _measure(op: str, shape_x: tuple, shape_y: tuple | None = None, seed: int = 0) -> mpc.MPCRun:
    g = torch.Generator().manual_seed(seed)
    inputs = {0: torch.randn(shape_x, generator=g)}
    if shape_y is not None:
        inputs[1] = torch.randn(shape_y, generator=g)
    return mpc.run(op_program, args=(op, shape_x, shape_y), inputs=inputs)


def test_hand_counted_constants() -> None:
    assert MSB_ROUNDS == 8 and MSB_ONLINE_WORDS == 20 and MSB_DEALER_WORDS == 33
    assert mpc.mul_cost(3) == Cost(1, (48, 48), (72, 72))
    assert mpc.matmul_cost((2, 3), (3, 4)) == Cost(1, (8 * 18, 8 * 18), (8 * 26, 8 * 26))
    assert mpc.input_cost(5, owner=1) == Cost(1, (0, 8 * (5 + 9)), (0, 0))  # the share and its shape header
    assert mpc.reveal_cost(5, to=0) == Cost(1, (0, 40))
    c = mpc.mul_cost(2) + mpc.square_cost(2)
    assert c.rounds == 2 and c.total_online_bytes == 2 * (32 + 16) and 2 * mpc.mul_cost(1) == mpc.mul_cost(1) + mpc.mul_cost(1)


@pytest.mark.parametrize("shape_x, shape_y", [((5,), (5,)), ((3, 4), (4,)), ((2, 1, 3), (4, 3))])
def test_mul_and_add(shape_x: tuple, shape_y: tuple) -> None:
    r = _measure("mul", shape_x, shape_y)
    out = math.prod(torch.broadcast_shapes(shape_x, shape_y))
    assert r.cost(scope="mul") == mpc.mul_cost(math.prod(shape_x), math.prod(shape_y), out)
    assert _measure("add", shape_x, shape_y).cost(scope="add") == Cost()


@pytest.mark.parametrize("shape_x, shape_y", [((3, 4), (4, 2)), ((2, 5, 3), (3, 7)), ((2, 3, 4), (2, 4, 1)), ((1, 1), (1, 1))])
def test_matmul(shape_x: tuple, shape_y: tuple) -> None:
    assert _measure("matmul", shape_x, shape_y).cost(scope="matmul") == mpc.matmul_cost(shape_x, shape_y)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5)])
def test_unary_ops(shape: tuple) -> None:
    n = math.prod(shape)
    assert _measure("square", shape).cost(scope="square") == mpc.square_cost(n)
    assert _measure("mul_public", shape).cost(scope="mul_public") == mpc.truncate_cost(n)
    assert _measure("truncate", shape).cost(scope="truncate") == mpc.truncate_cost(n)
    assert _measure("msb", shape).cost(scope="msb") == mpc.msb_cost(n)
    assert _measure("relu", shape).cost(scope="relu") == mpc.relu_cost(n)


@pytest.mark.parametrize("shape", [(1,), (2,), (5,), (3, 7), (2, 8)])
def test_max(shape: tuple) -> None:
    r = _measure("max", shape)
    assert r.cost(scope="max") == mpc.max_cost(shape, -1)
    assert r.cost(scope="max").rounds == 9 * math.ceil(math.log2(shape[-1]))


@pytest.mark.parametrize("shape", [(1,), (2,), (5,), (3, 7)])
def test_argmax_costs_the_rounds_of_max(shape: tuple) -> None:
    got = _measure("argmax", shape).cost(scope="argmax")
    assert got == mpc.argmax_cost(shape, -1)
    assert got.rounds == mpc.max_cost(shape, -1).rounds
    if shape[-1] > 1:  # the select carries the index too: more words than the max, never fewer
        assert got.total_online_bytes > mpc.max_cost(shape, -1).total_online_bytes


def test_compare_where_and_whole_run() -> None:
    shape = (4, 3)
    assert _measure("lt", shape, shape).cost(scope="lt") == mpc.msb_cost(12)
    assert _measure("where", shape, shape).cost(scope="where") == mpc.msb_cost(12) + mpc.where_cost(12, 12, 12)
    r = _measure("mul", shape, shape)
    assert r.cost() == mpc.input_cost(12, owner=0) + mpc.input_cost(12, owner=1) + mpc.mul_cost(12) + mpc.reveal_cost(12)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        mpc.mul_cost(-1)
    with pytest.raises(TypeError):
        mpc.msb_cost(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chain"):
        mpc.matmul_cost((2, 3), (4, 5))
    with pytest.raises(TypeError):
        mpc.matmul_cost(6, (4, 5))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mpc.max_cost((3,), dim=1)
    with pytest.raises(ValueError):
        mpc.max_cost((0,))
    with pytest.raises(ValueError, match="empty"):
        mpc.argmax_cost((3, 0))
    with pytest.raises(ValueError):
        mpc.input_cost(3, owner=2)
    with pytest.raises(ValueError):
        mpc.reveal_cost(3, to=2)
    with pytest.raises(ValueError):
        Cost(1) * -1
