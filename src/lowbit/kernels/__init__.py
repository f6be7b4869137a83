"""Native kernels of lowbit's CPU runtime (NumPy + C, no torch).

Every native extension is loaded by :mod:`lowbit.kernels.native`; they share one code-path setting, one
thread setting and one CPU-feature report (:mod:`lowbit.kernels.dispatch`). The integer-LSTM kernels are
:mod:`lowbit.kernels.intlstm`, imported on first use (the binary runtime does not need that extension).

Binary (+-1) matrix products by XNOR + popcount over bit-packed operands, with run-time CPU dispatch
(portable / popcnt / AVX2 / AVX-512 VPOPCNTDQ / + VNNI) and pthreads:

* :func:`binary_matmul` -- ``a @ b.T`` for +-1 arrays (packs, multiplies, returns int32)
* :func:`pack_bits`, :func:`pack_signs` -- pack +-1 values / signs of any real into uint64 words
* :func:`binary_matmul_packed` -- the product of packed operands, optionally into a preallocated output
* :func:`prepare_packed` -> :class:`PreparedMatrix` -- weights laid out once in the kernel's native
  layout, accepted by :func:`binary_matmul_packed` in place of the packed rows
* :func:`threshold_pack` -- int32 accumulators -> packed sign bits (``sign * (acc - pad) < threshold``),
  :func:`binary_matmul_threshold` -- product and threshold in one call
* :func:`binary_conv2d` -- binary 2-D convolution straight on packed NHWC words (implicit GEMM, +1 padding,
  stride), int32 output or the threshold bits of the next layer fused in; :func:`prepare_conv_weights` ->
  :class:`PreparedConvWeights` (weights laid out once); :mod:`lowbit.kernels.binconv`
* :func:`prepare_u8_weights`, :func:`u8_matmul` -- 8-bit inputs x +-1 weights, exact in int32 (the
  first layer; :mod:`lowbit.kernels.u8`)
* :func:`quant_matmul` -- exact ``a @ b.T`` for operands of named level sets (binary, ternary, uK, sK,
  oK): bit-serial k-bit, int8 (AVX2 / AVX-512 VNNI) and XNOR kernels, chosen by :func:`choose_kernel`;
  :func:`pack_levels` / :func:`prepare_levels` -> :class:`PackedLevels` and :func:`quant_matmul_packed`
  for operands packed once (:mod:`lowbit.kernels.quant`)
* :func:`pack_conv_levels`, :func:`pack_dense_levels` -- uint8 codes (NHWC, im2col fused in; or (rows, K))
  straight into the k-bit GEMM's operand layout with row sums, one C pass; :func:`threshold_codes` --
  int32 accumulators -> [``acc * mul + border``] -> [max-pool] -> per-channel multi-threshold codes or
  packed bits, one C pass; :func:`affine_epilogue` -- the same to float32 ``v * scale + bias``;
  :func:`conv_levels` -- a whole k-bit conv layer (pack, GEMM, epilogue) band by band in one threaded pass;
  :func:`threshold_floats`, :func:`decode_codes` -- float32 -> codes by thresholds, codes -> float32 by a
  table (:mod:`lowbit.kernels.codes`)
* :func:`float_conv2d`, :func:`float_matmul` -- the float32 layers a quantized network keeps (first conv,
  real-valued shortcuts, float dense), an implicit-GEMM kernel of lowbit's own; :func:`prepare_float` ->
  :class:`PreparedFloat` (weights laid out once), :func:`pad_map` (:mod:`lowbit.kernels.floatmm`)
* :func:`binary_matmul_naive` -- the deliberately naive reference kernel
* :func:`available_paths`, :func:`active_path`, :func:`set_kernel_path` -- code path selection for
  every kernel (env ``LOWBIT_KERNEL_PATH``); :func:`cpu_features` -- the CPU features the kernels test
* :func:`get_num_threads`, :func:`set_num_threads` -- default thread count (env ``LOWBIT_NUM_THREADS``)

See :mod:`lowbit.kernels.binary` for the packed layout.

GPU kernels (Triton, torch tensors) live in :mod:`lowbit.kernels.gpu`, which is not imported here (it
needs torch, and triton on first use): ``binary_matmul``, ``quant_matmul`` (named level sets, 1-4 bits
bit-serial), packing, the naive XNOR kernel and a float baseline GEMM; ``pip install 'lowbit[gpu]'``.
"""
from .binary import (  # noqa: F401
    PreparedMatrix,
    binary_matmul,
    binary_matmul_naive,
    binary_matmul_packed,
    binary_matmul_threshold,
    pack_bits,
    pack_signs,
    planned_threads,
    prepare_packed,
    threshold_pack,
)
from .binconv import (  # noqa: F401
    PreparedConvWeights,
    binary_conv2d,
    conv_output_size,
    conv_planned_threads,
    prepare_conv_weights,
)
from .floatmm import (  # noqa: F401
    PreparedFloat,
    float_conv2d,
    float_matmul,
    float_matmul_prepared,
    pad_map,
    prepare_float,
    single_threaded_blas,
)
from .quant import (  # noqa: F401
    BITSERIAL_MAX_PAIRS,
    KERNELS,
    PackedLevels,
    choose_kernel,
    pack_levels,
    prepare_levels,
    quant_matmul,
    quant_matmul_packed,
    quant_planned_threads,
)
from .codes import (  # noqa: F401
    affine_epilogue,
    conv_levels,
    conv_output_shape,
    decode_codes,
    pack_conv_levels,
    pack_dense_levels,
    threshold_codes,
    threshold_floats,
)
from .u8 import PreparedU8Weights, prepare_u8_weights, u8_matmul, u8_matmul_is_fast  # noqa: F401
from .dispatch import (  # noqa: F401
    PATHS,
    active_path,
    available_paths,
    cpu_features,
    get_num_threads,
    set_kernel_path,
    set_num_threads,
)

__all__ = [
    "PreparedFloat",
    "float_conv2d",
    "float_matmul",
    "float_matmul_prepared",
    "pad_map",
    "prepare_float",
    "single_threaded_blas",
    "BITSERIAL_MAX_PAIRS",
    "KERNELS",
    "PATHS",
    "PackedLevels",
    "affine_epilogue",
    "conv_levels",
    "conv_output_shape",
    "decode_codes",
    "pack_conv_levels",
    "pack_dense_levels",
    "threshold_codes",
    "threshold_floats",
    "choose_kernel",
    "pack_levels",
    "prepare_levels",
    "quant_matmul",
    "quant_matmul_packed",
    "quant_planned_threads",
    "PreparedConvWeights",
    "PreparedMatrix",
    "PreparedU8Weights",
    "active_path",
    "available_paths",
    "binary_conv2d",
    "binary_matmul",
    "binary_matmul_naive",
    "binary_matmul_packed",
    "binary_matmul_threshold",
    "conv_output_size",
    "conv_planned_threads",
    "cpu_features",
    "get_num_threads",
    "pack_bits",
    "pack_signs",
    "planned_threads",
    "prepare_conv_weights",
    "prepare_packed",
    "prepare_u8_weights",
    "set_kernel_path",
    "set_num_threads",
    "threshold_pack",
    "u8_matmul",
    "u8_matmul_is_fast",
]
