"""The fused compressor with error feedback: Triton against the reference (interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

from labkit.backend import use_backend
from labkit.comm.onebit import ErrorFeedback, compress, compress_with_feedback, compress_with_feedback_reference
from labkit.quant.bitstack import pack_signs

KERNELS = "labkit.comm._onebit_kernels"


def momentum_and_error(numel: int, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``x`` and ``e`` whose sum is exactly zero at every fifth entry (sign(0) = +1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=g)
    e = 0.1 * torch.randn(numel, generator=g)
    x[::5] = -e[::5]
    return x.to(device), e.to(device)


# ------------------------------------------------------------------------------ the reference
def test_reference_is_compress_of_the_sum_and_updates_error_in_place() -> None:
    x, e = momentum_and_error(37 * 53)
    packed0, scale0, err0 = compress(x + e)
    error = e.clone()
    packed, scale = compress_with_feedback_reference(x, error)
    assert torch.equal(packed, packed0) and torch.equal(scale, scale0) and torch.equal(error, err0)
    assert torch.equal(packed, pack_signs((x + e) < 0))


def test_error_feedback_goes_through_the_op_bit_for_bit() -> None:
    """ErrorFeedback.compress equals the formula it had before the op existed: c = x + e."""
    ef, e = ErrorFeedback(40), torch.zeros(40)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        x = torch.randn(40, generator=g)
        packed, scale = ef.compress(x)
        packed0, scale0, e = compress(x + e)
        assert torch.equal(packed, packed0) and torch.equal(scale, scale0) and torch.equal(ef.error, e)
    ef.compress(torch.ones(40), enabled=False)
    assert torch.equal(ef.error, torch.zeros(40))


@pytest.mark.parametrize("x, error, exc, match", [
    (torch.zeros(4), torch.zeros(4, dtype=torch.float64), TypeError, "one dtype"),
    (torch.zeros(4), torch.zeros(5), ValueError, "one shape"),
    (torch.zeros(4, dtype=torch.int32), torch.zeros(4, dtype=torch.int32), TypeError, "x must be a float tensor"),
    (torch.zeros(4), [0.0] * 4, TypeError, "error must be a float tensor"),
    (torch.zeros(0), torch.zeros(0), ValueError, "at least one entry"),
])
def test_reference_rejects_bad_arguments(x, error, exc, match) -> None:
    with pytest.raises(exc, match=match):
        compress_with_feedback(x, error, backend="reference")


# ------------------------------------------------------------------------------ the kernel
@pytest.mark.gpu
@pytest.mark.parametrize("config", [dict(block_size=64, max_programs=4), {}], ids=["several_programs", "default"])
@pytest.mark.parametrize("numel", [1, 7, 37 * 53])
def test_kernel_matches_reference(triton_kernels, device: str, numel: int, config: dict) -> None:
    kernels = triton_kernels(KERNELS)
    x, e = momentum_and_error(numel, seed=numel, device=device)
    if numel == 1:
        x.fill_(-0.5)
    ref_error, error = e.clone(), e.clone()
    ref_packed, ref_scale = compress_with_feedback_reference(x, ref_error)
    packed, scale = kernels.compress_with_feedback_triton(x, error, **config)
    assert packed.dtype == torch.uint8 and packed.shape == ((numel + 7) // 8,)
    assert torch.equal(packed.cpu(), ref_packed.cpu())  # the signs: exact
    assert scale.shape == (1,) and scale.dtype == torch.float32
    torch.testing.assert_close(scale.cpu(), ref_scale.cpu(), rtol=1e-6, atol=0)
    torch.testing.assert_close(error.cpu(), ref_error.cpu(), rtol=1e-6, atol=1e-6 * ref_scale.item())
    # given its own scale, the new error is the reference's formula bit for bit
    c = (x + e).cpu()
    sign = 1.0 - 2.0 * (c < 0).float()
    assert torch.equal(error.cpu(), c - scale.cpu() * sign)


@pytest.mark.gpu
def test_error_feedback_rounds_through_the_dispatcher(triton_kernels, device: str) -> None:
    """Five rounds of ErrorFeedback on the Triton path: same signs, same error as the reference."""
    triton_kernels(KERNELS)
    ref, ours = ErrorFeedback(300), ErrorFeedback(300)
    ours.error = ours.error.to(device)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(300, generator=g)
        p_ref, s_ref = ref.compress(x)
        with use_backend("triton"):
            p, s = ours.compress(x.to(device))
        assert torch.equal(p.cpu(), p_ref)
        torch.testing.assert_close(s.cpu(), s_ref, rtol=1e-6, atol=0)
        torch.testing.assert_close(ours.error.cpu(), ref.error, rtol=1e-5, atol=1e-5 * s_ref.item())


@pytest.mark.gpu
def test_kernel_rejects_bad_inputs(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = triton_kernels(KERNELS)
    run = kernels.compress_with_feedback_triton
    x = torch.zeros(64, device=device)
    with pytest.raises(TypeError, match="one dtype"):
        run(x, torch.zeros(64, dtype=torch.float64, device=device))
    with pytest.raises(TypeError, match="float32"):
        run(x.double(), torch.zeros(64, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="one shape"):
        run(x, torch.zeros(8, 8, device=device))
    with pytest.raises(ValueError, match="error must be contiguous"):
        run(x.reshape(8, 8), torch.zeros(8, 8, device=device).t())
    with pytest.raises(ValueError, match="x must be contiguous"):
        run(torch.zeros(128, device=device)[::2], torch.zeros(64, device=device))
    with pytest.raises(ValueError, match="block_size must be a power of two >= 8"):
        run(x, torch.zeros(64, device=device), block_size=4)
    with pytest.raises(ValueError, match="max_programs must be a power of two"):
        run(x, torch.zeros(64, device=device), max_programs=3)
    if device == "cpu":  # the CPU is the interpreter's: without it, CPU tensors are refused
        monkeypatch.setattr(kernels, "triton_interpreting", lambda: False)
    with pytest.raises(ValueError, match="must be on CUDA"):
        run(torch.zeros(64), torch.zeros(64))
