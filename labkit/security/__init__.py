"""Attacks and information flow (chapter 15).

- :mod:`labkit.security.inversion`: label-only model inversion through knowledge transfer
  (lokt), "Label-Only Model Inversion Attacks via Knowledge Transfer" (section 01, "Label-only
  model inversion: LOKT"): a target that answers hard labels only and counts the queries, a
  target-labelled conditional GAN (T-ACGAN), surrogates trained on its samples, and the
  white-box inversion of the generator's latent on the surrogate ensemble.
- :mod:`labkit.security.infoflow`: permissive information-flow labels
  (permissive_information_flow), "Permissive Information-Flow Analysis for Large Language
  Models" (section 02, "Permissive information flow"): a label lattice, a kNN-LM datastore
  keyed by the tiny GPT's hidden states and tagged by document, and three label propagators
  (the join of every retrieved label, leave-one-out influence, a greedy minimal sufficient
  subset).
- :mod:`labkit.security.unlearn`: attacking an unlearned diffusion model (unlearndiffatk),
  "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To Generate
  Unsafe Images ... For Now" (section 03, "UnlearnDiffAtk: bringing an erased digit back"): a
  digit erased from the tiny conditional DDPM by fine-tuning a copy toward an anchor digit
  (ESD-style), and condition embeddings, free or mixtures of the allowed digits, optimised with
  the model's own denoising loss to bring it back.
- :mod:`labkit.security.agents`: flooding of manipulated knowledge
  (flooding_manipulated_knowledge), "Flooding Spread of Manipulated Knowledge in LLM-Based
  Multi-Agent Communities" (section 04, "Flooding of manipulated knowledge"): beliefs of agents
  on Watts-Strogatz, Barabási-Albert and block-model graphs updated by trust × persuasiveness,
  the two-stage attack from central or random seats, guardians, fact-checking and a retrieval
  memory, every seed and scenario in one sparse product per round.
"""

from labkit.security.infoflow import (
    Datastore,
    Lattice,
    build_datastore,
    labelled_corpus,
    propagate,
)

__all__ = ["Datastore", "Lattice", "build_datastore", "labelled_corpus", "propagate"]
