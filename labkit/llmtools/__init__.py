"""Language models as systems tools (chapter 18).

Evaluation harnesses that run what a model generates (Verilog simulation, MPI programs, an
adaptive-bitrate simulator, block levels in a physics engine); each module names its paper and
section.
"""

__all__: list[str] = []
