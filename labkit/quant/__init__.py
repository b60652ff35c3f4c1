"""Quantization and compression (chapter 10): quantizers and calibration, diffusion PTQ, 4-bit
GEMMs with a low-rank branch, and size control of the tiny GPT.

Papers and the modules that implement them (ids as in ``book/_data/papers.yml``):

- PTQ4DM (``ptq4dm``) and QuEST (``quest``), section 02 "Quantizing a diffusion model":
  :mod:`~labkit.quant.ptq4dm` (timestep-aware calibration) and :mod:`~labkit.quant.quest`
  (sensitivity and selective finetuning);
- SVDQuant (``svdquant``), section 03 "SVDQuant: 4-bit weights and activations with a low-rank
  branch": :mod:`~labkit.quant.svdquant` (low-rank branch + 4-bit residual),
  :mod:`~labkit.quant.smoothing` (outliers moved into the weights),
  :mod:`~labkit.quant.gemm` (W8A8 and W4A4 GEMMs, reference and Triton) and
  :mod:`~labkit.quant.packing` (two int4 per byte);
- BitStack (``bitstack``) and FoldGPT (``foldgpt``), section 04 "BitStack and FoldGPT":
  :mod:`~labkit.quant.bitstack` (residual sign stacks) and :mod:`~labkit.quant.foldgpt`
  (gate-ranked removal, folded shared blocks).

Section 01, "Quantization from first principles" (no paper of the list of its own):
:mod:`~labkit.quant.quantizers` (symmetric and affine, per tensor, channel and group),
:mod:`~labkit.quant.observers` (calibration ranges), :mod:`~labkit.quant.fakequant` (fake
quantization of Linear/Conv2d) and :mod:`~labkit.quant.size` (bytes as stored);
:mod:`~labkit.quant.report` lays out every section's sliders, tables and image grids.
"""

from .bitstack import (BitStack, MatrixStack, ResidualBlock, bitstack_compress, decompose_matrix, input_rms,
                       pack_signs, rtn_quantize, unpack_signs)
from .fakequant import MODES, QuantWrapper, calibrating, quant_layers, quantize_model, set_mode
from .foldgpt import FoldedGPT, FoldPlan, choose_owners, cure, drop_plan, fold_plan, learn_block_gates
from .gemm import OUT_DTYPES, w4a4_gemm, w4a4_gemm_reference, w8a8_gemm, w8a8_gemm_reference
from .observers import OBSERVERS, MinMaxObserver, MSEObserver, Observer, PercentileObserver, make_observer
from .ptq4dm import (STRATEGIES, CalibrationSet, RangeTrace, SampleFidelity, SamplingPool, calibrate,
                     calibration_set, calibration_steps, ptq_model, sample_fidelity, sampling_pool, timestep_ranges)
from .quantizers import (GRANULARITIES, QSpec, QTensor, code_range, dequantize, fake_quantize, quantize,
                         quantize_tensor, reduce_range, round_ste, scale_zero)
from .packing import INT4_MAX, INT4_MIN, pack_int4, unpack_int4
from .quest import (FinetuneResult, PredictionError, Sensitivity, layer_sensitivity, prediction_error,
                    random_layers, select_layers, selective_finetune, time_embedding_layers)
from .size import SizeReport, model_size
from .smoothing import (capture_inputs, channel_absmax, channels_last, scale_input_channels, smoothing_factors,
                        weight_absmax)
from .svdquant import (ALPHA_GRID, VARIANTS, SVDQuantConfig, SVDQuantLayer, fake_quantize_input, low_rank_split,
                       output_error, replace_layers, svdquant_layer, svdquant_model, variant_config)

__all__ = [
    "ALPHA_GRID",
    "BitStack",
    "CalibrationSet",
    "FinetuneResult",
    "FoldPlan",
    "FoldedGPT",
    "GRANULARITIES",
    "INT4_MAX",
    "INT4_MIN",
    "MODES",
    "MSEObserver",
    "MatrixStack",
    "MinMaxObserver",
    "OBSERVERS",
    "OUT_DTYPES",
    "Observer",
    "PercentileObserver",
    "PredictionError",
    "QSpec",
    "QTensor",
    "QuantWrapper",
    "RangeTrace",
    "ResidualBlock",
    "STRATEGIES",
    "SVDQuantConfig",
    "SVDQuantLayer",
    "SampleFidelity",
    "SamplingPool",
    "Sensitivity",
    "SizeReport",
    "VARIANTS",
    "bitstack_compress",
    "calibrate",
    "calibrating",
    "calibration_set",
    "calibration_steps",
    "capture_inputs",
    "channel_absmax",
    "channels_last",
    "choose_owners",
    "code_range",
    "cure",
    "decompose_matrix",
    "dequantize",
    "drop_plan",
    "fake_quantize",
    "fake_quantize_input",
    "fold_plan",
    "input_rms",
    "layer_sensitivity",
    "learn_block_gates",
    "low_rank_split",
    "make_observer",
    "model_size",
    "output_error",
    "pack_int4",
    "pack_signs",
    "prediction_error",
    "ptq_model",
    "quant_layers",
    "quantize",
    "quantize_model",
    "quantize_tensor",
    "random_layers",
    "reduce_range",
    "replace_layers",
    "round_ste",
    "rtn_quantize",
    "sample_fidelity",
    "sampling_pool",
    "scale_input_channels",
    "scale_zero",
    "select_layers",
    "selective_finetune",
    "set_mode",
    "smoothing_factors",
    "svdquant_layer",
    "svdquant_model",
    "time_embedding_layers",
    "timestep_ranges",
    "unpack_int4",
    "unpack_signs",
    "variant_config",
    "w4a4_gemm",
    "w4a4_gemm_reference",
    "w8a8_gemm",
    "w8a8_gemm_reference",
    "weight_absmax",
]
