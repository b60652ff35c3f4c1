"""Decentralised, federated and Byzantine-robust learning (chapter 13).

- :mod:`labkit.federated.gossip`: DADAO (dadao), "DADAO: Decoupled Accelerated
  Decentralized Asynchronous Optimization": Poisson clocks for local gradients and for
  gossip, the exact mixing ODE between events, the graph constants chi_1 and chi_2, and an
  unaccelerated baseline (asynchronous gradient tracking) on the same clocks.
- :mod:`labkit.federated.spsa`: Just One Byte (just_one_byte), "Just One Byte (per
  gradient): A Note on Low-Bandwidth Decentralized Language Model Finetuning Using Shared
  Randomness" (section 02, "Shared randomness: Just One Byte and Ferret"): directions seeded
  by (peer, step), the two-point estimate coded as one int8, the shared step, and the peer
  worker for real gloo processes with its one-process simulator.
- :mod:`labkit.federated.projection`: Ferret (ferret), "Ferret: Federated Full-Parameter
  Tuning at Scale for Large Language Models" (section 02): block-wise projection of a
  first-order update on K shared random bases, its unbiased reconstruction, and FedAvg and
  Ferret runs with in-process clients.
- :mod:`labkit.federated.partition`, :mod:`labkit.federated.attacks`,
  :mod:`labkit.federated.aggregators`: Flag Aggregator (flag_aggregator), "Flag Aggregator:
  Scalable Distributed Training under Failures and Augmented Losses using Convex
  Optimization", and Bristle (bristle), "Bristle: Decentralized Federated Learning in
  Byzantine, Non-i.i.d. Environments" (section 03, "Byzantine-robust aggregation"): a
  Dirichlet split of the digits over peers, four attacks, a federated run on the digit
  classifier's frozen convolutions, and the aggregation rules (mean, coordinate median,
  trimmed mean, Krum, Flag Aggregator's reweighted subspace, Bristle's per-class
  prioritiser and integrator).
- :mod:`labkit.federated.supermask`: HideNseek (hidenseek), "HideNseek: Federated Lottery
  Ticket via Server-side Pruning and Sign Supermask" (section 04, "Federated lottery
  tickets: HideNseek"): iterated SynFlow pruning at initialisation, sign and {0, 1}
  supermasks trained through a straight-through estimator, one bit per kept weight packed
  into bytes, the server's majority vote, and dense FedAvg on the same clients.
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
from labkit.federated.projection import FedConfig, run_federated
from labkit.federated.spsa import SpsaConfig, simulate_spsa, spsa_peer

__all__ = [
    "GossipProblem",
    "GossipRun",
    "graph_constants",
    "logistic_problem",
    "make_graph",
    "run_dadao",
    "run_tracking",
    "theorem_rate",
    "FedConfig",
    "run_federated",
    "SpsaConfig",
    "simulate_spsa",
    "spsa_peer",
]
