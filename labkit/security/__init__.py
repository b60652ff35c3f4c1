"""Attacks and information flow (chapter 15).

- :mod:`labkit.security.infoflow`: permissive information-flow labels
  (permissive_information_flow), "Permissive Information-Flow Analysis for Large Language
  Models" (section 02, "Permissive information flow"): a label lattice, a kNN-LM datastore
  keyed by the tiny GPT's hidden states and tagged by document, and three label propagators
  (the join of every retrieved label, leave-one-out influence, a greedy minimal sufficient
  subset).
"""

from labkit.security.infoflow import (
    Datastore,
    Lattice,
    build_datastore,
    labelled_corpus,
    propagate,
)

__all__ = ["Datastore", "Lattice", "build_datastore", "labelled_corpus", "propagate"]
