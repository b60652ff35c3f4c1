"""Quantization and compression: quantizers, calibration, fake quantization and sizes.

Section: chapter 10, "Quantization and compression".
"""

from .fakequant import MODES, QuantWrapper, calibrating, quant_layers, quantize_model, set_mode
from .gemm import OUT_DTYPES, w4a4_gemm, w4a4_gemm_reference, w8a8_gemm, w8a8_gemm_reference
from .observers import OBSERVERS, MinMaxObserver, MSEObserver, Observer, PercentileObserver, make_observer
from .quantizers import (GRANULARITIES, QSpec, QTensor, code_range, dequantize, fake_quantize, quantize,
                         quantize_tensor, reduce_range, round_ste, scale_zero)
from .packing import INT4_MAX, INT4_MIN, pack_int4, unpack_int4
from .size import SizeReport, model_size

__all__ = ["INT4_MAX", "INT4_MIN", "OUT_DTYPES", "pack_int4", "unpack_int4", "w4a4_gemm", "w4a4_gemm_reference",
           "w8a8_gemm", "w8a8_gemm_reference", "GRANULARITIES", "MODES", "OBSERVERS", "MSEObserver", "MinMaxObserver", "Observer", "PercentileObserver",
           "QSpec", "QTensor", "QuantWrapper", "SizeReport", "calibrating", "code_range", "dequantize",
           "fake_quantize", "make_observer", "model_size", "quant_layers", "quantize", "quantize_model",
           "quantize_tensor", "reduce_range", "round_ste", "scale_zero", "set_mode"]
