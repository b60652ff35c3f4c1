"""Adaptive depth and parallel decoding on the tiny GPT (chapter 06); serving (chapter 07).

Papers and the modules that implement them (ids as in ``book/_data/papers.yml``):

- Duo-LLM (``duo_llm``), chapter 06 section 01 "Duo-LLM": :mod:`~labkit.inference.duo`
  (a GPT whose every feed-forward layer has a small and a big module and a skip, trained with
  random per-token routes; the one-big-layer oracle; per-layer linear routers trained on the
  oracle's choices).
- γ-MoD (``gamma_mod``), chapter 06 section 02 "γ-MoD": :mod:`~labkit.inference.mod` (ARank,
  the numerical rank of attention maps; mixture-of-depths blocks with fine-tuned routers), on the
  GPT forward pass with skip masks and attention maps of :mod:`~labkit.inference.hooks`.
- Unified Layer Skipping (``unified_layer_skipping``) and FFN-SkipLLM (``ffn_skipllm``),
  chapter 06 section 03 "Layer skipping": :mod:`~labkit.inference.skipping` (the skip count from
  a target speed-up, evenly spread layers; the FFN cosine and per-window FFN skips).
- Hidden transfer (``hidden_transfer``), chapter 06 section 04 "Hidden transfer":
  :mod:`~labkit.inference.hidden_transfer` (linear maps from a middle layer's hidden state to
  pseudo states of the next positions, the candidate tree, verification in one pass), on the KV
  cache of :mod:`~labkit.inference.kvcache`.
- :mod:`~labkit.inference.kvcache`: a KV cache for the lab GPT (prefill, one-token decode steps,
  several positions under an explicit mask for tree verification), shared with chapter 07.
- DistServe (``distserve``), chapter 07 section 01 "Goodput: DistServe":
  :mod:`~labkit.inference.serving` (a discrete-event simulator of colocated and disaggregated
  prefill and decode with continuous batching; goodput under TTFT and TPOT objectives) and
  :mod:`~labkit.inference.costs` (step costs fitted to the lab GPT's measured prefill and decode,
  and the roofline of a 7B model on datasheet devices).
- Attention offloading (``attention_offloading``) and Duplex (``duplex``), chapter 07 section 02
  "Arithmetic intensity": :mod:`~labkit.inference.intensity` (FLOPs and bytes of dense,
  mixture-of-experts and grouped-query attention layers at decode, counted and in closed form;
  per-layer device choice on the roofline; the link bandwidth attention offloading needs).
- MatryoshkaKV (``matryoshkakv``), chapter 07 section 03 "MatryoshkaKV":
  :mod:`~labkit.inference.matryoshka` (orthogonal key and value projections per head cut to a
  rank, the PCA baseline, Matryoshka training against the full model with nested random ranks,
  the greedy per-head rank search under an average budget), and its decode step:
  :mod:`~labkit.inference.decode` (attention of a new token over the low-rank cache, the query
  projected once, grouped-query heads sharing each cache read; the PyTorch reference, and a
  split-context Triton kernel with a log-sum-exp merge in ``labkit.inference._kernels``).
"""

from . import costs, decode, hidden_transfer, hooks, intensity, kvcache, matryoshka, mod, serving, skipping
from .duo import (DuoConfig, DuoGPT, LayerRouters, OracleResult, oracle_routes, route_macs, routed_loss,
                  train_duo, train_routers)

__all__ = ["costs", "decode", "hidden_transfer", "hooks", "intensity", "kvcache", "matryoshka", "mod", "serving", "skipping", "DuoConfig", "DuoGPT", "LayerRouters", "OracleResult", "oracle_routes", "route_macs", "routed_loss",
           "train_duo", "train_routers"]
