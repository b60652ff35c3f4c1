"""Sequence generation for speech and text (chapter 17).

Synthetic voices, speech features and tokens, separation, masked parallel decoding,
predictive-then-generative enhancement and text diffusion; each module names its paper and
section.
"""

__all__: list[str] = []
