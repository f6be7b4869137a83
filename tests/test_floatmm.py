"""lowbit.kernels.floatmm: the native float32 conv / GEMM of a network's float layers, on every kernel path."""
import numpy as np
import pytest

import lowbit.kernels as K
from lowbit.errors import ShapeError


def conv_ref(xmap, w, kernel, stride):
    """float64 conv of a padded NHWC map with (kh * kw * C, N) weights in (ky, kx, c) order: the reference, and
    the float32 rounding bound of any summation order (K * 2^-24 * sum |x w|, per output)."""
    (kh, kw), (sh, sw) = kernel, stride
    n, hp, wp, c = xmap.shape
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    x64, w64 = xmap.astype(np.float64), w.astype(np.float64)
    out, mag = np.zeros((n, oh, ow, w.shape[1])), np.zeros((n, oh, ow, w.shape[1]))
    for ky in range(kh):
        for kx in range(kw):
            patch = x64[:, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw, :]
            wk = w64[(ky * kw + kx) * c:(ky * kw + kx + 1) * c]
            out += patch @ wk
            mag += np.abs(patch) @ np.abs(wk)
    return out, mag * (kh * kw * c) * 2.0**-24


def random_conv(rng):
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 10))
    kh, kw = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    hp, wp = kh + int(rng.integers(0, 12)), kw + int(rng.integers(0, 30))
    nout = int(rng.choice([1, 5, 16, 17, 63, 64, 65, 100, 128, 130]))
    return n, c, (kh, kw), (sh, sw), hp, wp, nout


def test_float_conv2d_matches_float64_on_random_shapes(kernel_path):
    """Random windows, strides, row lengths (tile edges at 6 pixels, segments at 96) and channel counts (panel
    edges at 16 and 64), 1 and 2 threads: each output within float32 rounding of the float64 conv; and with
    small-integer operands (every partial sum exact in float32) equal to it exactly, so a misplaced product
    cannot hide inside the tolerance."""
    rng = np.random.default_rng(7)
    for trial in range(60):
        n, c, kernel, stride, hp, wp, nout = random_conv(rng)
        k = kernel[0] * kernel[1] * c
        xmap = rng.standard_normal((n, hp, wp, c)).astype(np.float32)
        w = rng.standard_normal((k, nout)).astype(np.float32)
        ref, bound = conv_ref(xmap, w, kernel, stride)
        xi = rng.integers(-8, 9, xmap.shape).astype(np.float32)
        wi = rng.integers(-8, 9, w.shape).astype(np.float32)
        ref_i, _ = conv_ref(xi, wi, kernel, stride)
        prepared, prepared_i = K.prepare_float(w), K.prepare_float(wi)
        for nt in (1, 2):
            got = K.float_conv2d(xmap, prepared, kernel, stride, num_threads=nt)
            assert got.dtype == np.float32 and got.shape == ref.shape
            assert np.all(np.abs(got - ref) <= bound + 1e-30), f"trial {trial}, {nt} threads"
            got_i = K.float_conv2d(xi, prepared_i, kernel, stride, num_threads=nt)
            np.testing.assert_array_equal(got_i, ref_i, err_msg=f"trial {trial}, {nt} threads")


def test_float_conv2d_first_layer_size_threaded(kernel_path):
    """ResNet's first layer (224x224x3, 7x7 stride 2, padding 3, 64 channels) and a wide 1x1 conv (512 channels:
    8 panels), threaded: exact on small integers."""
    rng = np.random.default_rng(3)
    for shape, kernel, stride, pad, nout in [((1, 224, 224, 3), (7, 7), (2, 2), 3, 64),
                                             ((2, 14, 14, 256), (1, 1), (1, 1), 0, 512)]:
        x = rng.integers(-8, 9, shape).astype(np.float32)
        w = rng.integers(-4, 5, (kernel[0] * kernel[1] * shape[3], nout)).astype(np.float32)
        xmap = K.pad_map(x, (pad, pad))
        ref, _ = conv_ref(xmap, w, kernel, stride)
        np.testing.assert_array_equal(K.float_conv2d(xmap, K.prepare_float(w), kernel, stride, num_threads=2), ref)


@pytest.mark.parametrize("m,k,n", [(1, 7, 3), (1, 512, 1000), (33, 64, 17), (1500, 147, 64), (300, 200, 96)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_float_matmul_matches_float64(m, k, n, threads):
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = K.float_matmul(a, b, num_threads=threads)
    assert out.dtype == np.float32 and out.shape == (m, n)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    bound = k * 2.0**-24 * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
    assert np.all(np.abs(out - ref) <= bound)
    # a non-contiguous, read-only a; the prepared weights give the same result
    a2 = np.asfortranarray(a)
    a2.setflags(write=False)
    np.testing.assert_array_equal(K.float_matmul_prepared(a2, K.prepare_float(b), num_threads=threads), out)


def test_float_kernels_refuse_bad_input():
    w = K.prepare_float(np.ones((27, 8), np.float32))
    with pytest.raises(ShapeError, match="K=27 cannot read 3x3 windows of 2 channels"):
        K.float_conv2d(np.ones((1, 5, 5, 2), np.float32), w, (3, 3), (1, 1))
    with pytest.raises(ShapeError, match="smaller than the kernel"):
        K.float_conv2d(np.ones((1, 2, 5, 3), np.float32), w, (3, 3), (1, 1))
    with pytest.raises(ShapeError, match="NHWC map"):
        K.float_conv2d(np.ones((5, 5, 3), np.float32), w, (3, 3), (1, 1))
    with pytest.raises(ShapeError, match="2-D"):
        K.prepare_float(np.ones(5, np.float32))
    with pytest.raises(ShapeError, match="floating point"):
        K.prepare_float(np.ones((2, 2), np.int32))
    with pytest.raises(ShapeError, match="do not multiply"):
        K.float_matmul(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))
    assert K.float_matmul(np.ones((0, 3), np.float32), np.ones((3, 2), np.float32)).shape == (0, 2)


def test_float_conv_on_codes_decodes_once_and_matches_float64(kernel_path):
    """A float conv on uint8 codes through per-channel tables: the padded map is tables[c][code] bit for bit,
    fill around; the conv (map path, and the lookup path of 1x1 stride-2 windows) matches float64; the
    largest code is the input's."""
    from lowbit.kernels.codes import decode_map, float_conv_codes

    rng = np.random.default_rng(11)
    for x_shape, kernel, stride, pad, nout in [((2, 15, 13, 3), (7, 7), (2, 2), (3, 3), 64),
                                               ((1, 9, 9, 5), (3, 3), (1, 1), (1, 1), 70),
                                               ((2, 15, 15, 64), (1, 1), (2, 2), (0, 0), 128)]:
        x = rng.integers(0, 200, x_shape).astype(np.uint8)
        x[0, 0, 0, 0] = 231
        c = x_shape[3]
        tables = rng.standard_normal((c, 256)).astype(np.float32)
        fill = np.float32(rng.standard_normal())
        decoded = tables[np.arange(c), x]
        want_map = np.pad(decoded, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)), constant_values=fill)
        for nt in (1, 2):
            got_map, top = decode_map(x, tables, pad, float(fill), num_threads=nt)
            np.testing.assert_array_equal(got_map, want_map)
            assert top == 231
        w = rng.standard_normal((kernel[0] * kernel[1] * c, nout)).astype(np.float32)
        ref, bound = conv_ref(want_map, w, kernel, stride)
        got, top = float_conv_codes(x, tables, K.prepare_float(w), kernel, stride, pad, float(fill), num_threads=2)
        assert top == 231 and got.shape == ref.shape
        assert np.all(np.abs(got - ref) <= bound)


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
