"""Decentralised, federated and Byzantine-robust learning (chapter 13).

- :mod:`labkit.federated.gossip`: DADAO (dadao), "DADAO: Decoupled Accelerated
  Decentralized Asynchronous Optimization": Poisson clocks for local gradients and for
  gossip, the exact mixing ODE between events, the graph constants chi_1 and chi_2, and an
  unaccelerated baseline (asynchronous gradient tracking) on the same clocks.
"""

from labkit.federated.gossip import (
    GossipProblem,
    GossipRun,
    graph_constants,
    logistic_problem,
    make_graph,
    run_dadao,
    run_tracking,
    theorem_rate,
)

__all__ = [
    "GossipProblem",
    "GossipRun",
    "graph_constants",
    "logistic_problem",
    "make_graph",
    "run_dadao",
    "run_tracking",
    "theorem_rate",
]
