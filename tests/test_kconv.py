"""k-bit codes into and out of the k-bit GEMM (lowbit.kernels.codes): fused im2col + pack, the integer
threshold epilogue and the whole fused conv layer, bit-exact against plain NumPy references on every CPU
path this machine runs (the ``kernel_path`` fixture), with clear errors for bad inputs."""
import numpy as np
import pytest

import lowbit.kernels as K
from lowbit.errors import ShapeError
from lowbit.kernels.codes import conv_levels
from lowbit.kernels.levels import LEVEL_SETS

INT32_MIN = np.iinfo(np.int32).min


# ---- NumPy references (independent of the runtime's code) ---------------------------------------------------


def ref_im2col(x, kernel, stride, padding, fill):
    """(N, H, W, C) -> (N * OH * OW, kh * kw * C) patches in (ky, kx, c) order, padded with ``fill``."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, h, w, c = x.shape
    xp = np.full((n, h + 2 * ph, w + 2 * pw, c), fill, x.dtype)
    xp[:, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    rows = np.empty((n, oh, ow, kh, kw, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows[:, :, :, i, j] = xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
    return rows.reshape(n * oh * ow, kh * kw * c)


def ref_epilogue(acc, sign, st, mul=1, border=None, pool=None, out="codes"):
    """The NumPy passes the C epilogue replaces: int32 wrapping arithmetic throughout."""
    v = acc if border is None else acc * np.int32(mul) + border
    if pool is not None:
        v = ref_epilogue_pool(v, pool)
    x = v * sign.astype(np.int32)
    ge = x[..., None] >= st
    if out == "codes":
        return ge.sum(-1).astype(np.uint8)
    minus = ~ge[..., 0]
    c = minus.shape[-1]
    words = (c + 63) // 64
    padded = np.zeros(minus.shape[:-1] + (words * 64,), bool)
    padded[..., :c] = minus
    return np.packbits(padded, axis=-1, bitorder="little").view(np.uint64)


def random_conv(rng, max_hw=9):
    """(shape, kernel, stride, padding) of a conv whose window fits its padded input."""
    while True:
        n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, max_hw + 1)), int(rng.integers(1, max_hw + 1))
        c = int(rng.choice([1, 2, 3, 8, 16, 17, 32, 33, 64, 70]))
        kernel = tuple(int(v) for v in rng.integers(1, 6, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        padding = tuple(int(v) for v in rng.integers(0, 4, 2))
        if h + 2 * padding[0] >= kernel[0] and w + 2 * padding[1] >= kernel[1]:
            return (n, h, w, c), kernel, stride, padding


ACT_SETS = ["u1", "u2", "u3", "u4", "u8", "s2", "s4", "s8"]
WEIGHT_SETS = ["o2", "ternary", "binary", "u2", "s8", "o4"]


def codes_and_values(rng, ls, shape, use_values):
    """Input codes of ``shape`` and, optionally, a code -> value table (a non-affine code table)."""
    if use_values:
        ncodes = int(rng.integers(2, min(ls.ncodes, 24) + 1))
        values = np.sort(rng.choice(ls.values, ncodes, replace=False))
    else:
        ncodes, values = ls.ncodes, None
    return rng.integers(0, ncodes, shape).astype(np.uint8), values, ncodes


def kernel_codes(ls, x, values):
    """The level set's codes of input codes x (through the values table when given)."""
    return x if values is None else ls.codes(values[x])


# ---- fused im2col + pack -----------------------------------------------------------------------------------


def test_pack_conv_levels_is_im2col_then_pack(kernel_path):
    rng = np.random.default_rng(1)
    for trial in range(60):
        shape, kernel, stride, padding = random_conv(rng)
        al = str(rng.choice(ACT_SETS))
        bl = str(rng.choice(WEIGHT_SETS))
        ls = LEVEL_SETS[al]
        x, values, ncodes = codes_and_values(rng, ls, shape, rng.random() < 0.3)
        pad = int(rng.integers(0, ncodes))
        rows = ref_im2col(kernel_codes(ls, x, values), kernel, stride, padding, kernel_codes(ls, np.uint8(pad), values))
        for wl in (bl, None):  # the layout of the pair's kernel, and bit planes (pack_levels' default)
            pa = K.pack_conv_levels(x, kernel, stride, padding, pad, al, weights_levels=wl, values=values,
                                    num_threads=int(rng.integers(1, 4)))
            where = f"{kernel_path} {shape} k{kernel} s{stride} p{padding} pad {pad} {al} x {wl}"
            assert (pa.rows, pa.k) == rows.shape, where
            np.testing.assert_array_equal(pa.codes(), rows, err_msg=where)
            np.testing.assert_array_equal(pa.sums, rows.astype(np.int64).sum(1), err_msg=where)
            cout = int(rng.integers(1, 40))
            wls = LEVEL_SETS[bl]
            wts = wls.decode(rng.integers(0, wls.ncodes, (cout, rows.shape[1])))
            ref = K.quant_matmul(ls.decode(rows), wts, al, bl)
            got = K.quant_matmul_packed(pa, K.prepare_levels(wts, bl, al))
            np.testing.assert_array_equal(got, ref, err_msg=where)


def test_pack_conv_levels_strided_input_and_edges(kernel_path):
    rng = np.random.default_rng(2)
    big = rng.integers(0, 4, (3, 12, 14, 40)).astype(np.uint8)
    x = big[::2, 1:10, ::2, 3:35]  # no contiguous pixels: copied once
    ref = ref_im2col(x, (3, 3), (1, 2), (2, 1), 1)
    pa = K.pack_conv_levels(x, 3, (1, 2), (2, 1), 1, "u2", weights_levels="o2")
    np.testing.assert_array_equal(pa.codes(), ref)
    # a window exactly the padded input; a kernel larger than the image (all taps of a row padded)
    x = rng.integers(0, 4, (2, 2, 3, 5)).astype(np.uint8)
    for kernel, padding in (((4, 5), (1, 1)), ((6, 3), (2, 0)), ((1, 1), (3, 3))):
        pa = K.pack_conv_levels(x, kernel, 1, padding, 3, "u2")
        np.testing.assert_array_equal(pa.codes(), ref_im2col(x, kernel, (1, 1), padding, 3))
    empty = K.pack_conv_levels(np.zeros((0, 5, 5, 3), np.uint8), 3, 1, 1, 0, "u2", weights_levels="o2")
    assert (empty.rows, empty.k) == (0, 27)


def test_pack_dense_levels(kernel_path):
    rng = np.random.default_rng(3)
    for k in (1, 15, 16, 33, 64, 1152):
        for al, bl in (("u2", "o2"), ("u8", "o2"), ("u4", "ternary"), ("s4", "s8")):
            ls = LEVEL_SETS[al]
            x, values, _ = codes_and_values(rng, ls, (int(rng.integers(1, 50)), k), rng.random() < 0.3)
            pa = K.pack_dense_levels(x, al, weights_levels=bl, values=values)
            rows = kernel_codes(ls, x, values)
            np.testing.assert_array_equal(pa.codes(), rows)
            np.testing.assert_array_equal(pa.sums, rows.astype(np.int64).sum(1))
            wts = LEVEL_SETS[bl].decode(rng.integers(0, LEVEL_SETS[bl].ncodes, (7, k)))
            np.testing.assert_array_equal(K.quant_matmul_packed(pa, K.prepare_levels(wts, bl, al)),
                                          K.quant_matmul(ls.decode(rows), wts, al, bl))
    # the int8 kernel reads rows of K % 16 == 0 in place: no copy (the operand is read-only, x is not)
    x = rng.integers(0, 4, (20, 64)).astype(np.uint8)
    pa = K.pack_dense_levels(x, "u2", weights_levels="s8")
    if K.choose_kernel("u2", "s8") == "int8":
        assert np.shares_memory(pa.codes(), x) and x.flags.writeable
    # non-contiguous rows and columns
    big = rng.integers(0, 4, (30, 80)).astype(np.uint8)
    for view in (big[::2, :64], big[:, ::2], big[::3, 5:37]):
        pa = K.pack_dense_levels(view, "u2", weights_levels="o2")
        np.testing.assert_array_equal(pa.codes(), view)


# ---- integer epilogue --------------------------------------------------------------------------------------


def random_epilogue(rng, shape, levels, pool_ok=True):
    c = shape[-1]
    t = np.sort(rng.integers(-3000, 3000, (c, levels - 1)), axis=1).astype(np.int32)
    sign = rng.choice([-1, 1], c).astype(np.int32)
    st = (t * sign[:, None]).astype(np.int32)
    border = mul = None
    if rng.random() < 0.5:
        border = rng.integers(-2000, 2000, shape[1:]).astype(np.int32)
        mul = int(rng.integers(1, 6))
    pool = None
    if pool_ok and len(shape) == 4 and rng.random() < 0.6:
        pk = tuple(int(v) for v in rng.integers(1, 4, 2))
        ps = tuple(int(v) for v in rng.integers(1, 4, 2))
        pp = tuple(int(rng.integers(0, k // 2 + 1)) for k in pk)
        if shape[1] + 2 * pp[0] >= pk[0] and shape[2] + 2 * pp[1] >= pk[1]:
            pool = (pk, ps, pp)
    return sign, st, border, mul, pool


def test_threshold_codes_matches_numpy(kernel_path):
    rng = np.random.default_rng(4)
    for trial in range(80):
        c = int(rng.choice([1, 5, 8, 15, 16, 17, 31, 32, 63, 64, 65, 100, 130]))
        flat = rng.random() < 0.2
        shape = (int(rng.integers(1, 40)), c) if flat else (int(rng.integers(1, 4)), int(rng.integers(1, 10)),
                                                         int(rng.integers(1, 10)), c)
        levels = int(rng.choice([2, 3, 4, 5, 16, 256]))
        acc = rng.integers(-4000, 4000, shape).astype(np.int32)
        sign, st, border, mul, pool = random_epilogue(rng, shape, levels, pool_ok=not flat)
        for out in ("codes", "bits") if levels == 2 else ("codes",):
            got = K.threshold_codes(acc, sign, st, mul=mul or 1, border=border, pool=pool, out=out,
                                    num_threads=int(rng.integers(1, 4)))
            a4 = acc.reshape(shape[0], 1, 1, c) if flat else acc
            b4 = None if border is None else border.reshape(a4.shape[1:])
            ref = ref_epilogue(a4, sign, st, mul or 1, b4, pool, out)
            ref = ref.reshape(shape[0], -1) if flat else ref
            np.testing.assert_array_equal(got, ref, err_msg=f"{kernel_path} {shape} L={levels} pool {pool} {out}")


def test_threshold_codes_wraps_like_numpy(kernel_path):
    """Accumulators and thresholds at the int32 limits: the products wrap exactly as NumPy's do."""
    rng = np.random.default_rng(5)
    edge = np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, 2**31 - 2, 2**31 - 1], np.int64)
    acc = rng.choice(edge, (2, 3, 5, 19)).astype(np.int32)
    st = np.sort(rng.choice(edge, (19, 3)), axis=1).astype(np.int32)
    sign = rng.choice([-1, 1], 19).astype(np.int32)
    border = rng.choice(edge, (3, 5, 19)).astype(np.int32)
    with np.errstate(over="ignore"):
        for mul, b, pool in ((1, None, None), (3, border, None), (-7, border, ((2, 2), (1, 2), (1, 0)))):
            np.testing.assert_array_equal(K.threshold_codes(acc, sign, st, mul=mul, border=b, pool=pool),
                                          ref_epilogue(acc, sign, st, mul, b, pool))


def test_threshold_codes_big_and_threaded(kernel_path):
    """Larger maps on 1..4 threads (above the threading thresholds), pooled and not."""
    rng = np.random.default_rng(6)
    acc = rng.integers(-500, 500, (8, 28, 28, 48)).astype(np.int32)
    sign, st, border, mul, _ = random_epilogue(rng, acc.shape, 4, pool_ok=False)
    border = rng.integers(-100, 100, acc.shape[1:]).astype(np.int32)
    for nt in (1, 2, 3, 4):
        for pool in (None, ((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1))):
            np.testing.assert_array_equal(
                K.threshold_codes(acc, sign, st, mul=5, border=border, pool=pool, num_threads=nt),
                ref_epilogue(acc, sign, st, 5, border, pool), err_msg=f"{nt} threads, pool {pool}")


def ref_affine(acc, scale, bias, mul=1, border=None, pool=None):
    """The NumPy passes the float epilogue replaces (runtime.graph: border, pool, Affine.run)."""
    v = acc if border is None else acc * np.int32(mul) + border
    if pool is not None:
        v = ref_epilogue_pool(v, pool)
    return v.astype(np.float32) * scale + bias


def ref_epilogue_pool(v, pool):
    """Max-pool of int32 (N, H, W, C) values; padded positions never win."""
    (kh, kw), (sh, sw), (ph, pw) = pool
    n, h, w, c = v.shape
    p = np.full((n, h + 2 * ph, w + 2 * pw, c), INT32_MIN, np.int32)
    p[:, ph:ph + h, pw:pw + w] = v
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    m = np.full((n, oh, ow, c), INT32_MIN, np.int32)
    for i in range(kh):
        for j in range(kw):
            m = np.maximum(m, p[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw])
    return m


def test_affine_epilogue_rounds_as_numpy(kernel_path):
    """float32 product, then float32 sum (no fused multiply-add): bit-identical to NumPy, with scales and
    accumulators that make the two roundings visible."""
    rng = np.random.default_rng(9)
    for trial in range(40):
        c = int(rng.choice([1, 7, 8, 16, 33, 64, 100]))
        flat = rng.random() < 0.25
        shape = (int(rng.integers(1, 30)), c) if flat else (int(rng.integers(1, 3)), int(rng.integers(1, 9)),
                                                         int(rng.integers(1, 9)), c)
        acc = rng.integers(-2**30, 2**30, shape).astype(np.int32)
        scale = (rng.standard_normal(c) * 10.0 ** rng.integers(-6, 3, c)).astype(np.float32)
        bias = (rng.standard_normal(c) * 1e3).astype(np.float32)
        _, _, border, mul, pool = random_epilogue(rng, shape, 2, pool_ok=not flat)
        got = K.affine_epilogue(acc, scale, bias, mul=mul or 1, border=border, pool=pool,
                                num_threads=int(rng.integers(1, 4)))
        with np.errstate(over="ignore"):
            ref = ref_affine(acc, scale, bias, mul or 1, border, pool)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32), err_msg=f"{kernel_path} {shape} {pool}")


def test_threshold_floats_and_decode(kernel_path):
    rng = np.random.default_rng(10)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45], np.float32)
    for trial in range(40):
        c = int(rng.choice([1, 3, 8, 15, 16, 17, 64, 65, 130]))
        shape = tuple(int(v) for v in rng.integers(1, 6, int(rng.integers(0, 3)))) + (c,)
        x = (rng.standard_normal(shape) * 2).astype(np.float32)
        x.reshape(-1)[rng.integers(0, x.size, 3)] = rng.choice(specials, 3)
        levels = int(rng.choice([2, 3, 4, 16]))
        t = np.sort(rng.standard_normal((c, levels - 1)), axis=1).astype(np.float32)
        t.reshape(-1)[0] = 0.0
        sign = rng.choice(np.float32([-1, 1]), c) if rng.random() < 0.5 else None
        v = x if sign is None else x * sign
        ge = v[..., None] >= t
        np.testing.assert_array_equal(K.threshold_floats(x, t, sign=sign), ge.sum(-1).astype(np.uint8))
        if levels == 2:
            words = (c + 63) // 64
            padded = np.zeros(shape[:-1] + (words * 64,), bool)
            padded[..., :c] = ~ge[..., 0]
            np.testing.assert_array_equal(K.threshold_floats(x, t, sign=sign, out="bits"),
                                          np.packbits(padded, axis=-1, bitorder="little").view(np.uint64))
        table = rng.standard_normal(levels).astype(np.float32)
        codes = rng.integers(0, levels, shape).astype(np.uint8)
        np.testing.assert_array_equal(K.decode_codes(codes, table), table[codes])
    codes = np.zeros((3, 4), np.uint8)
    codes[2, 1] = 4
    with pytest.raises(ShapeError, match=r"codes\[2, 1\] = 4 has no table entry \(table of 4\)"):
        K.decode_codes(codes, np.zeros(4, np.float32))
    with pytest.raises(ShapeError, match="float32 array"):
        K.threshold_floats(np.zeros((2, 3)), np.zeros((3, 1), np.float32))
    with pytest.raises(ShapeError, match="one threshold per channel"):
        K.threshold_floats(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32), out="bits")


def test_decode_and_residual_add_thresholds(kernel_path):
    """Table lookups of every size (in-register tables of 8 / 16 entries and gathers past them, steps mixing
    both, tails past the last 8 / 16 codes) and the fused residual add + quantizer: x + table[codes] and x + y
    thresholded in one pass, bit-identical to NumPy's float32 add then compare; the largest code returned."""
    from lowbit.kernels.codes import add_thresholds, decode

    rng = np.random.default_rng(12)
    for trial in range(60):
        ncodes = int(rng.choice([2, 4, 8, 9, 16, 17, 100, 256]))
        c = int(rng.choice([1, 3, 8, 15, 16, 17, 64, 65]))
        shape = tuple(int(v) for v in rng.integers(1, 7, int(rng.integers(1, 3)))) + (c,)
        codes = rng.integers(0, ncodes, shape).astype(np.uint8)
        if rng.random() < 0.5:  # mostly small codes, one large one: steps of both kinds
            codes = np.minimum(codes, 3)
            codes.reshape(-1)[int(rng.integers(0, codes.size))] = ncodes - 1
        table = np.zeros(256, np.float32)
        table[:ncodes] = rng.standard_normal(ncodes)
        for nt in (1, 2):
            out, top = decode(codes, table, num_threads=nt)
            np.testing.assert_array_equal(out, table[codes])
            assert top == codes.max()
        x = (rng.standard_normal(shape) * 2).astype(np.float32)
        y = rng.standard_normal(shape).astype(np.float32)
        levels = int(rng.choice([2, 3, 4, 16]))
        t = np.sort(rng.standard_normal((c, levels - 1)), axis=1).astype(np.float32)
        thr_t = np.ascontiguousarray(t.T)
        sign = rng.choice(np.float32([-1, 1]), c) if rng.random() < 0.3 else None
        for add, tab, total in [(codes, table, x + table[codes]), (y, None, x + y)]:
            v = total if sign is None else total * sign
            ge = v[..., None] >= t
            got, top = add_thresholds(x, add, tab, thr_t, sign, False, num_threads=int(rng.integers(1, 3)))
            np.testing.assert_array_equal(got, ge.sum(-1).astype(np.uint8), err_msg=f"trial {trial}")
            assert top == (codes.max() if tab is not None else 0)
            if levels == 2:
                padded = np.zeros(shape[:-1] + ((c + 63) // 64 * 64,), bool)
                padded[..., :c] = ~ge[..., 0]
                got, _ = add_thresholds(x, add, tab, thr_t, sign, True)
                np.testing.assert_array_equal(got, np.packbits(padded, axis=-1, bitorder="little").view(np.uint64))


def test_maxpool_matches_numpy(kernel_path):
    """The native max-pool of float32 (NaN wins, as np.maximum) and uint8 code maps: random windows, strides
    and paddings (padded positions never win), 1 and 2 threads."""
    from lowbit.kernels.codes import maxpool
    from lowbit.runtime.graph import maxpool_nhwc

    rng = np.random.default_rng(13)
    for trial in range(40):
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
        n, c = int(rng.integers(1, 3)), int(rng.choice([1, 3, 16, 64, 70]))
        h, w = int(rng.integers(max(1, kh - 2 * ph), 14)), int(rng.integers(max(1, kw - 2 * pw), 14))
        xf = rng.standard_normal((n, h, w, c)).astype(np.float32)
        xf.reshape(-1)[rng.integers(0, xf.size, 2)] = np.nan
        xu = rng.integers(0, 256, (n, h, w, c)).astype(np.uint8)
        window = ((kh, kw), (sh, sw), (ph, pw))
        for nt in (1, 2):
            np.testing.assert_array_equal(maxpool(xf, *window, num_threads=nt), maxpool_nhwc(xf, *window, fill=-np.inf))
            np.testing.assert_array_equal(maxpool(xu, *window, num_threads=nt), maxpool_nhwc(xu, *window, fill=0))


# ---- the fused conv layer ----------------------------------------------------------------------------------


def test_conv_levels_matches_pack_gemm_epilogue(kernel_path):
    rng = np.random.default_rng(7)
    for trial in range(50):
        shape, kernel, stride, padding = random_conv(rng, max_hw=12)
        al, bl = str(rng.choice(ACT_SETS)), str(rng.choice(WEIGHT_SETS))
        if K.choose_kernel(al, bl) == "xnor":
            continue
        ls, wls = LEVEL_SETS[al], LEVEL_SETS[bl]
        x, values, ncodes = codes_and_values(rng, ls, shape, rng.random() < 0.25)
        pad = int(rng.integers(0, ncodes))
        cout = int(rng.choice([1, 7, 16, 32, 64, 65, 130]))
        k = kernel[0] * kernel[1] * shape[3]
        pb = K.prepare_levels(wls.decode(rng.integers(0, wls.ncodes, (cout, k))), bl, al)
        nt = int(rng.integers(1, 5))
        rows = ref_im2col(kernel_codes(ls, x, values), kernel, stride, padding, kernel_codes(ls, np.uint8(pad), values))
        n, oh, ow = K.conv_output_shape(shape, kernel, stride, padding)
        acc = K.quant_matmul(ls.decode(rows), pb.to_array(), al, bl).reshape(n, oh, ow, cout)
        where = f"{kernel_path} {shape} k{kernel} s{stride} p{padding} {al} x {bl} -> {cout}, {nt} threads"
        got = conv_levels(x, pb, kernel, stride, padding, pad, al, values=values, num_threads=nt)
        np.testing.assert_array_equal(got, acc, err_msg=where)
        levels = int(rng.choice([2, 3, 4, 9]))
        sign, st, border, mul, pool = random_epilogue(rng, acc.shape, levels)
        for out in ("codes", "bits") if levels == 2 else ("codes",):
            got = conv_levels(x, pb, kernel, stride, padding, pad, al, values=values, sign=sign, signed_thresholds=st,
                              mul=mul or 1, border=border, pool=pool, out=out, num_threads=nt)
            np.testing.assert_array_equal(got, ref_epilogue(acc, sign, st, mul or 1, border, pool, out),
                                          err_msg=f"{where}, pool {pool}, {out}")
        scale = rng.standard_normal(cout).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32)
        got = conv_levels(x, pb, kernel, stride, padding, pad, al, values=values, scale=scale, bias=bias,
                          mul=mul or 1, border=border, pool=pool, out="float", num_threads=nt)
        np.testing.assert_array_equal(got, ref_affine(acc, scale, bias, mul or 1, border, pool), err_msg=where)


def test_concurrent_callers_share_the_worker_pool_with_scratch(run_in_threads):
    """The k-bit conv (per-thread scratch), the k-bit GEMM and the float conv called from several Python threads
    at once (the GIL is released): one call holds the persistent workers, the others run on threads of their
    own; every result exact."""
    rng = np.random.default_rng(23)
    ls, wls = LEVEL_SETS["u2"], LEVEL_SETS["o2"]
    x = rng.integers(0, 4, (2, 20, 20, 64)).astype(np.uint8)
    pb = K.prepare_levels(wls.decode(rng.integers(0, 4, (96, 576))), "o2", "u2")
    rows = ref_im2col(x, (3, 3), (1, 1), (1, 1), np.uint8(0))
    conv_ref = K.quant_matmul(rows, pb.to_array(), "u2", "o2").reshape(2, 20, 20, 96)
    a, b = rng.integers(0, 4, (300, 500)).astype(np.int8), (rng.integers(0, 4, (200, 500)) * 2 - 3).astype(np.int8)
    gemm_ref = a.astype(np.int64) @ b.T.astype(np.int64)
    pa, pb2 = K.pack_levels(a, "u2"), K.pack_levels(b, "o2")
    xf = rng.integers(-8, 9, (1, 40, 40, 16)).astype(np.float32)
    wf = rng.integers(-4, 5, (144, 70)).astype(np.float32)
    fref = np.lib.stride_tricks.sliding_window_view(xf, (3, 3), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
    fref = fref.reshape(1, 38, 38, 144).astype(np.float64) @ wf.astype(np.float64)
    pf = K.prepare_float(wf)
    calls = [lambda: np.testing.assert_array_equal(conv_levels(x, pb, 3, 1, 1, 0, "u2", num_threads=2), conv_ref),
             lambda: np.testing.assert_array_equal(K.quant_matmul_packed(pa, pb2, num_threads=2), gemm_ref),
             lambda: np.testing.assert_array_equal(K.float_conv2d(xf, pf, (3, 3), (1, 1), num_threads=2), fref)]
    run_in_threads(lambda i: [calls[(i + r) % 3]() for r in range(15)])


def test_conv_levels_bands_and_channel_chunks(kernel_path):
    """Shapes that split into many bands and channel chunks (batch 1, many channels, big kernels, pools
    whose windows overlap the bands), on up to 8 threads."""
    rng = np.random.default_rng(8)
    cases = [((1, 7, 7, 64), (3, 3), (1, 1), (1, 1), 512, ((3, 3), (2, 2), (1, 1))),
             ((1, 30, 9, 16), (3, 3), (1, 1), (1, 1), 200, ((3, 2), (2, 1), (1, 0))),
             ((2, 40, 40, 8), (5, 5), (2, 2), (2, 2), 96, None),
             ((1, 15, 15, 32), (1, 1), (2, 2), (0, 0), 130, ((2, 2), (2, 2), (0, 0))),
             # amx tiles: bands of >= 128 rows, split into channel chunks before rows
             ((1, 24, 24, 32), (3, 3), (1, 1), (1, 1), 300, None)]
    for shape, kernel, stride, padding, cout, pool in cases:
        x = rng.integers(0, 4, shape).astype(np.uint8)
        k = kernel[0] * kernel[1] * shape[3]
        pb = K.prepare_levels(LEVEL_SETS["o2"].decode(rng.integers(0, 4, (cout, k))), "o2", "u2")
        rows = ref_im2col(x, kernel, stride, padding, 0)
        n, oh, ow = K.conv_output_shape(shape, kernel, stride, padding)
        acc = K.quant_matmul(rows, pb.to_array(), "u2", "o2").reshape(n, oh, ow, cout)
        sign, st, _, _, _ = random_epilogue(rng, acc.shape, 4, pool_ok=False)
        border = rng.integers(-50, 50, acc.shape[1:]).astype(np.int32)
        ref = ref_epilogue(acc, sign, st, 3, border, pool)
        for nt in (1, 2, 3, 8):
            np.testing.assert_array_equal(conv_levels(x, pb, kernel, stride, padding, 0, "u2", num_threads=nt), acc)
            got = conv_levels(x, pb, kernel, stride, padding, 0, "u2", sign=sign, signed_thresholds=st, mul=3,
                              border=border, pool=pool, out="codes", num_threads=nt)
            np.testing.assert_array_equal(got, ref, err_msg=f"{shape} {cout} pool {pool}, {nt} threads")


def test_im2col_decode_matches_numpy(kernel_path):
    """The patches of a float conv on codes (each value looked up): im2col of tables[c][code], padded with fill,
    for random shapes (kernels wider than the input with padding, strides past the kernel), 1 and 2 threads;
    the largest code of the input."""
    from lowbit.kernels.codes import im2col_decode
    from lowbit.runtime.ops import im2col

    rng = np.random.default_rng(21)
    for trial in range(40):
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 5))
        kh, kw = int(rng.integers(1, 8)), int(rng.integers(1, 8))
        ph, pw = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        h, w = int(rng.integers(max(1, kh - 2 * ph), 20)), int(rng.integers(max(1, kw - 2 * pw), 20))
        sh, sw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        x = rng.integers(0, 256, (n, h, w, c)).astype(np.uint8)
        tables = rng.standard_normal((c, 256)).astype(np.float32)
        fill = float(rng.standard_normal())
        ref = im2col(tables[np.arange(c), x], kh, kw, sh, sw, ph, pw, fill=np.float32(fill))  # tables[ch][code]
        for nt in (1, 2):
            got, top = im2col_decode(x, tables, (kh, kw), (sh, sw), (ph, pw), fill, num_threads=nt)
            np.testing.assert_array_equal(got, ref, err_msg=f"{x.shape} k{kh}x{kw} s{sh}x{sw} p{ph}x{pw} {nt}t")
            assert top == x.max()
    # a 1x1 stride-2 shortcut conv (windows read each pixel less than once, the case this serves); the
    # largest code is the input's, read or not
    x = rng.integers(0, 200, (2, 15, 15, 64)).astype(np.uint8)
    x[1, 1, 1, 5] = 250  # an odd pixel: no window reads it
    tables = rng.standard_normal((64, 256)).astype(np.float32)
    got, top = im2col_decode(x, tables, (1, 1), (2, 2), (0, 0), 0.0, num_threads=2)
    np.testing.assert_array_equal(got, im2col(tables[np.arange(64), x], 1, 1, 2, 2, 0, 0, fill=np.float32(0)))
    assert top == 250
    big = rng.integers(0, 256, (1, 224, 224, 3)).astype(np.uint8)  # threaded (the real first layer's size)
    tables = rng.standard_normal((3, 256)).astype(np.float32)
    got, top = im2col_decode(big, tables, (7, 7), (2, 2), (3, 3), 0.0, num_threads=2)
    ref = im2col(tables[np.arange(3), big], 7, 7, 2, 2, 3, 3, fill=np.float32(0))
    np.testing.assert_array_equal(got, ref)


# ---- errors ------------------------------------------------------------------------------------------------


def test_errors_name_the_problem():
    x = np.zeros((2, 5, 5, 3), np.uint8)
    with pytest.raises(ShapeError, match="uint8 codes"):
        K.pack_conv_levels(x.astype(np.int32), 3, 1, 1, 0, "u2")
    with pytest.raises(ShapeError, match=r"4-D array of codes \(N, H, W, C\)"):
        K.pack_conv_levels(x[0], 3, 1, 1, 0, "u2")
    with pytest.raises(ShapeError, match="window of 7 .* does not fit an input height of 5"):
        K.pack_conv_levels(x, 7, 1, 0, 0, "u2")
    with pytest.raises(ShapeError, match="stride must be integers >= 1"):
        K.pack_conv_levels(x, 3, 0, 1, 0, "u2")
    with pytest.raises(ShapeError, match="padding must be integers >= 0"):
        K.pack_conv_levels(x, 3, 1, (1, -1), 0, "u2")
    with pytest.raises(ShapeError, match="kernel must be an integer or a pair"):
        K.pack_conv_levels(x, "3", 1, 1, 0, "u2")
    with pytest.raises(ShapeError, match="pad_code must be a code 0..3"):
        K.pack_conv_levels(x, 3, 1, 1, 4, "u2")
    with pytest.raises(ShapeError, match="unknown level set"):
        K.pack_conv_levels(x, 3, 1, 1, 0, "u9")
    bad = x.copy()
    bad[1, 2, 3, 1] = 4
    with pytest.raises(ShapeError, match=r"x\[1, 2, 3, 1\] = 4 is not a code of level set 'u2'"):
        K.pack_conv_levels(bad, 3, 1, 1, 0, "u2", weights_levels="o2")
    with pytest.raises(ShapeError, match=r"x\[1, 2, 3, 1\] = 4 is not a code of 3 values given"):
        K.pack_conv_levels(bad, 3, 1, 1, 0, "s4", values=[-2, 0, 1])
    with pytest.raises(ShapeError, match=r"values\[1\] = 9 is not in level set 's4'"):
        K.pack_conv_levels(x, 3, 1, 1, 0, "s4", values=[-2, 9])
    with pytest.raises(ShapeError, match=r"x\[0, 1\] = 5 is not a code"):
        K.pack_dense_levels(np.array([[0, 1, 2], [3, 5, 0]], np.uint8)[::-1], "u2", weights_levels="o2")
    with pytest.raises(ShapeError, match=r"2-D array of codes \(rows, K\)"):
        K.pack_dense_levels(x, "u2")

    acc = np.zeros((2, 4, 4, 3), np.int32)
    sign, st = np.ones(3, np.int32), np.zeros((3, 2), np.int32)
    with pytest.raises(ShapeError, match="int32 accumulators"):
        K.threshold_codes(acc.astype(np.int64), sign, st)
    with pytest.raises(ShapeError, match=r"\(N, H, W, C\) or \(M, C\)"):
        K.threshold_codes(acc[0], sign, st)
    with pytest.raises(ShapeError, match="only \\+1/-1"):
        K.threshold_codes(acc, np.array([1, 0, 1]), st)
    with pytest.raises(ShapeError, match="3 entries"):
        K.threshold_codes(acc, np.ones(4, np.int32), st)
    with pytest.raises(ShapeError, match=r"signed_thresholds must be \(C=3, 1..255\)"):
        K.threshold_codes(acc, sign, np.zeros((3, 0), np.int32))
    with pytest.raises(ShapeError, match="outside the int32 range"):
        K.threshold_codes(acc, sign, np.full((3, 1), 2**40))
    with pytest.raises(ShapeError, match=r"border must have shape \(4, 4, 3\)"):
        K.threshold_codes(acc, sign, st, border=np.zeros((4, 3), np.int32))
    with pytest.raises(ShapeError, match="window of 5 .* does not fit an input height of 4"):
        K.threshold_codes(acc, sign, st, pool=(5, 1, 0))
    with pytest.raises(ShapeError, match=r"pool must be \(kernel, stride, padding\)"):
        K.threshold_codes(acc, sign, st, pool=2)
    with pytest.raises(ShapeError, match="one threshold per channel"):
        K.threshold_codes(acc, sign, st, out="bits")
    with pytest.raises(ShapeError, match="out must be 'codes' or 'bits'"):
        K.threshold_codes(acc, sign, st, out="float")
    with pytest.raises(ShapeError, match="pooling needs"):
        K.threshold_codes(acc[:, 0, 0], sign, st, pool=(2, 2, 0))

    pb = K.prepare_levels(np.ones((4, 27), np.int8), "o2", "u2")
    with pytest.raises(ShapeError, match="weights have K=27, the conv reads K = 2 \\* 2 \\* 3 = 12"):
        conv_levels(x, pb, 2, 1, 0, 0, "u2")
    with pytest.raises(ShapeError, match="must be a PackedLevels"):
        conv_levels(x, np.ones((4, 27)), 3, 1, 1, 0, "u2")
    with pytest.raises(ShapeError, match="needs sign and signed_thresholds"):
        conv_levels(x, pb, 3, 1, 1, 0, "u2", out="codes")
    with pytest.raises(ShapeError, match="needs scale and bias"):
        conv_levels(x, pb, 3, 1, 1, 0, "u2", out="float")
    with pytest.raises(ShapeError, match=r"scale must be float32 \(4,\)"):
        conv_levels(x, pb, 3, 1, 1, 0, "u2", out="float", scale=np.ones(4), bias=np.ones(4, np.float32))
    with pytest.raises(ShapeError, match=r"border must have shape \(5, 5, 4\)"):
        conv_levels(x, pb, 3, 1, 1, 0, "u2", sign=np.ones(4, np.int8), signed_thresholds=np.zeros((4, 3), np.int32), out="codes",
                    border=np.zeros((5, 5, 3), np.int32))
    with pytest.raises(ShapeError, match=r"x\[1, 2, 3, 1\] = 4 is not a code"):
        conv_levels(bad, pb, 3, 1, 1, 0, "u2")
    with pytest.raises(ShapeError, match="could overflow"):
        conv_levels(np.zeros((1, 3, 3, 2**16), np.uint8), K.prepare_levels(np.ones((1, 9 * 2**16), np.int16) * 127,
                                                                            "s8", "u8"), 3, 1, 1, 0, "u8")
