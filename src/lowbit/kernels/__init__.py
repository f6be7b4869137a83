"""Native kernels of lowbit's CPU runtime.

Binary (+-1) matrix products by XNOR + popcount over bit-packed operands, with run-time CPU dispatch
(portable / popcnt / AVX2 / AVX-512 VPOPCNTDQ) and pthreads:

* :func:`binary_matmul` -- ``a @ b.T`` for +-1 arrays (packs, multiplies, returns int32)
* :func:`pack_bits`, :func:`pack_signs` -- pack +-1 values / signs of any real into uint64 words
* :func:`binary_matmul_packed` -- the product of packed operands, optionally into a preallocated output
* :func:`binary_matmul_naive` -- the deliberately naive reference kernel
* :func:`available_paths`, :func:`active_path`, :func:`set_kernel_path` -- code path selection
  (env ``LOWBIT_KERNEL_PATH``)
* :func:`get_num_threads`, :func:`set_num_threads` -- default thread count (env ``LOWBIT_NUM_THREADS``)

See :mod:`lowbit.kernels.binary` for the packed layout.
"""
from .binary import (  # noqa: F401
    binary_matmul,
    binary_matmul_naive,
    binary_matmul_packed,
    pack_bits,
    pack_signs,
    planned_threads,
)
from .dispatch import (  # noqa: F401
    PATHS,
    active_path,
    available_paths,
    get_num_threads,
    set_kernel_path,
    set_num_threads,
)

__all__ = [
    "PATHS",
    "active_path",
    "available_paths",
    "binary_matmul",
    "binary_matmul_naive",
    "binary_matmul_packed",
    "get_num_threads",
    "pack_bits",
    "pack_signs",
    "planned_threads",
    "set_kernel_path",
    "set_num_threads",
]
