"""Build of the native kernels.

The C extensions are compiled portably (no -march=native): the fast paths carry their own
``__attribute__((target(...)))`` and are chosen at run time from what the CPU reports, so one wheel
runs on any x86-64 (and the portable path on any other CPU).
"""
import sys

from setuptools import Extension, setup

extra_compile_args = ["-O3", "-std=c11", "-fno-strict-aliasing"]
extra_link_args = []
if sys.platform != "win32":
    extra_compile_args.append("-pthread")
    extra_link_args.append("-pthread")

# The one kernel-path enum and CPU detection (csrc/lowbit_cpu.h), compiled into every extension: each module
# carries its own copy, so either loads alone. Hidden visibility keeps those copies (and every other internal
# symbol) private to their module; only PyInit_* is exported.
LOWBIT_CPU = "csrc/lowbit_cpu.c"
if sys.platform != "win32":
    extra_compile_args.append("-fvisibility=hidden")

ext_modules = [
    Extension(
        "lowbit.kernels._bitgemm",
        sources=["csrc/bitgemm_module.c", "csrc/bitgemm_driver.c", "csrc/bitgemm_pack.c", "csrc/bitgemm_kernels_scalar.c",
                 "csrc/bitgemm_kernels_avx2.c", "csrc/bitgemm_kernels_avx512.c",
                 "csrc/bitconv_module.c", "csrc/bitconv_driver.c", "csrc/bitconv_pool.c", "csrc/bitconv_kernels_scalar.c",
                 "csrc/bitconv_kernels_avx2.c", "csrc/bitconv_kernels_avx512.c",
                 "csrc/qgemm_module.c", "csrc/qgemm_driver.c", "csrc/qgemm_pack.c", "csrc/qgemm_kernels_scalar.c",
                 "csrc/qgemm_kernels_avx2.c", "csrc/qgemm_kernels_avx512.c", "csrc/qgemm_probe.c", "csrc/qgemm_threads.c",
                 "csrc/kconv_module.c", "csrc/kconv_pack.c", "csrc/kconv_epilogue.c", "csrc/kconv_conv.c", "csrc/kconv_float.c", "csrc/kconv_kernels_avx2.c",
                 "csrc/kconv_kernels_avx512.c", LOWBIT_CPU],
        include_dirs=["csrc"],
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    ),
    Extension(
        "lowbit.kernels._intlstm",
        sources=["csrc/intlstm_module.c", "csrc/intlstm_driver.c", "csrc/intlstm_gemm_scalar.c",
                 "csrc/intlstm_gemm_avx2.c", "csrc/intlstm_gemm_avx512.c",
                 "csrc/intlstm_step_scalar.c", "csrc/intlstm_step_avx2.c", "csrc/intlstm_step_avx512.c", "csrc/intrnn_cells.c", LOWBIT_CPU],
        include_dirs=["csrc"],
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    ),
]

setup(ext_modules=ext_modules)
