"""Tests of labkit.mpc.engine: inputs, reveals, scopes, private randomness, and that no secret leaks."""

from __future__ import annotations

import pytest
import torch

import labkit.mpc as mpc
from labkit.mpc.ring import encode, top_byte
from labkit.mpc.sharing import chi_square_uniform


def _reveal_input(ctx, shape, to=None):
    x = ctx.input(0, ctx.private, shape=shape)
    return x.share, ctx.reveal(x, to=to)


def test_input_reveal_round_trip_and_costs() -> None:
    x = torch.tensor([[1.25, -3.5], [0.0, 7.0]])
    r = mpc.run(_reveal_input, args=((2, 2),), inputs={0: x})
    assert torch.equal(r.output[1], x.double())
    assert torch.equal(r.outputs[0][0] + r.outputs[1][0], encode(x))  # the two shares add up
    assert r.outputs[2][1] is None and not r.outputs[2][0].any()  # the dealer: no reveal, a zero placeholder
    assert r.cost(scope="input") == mpc.input_cost(4) and r.cost(scope="reveal") == mpc.reveal_cost(4)
    one = mpc.run(_reveal_input, args=((2, 2),), kwargs={"to": 1}, inputs={0: x})
    assert one.outputs[0][1] is None and torch.equal(one.outputs[1][1], x.double())
    assert one.cost(scope="reveal") == mpc.reveal_cost(4, to=1)
    rows = one.log.rows()
    assert [(m["sender"], m["receiver"], m["kind"], m["bytes"]) for m in rows] == [
        ("P0", "P1", "input", 8 * (4 + 9)), ("P0", "P1", "reveal", 32)]  # 4 words and the 9-word shape header


def test_scopes_nest_and_repeat_collapses() -> None:
    def program(ctx):
        x = ctx.input(0, ctx.private, shape=(2,))
        with ctx.scope("mul"):  # beaver_mul opens its own "mul" scope: it collapses into this one
            y = x * x
        with ctx.scope("block"):
            z = (y * x).relu()
        return ctx.reveal(z)

    r = mpc.run(program, inputs={0: torch.tensor([1.0, -2.0])})
    scopes = {m.scope for m in r.log.messages}
    assert {"input", "mul", "block/mul", "block/relu/msb/and", "block/relu/msb/b2a", "block/relu/mul", "reveal"} == scopes
    assert r.cost(scope="block") == mpc.mul_cost(2) + mpc.relu_cost(2)
    assert r.output.tolist() == [1.0, 0.0]


def test_integer_inputs_and_ctx_attributes() -> None:
    def program(ctx):
        b = ctx.input(1, ctx.private, shape=(3,), frac_bits=0)
        assert ctx.frac_bits == 12 and ctx.session and not b.is_fixed
        return ctx.reveal(b * 3 + 1)

    r = mpc.run(program, inputs={1: torch.tensor([1, -2, 5])}, frac_bits=12)
    assert r.output.dtype == torch.int64 and r.output.tolist() == [4, -5, 16]


def test_private_runs_differ_and_only_the_insecure_seed_reproduces() -> None:
    x = torch.randn(5, generator=torch.Generator().manual_seed(0))
    prog = lambda ctx: (lambda v: (v.share, ctx.reveal(v.relu() * v)))(ctx.input(0, ctx.private, shape=(5,)))
    a = mpc.run(prog, inputs={0: x}, keep_payloads=True)
    b = mpc.run(prog, inputs={0: x}, keep_payloads=True)
    assert a.secure and b.secure and a.log.secure and a.log.select(kind="open").secure
    ulp = 2.0**-mpc.DEFAULT_FRAC_BITS
    assert float((a.output[1] - b.output[1]).abs().max()) <= 2 * ulp  # the same result up to truncation's unit ...
    assert not torch.equal(a.output[0], b.output[0])  # ... from fresh shares
    words = [(m, n) for m, n in zip(a.log.messages, b.log.messages) if "b2a" not in m.scope]  # B2A opens masked bits
    assert len(words) > 10 and not any(torch.equal(m.payload, n.payload) for m, n in words)
    c = mpc.run(prog, inputs={0: x}, insecure_seed=4, keep_payloads=True)
    d = mpc.run(prog, inputs={0: x}, insecure_seed=4, keep_payloads=True)
    e = mpc.run(prog, inputs={0: x}, insecure_seed=5)
    assert not c.secure and not c.log.secure and not e.secure
    assert all(torch.equal(m.payload, n.payload) for m, n in zip(c.log.messages, d.log.messages))
    assert torch.equal(c.output[0], d.output[0]) and not torch.equal(c.output[0], e.output[0])
    assert float((c.output[1] - a.output[1]).abs().max()) <= 2 * ulp
    with pytest.raises(TypeError):
        mpc.run(prog, inputs={0: x}, seed=4)  # the old public seed is gone
    with pytest.raises(ValueError, match="insecure_seed"):
        mpc.run(prog, inputs={0: x}, insecure_seed=-1)


def test_parties_must_agree_on_input_shapes() -> None:
    def program(ctx):  # both declare 6 elements, in different shapes
        return ctx.reveal(ctx.input(0, ctx.private, shape=(2, 3) if ctx.rank == 0 else (3, 2)))

    with pytest.raises(mpc.MPCError, match=r"shape \(2, 3\).*shape=\(3, 2\)"):
        mpc.run(program, inputs={0: torch.ones(2, 3)}, timeout=10)

    def flat(ctx):  # a different number of dimensions, same elements
        return ctx.reveal(ctx.input(0, ctx.private, shape=(6,) if ctx.rank == 0 else (2, 3)))

    with pytest.raises(mpc.MPCError, match=r"shape \(6,\).*shape=\(2, 3\)"):
        mpc.run(flat, inputs={0: torch.ones(6)}, timeout=10)
    ok = mpc.run(lambda ctx: ctx.reveal(ctx.input(0, ctx.private, shape=(2, 3))), inputs={0: torch.ones(2, 3)})
    assert ok.output.shape == (2, 3)
    with pytest.raises(ValueError, match="at most 8 dimensions"):
        mpc.run(lambda ctx: ctx.input(0, ctx.private, shape=(1,) * 9), inputs={0: torch.ones((1,) * 9)})


def test_no_message_carries_a_secret_and_openings_look_uniform() -> None:
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(64, 32, generator=g), torch.randn(32, 16, generator=g)

    def program(ctx):
        a = ctx.input(0, ctx.private, shape=(64, 32))
        b = ctx.input(1, ctx.private, shape=(32, 16))
        return ctx.reveal(((a @ b).relu() * a[:, :16]).sum())

    r = mpc.run(program, inputs={0: x, 1: w}, keep_payloads=True)
    big = lambda t: t[t.abs() > 1000]  # tiny encodings are skipped: shape headers and opened bits are small words
    assert r.log.containing(big(encode(x))) == [] and r.log.containing(big(encode(w))) == []
    # what is opened (shares of x - a, of words XOR u) is uniform; B2A opens a masked *bit*
    opened = torch.cat([m.payload for m in r.log.select(kind="open").messages if "b2a" not in m.scope])
    assert opened.numel() > 20_000
    assert chi_square_uniform(top_byte(opened), bins=256).pvalue > 1e-4
    bits = torch.cat([m.payload for m in r.log.select(kind="open").messages if "b2a" in m.scope])
    assert set(bits.unique().tolist()) == {0, 1}

    def leaky(ctx):  # sends its plaintext encoding: the check must catch it
        v = ctx.input(0, ctx.private, shape=(64, 32))
        ctx.exchange([encode(x) if ctx.rank == 0 else torch.zeros(64, 32, dtype=torch.int64)])
        return ctx.reveal(v)

    caught = mpc.run(leaky, inputs={0: x}, keep_payloads=True).log.containing(big(encode(x)))
    assert [(m.sender, m.kind) for m in caught] == [(0, "open")]
    with pytest.raises(ValueError, match="keep_payloads"):
        mpc.run(leaky, inputs={0: x}).log.containing(encode(x))


def test_bad_inputs() -> None:
    x = torch.ones(3)
    with pytest.raises(ValueError, match="needs shape"):
        mpc.run(lambda ctx: ctx.input(0, ctx.private), inputs={0: x})
    with pytest.raises(ValueError, match="shape"):
        mpc.run(lambda ctx: ctx.input(0, ctx.private, shape=(4,)), inputs={0: x})
    with pytest.raises(ValueError, match="owner"):
        mpc.run(lambda ctx: ctx.input(2, ctx.private, shape=(3,)), inputs={0: x})
    with pytest.raises(TypeError, match="tensor or number"):
        mpc.run(lambda ctx: ctx.input(0, None, shape=(3,)))
    with pytest.raises(ValueError, match="fractional"):
        mpc.run(lambda ctx: ctx.input(0, ctx.private, shape=(1,), frac_bits=0), inputs={0: torch.tensor([0.5])})
    with pytest.raises(TypeError, match="real"):
        mpc.run(lambda ctx: ctx.input(0, ctx.private, shape=(1,)), inputs={0: torch.tensor([1j])})
    with pytest.raises(ValueError, match="scope"):
        mpc.run(lambda ctx: ctx.scope("a/b").__enter__())
    with pytest.raises(TypeError):
        mpc.run(lambda ctx: ctx.reveal(torch.ones(2)))
    with pytest.raises(ValueError, match="frac_bits"):
        mpc.run(lambda ctx: None, frac_bits=31)
    with pytest.raises(ValueError, match="inputs"):
        mpc.run(lambda ctx: None, inputs={2: x})
    with pytest.raises(ValueError, match="runtime"):
        mpc.run(lambda ctx: None, runtime="mpi")
    with pytest.raises(TypeError):
        mpc.run(3)  # type: ignore[arg-type]
