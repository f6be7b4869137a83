"""lowbit.kernels.floatmm: the float32 GEMM of a network's float layers and the BLAS thread limit."""
import numpy as np
import pytest

import lowbit.kernels as K
from lowbit.kernels import floatmm


@pytest.mark.parametrize("m,k,n", [(1, 7, 3), (33, 64, 17), (1500, 147, 64), (3000, 200, 96)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_float_matmul_matches_float64_and_splits_rows_exactly(m, k, n, threads, monkeypatch):
    monkeypatch.setattr(floatmm, "SPLIT_MACS", 1000)  # force the row split on every shape but the first
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = K.float_matmul(a, b, num_threads=threads)
    assert out.dtype == np.float32 and out.shape == (m, n)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_single_threaded_blas_limits_and_restores():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    ctl = threadpoolctl.ThreadpoolController().select(user_api="blas")
    if not ctl.lib_controllers:
        pytest.skip("NumPy's BLAS is not visible to threadpoolctl here")
    before = [c.num_threads for c in ctl.lib_controllers]
    with K.single_threaded_blas():
        assert [c.num_threads for c in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers] \
            == [1] * len(before)
    assert [c.num_threads for c in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers] \
        == before
