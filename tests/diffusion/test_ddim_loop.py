"""One DDIM loop for every sampler: ``ddim_loop`` by hand, and each sampler bit for bit against a
frozen copy of the loop it used to spell out itself."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch

from labkit.diffusion import TinyUNet, ddim_loop, ddim_step, ddim_timesteps, sample
from labkit.diffusion.controlnet import ControlAddon, controlled_noise, sample_controlled
from labkit.diffusion.faster import key_groups, paper_key_steps, sample_propagated
from labkit.diffusion.lora import lora_branches, merge_loras, random_lora, save_lora, unmerge_loras
from labkit.diffusion.patch_parallel import (PatchConfig, _PatchOps, _walk, canvas_forward, conditioned_layers,
                                             halo_layers, merge_patches, sample_canvas, sample_patch_parallel,
                                             split_patches)
from labkit.diffusion.pruning import prunable_blocks, sample_inheriting, skipped
from labkit.diffusion.serving import serve_bounded_async, serve_with_loras
from labkit.diffusion.unet import Features

from tests.diffusion._models import SCHEDULE, random_unet

STEPS = 5


@pytest.fixture(scope="module")
def model() -> TinyUNet:
    return random_unet(3, std=0.05)  # small weights: outputs stay inside [-1, 1], clamping hides nothing


def noise(shape: tuple[int, ...] = (3, 1, 8, 8), seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def frozen_loop(eps_of, x, schedule, steps, *, before_step=None, eta=0.0, generator=None, clip_x0=False,
                trajectory=None):
    """The loop as the samplers wrote it before ``ddim_loop`` (kept verbatim in spirit: the
    timestep tensor on the CPU, noise drawn after the prediction)."""
    ts = ddim_timesteps(schedule.n_steps, steps)
    shape = tuple(x.shape)
    for i, t in enumerate(ts.tolist()):
        if before_step is not None:
            before_step(i)
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
        eps = eps_of(x, torch.full((shape[0],), t, dtype=torch.long), i)
        noise_ = torch.randn(shape, generator=generator) if eta > 0 and t_prev >= 0 else None
        x = ddim_step(x, eps, t, t_prev, schedule, eta=eta, noise=noise_, clip_x0=clip_x0)
        if trajectory is not None:
            trajectory.append(x)
    return x.clamp(-1.0, 1.0)


def frozen_patch_loop(model, schedule, x_T, steps, config):
    """sample_patch_parallel's old loop: the DDIM update run strip by strip."""
    ts = ddim_timesteps(schedule.n_steps, steps)
    y = torch.arange(x_T.shape[0]) % model.cfg.n_classes
    ops = _PatchOps(config, frozenset(conditioned_layers(model, config.conditioned)), halo_layers(model)[0])
    xs = split_patches(x_T, config.n_patches)
    sent = []
    for i, t in enumerate(ts.tolist()):
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
        ops.fresh = not config.stale or i < config.warmup
        ops.sent = {}
        emb = model.embed(torch.full((x_T.shape[0],), t, dtype=torch.long), y)
        eps = _walk(model, xs, emb, ops)
        xs = [ddim_step(x, e, t, t_prev, schedule) for x, e in zip(xs, eps)]
        sent.append(ops.sent)
    return merge_patches(xs).clamp(-1.0, 1.0), sent


def labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 10


# --- ddim_loop itself -----------------------------------------------------------------------------


def test_one_step_with_zero_noise_returns_the_rescaled_state_by_hand():
    # S = 1 visits t = T - 1 and jumps to the clean image: x0 = (x - sqrt(1 - abar) * 0) / sqrt(abar)
    x = torch.full((2, 1, 2, 2), 0.01)
    out = ddim_loop(lambda x, t, i: torch.zeros_like(x), x, SCHEDULE, 1)
    abar = float(SCHEDULE.alphas_cumprod[-1])
    torch.testing.assert_close(out, torch.full_like(x, 0.01 / math.sqrt(abar)).clamp(-1, 1))


def test_hooks_see_every_step_in_order_and_the_predictor_gets_the_timesteps():
    calls: list[tuple] = []

    def eps_fn(x, t, i):
        assert t.dtype == torch.int64 and t.shape == (x.shape[0],) and t.device == x.device
        calls.append(("eps", i, int(t[0])))
        return torch.zeros_like(x)

    def before_update(i, t, x):
        calls.append(("update", i, t))
        return x

    ddim_loop(eps_fn, noise(), SCHEDULE, 3, before_step=lambda i: calls.append(("before", i)),
              before_update=before_update, after_step=lambda i, x: calls.append(("after", i, tuple(x.shape))))
    ts = ddim_timesteps(SCHEDULE.n_steps, 3).tolist()
    assert calls == [e for i in range(3) for e in (("before", i), ("eps", i, ts[i]), ("update", i, ts[i]),
                                                    ("after", i, (3, 1, 8, 8)))]


def test_before_update_changes_the_state_the_update_starts_from():
    x = torch.full((1, 1, 2, 2), 0.01)
    zero = lambda x, t, i: torch.zeros_like(x)  # noqa: E731
    shifted = ddim_loop(zero, x, SCHEDULE, 1, before_update=lambda i, t, x: x + 0.01)
    assert torch.equal(shifted, ddim_loop(zero, x + 0.01, SCHEDULE, 1))


def test_the_result_is_clamped_and_eta_draws_from_the_generator(model):
    y = labels(3)
    eps_fn = lambda x, t, i: model(x, t, y)  # noqa: E731
    a = ddim_loop(eps_fn, noise(), SCHEDULE, 4, eta=1.0, generator=torch.Generator().manual_seed(1))
    b = ddim_loop(eps_fn, noise(), SCHEDULE, 4, eta=1.0, generator=torch.Generator().manual_seed(1))
    c = ddim_loop(eps_fn, noise(), SCHEDULE, 4, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1.0


def test_bad_arguments():
    zero = lambda x, t, i: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="n_sample"):
        ddim_loop(zero, noise(), SCHEDULE, 0)
    with pytest.raises(ValueError, match="n_sample"):
        ddim_loop(zero, noise(), SCHEDULE, SCHEDULE.n_steps + 1)
    with pytest.raises(ValueError, match="eta"):
        ddim_loop(zero, noise(), SCHEDULE, 2, eta=-1.0)
    with pytest.raises(ValueError, match="eps"):
        ddim_loop(lambda x, t, i: x[..., :1], noise(), SCHEDULE, 2)


# --- every sampler equals its old loop, bit for bit -------------------------------------------


@pytest.mark.parametrize("eta,clip_x0", [(0.0, False), (1.0, True)])
def test_sample_matches_the_old_loop(model, eta, clip_x0):
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    images, traj = sample(model, SCHEDULE, n=3, steps=STEPS, eta=eta, generator=g(), clip_x0=clip_x0,
                          return_trajectory=True)
    gen = g()
    x_T = torch.randn((3, 1, 8, 8), generator=gen)
    old_traj = [x_T]
    old = frozen_loop(lambda x, t, i: model.decode(model.encode(x, t, labels(3))), x_T, SCHEDULE, STEPS, eta=eta,
                      generator=gen, clip_x0=clip_x0, trajectory=old_traj)
    assert torch.equal(images, old)
    assert len(traj) == len(old_traj) == STEPS + 1 and all(torch.equal(a, b) for a, b in zip(traj, old_traj))


def test_serving_with_loras_matches_the_old_loop(model, tmp_path):
    loras = [random_lora(model, rank=2, seed=k, std=0.05) for k in range(3)]
    x_T, y = noise(), labels(3)
    whole = lambda x, t, i: model(x, t, y)  # noqa: E731
    with torch.no_grad():
        merged = merge_loras(model, loras)
        old_merge = frozen_loop(whole, x_T, SCHEDULE, STEPS)
        unmerge_loras(model, merged)
        with lora_branches(model, loras, assign=torch.arange(3)):
            old_fly = frozen_loop(whole, x_T, SCHEDULE, STEPS)
        plain = frozen_loop(whole, x_T, SCHEDULE, STEPS)
    assert torch.equal(serve_with_loras(model, SCHEDULE, loras, mode="merge", x_T=x_T, steps=STEPS)[0], old_merge)
    assert torch.equal(serve_with_loras(model, SCHEDULE, loras, mode="on_the_fly", x_T=x_T, steps=STEPS,
                                        per_image=True)[0], old_fly)
    assert torch.equal(serve_with_loras(model, SCHEDULE, [], mode="merge", x_T=x_T, steps=STEPS)[0], plain)

    paths = [save_lora(lora, tmp_path / f"{k}.pt") for k, lora in enumerate(loras)]
    state = {}

    def patch_at_two(i):
        if i == 2:
            state["merged"] = merge_loras(model, loras)

    with torch.no_grad():
        old_async = frozen_loop(whole, x_T, SCHEDULE, STEPS, before_step=patch_at_two)
        unmerge_loras(model, state["merged"])
    images, info = serve_bounded_async(model, SCHEDULE, paths, bound=2, patch_at=2, x_T=x_T, steps=STEPS)
    assert info.patched_at == 2 and torch.equal(images, old_async)
    assert not torch.equal(old_async, plain)  # the late LoRAs changed the images


def test_controlled_sampling_matches_the_old_loop(model):
    addon = ControlAddon(model, seed=1, zero_init=False)
    x_T, hint, y = noise(), noise(seed=7), labels(3)
    with torch.no_grad():
        old = frozen_loop(lambda x, t, i: controlled_noise(model, addon, x, t, y, hint), x_T, SCHEDULE, STEPS)
    images, events = sample_controlled(model, SCHEDULE, addon, hint=hint, x_T=x_T, steps=STEPS)
    assert torch.equal(images, old) and len(events) == 3 * STEPS


def test_canvas_and_patch_parallel_sampling_match_the_old_loops(model):
    x_T = noise((2, 1, 8, 16), seed=5)
    y = labels(2)
    with torch.no_grad():
        old_canvas = frozen_loop(lambda x, t, i: canvas_forward(model, x, t, y), x_T, SCHEDULE, STEPS)
    assert torch.equal(sample_canvas(model, SCHEDULE, x_T=x_T, steps=STEPS), old_canvas)
    for config in (PatchConfig(n_patches=2, conditioned=0.5, warmup=2), PatchConfig(n_patches=4, stale=False),
                   PatchConfig(n_patches=2, fill="zeros", exchange_norm=False)):
        with torch.no_grad():
            old, sent = frozen_patch_loop(model, SCHEDULE, x_T, STEPS, config)
        run = sample_patch_parallel(model, SCHEDULE, x_T=x_T, steps=STEPS, config=config)
        assert torch.equal(run.images, old), config
        assert run.bytes_p2p == tuple(sum(v[0] for v in s.values()) for s in sent)
        assert run.bytes_allgather == tuple(sum(v[1] for v in s.values()) for s in sent)


def test_inheriting_sampler_matches_the_old_loop(model):
    skip = prunable_blocks(model)[:2]
    active = [True, False, True, False, True]
    x_T, y = noise(), labels(3)

    def eps_of(x, t, i):
        with skipped(model, skip) if active[i] else nullcontext():
            return model(x, t, y)

    with torch.no_grad():
        old = frozen_loop(eps_of, x_T, SCHEDULE, STEPS)
    assert torch.equal(sample_inheriting(model, SCHEDULE, skip=skip, n=3, steps=STEPS, x_T=x_T, active=active), old)


def test_inheriting_sampler_checks_its_labels_like_the_other_samplers(model):
    with pytest.raises(ValueError, match="labels must be"):
        sample_inheriting(model, SCHEDULE, skip=[], n=3, steps=2, x_T=noise(), labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="x_T"):
        sample_inheriting(model, SCHEDULE, skip=[], n=3, steps=2, x_T=None)


def frozen_propagated_loop(model, schedule, n, steps, *, key_steps, parallel, injection, below, eta, generator,
                           x_T, clip_x0):
    """sample_propagated's old loop: groups of steps sharing one key step's encoder features."""
    ts = ddim_timesteps(schedule.n_steps, steps).tolist()
    y = labels(n)
    x0_noise = x_T
    x = x0_noise
    shape = tuple(x.shape)
    for group in key_groups(key_steps, steps):
        feats = model.encode(x, torch.full((n,), ts[group[0]], dtype=torch.long), y)
        eps_all = []
        if parallel and len(group) > 1:
            G = len(group)
            t_all = torch.tensor([ts[i] for i in group]).repeat_interleave(n)
            wide = Features(h=feats.h.repeat(G, 1, 1, 1), skips=[s.repeat(G, 1, 1, 1) for s in feats.skips],
                            emb=model.embed(t_all, y.repeat(G)))
            eps_all = list(model.decode(wide).split(n))
        for j, i in enumerate(group):
            if eps_all:
                eps = eps_all[j]
            elif j == 0:
                eps = model.decode(feats)
            else:
                eps = model.decode(feats, model.embed(torch.full((n,), ts[i], dtype=torch.long), y))
            t, t_prev = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
            if injection > 0 and t < below:
                x = x + injection * x0_noise
            noise_ = torch.randn(shape, generator=generator) if eta > 0 and t_prev >= 0 else None
            x = ddim_step(x, eps, t, t_prev, schedule, eta=eta, noise=noise_, clip_x0=clip_x0)
    return x.clamp(-1.0, 1.0)


@pytest.mark.parametrize("parallel, injection, eta, clip_x0", [
    (False, 0.0, 0.0, False), (True, 0.0, 0.0, False), (False, 0.01, 0.0, False), (True, 0.01, 1.0, True)])
def test_encoder_propagation_matches_the_old_loop(model, parallel, injection, eta, clip_x0):
    steps = 10
    keys = paper_key_steps(steps)
    x_T = noise(seed=8)
    new = sample_propagated(model, SCHEDULE, n=3, steps=steps, key_steps=keys, parallel=parallel,
                            injection=injection, injection_below=60, eta=eta, x_T=x_T, clip_x0=clip_x0,
                            generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        old = frozen_propagated_loop(model, SCHEDULE, 3, steps, key_steps=keys, parallel=parallel,
                                     injection=injection, below=60, eta=eta, x_T=x_T, clip_x0=clip_x0,
                                     generator=torch.Generator().manual_seed(5))
    assert len(key_groups(keys, steps)) < steps and torch.equal(new, old)
