"""The tiny GPT lab animal: model, training and routing traces.

Section: chapter 05 (built there), reused by chapters 06, 07, 10 and 14.
"""

from .gpt import GPT, GPTConfig, GPTOutput
from .recipes import tiny_gpt_recipe
from .train import TrainConfig, TrainResult, evaluate, pretrained_gpt, routing_trace, train_gpt

__all__ = ["GPT", "GPTConfig", "GPTOutput", "TrainConfig", "TrainResult", "evaluate", "pretrained_gpt",
           "routing_trace", "tiny_gpt_recipe", "train_gpt"]
