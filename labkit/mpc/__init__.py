"""Secure multi-party inference (chapter 14): a small MPC engine over the ring Z_2^64.

Two computing parties P0, P1 hold additive shares; a dealer P2 hands out correlated
randomness (Beaver triples). Programs are SPMD Python functions on :class:`Shared` values,
run by :func:`run` in threads (``runtime="simulator"``) or in three real processes
(``runtime="processes"``); every message is logged and the counters match the closed-form
costs of :mod:`labkit.mpc.cost` exactly. Each party draws private randomness from the OS;
``run(..., insecure_seed=...)`` makes a run reproducible and marks it ``secure=False``.

- :mod:`labkit.mpc.prg`: each party's private generator (and the insecure, seeded one);
- :mod:`labkit.mpc.ring`: the ring, fixed point and its ranges;
- :mod:`labkit.mpc.sharing`: additive/XOR sharing in plain tensors, uniformity tests;
- :mod:`labkit.mpc.engine`, :mod:`labkit.mpc.shared`: the party context and shared values;
- :mod:`labkit.mpc.dealer`, :mod:`labkit.mpc.beaver`: triples, products, truncation;
- :mod:`labkit.mpc.attack`: what a party recovers when the dealer's randomness is not private;
- :mod:`labkit.mpc.compare`: sign, ReLU, comparisons, max and argmax;
- :mod:`labkit.mpc.cost`, :mod:`labkit.mpc.comm`: cost formulas, message log, transports;
- :mod:`labkit.mpc.runtime`, :mod:`labkit.mpc.programs`: running programs, demo programs;
- :mod:`labkit.mpc.ringmm`: the ring matrix product (reference and kernel);
- :mod:`labkit.mpc.approx`: PUMA's GeLU, exp, softmax, reciprocal, rsqrt and LayerNorm;
- :mod:`labkit.mpc.approx_cost`: their closed-form costs, and running one in secret;
- :mod:`labkit.mpc.transformer`: the tiny GPT evaluated in secret.
- :mod:`labkit.mpc.report`: cost comparisons, tables and figures of the chapter's pages.
"""

from .beaver import beaver_matmul, beaver_mul, beaver_square, finish_product, truncate, truncate_share
from .comm import DEALER, Message, MessageLog, MPCError, MPCTimeout
from .compare import and_gates, argmax_along, b2a, greater_than, less_than, max_along, msb, relu, where
from .cost import (
    Cost,
    argmax_cost,
    input_cost,
    matmul_cost,
    max_cost,
    msb_cost,
    mul_cost,
    relu_cost,
    reveal_cost,
    square_cost,
    truncate_cost,
    where_cost,
)
from .engine import Party
from .prg import PRG
from .ring import DEFAULT_FRAC_BITS, decode, encode, product_range, random_ring, representable_range, ring_mm
from .runtime import RUNTIMES, MPCRun, run
from .shared import Shared, cat, stack
from .sharing import chi_square_uniform, ks_two_sample, reconstruct, reconstruct_xor, share, share_xor

from . import approx, approx_cost, attack, transformer  # report (plotly) loads on use
from .approx import gelu, layer_norm, reciprocal, rsqrt, softmax
from .ringmm import balanced_bytes, check_ring_operands, ring_matmul, ring_matmul_limbs, ring_matmul_reference

__all__ = [
    "approx",
    "approx_cost",
    "attack",
    "transformer",
    "gelu",
    "layer_norm",
    "reciprocal",
    "rsqrt",
    "softmax",
    "balanced_bytes",
    "check_ring_operands",
    "ring_matmul",
    "ring_matmul_limbs",
    "ring_matmul_reference",
    "DEALER",
    "DEFAULT_FRAC_BITS",
    "RUNTIMES",
    "Cost",
    "MPCError",
    "MPCRun",
    "MPCTimeout",
    "Message",
    "MessageLog",
    "PRG",
    "Party",
    "Shared",
    "and_gates",
    "argmax_along",
    "argmax_cost",
    "b2a",
    "beaver_matmul",
    "beaver_mul",
    "beaver_square",
    "cat",
    "chi_square_uniform",
    "decode",
    "encode",
    "finish_product",
    "greater_than",
    "input_cost",
    "ks_two_sample",
    "less_than",
    "matmul_cost",
    "max_along",
    "max_cost",
    "msb",
    "msb_cost",
    "mul_cost",
    "product_range",
    "random_ring",
    "reconstruct",
    "reconstruct_xor",
    "relu",
    "relu_cost",
    "representable_range",
    "reveal_cost",
    "ring_mm",
    "run",
    "share",
    "share_xor",
    "square_cost",
    "stack",
    "truncate",
    "truncate_cost",
    "truncate_share",
    "where",
    "where_cost",
]
