"""The tiny GPT lab animal: model, training and routing traces.

Built in chapter 05 section 01, "Top-k routing from scratch", where its feed-forward layer
becomes a mixture of experts, and reused by chapters 10 (compression) and 14 (secure
inference). It implements no paper of the list itself:

- :mod:`~labkit.lm.gpt`: the byte-level GPT with a pluggable feed-forward layer;
- :mod:`~labkit.lm.train`: training, evaluation, cached weights and routing traces;
- :mod:`~labkit.lm.recipes`: the standard dense model of each tier that later chapters share, and
  the deeper one of chapter 06.
"""

from .gpt import GPT, GPTConfig, GPTOutput
from .recipes import deep_gpt_recipe, tiny_gpt_recipe
from .train import TrainConfig, TrainResult, evaluate, pretrained_gpt, routing_trace, train_gpt

__all__ = ["GPT", "GPTConfig", "GPTOutput", "TrainConfig", "TrainResult", "deep_gpt_recipe", "evaluate",
           "pretrained_gpt", "routing_trace", "tiny_gpt_recipe", "train_gpt"]
