"""BitStack: sign packing, the residual decomposition, the stack and the RTN baseline."""

from __future__ import annotations

import copy

import pytest
import torch

from labkit.lm import GPT, GPTConfig
from labkit.quant.bitstack import (BitStack, bitstack_compress, decompose_matrix, input_rms, pack_signs, rtn_quantize,
                                   unpack_signs)

SMALL = dict(n_layer=2, n_head=2, d_model=16, d_ff=32, block_size=8)
NAMES = [f"blocks.{i}.{s}" for i in range(2) for s in ("attn.qkv", "attn.proj", "ffn.up", "ffn.down")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


def test_pack_signs_by_hand():
    negative = torch.tensor([True, False, False, False, False, False, False, True, True])
    packed = pack_signs(negative)
    assert packed.tolist() == [1 + 128, 1]  # bit i of byte 0 is entry i; entry 8 opens byte 1
    assert unpack_signs(packed, (9,)).tolist() == [-1, 1, 1, 1, 1, 1, 1, -1, -1]


def test_pack_signs_follow_the_tensor_to_its_device():
    """The bit weights move to the signs' device (a GPU in the 1-bit Adam benchmark; meta here)."""
    negative = torch.zeros(16, dtype=torch.bool, device="meta")
    packed = pack_signs(negative)
    assert packed.device.type == "meta" and packed.shape == (2,)
    assert unpack_signs(packed, (16,)).device.type == "meta"


def test_pack_roundtrip_awkward_shape():
    x = torch.randn(7, 13)
    signs = unpack_signs(pack_signs(x < 0), (7, 13))
    assert torch.equal(signs, torch.where(x < 0, -1.0, 1.0))
    assert pack_signs(x < 0).numel() == (7 * 13 + 7) // 8


def test_pack_bad_input():
    with pytest.raises(TypeError):
        pack_signs(torch.zeros(3))
    with pytest.raises(TypeError):
        unpack_signs(torch.zeros(2), (16,))
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_signs(torch.zeros(1, dtype=torch.uint8), (16,))


def test_one_block_of_a_rank_one_magnitude_is_exact():
    # |W| = u v^T exactly (u, v > 0), with arbitrary signs: one block recovers W up to fp16 rounding
    u, v = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.25, 1.0, 4.0, 2.0])
    signs = torch.tensor([[1, -1, 1, 1], [-1, -1, 1, -1], [1, 1, -1, 1]], dtype=torch.float32)
    w = signs * torch.outer(u, v)
    stack = decompose_matrix(w, n_blocks=1)
    torch.testing.assert_close(stack.reconstruct(1), w, rtol=2e-3, atol=1e-3)
    block = stack.blocks[0]
    assert block.nbytes == 2 + 2 * (3 + 4)  # 12 signs in 2 bytes, 7 fp16 numbers


def test_residual_shrinks_with_every_block():
    torch.manual_seed(0)
    w = torch.randn(24, 40)
    scale = torch.rand(40) + 0.5
    stack = decompose_matrix(w, n_blocks=6, scale=scale)
    sw = w * stack.scale.float()
    errors = [((stack.reconstruct(k) - w) * stack.scale.float()).norm() / sw.norm() for k in range(7)]
    assert errors[0] == 1.0
    assert all(b < a for a, b in zip(errors, errors[1:])), errors  # a nonnegative rank-1 fit never hurts
    assert errors[1] < 0.7  # sign + mean magnitude of a Gaussian keeps ~64% of the energy



def test_a_block_can_overshoot_entries_while_the_norm_falls():
    # R = [[4, 4], [4, 0.5]]: the top pair of |R| gives u_1 v_1 ~ 1.98 > 2 * 0.5, so R[1, 1]
    # crosses zero and grows to ~ -1.48, while ||R - B||^2 = ||R||^2 - sigma_1^2 (~48.25 -> ~4.5)
    r = torch.tensor([[4.0, 4.0], [4.0, 0.5]])
    block = decompose_matrix(r, n_blocks=1).blocks[0]
    uv = block.u.float() @ block.v.float().T
    after = r - block.dense()
    assert (uv > 2 * r.abs()).tolist() == [[False, False], [False, True]]
    assert after[1, 1] < -1.4 and after[1, 1].abs() > r[1, 1].abs()
    sigma_1 = float(torch.linalg.svdvals(r)[0])
    assert float(after.norm()) ** 2 == pytest.approx(float(r.norm()) ** 2 - sigma_1**2, rel=1e-2)

def test_decompose_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        decompose_matrix(torch.zeros(3), n_blocks=1)
    with pytest.raises(ValueError):
        decompose_matrix(torch.zeros(3, 4), n_blocks=0)
    with pytest.raises(ValueError):
        decompose_matrix(torch.zeros(3, 4), n_blocks=1, rank=4)
    with pytest.raises(ValueError, match="scale"):
        decompose_matrix(torch.randn(3, 4), n_blocks=1, scale=-torch.ones(4))
    with pytest.raises(TypeError):
        decompose_matrix(torch.randn(3, 4), n_blocks=1.5)


def _model_and_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL), init_seed=0).eval()
    with torch.no_grad():  # larger weights than GPT-2's init, so the matrices matter to the loss
        for name in NAMES:
            dict(model.named_modules())[name].weight.mul_(10)
    x = torch.randint(0, 256, (4, 8), generator=torch.Generator().manual_seed(1))
    return model, x, torch.roll(x, -1, dims=1)


def test_input_rms_matches_a_manual_computation():
    model, x, _ = _model_and_batch()
    rms = input_rms(model, x, ["blocks.0.attn.qkv"])
    h = model.tok(x) + model.pos(torch.arange(8))
    expected = model.blocks[0].ln1(h).pow(2).mean((0, 1)).sqrt()
    torch.testing.assert_close(rms["blocks.0.attn.qkv"], expected)
    with pytest.raises(ValueError, match="nn.Linear"):
        input_rms(model, x, ["blocks.0.ln1"])


def test_stack_invariants():
    model, x, y = _model_and_batch()
    before = copy.deepcopy(model.state_dict())
    stack = bitstack_compress(model, NAMES, x, y, n_blocks=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"  # compressing leaves the model as it was
    assert isinstance(stack, BitStack)
    assert len(stack.order) == 3 * len(NAMES) and len(set(stack.order)) == len(stack.order)
    assert stack.order[:len(NAMES)] == tuple((n, 0) for n in NAMES)  # the base: one block each
    for n in NAMES:  # each matrix's blocks appear in their own order
        assert [j for m, j in stack.order if m == n] == [0, 1, 2]
    assert stack.bytes_at(len(stack.order)) == stack.total_bytes
    assert stack.blocks_within(stack.bytes_at(20)) == 20
    assert stack.blocks_within(stack.bytes_at(20) - 1) == 19
    assert stack.counts(len(stack.order)) == {n: 3 for n in NAMES}
    # bytes exactly: per block packed signs + fp16 u, v; the first block also carries the column scale
    mods = dict(model.named_modules())
    expected = sum(3 * (-(-w.numel() // 8) + 2 * sum(w.shape)) + 2 * w.shape[1]
                   for w in (mods[n].weight for n in NAMES))
    assert stack.total_bytes == expected


def test_max_lead_keeps_rounds():
    model, x, y = _model_and_batch()
    stack = bitstack_compress(model, NAMES, x, y, n_blocks=3, max_lead=1)
    for r in range(3):  # strict rounds: round r holds exactly the r-th block of every matrix
        assert sorted(stack.order[r * len(NAMES):(r + 1) * len(NAMES)]) == sorted((n, r) for n in NAMES)


def test_full_stack_is_close_and_load_writes_weights():
    model, x, y = _model_and_batch()
    stack = bitstack_compress(model, NAMES, x, y, n_blocks=8)
    copy_ = copy.deepcopy(model)
    stack.load(copy_, len(stack.order))
    w, w_hat = model.blocks[0].ffn.up.weight, copy_.blocks[0].ffn.up.weight
    assert (w_hat - w).norm() / w.norm() < 0.15
    stack.load(copy_, 0)
    assert copy_.blocks[0].ffn.up.weight.abs().sum() == 0
    stepped = copy.deepcopy(copy_)
    for k in range(1, 20):  # an incremental sweep writes the same weights as a fresh load
        stack.load(stepped, k, since=k - 1)
    stack.load(copy_, 19)
    for name in NAMES:
        assert torch.equal(dict(stepped.named_modules())[name].weight, dict(copy_.named_modules())[name].weight)
    assert torch.equal(copy_.blocks[0].ffn.up.bias, model.blocks[0].ffn.up.bias)  # biases are not in the stack


def test_compress_bad_input():
    model, x, y = _model_and_batch()
    with pytest.raises(ValueError, match="names"):
        bitstack_compress(model, [], x, y)
    with pytest.raises(ValueError, match="names"):
        bitstack_compress(model, NAMES[:1] * 2, x, y)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        bitstack_compress(model, NAMES, x, y[:, :4])
    with pytest.raises(ValueError, match="alpha"):
        bitstack_compress(model, NAMES, x, y, alpha=-1.0)
    with pytest.raises(ValueError):
        bitstack_compress(model, NAMES, x, y, max_lead=0)
    stack = bitstack_compress(model, NAMES[:2], x, y, n_blocks=1)
    with pytest.raises(ValueError):
        stack.bytes_at(3)
    with pytest.raises(ValueError):
        stack.blocks_within(-1)


def test_rtn_by_hand():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 0.4, 0.6, 1.0]])
    w_hat, nbytes = rtn_quantize(w, bits=1, group_size=4)
    # one bit: each entry goes to its group's min or max
    torch.testing.assert_close(w_hat, torch.tensor([[0.0, 0.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]]))
    assert nbytes == 1 + 2 * 2 * 2  # 8 one-bit codes, an fp16 scale and zero point per group
    w_hat, _ = rtn_quantize(w, bits=2, group_size=4)
    torch.testing.assert_close(w_hat[0], w[0])  # 0..3 is exactly representable with 2 bits


def test_rtn_error_bound_and_bad_input():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    for bits in (2, 3, 4):
        w_hat, _ = rtn_quantize(w, bits=bits, group_size=16)
        g = w.reshape(8, 4, 16)
        half_step = ((g.amax(-1) - g.amin(-1)) / (2**bits - 1) / 2).repeat_interleave(16, 1)
        assert ((w_hat - w).abs() <= half_step * 1.01 + 1e-3).all()
    with pytest.raises(ValueError, match="divide"):
        rtn_quantize(w, bits=2, group_size=10)
    with pytest.raises(ValueError):
        rtn_quantize(w, bits=0, group_size=16)
    with pytest.raises(ValueError, match="2-D"):
        rtn_quantize(w[0], bits=2, group_size=16)
