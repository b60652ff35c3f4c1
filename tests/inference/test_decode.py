"""labkit.inference.decode and its Triton kernel: decode attention over a low-rank KV cache.

The reference against SDPA (at r = d, where the projected cache is the full one) and against a
loop over query heads; the kernel against the reference under TRITON_INTERPRET=1 on CPU (float32
and float16) and natively on a GPU (bfloat16 too), at awkward sizes: r = 5 padded to 16, three
query heads per key-value head, T = 37 cut into several chunks, T = 1.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from labkit.inference.decode import (check_lowrank_decode, lowrank_decode, lowrank_decode_reference,
                                     projected_decode_attention)
from labkit.testing import assert_close

KERNELS = "labkit.inference._kernels"


def operands(batch: int = 2, n_q: int = 6, n_kv: int = 2, d: int = 16, r: int = 5, context: int = 37, *,
             seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """q, P_k (orthonormal columns, as MatryoshkaKV's), K~, V~; scores spread enough that the
    softmax is neither flat nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_q, 1, d, generator=g) * 2
    p_k = torch.linalg.qr(torch.randn(n_kv, d, d, generator=g)).Q[:, :, :r]
    k_lr = torch.randn(batch, n_kv, context, r, generator=g) * 2
    v_lr = torch.randn(batch, n_kv, context, r, generator=g)
    return tuple(t.to(dtype).to(device) for t in (q, p_k, k_lr, v_lr))


def loop_reference(q, p_k, k_lr, v_lr) -> torch.Tensor:
    """One query head at a time, head h reading key-value head h // G: the definition, spelled out."""
    batch, n_q, _, d = q.shape
    group = n_q // p_k.shape[0]
    out = torch.empty(batch, n_q, 1, p_k.shape[2], dtype=torch.float64)
    for b in range(batch):
        for h in range(n_q):
            kv = h // group
            q_lr = q[b, h, 0].double() @ p_k[kv].double()  # (r,)
            weights = torch.softmax(k_lr[b, kv].double() @ q_lr / math.sqrt(d), dim=0)  # (T,)
            out[b, h, 0] = weights @ v_lr[b, kv].double()
    return out


# ------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("n_q, n_kv", [(4, 4), (6, 2), (8, 1)], ids=["mha", "gqa", "mqa"])
def test_full_rank_identity_projection_is_sdpa_on_the_full_cache(n_q: int, n_kv: int) -> None:
    g = torch.Generator().manual_seed(n_q + n_kv)
    batch, d, context = 2, 16, 37
    q = torch.randn(batch, n_q, 1, d, generator=g) * 2
    k = torch.randn(batch, n_kv, context, d, generator=g)
    v = torch.randn(batch, n_kv, context, d, generator=g)
    eye = torch.eye(d).expand(n_kv, d, d)
    ours = projected_decode_attention(q, eye, k, v)
    group = n_q // n_kv
    sdpa = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))
    assert_close(ours, sdpa)
    assert_close(ours, F.scaled_dot_product_attention(q, k, v, enable_gqa=True))


def test_full_rank_orthogonal_projection_is_sdpa_rotated() -> None:
    """With orthogonal U (r = d) on keys and values, the output is SDPA's output rotated by U."""
    g = torch.Generator().manual_seed(3)
    batch, n_q, n_kv, d, context = 2, 6, 2, 16, 37
    q = torch.randn(batch, n_q, 1, d, generator=g)
    k = torch.randn(batch, n_kv, context, d, generator=g)
    v = torch.randn(batch, n_kv, context, d, generator=g)
    u_k = torch.linalg.qr(torch.randn(n_kv, d, d, generator=g)).Q
    u_v = torch.linalg.qr(torch.randn(n_kv, d, d, generator=g)).Q
    out = projected_decode_attention(q, u_k, k @ u_k[None], v @ u_v[None])  # (B, Hq, 1, d) in U_v's basis
    back = out.reshape(batch, n_kv, n_q // n_kv, d) @ u_v[None].transpose(-1, -2)  # fold U_v^T back
    assert_close(back.reshape(batch, n_q, 1, d), F.scaled_dot_product_attention(q, k, v, enable_gqa=True))


@pytest.mark.parametrize("context", [1, 37])
def test_reference_matches_a_loop_over_heads(context: int) -> None:
    q, p_k, k_lr, v_lr = operands(context=context, seed=context)
    out = lowrank_decode_reference(q, p_k, k_lr, v_lr)
    assert out.shape == (2, 6, 1, 5) and out.dtype == torch.float32
    assert_close(out, loop_reference(q, p_k, k_lr, v_lr).float(), backend="triton")


def test_reference_keeps_low_precision_dtypes_and_the_op_dispatches_to_it() -> None:
    q, p_k, k_lr, v_lr = operands(dtype=torch.bfloat16)
    out = lowrank_decode_reference(q, p_k, k_lr, v_lr, splits=3)
    assert out.dtype == torch.bfloat16
    assert_close(out, loop_reference(q, p_k, k_lr, v_lr).bfloat16(), backend="triton")
    assert torch.equal(lowrank_decode(q, p_k, k_lr, v_lr, backend="reference"), out)


def test_checks_return_the_sizes() -> None:
    assert check_lowrank_decode(*operands()) == (2, 6, 2, 16, 5, 37)


@pytest.mark.parametrize("case, error, message", [
    ("r=0", ValueError, r"1 <= r < d .* got r=0"),
    ("r=d", ValueError, r"1 <= r < d .* got r=16, d=16"),
    ("heads", ValueError, "Hq=6 must be a multiple of the key-value heads Hkv=4"),
    ("dtype", TypeError, "v_lr must have the dtype of q"),
    ("int", TypeError, "q must be a 4-D"),
    ("two positions", ValueError, "one decode position"),
    ("d", ValueError, r"d = 12 \(the width of q\), got \(2, 16, 5\)"),
    ("k shape", ValueError, r"k_lr must be \(B, Hkv, T, r\) = \(2, 2, T, 5\)"),
    ("v shape", ValueError, "v_lr must have the shape of k_lr"),
    ("empty", ValueError, "T >= 1"),
    ("splits", ValueError, "splits must be >= 1"),
])
def test_bad_arguments_raise_clear_errors(case: str, error: type, message: str) -> None:
    q, p_k, k_lr, v_lr = operands()
    splits = None
    if case == "r=0":
        p_k, k_lr, v_lr = p_k[..., :0], k_lr[..., :0], v_lr[..., :0]
    elif case == "r=d":
        p_k = torch.eye(16).expand(2, 16, 16)
        k_lr, v_lr = torch.randn(2, 2, 37, 16), torch.randn(2, 2, 37, 16)
    elif case == "heads":
        p_k = torch.randn(4, 16, 5)
        k_lr, v_lr = torch.randn(2, 4, 37, 5), torch.randn(2, 4, 37, 5)
    elif case == "dtype":
        v_lr = v_lr.double()
    elif case == "int":
        q = q.long()
    elif case == "two positions":
        q = torch.cat([q, q], dim=2)
    elif case == "d":
        q = q[..., :12]
    elif case == "k shape":
        k_lr = k_lr[:, :1]
    elif case == "v shape":
        v_lr = v_lr[:, :, :30]
    elif case == "empty":
        k_lr, v_lr = k_lr[:, :, :0], v_lr[:, :, :0]
    elif case == "splits":
        splits = 0
    with pytest.raises(error, match=message):
        lowrank_decode_reference(q, p_k, k_lr, v_lr, splits=splits)


def test_full_rank_is_allowed_only_in_the_definition() -> None:
    q, _, _, _ = operands()
    eye, k, v = torch.eye(16).expand(2, 16, 16), torch.randn(2, 2, 37, 16), torch.randn(2, 2, 37, 16)
    assert projected_decode_attention(q, eye, k, v).shape == (2, 6, 1, 16)
    with pytest.raises(ValueError, match=r"1 <= r <= d, got r=17"):
        projected_decode_attention(q, torch.randn(2, 16, 17), torch.randn(2, 2, 37, 17), torch.randn(2, 2, 37, 17))


# ------------------------------------------------------------------------------------ the kernel
def dtypes(device: str) -> list[torch.dtype]:
    """The interpreter mishandles bfloat16: it is checked on a GPU only."""
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [None, 1, 2, 3, 5, 37])
def test_kernel_matches_reference_float32(triton_kernels, device: str, splits: int | None) -> None:
    """T = 37, r = 5, Hq = 6, Hkv = 2, d = 16, B = 2; splits 1 (the kernel normalises itself, two
    tiles of 32 positions, the second partial) to 37 (one position per chunk, then the merge)."""
    kernels = triton_kernels(KERNELS)
    q, p_k, k_lr, v_lr = operands(device=device)
    out = kernels.lowrank_decode_triton(q, p_k, k_lr, v_lr, splits=splits)
    assert out.shape == (2, 6, 1, 5) and out.dtype == torch.float32
    assert_close(out, lowrank_decode_reference(q, p_k, k_lr, v_lr), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [None, 1, 4])
def test_kernel_with_one_cached_position(triton_kernels, device: str, splits: int | None) -> None:
    kernels = triton_kernels(KERNELS)
    q, p_k, k_lr, v_lr = operands(context=1, seed=1, device=device)
    out = kernels.lowrank_decode_triton(q, p_k, k_lr, v_lr, splits=splits)
    assert_close(out, v_lr.repeat_interleave(3, dim=1))  # one position: its value, whatever the scores
    assert_close(out, lowrank_decode_reference(q, p_k, k_lr, v_lr), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 4, 4, 24, 12, 50), (3, 8, 1, 16, 8, 70), (1, 32, 8, 32, 16, 90)],
                         ids=["mha_d24", "mqa_8_heads", "groups_of_4"])
def test_kernel_other_shapes_and_dtypes(triton_kernels, device: str, shape: tuple[int, ...]) -> None:
    kernels = triton_kernels(KERNELS)
    for dtype in dtypes(device):
        q, p_k, k_lr, v_lr = operands(*shape, seed=sum(shape), dtype=dtype, device=device)
        ref = lowrank_decode_reference(q, p_k, k_lr, v_lr)
        for splits in (None, 3):
            out = kernels.lowrank_decode_triton(q, p_k, k_lr, v_lr, splits=splits)
            assert out.dtype == dtype
            assert_close(out, ref, backend="triton")


@pytest.mark.gpu
def test_kernel_bfloat16_at_a_model_shape(triton_kernels, device: str) -> None:
    """Natively in bfloat16 (the benchmark's dtype) with d = 128, r = 64, several tiles per chunk;
    on CPU the same shape runs in float16, short enough for the interpreter."""
    kernels = triton_kernels(KERNELS)
    dtype, context = (torch.bfloat16, 3000) if device == "cuda" else (torch.float16, 150)
    q, p_k, k_lr, v_lr = operands(2, 32, 8, 128, 64, context, seed=5, dtype=dtype, device=device)
    ref = lowrank_decode_reference(q, p_k, k_lr, v_lr)
    for splits in (None, 2) if device == "cuda" else (1, 2):  # on CPU the automatic split is 1
        assert_close(kernels.lowrank_decode_triton(q, p_k, k_lr, v_lr, splits=splits), ref, backend="triton")


@pytest.mark.gpu
def test_kernel_takes_strided_queries_and_projections(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    q, p_k, k_lr, v_lr = operands(device=device)
    q_t = q.transpose(1, 3).contiguous().transpose(1, 3)  # same values, d-major storage
    p_t = p_k.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_t.is_contiguous() and not p_t.is_contiguous()
    out = kernels.lowrank_decode_triton(q_t, p_t, k_lr, v_lr, splits=2)
    assert_close(out, lowrank_decode_reference(q, p_k, k_lr, v_lr), backend="triton")


@pytest.mark.gpu
def test_kernel_refuses_what_it_cannot_read(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = triton_kernels(KERNELS)
    q, p_k, k_lr, v_lr = operands(device=device)
    with pytest.raises(ValueError, match="k_lr has strides"):
        kernels.lowrank_decode_triton(q, p_k, k_lr.transpose(2, 3).contiguous().transpose(2, 3), v_lr)
    with pytest.raises(ValueError, match="v_lr has strides"):
        kernels.lowrank_decode_triton(q, p_k, k_lr, torch.cat([v_lr, v_lr], dim=-1)[..., :5])
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        kernels.lowrank_decode_triton(*(t.double() for t in (q, p_k, k_lr, v_lr)))
    with pytest.raises(TypeError, match="p_k must have the dtype of q"):
        kernels.lowrank_decode_triton(q, p_k.half(), k_lr, v_lr)
    with pytest.raises(ValueError, match="r < d"):
        kernels.lowrank_decode_triton(q, torch.eye(16, device=device).expand(2, 16, 16).contiguous(),
                                      torch.cat([k_lr, k_lr, k_lr, k_lr[..., :1]], dim=-1),
                                      torch.cat([v_lr, v_lr, v_lr, v_lr[..., :1]], dim=-1))
    with pytest.raises(ValueError, match="splits must be >= 1"):
        kernels.lowrank_decode_triton(q, p_k, k_lr, v_lr, splits=0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # now a CPU cache cannot be read
    cpu = operands()
    with pytest.raises(ValueError, match="needs the cache on CUDA"):
        kernels.lowrank_decode_triton(*cpu)


@pytest.mark.gpu
def test_automatic_split(triton_kernels) -> None:
    kernels = triton_kernels(KERNELS)
    choose = kernels.choose_splits
    assert choose(1, 8, 32768, 64, 132) == 64  # 66 wanted, chunks of 512
    assert choose(32, 8, 32768, 64, 132) == 3  # 528 / 256 programs
    assert choose(32, 8, 4096, 64, 132) == 3
    assert choose(1, 8, 4096, 64, 132) == 16  # chunks of at least MIN_CHUNK = 256 positions
    assert choose(64, 8, 4096, 64, 132) == 2
    assert choose(128, 8, 4096, 64, 132) == 1
    assert choose(1, 1, 10**7, 64, 132) == kernels.MAX_SPLITS
    with pytest.raises(ValueError, match="context must be >= 1"):
        choose(1, 8, 0, 64, 132)
