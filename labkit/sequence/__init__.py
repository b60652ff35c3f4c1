"""Sequence generation for speech and text (chapter 17).

Synthetic voices, speech features and tokens, separation, masked parallel decoding,
predictive-then-generative enhancement and text diffusion; each module names its paper and
section.

- :mod:`labkit.sequence.text_diffusion`: encoder-decoder text diffusion (diffusia), "DiffuSIA: A
  Spiral Interaction Architecture for Encoder-Decoder Text Diffusion" (section 05, "Spiral
  encoder-decoder text diffusion: DiffuSIA"): the 60-word paraphrase grammar, diffusion on word
  embeddings with rounding, and the encoder-decoder with and without the spiral interaction.
"""

__all__: list[str] = []

from labkit.sequence.text_diffusion import (  # noqa: E402
    SpiralEncDec, TextDiffusionConfig, make_paraphrases, sample, train_text_diffusion)

__all__ += ["SpiralEncDec", "TextDiffusionConfig", "make_paraphrases", "sample", "train_text_diffusion"]
