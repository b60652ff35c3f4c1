"""Language models as systems tools (chapter 18).

Evaluation harnesses that run what a model generates (Verilog simulation, MPI programs, an
adaptive-bitrate simulator, block levels in a physics engine); each module names its paper and
section.

- :mod:`labkit.llmtools.levels`: levels as programs (chatgpt4pcg), "ChatGPT4PCG 2 Competition:
  Prompt Engineering for Science Birds Level Generation" (section 04, "Levels as programs:
  ChatGPT4PCG"): `drop_block` programs of the three block kinds, the pymunk stability test,
  the 8 x 8 picture read by the digit classifier, the competition's diversity and three
  generators (jittered templates, random programs, a repetitive one).
"""

__all__: list[str] = []

from labkit.llmtools.levels import Level, diversity, program, render, settle  # noqa: E402

__all__ += ["Level", "diversity", "program", "render", "settle"]
