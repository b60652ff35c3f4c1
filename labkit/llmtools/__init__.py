"""Language models as systems tools (chapter 18).

Evaluation harnesses that run what a model generates (Verilog simulation, MPI programs, an
adaptive-bitrate simulator, block levels in a physics engine); each module names its paper and
section.

- :mod:`labkit.llmtools.verilog`: spec-to-RTL evaluation (verilogeval), "Revisiting VerilogEval:
  Newer LLMs, In-Context Learning, and Specification-to-RTL Tasks" (section 01, "VerilogEval:
  spec-to-RTL evaluation"): twelve problems with references, generated testbenches, the Icarus
  Verilog runner, five failure classes and seeded mutants of known class.
- :mod:`labkit.llmtools.passk`: the unbiased pass@k (verilogeval, section 01), in product form,
  with a subset-enumeration check.
- :mod:`labkit.llmtools.codegen`: the code model (verilogeval, section 01): a 2-block byte
  GPT with a 256-byte context, a fill-in-the-middle corpus, completion and infilling.
- :mod:`labkit.llmtools.mpi`: MPI call completion (mpirigen), "MPIrigen: MPI Code Generation
  through Domain-Specific Language Models" (section 02, "MPI call completion: MPIrigen"):
  generated MPI C programs, masked calls, call sites found by pycparser and scored per field,
  the MPICH runner, a 2-block token GPT with fill-in-the-middle and a longest-match n-gram.
- :mod:`labkit.llmtools.abr`: a language model as a bitrate controller (netllm), "Large
  Language Model Adaptation for Networking" (section 03, "A language model as a bitrate
  controller: NetLLM"): the adaptive-bitrate simulator with linear QoE, Markov-modulated
  traces, BBA, rate-based and RobustMPC, and the tiny GPT adapted with embeddings, LoRA and a
  decision head (or token answers), trained offline on returns-to-go.
- :mod:`labkit.llmtools.levels`: levels as programs (chatgpt4pcg), "ChatGPT4PCG 2 Competition:
  Prompt Engineering for Science Birds Level Generation" (section 04, "Levels as programs:
  ChatGPT4PCG"): `drop_block` programs of the three block kinds, the pymunk stability test,
  the 8 x 8 picture read by the digit classifier, the competition's diversity and three
  generators (jittered templates, random programs, a repetitive one).
"""

from labkit.llmtools.codegen import code_corpus, code_gpt_recipe, complete, fill_in_the_middle, train_code_gpt
from labkit.llmtools.passk import pass_at_k
from labkit.llmtools.verilog import PROBLEMS, make_mutants, run_candidate

__all__: list[str] = ["PROBLEMS", "code_corpus", "code_gpt_recipe", "complete", "fill_in_the_middle",
                      "make_mutants", "pass_at_k", "run_candidate", "train_code_gpt"]

from labkit.llmtools.levels import Level, diversity, program, render, settle  # noqa: E402

__all__ += ["Level", "diversity", "program", "render", "settle"]

from labkit.llmtools.abr import NetLLMPolicy, make_traces, simulate, train_netllm  # noqa: E402

__all__ += ["NetLLMPolicy", "make_traces", "simulate", "train_netllm"]

from labkit.llmtools.mpi import call_sites, make_program, make_task, run_program  # noqa: E402

__all__ += ["call_sites", "make_program", "make_task", "run_program"]
