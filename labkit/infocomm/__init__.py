"""Learning to communicate (chapter 16): information, coupling and learned messages.

Papers and the modules that implement them (ids as in ``book/_data/papers.yml``):

- Opening the Black Box of Deep Neural Networks via Information (``information_plane``),
  chapter 16 section 01 "The information plane": :mod:`~labkit.infocomm.infoplane` (the
  symmetric 12-bit task, the 12-10-7-5-4-3-2 net, binned mutual information and the KDE
  upper bound).
- Minimum Entropy Coupling with Bottleneck (``mec_b``), chapter 16 section 02 "Minimum-entropy
  coupling with a bottleneck": :mod:`~labkit.infocomm.coupling` (greedy minimum-entropy
  coupling, the majorisation meet bound, a greedy EBIM encoder and brute-force references)
  and :mod:`~labkit.infocomm.mcg` (the rate-limited Markov coding game).
- Talking Models: Distill Pre-trained Knowledge to Downstream Models via Interactive
  Communication (``talking_models``), chapter 16 section 03 "Talking models":
  :mod:`~labkit.infocomm.talking` (encoder and decoder pairs, the student-teacher exchange,
  its training loss, feature distillation and the shifted digits task).
- Communication Learning in Multi-Agent Systems from Graph Modeling Perspective
  (``commformer``), chapter 16 section 04 "CommFormer and Adversarial Cheap Talk":
  :mod:`~labkit.infocomm.commgraph` (the planted dependency task, straight-through top-k
  edge logits, attention along the kept edges, alternating graph and weight updates).
- Adversarial Cheap Talk (``adversarial_cheap_talk``), chapter 16 section 04:
  :mod:`~labkit.infocomm.cheap_talk` (batched REINFORCE victims, message tables, antithetic ES).
- Cross-Layer Protocols for Multimedia Communications over Wireless Networks
  (``cross_layer_protocols``), chapter 16 section 05 "Cross-layer protocols":
  :mod:`~labkit.infocomm.wireless` (the Gilbert-Elliott channel and its closed forms, GOPs
  with deadlines, the layered and the cross-layer senders).
"""

from .infoplane import (
    InfoPlaneRun,
    binned_information,
    discretise,
    entropy_bits,
    kde_upper_bound,
    symmetric_task,
    train_info_net,
)

__all__ = [
    "InfoPlaneRun",
    "binned_information",
    "discretise",
    "entropy_bits",
    "kde_upper_bound",
    "symmetric_task",
    "train_info_net",
]
