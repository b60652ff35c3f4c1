"""A secure transformer: the book's tiny GPT evaluated on secret weights and a secret prompt.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023): the model
owner secret-shares the weights, the user secret-shares the prompt, the parties run the
whole transformer on shares and only the user learns the logits. PUMA's secure embedding is
a product of the prompt's one-hot matrix with the shared embedding table, so the token ids
never leave the user in the clear.

Intuition: a transformer is matrix products (one Beaver round each, communication
proportional to the operands) and a handful of non-linearities (LayerNorm, softmax, GeLU),
which :mod:`labkit.mpc.approx` builds from products and comparisons. :func:`gpt_forward` is
written once for any value type, exactly like the approximations: on float64 tensors it is
the plaintext model with PUMA's approximations (their error alone), on
:class:`~labkit.mpc.Shared` values it is the secure evaluation. Every part runs inside a
named scope (``embed``, ``block0/ln1``, ``block0/attn/softmax``, ...) so the message log
says where the rounds and bytes go, and each party times its scopes.

Roles (the same in every section of the chapter): P0 is the user (token ids; its one-hot is
an *integer* share, so the embedding product needs no truncation), P1 the model owner
(weights, one input message for all of them), P2 the dealer. The sequence length and the
architecture are public.

What the user learns: with ``reveal="logits"`` all ``B x T x V`` logits, a far richer
function of the weights than the next token (every position's full distribution; the logit
vectors span the ``d_model``-dimensional row space of the tied head, which queries can
accumulate). With ``reveal="next_token"`` the parties compute the argmax of the last
position's logits in secret (:func:`labkit.mpc.compare.argmax_along`) and open only ``B``
token ids.

What the miniature leaves out: PUMA's 3-party ABY3 protocol and its parallel rounds, the KV
cache of generation (one forward pass gives one next token), dropout-free training of the
weights for MPC (none is needed: the plaintext weights are used as they are), and any
protection of the architecture or the length.

Shapes: B prompts, T tokens, D = d_model, H heads, V vocabulary, F = d_ff.

Section: chapter 14, "A secure transformer block".
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from ..lm.gpt import GPT, GPTConfig
from ..validation import check_int
from .approx import GELU_CUTS, gelu, layer_norm, ops_for, softmax
from .approx_cost import gelu_cost, layer_norm_cost, softmax_cost
from .compare import argmax_along

__all__ = ["CATEGORIES", "REVEALS", "ApproxConfig", "SecureGPTRun", "cost_by_category", "gpt_cost", "gpt_forward",
           "gpt_weights", "plain_logits", "secure_gpt_program", "secure_logits", "time_by_category", "weight_shapes"]

REVEALS = ("logits", "next_token")  # what the user receives: every logit, or the next token only
USER, OWNER = 0, 1  # P0 holds the prompt, P1 the weights


@dataclass(frozen=True)
class ApproxConfig:
    """The knobs of the approximations inside the secure GPT (defaults: those of section 3).

    Attributes:
        gelu_cuts, gelu_degree_low, gelu_degree_high: :func:`labkit.mpc.approx.gelu`.
        exp_squarings, exp_cut: the exp inside softmax.
        softmax_iterations: Newton steps of the softmax reciprocal (None: from the range).
        rsqrt_iterations, var_low, var_high: LayerNorm's inverse square root and the range of
            the per-token variance it accepts.
        exact: names among ``"gelu"``, ``"softmax"``, ``"layer_norm"`` computed exactly instead
            (plaintext tensors only: to measure each approximation's share of the error).
    """

    gelu_cuts: tuple[float, float, float] = GELU_CUTS
    gelu_degree_low: int = 3
    gelu_degree_high: int = 8
    exp_squarings: int = 7
    exp_cut: float = -12.0
    softmax_iterations: int | None = None
    rsqrt_iterations: int = 3
    var_low: float = 2.0**-12
    var_high: float = 2.0**6
    exact: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "exact", tuple(self.exact))
        bad = [e for e in self.exact if e not in _EXACT]
        if bad:
            raise ValueError(f"exact may name {_EXACT}, got {bad}")


_EXACT = ("gelu", "softmax", "layer_norm")


def _nonlinear(name: str, approx: ApproxConfig, x: Any) -> Any:
    """The approximation ``name`` of :mod:`labkit.mpc.approx`, or the exact function if asked."""
    if name not in approx.exact:
        return {"gelu": gelu, "softmax": softmax, "layer_norm": layer_norm}[name]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"ApproxConfig.exact={approx.exact}: exact functions exist for plaintext tensors only")
    if name == "gelu":
        return lambda u, **_: torch.nn.functional.gelu(u)
    if name == "softmax":
        return lambda s, mask, **_: torch.softmax(s.masked_fill(mask == 0, float("-inf")), -1)
    return lambda h, weight, bias, **_: torch.nn.functional.layer_norm(h, (h.shape[-1],), weight, bias)


def weight_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor the model owner shares, in sharing order.

    Linear layers are stored as ``x @ w + b`` (``w`` is the transpose of ``nn.Linear.weight``).
    """
    if not isinstance(cfg, GPTConfig):
        raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
    if cfg.ffn != "dense":
        raise ValueError("the secure GPT handles dense feed-forward layers only (cfg.ffn='dense')")
    d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"tok": (v, d), "pos": (cfg.block_size, d)}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        shapes.update({p + "ln1.weight": (d,), p + "ln1.bias": (d,), p + "attn.qkv.w": (d, 3 * d),
                       p + "attn.qkv.b": (3 * d,), p + "attn.proj.w": (d, d), p + "attn.proj.b": (d,),
                       p + "ln2.weight": (d,), p + "ln2.bias": (d,), p + "ffn.up.w": (d, f), p + "ffn.up.b": (f,),
                       p + "ffn.down.w": (f, d), p + "ffn.down.b": (d,)})
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


def gpt_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The model owner's tensors (float64), named as in :func:`weight_shapes`; the head is tied to ``tok``."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.lm.GPT, got {type(model).__name__}")
    state = {k: v.detach().to(torch.float64).cpu() for k, v in model.state_dict().items()}
    out = {}
    for name in weight_shapes(model.cfg):
        if name in ("tok", "pos"):
            out[name] = state[f"{name}.weight"]
        elif name.endswith(".w"):
            out[name] = state[name[:-2] + ".weight"].T.contiguous()
        elif name.endswith(".b"):
            out[name] = state[name[:-2] + ".bias"]
        else:
            out[name] = state[name]
    return out


class _Sections:
    """Nested scopes that also time themselves (wall seconds per scope path, at this party)."""

    def __init__(self, ops: Any) -> None:
        self.ops, self.path, self.times = ops, [], {}

    @contextmanager
    def __call__(self, name: str, *, scope: bool = True) -> Iterator[None]:
        """Time the block as ``name``; label its messages too unless ``scope=False`` (the
        approximations label their own: ``softmax``, ``gelu``)."""
        self.path.append(name)
        start = time.perf_counter()
        try:
            with self.ops.scope(name) if scope else nullcontext():
                yield
        finally:
            key = "/".join(self.path)
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - start
            self.path.pop()


def gpt_forward(w: Mapping[str, Any], onehot: Any, cfg: GPTConfig, approx: ApproxConfig = ApproxConfig(),
                *, times: dict[str, float] | None = None) -> Any:
    """Logits of the tiny GPT with PUMA's approximations, for tensors or Shared values alike.

    Args:
        w: the owner's tensors as from :func:`gpt_weights` (tensors or Shared).
        onehot: (B, T, V) one-hot prompt (float tensor, or integer Shared from the user).
        cfg: the architecture (public).
        approx: the approximation knobs.
        times: if given, filled with the wall seconds of each scope (``"block0/attn"``...).

    Returns:
        (B, T, V) logits, same kind of value as the inputs.
    """
    if not isinstance(approx, ApproxConfig):
        raise TypeError(f"approx must be an ApproxConfig, got {type(approx).__name__}")
    b, t, v = onehot.shape
    if v != cfg.vocab_size or not 1 <= t <= cfg.block_size:
        raise ValueError(f"onehot must be (B, T <= {cfg.block_size}, {cfg.vocab_size}), got {tuple(onehot.shape)}")
    sec = _Sections(ops_for(w["tok"]))
    d, h = cfg.d_model, cfg.n_head
    causal = torch.tril(torch.ones(t, t, dtype=torch.int64))  # public mask (T, T)
    ln = dict(iterations=approx.rsqrt_iterations, var_low=approx.var_low, var_high=approx.var_high)
    layer_norm_, softmax_, gelu_ = (_nonlinear(k, approx, onehot) for k in ("layer_norm", "softmax", "gelu"))
    with sec("embed"):
        x = onehot @ w["tok"] + w["pos"][:t]  # PUMA's embedding: one-hot (B, T, V) @ table (V, D)
    # show: start block
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        with sec(f"block{i}"):
            with sec("ln1"):
                a = layer_norm_(x, w[p + "ln1.weight"], w[p + "ln1.bias"], **ln)
            with sec("attn"):
                with sec("qkv"):  # (B, T, 3D): one Beaver matmul with the weights
                    qkv = a @ w[p + "attn.qkv.w"] + w[p + "attn.qkv.b"]
                q, k, val = (qkv.narrow(-1, j * d, d).reshape(b, t, h, d // h)
                             .transpose(1, 2) for j in range(3))  # (B, H, T, D/H)
                with sec("scores"):  # (B, H, T, T): secret times secret
                    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d // h))
                with sec("softmax", scope=False):  # public causal mask
                    att = softmax_(s, mask=causal, squarings=approx.exp_squarings,
                                   cut=approx.exp_cut,
                                   iterations=approx.softmax_iterations)
                with sec("context"):  # (B, T, D)
                    y = (att @ val).transpose(1, 2).reshape(b, t, d)
                with sec("proj"):  # residual additions are free
                    x = x + (y @ w[p + "attn.proj.w"] + w[p + "attn.proj.b"])
            with sec("ln2"):
                a = layer_norm_(x, w[p + "ln2.weight"], w[p + "ln2.bias"], **ln)
            with sec("mlp"):
                with sec("up"):  # (B, T, F)
                    u = a @ w[p + "ffn.up.w"] + w[p + "ffn.up.b"]
                with sec("gelu", scope=False):
                    g = gelu_(u, cuts=approx.gelu_cuts,
                              degree_low=approx.gelu_degree_low,
                              degree_high=approx.gelu_degree_high)
                with sec("down"):
                    x = x + (g @ w[p + "ffn.down.w"] + w[p + "ffn.down.b"])
    # show: end block
    with sec("ln_f"):
        x = layer_norm_(x, w["ln_f.weight"], w["ln_f.bias"], **ln)
    with sec("head"):
        logits = x @ w["tok"].mT  # tied head: (B, T, D) @ (D, V)
    if times is not None:
        times.update(sec.times)
    return logits


def secure_gpt_program(ctx: Any, cfg: GPTConfig, batch: int, length: int,
                       approx: ApproxConfig = ApproxConfig(), reveal: str = "logits") -> dict[str, Any]:
    """The secure program of :func:`secure_logits` (importable: it runs in real processes).

    P0's private input is the (B, T) token ids, P1's the dict of :func:`gpt_weights`. The
    owner sends all its tensors in ONE input message (concatenated, split locally); the user
    sends its one-hot as an integer share; the result is revealed to the user only: every
    logit (``reveal="logits"``) or the argmax of the last position's (``"next_token"``).

    Returns:
        ``{"logits": (B, T, V) or None, "next_token": (B,) int64 or None, "times": {scope:
        seconds}}``; the tensors at P0 only.
    """
    if reveal not in REVEALS:
        raise ValueError(f"reveal must be one of {REVEALS}, got {reveal!r}")
    shapes = weight_shapes(cfg)
    total = sum(math.prod(s) for s in shapes.values())
    times: dict[str, float] = {}
    start = time.perf_counter()
    with ctx.scope("share_weights"):
        flat = None
        if ctx.rank == OWNER:
            flat = torch.cat([ctx.private[k].reshape(-1).to(torch.float64) for k in shapes])
        flat = ctx.input(OWNER, flat, shape=(total,))
    w, offset = {}, 0
    for k, s in shapes.items():
        n = math.prod(s)
        w[k] = flat.narrow(0, offset, n).reshape(s)  # free: each party slices its share
        offset += n
    times["share_weights"] = time.perf_counter() - start
    start = time.perf_counter()
    with ctx.scope("share_prompt"):
        onehot = None
        if ctx.rank == USER:
            onehot = torch.nn.functional.one_hot(ctx.private.to(torch.int64), cfg.vocab_size)  # (B, T, V) int
        onehot = ctx.input(USER, onehot, shape=(batch, length, cfg.vocab_size), frac_bits=0)
    times["share_prompt"] = time.perf_counter() - start
    logits = gpt_forward(w, onehot, cfg, approx, times=times)
    out, token = None, None
    if reveal == "next_token":
        start = time.perf_counter()
        with ctx.scope("argmax"):
            index = argmax_along(logits.narrow(1, length - 1, 1).squeeze(1), dim=-1)  # (B,) still secret
        times["argmax"] = time.perf_counter() - start
        start = time.perf_counter()
        token = ctx.reveal(index, to=USER)
        token = None if token is None else token.round().to(torch.int64)
    else:
        start = time.perf_counter()
        out = ctx.reveal(logits, to=USER)
    times["reveal"] = time.perf_counter() - start
    return {"logits": out, "next_token": token, "times": times}


@dataclass(frozen=True)
class SecureGPTRun:
    """A secure forward pass.

    Attributes:
        logits: (B, T, V) float64 that the user P0 received, or ``None`` with
            ``reveal="next_token"``.
        next_token: (B,) int64, the argmax of the last position's logits (computed in secret
            with ``reveal="next_token"``, by the user from the logits otherwise).
        run: the engine's :class:`~labkit.mpc.MPCRun` (message log, wall time).
        times: the user's wall seconds per scope path.
    """

    logits: torch.Tensor | None
    next_token: torch.Tensor
    run: Any
    times: dict[str, float] = field(default_factory=dict)


def _check_idx(model: GPT, idx: Any) -> torch.Tensor:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.lm.GPT, got {type(model).__name__}")
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 2:
        raise TypeError("idx must be a (B, T) int64 tensor of token ids")
    if idx.shape[1] < 1 or idx.shape[1] > model.cfg.block_size:
        raise ValueError(f"idx must have 1..{model.cfg.block_size} tokens, got {idx.shape[1]}")
    if int(idx.min()) < 0 or int(idx.max()) >= model.cfg.vocab_size:
        raise ValueError(f"token ids must lie in [0, {model.cfg.vocab_size})")
    return idx


def secure_logits(model: GPT, idx: torch.Tensor, *, approx: ApproxConfig = ApproxConfig(),
                  runtime: str = "processes", reveal: str = "logits", insecure_seed: int | None = None,
                  keep_payloads: bool = False, audit_truncation: bool = False, timeout: float = 120.0) -> SecureGPTRun:
    """Evaluate ``model`` on the prompts ``idx`` in secret: user P0, owner P1, dealer P2.

    Args:
        model: the plaintext model (only P1 reads its weights).
        idx: (B, T) token ids (only P0 reads them).
        approx: approximation knobs.
        runtime: ``"processes"`` (three real processes, gloo) or ``"simulator"`` (threads).
        reveal: ``"logits"`` (every logit to the user) or ``"next_token"`` (only the argmax of
            the last position, computed in secret).
        insecure_seed: ``None`` for private randomness; an int for a bit-identical rerun
            (see :func:`labkit.mpc.run`).
        keep_payloads: keep the payloads in the log (for the leak check).
        audit_truncation: (simulator) also compute the run's truncation risk.
        timeout: seconds for the whole run.

    Returns:
        A :class:`SecureGPTRun`.
    """
    from .runtime import run

    idx = _check_idx(model, idx)
    if reveal not in REVEALS:
        raise ValueError(f"reveal must be one of {REVEALS}, got {reveal!r}")
    b, t = idx.shape
    res = run(secure_gpt_program, runtime=runtime, args=(model.cfg, b, t, approx, reveal),
              inputs={USER: idx.clone(), OWNER: gpt_weights(model)}, insecure_seed=insecure_seed,
              keep_payloads=keep_payloads, audit_truncation=audit_truncation, timeout=timeout)
    user = res.outputs[USER]
    token = user["next_token"] if reveal == "next_token" else user["logits"][:, -1].argmax(-1)
    return SecureGPTRun(logits=user["logits"], next_token=token, run=res, times=user["times"])


def plain_logits(model: GPT, idx: torch.Tensor, *, approx: ApproxConfig = ApproxConfig()) -> torch.Tensor:
    """The same forward pass on float64 tensors: the approximations' error without fixed point."""
    idx = _check_idx(model, idx)
    onehot = torch.nn.functional.one_hot(idx, model.cfg.vocab_size).to(torch.float64)
    return gpt_forward(gpt_weights(model), onehot, model.cfg, approx)


# ----- where the communication goes ----------------------------------------------------------
CATEGORIES = {"share_weights": "sharing weights", "share_prompt": "sharing prompt", "embed": "embedding",
              "ln1": "LayerNorm", "ln2": "LayerNorm", "ln_f": "LayerNorm", "qkv": "attention matmuls",
              "scores": "attention matmuls", "context": "attention matmuls", "proj": "attention matmuls",
              "softmax": "softmax", "up": "MLP matmuls", "down": "MLP matmuls", "gelu": "GeLU",
              "head": "head", "argmax": "argmax", "reveal": "reveal"}


def cost_by_category(log: Any) -> dict[str, Any]:
    """Measured cost per kind of layer: the first component of each message's scope path found
    in :data:`CATEGORIES` names it (``block0/attn/softmax/max/...`` is softmax)."""
    from .comm import MessageLog
    from .cost import Cost

    buckets: dict[str, list] = {}
    for m in log.messages:
        cat = next((CATEGORIES[c] for c in m.scope.split("/") if c in CATEGORIES), "other")
        buckets.setdefault(cat, []).append(m)
    return {k: MessageLog(tuple(v)).cost() if v else Cost() for k, v in buckets.items()}


def time_by_category(times: Mapping[str, float]) -> dict[str, float]:
    """Seconds per kind of layer from the per-scope times of :class:`SecureGPTRun` (leaf scopes
    only, named by their last component through :data:`CATEGORIES`)."""
    out: dict[str, float] = {}
    for key, seconds in times.items():
        if any(other.startswith(key + "/") for other in times):
            continue  # a parent scope: its children are counted
        cat = CATEGORIES.get(key.rsplit("/", 1)[-1], "other")
        out[cat] = out.get(cat, 0.0) + seconds
    return out


def gpt_cost(cfg: GPTConfig, batch: int, length: int, approx: ApproxConfig = ApproxConfig(),
             reveal: str = "logits") -> Any:
    """Closed-form cost of :func:`secure_gpt_program`, summed from the protocols' formulas."""
    from .cost import argmax_cost, input_cost, matmul_cost, reveal_cost

    if reveal not in REVEALS:
        raise ValueError(f"reveal must be one of {REVEALS}, got {reveal!r}")

    b, t = check_int("batch", batch, 1), check_int("length", length, 1, cfg.block_size)
    d, f, v, h = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_head
    n_w = sum(math.prod(s) for s in weight_shapes(cfg).values())
    ln = dict(var_low=approx.var_low, var_high=approx.var_high, iterations=approx.rsqrt_iterations)
    block = (layer_norm_cost((b, t, d), **ln) + matmul_cost((b, t, d), (d, 3 * d))
             + matmul_cost((b, h, t, d // h), (b, h, d // h, t))
             + softmax_cost((b, h, t, t), squarings=approx.exp_squarings, iterations=approx.softmax_iterations)
             + matmul_cost((b, h, t, t), (b, h, t, d // h)) + matmul_cost((b, t, d), (d, d))
             + layer_norm_cost((b, t, d), **ln) + matmul_cost((b, t, d), (d, f))
             + gelu_cost(b * t * f, degree_low=approx.gelu_degree_low, degree_high=approx.gelu_degree_high)
             + matmul_cost((b, t, f), (f, d)))
    if reveal == "next_token":
        out = argmax_cost((b, v), -1) + reveal_cost(b, to=USER)
    else:
        out = reveal_cost(b * t * v, to=USER)
    return (input_cost(n_w, owner=OWNER) + input_cost(b * t * v, owner=USER) + matmul_cost((b, t, v), (v, d))
            + block * cfg.n_layer + layer_norm_cost((b, t, d), **ln) + matmul_cost((b, t, d), (d, v)) + out)
