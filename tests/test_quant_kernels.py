"""Tests of the k-bit GEMM (lowbit.kernels.quant): bit-exact against NumPy int64 on hundreds of random
shapes per level-set pair, on every kernel path this CPU runs, every kernel that can multiply the pair,
1 and 2 threads; packing and prepared layouts; non-contiguous, read-only and torch inputs; bad input."""
import pickle

import numpy as np
import pytest

import lowbit.kernels as K
from lowbit.errors import ShapeError
from lowbit.kernels import _bitgemm, quant
from lowbit.kernels.levels import LEVEL_SETS

PATHS = K.available_paths()

# (activation, weight) pairs: the benchmark's formats and one of each other kind of level set
PAIRS = [
    ("binary", "binary"), ("u2", "o2"), ("u2", "binary"), ("binary", "o2"), ("u8", "ternary"), ("u4", "o4"),
    ("u8", "s8"), ("u1", "u3"), ("s4", "s2"), ("o3", "ternary"), ("u7", "u8"), ("s8", "o1"),
]
N_SHAPES = 300


def values(rng, name, shape, dtype=None):
    ls = LEVEL_SETS[name]
    x = ls.values[rng.integers(0, ls.ncodes, size=shape)]
    if dtype is None:  # the byte-table fast path (int8 / uint8) and the general one, at random
        fits_i8 = ls.min >= -128 and ls.max <= 127
        if ls.min >= 0 and ls.max <= 255 and rng.integers(3) == 0:
            dtype = np.uint8
        else:
            dtype = np.int8 if fits_i8 and rng.integers(2) else np.int16
    return x.astype(dtype)


def reference(a, b) -> np.ndarray:
    # float64 BLAS is exact here: |every partial sum| < 2^53
    return (a.astype(np.float64) @ b.astype(np.float64).T).astype(np.int64)


def random_shapes(rng, count):
    """M, N, K from 1 to a few hundred, log-uniform, M*N*K at most 2^17 (many quick calls); K mostly not a
    multiple of 8; every tenth shape has M = 1 or N = 1. Every 25th shape crosses the kernels' K blocks
    (int8: 1024 values; AVX2 bit-serial byte-counter runs: 3840), and every 25th is large enough to run
    on 2 threads (quant_planned_threads) and to cross the int8 kernels' 256-row M blocks."""
    def dim(hi):
        return int(np.exp(rng.uniform(0, np.log(hi + 1))))

    shapes = []
    for s in range(count):
        if s % 25 == 0:
            shapes.append((dim(5), dim(40), int(rng.integers(1025, 4200))))
        elif s % 25 == 1:
            shapes.append((int(rng.integers(257, 300)), int(rng.integers(60, 100)), int(rng.integers(150, 260))))
        else:
            while True:
                m, n, k = dim(300), dim(300), dim(300)
                if m * n * k <= 2**17:
                    break
            if s % 10 == 2:
                m = 1
            elif s % 10 == 3:
                n = 1
            if k % 8 == 0:
                k += 1
            shapes.append((m, n, k))
    return shapes


@pytest.fixture
def restore_path():
    previous = K.active_path()
    yield
    K.set_kernel_path(previous)


@pytest.mark.parametrize("an,bn", PAIRS)
def test_random_shapes_every_path_kernel_and_thread_count(an, bn, restore_path):
    rng = np.random.default_rng(sum(map(ord, an + bn)))  # fixed per pair (hash(str) varies per process)
    kernels = [k for k in quant.KERNELS if quant.kernel_supported(k, an, bn)]
    for m, n, k in random_shapes(rng, N_SHAPES):
        a, b = values(rng, an, (m, k)), values(rng, bn, (n, k))
        ref = reference(a, b)
        pa, pb = K.pack_levels(a, an), K.pack_levels(b, bn)
        for path in PATHS:
            K.set_kernel_path(path)
            for kern in kernels:
                for nt in (1, 2):
                    got = K.quant_matmul_packed(pa, pb, kernel=kern, num_threads=nt)
                    if not np.array_equal(got, ref):
                        bad = np.argwhere(got != ref)[0]
                        pytest.fail(f"{an} x {bn} {kern} on {path}, {nt} thread(s), (M, N, K) = {(m, n, k)}: "
                                    f"[{bad[0]}, {bad[1]}] = {got[tuple(bad)]}, expected {ref[tuple(bad)]}")


def test_two_threads_are_used_on_the_larger_shapes():
    assert K.quant_planned_threads(250, 100, 300, "u8", "s8", num_threads=2) == 2
    assert K.quant_planned_threads(250, 100, 300, "u2", "o2", num_threads=2, kernel="bitserial") == 2
    assert K.quant_planned_threads(1, 1, 10, "u2", "o2", num_threads=2) == 1


@pytest.mark.parametrize("an,bn,kern,shape", [
    ("binary", "binary", "xnor", (300, 260, 1000)), ("binary", "binary", "bitserial", (300, 130, 700)),
    ("u2", "o2", "bitserial", (200, 100, 300)), ("u2", "o2", "int8", (200, 100, 300)),
])
def test_two_threads_every_path(an, bn, kern, shape, restore_path):
    """Each kernel on 2 threads (a shape above its threading threshold) on every path."""
    rng = np.random.default_rng(11)
    m, n, k = shape
    a, b = values(rng, an, (m, k)), values(rng, bn, (n, k))
    ref = reference(a, b)
    pa, pb = K.pack_levels(a, an), K.pack_levels(b, bn)
    for path in PATHS:
        K.set_kernel_path(path)
        assert K.quant_planned_threads(m, n, k, an, bn, num_threads=2, kernel=kern) == 2, path
        np.testing.assert_array_equal(K.quant_matmul_packed(pa, pb, kernel=kern, num_threads=2), ref, err_msg=path)


@pytest.mark.parametrize("an,bn", [("u8", "s8"), ("u8", "ternary"), ("u4", "o4"), ("u2", "o2")])
def test_int8_block_edges_every_path(an, bn, restore_path):
    """The int8 kernels' block edges, on every path: the AMX kernel's 32 x 32 blocks over whole 64-value K
    tiles (M, N one short of, equal to and one past a block; K a whole number of tiles or 16 values past;
    the VNNI kernel then adds the rest; padded row tails), and the 256-row blocks, on 1 and 2 threads."""
    rng = np.random.default_rng(5)
    for m, n, k in [(32, 32, 64), (31, 32, 64), (33, 33, 65), (32, 48, 128), (64, 64, 80), (65, 95, 1040),
                    (96, 64, 4096), (300, 80, 192), (40, 1, 64), (1, 64, 4096),
                    # row tails of >= 8 past the last whole 32 run as a zero-padded tile block on amx: with a K
                    # remainder, a column remainder, and across the 256-row block
                    (45, 64, 130), (50, 70, 256), (287, 33, 64)]:
        a, b = values(rng, an, (m, k)), values(rng, bn, (n, k))
        ref = reference(a, b)
        pa, pb = K.pack_levels(a, an), K.pack_levels(b, bn)
        for path in PATHS:
            K.set_kernel_path(path)
            for nt in (1, 2):
                got = K.quant_matmul_packed(pa, pb, kernel="int8", num_threads=nt)
                assert np.array_equal(got, ref), f"{an} x {bn} on {path}, {nt} thread(s), (M, N, K) = {(m, n, k)}"


def test_every_pair_of_level_sets():
    """All 21 x 21 pairs through quant_matmul (default kernel and path), including the edges of each set."""
    rng = np.random.default_rng(7)
    names = list(LEVEL_SETS)
    for an in names:
        for bn in names:
            for m, n, k in ((1, 3, 37), (5, 18, 130)):
                a, b = values(rng, an, (m, k)), values(rng, bn, (n, k))
                a[0, 0], b[0, 0] = LEVEL_SETS[an].min, LEVEL_SETS[bn].max  # extremes included
                np.testing.assert_array_equal(K.quant_matmul(a, b, an, bn), reference(a, b), err_msg=f"{an} x {bn}")


def test_extreme_values_at_the_int32_limit(restore_path):
    """u8 x s8 with every product at its extreme, K as large as int32 allows: wrapping inside the
    kernels must cancel exactly, and AVX2's vpmaddubsw must not saturate."""
    k = (2**31 - 1) // (255 * 128)
    a = np.full((2, k), 255, np.uint8)
    b = np.full((3, k), -128, np.int16)
    b[1] = 127
    ref = reference(a, b)
    for path in PATHS:
        K.set_kernel_path(path)
        np.testing.assert_array_equal(K.quant_matmul(a, b, "u8", "s8"), ref, err_msg=path)
        np.testing.assert_array_equal(K.quant_matmul(b, a, "s8", "u8"), ref.T, err_msg=path)


def test_k_zero_and_empty():
    z = K.quant_matmul(np.zeros((3, 0), np.uint8), np.zeros((2, 0), np.int8), "u2", "o2")
    np.testing.assert_array_equal(z, np.zeros((3, 2), np.int32))
    assert K.quant_matmul(np.zeros((0, 5), np.uint8), np.ones((2, 5), np.int8), "u2", "o1").shape == (0, 2)
    assert K.quant_matmul(np.zeros((2, 5), np.uint8), np.ones((0, 5), np.int8), "u8", "ternary").shape == (2, 0)


def test_non_contiguous_read_only_and_torch_inputs():
    rng = np.random.default_rng(3)
    a = values(rng, "u2", (40, 2 * 77), np.int32)[:, ::2]  # strided columns
    b = values(rng, "o2", (2 * 30, 77), np.int64)[::2]  # strided rows
    a.flags.writeable = False
    b.flags.writeable = False
    ref = reference(a, b)
    np.testing.assert_array_equal(K.quant_matmul(a, b, "u2", "o2"), ref)
    np.testing.assert_array_equal(K.quant_matmul(a, b, "u2", "o2", kernel="int8"), ref)
    np.testing.assert_array_equal(K.quant_matmul(np.asfortranarray(a), b.T.copy().T, "u2", "o2"), ref)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(K.quant_matmul(torch.from_numpy(a.copy()), torch.from_numpy(b.copy()).t().contiguous().t(),
                                                 "u2", "o2"), ref)


def test_out_argument():
    rng = np.random.default_rng(4)
    a, b = values(rng, "u4", (6, 50)), values(rng, "s4", (9, 50))
    buf = np.zeros((6, 20), np.int32)
    got = K.quant_matmul(a, b, "u4", "s4", out=buf[:, 3:12])
    assert got.base is buf
    np.testing.assert_array_equal(buf[:, 3:12], reference(a, b))
    with pytest.raises(ShapeError, match="shape"):
        K.quant_matmul(a, b, "u4", "s4", out=np.zeros((6, 8), np.int32))


def test_pack_prepare_and_pickle(restore_path):
    rng = np.random.default_rng(5)
    a, b = values(rng, "u8", (7, 300)), values(rng, "ternary", (33, 300), np.int8)
    ref = reference(a, b)
    pb = K.prepare_levels(b, "ternary", "u8")
    assert isinstance(pb, K.PackedLevels) and pb.rows == 33 and pb.k == 300 and pb.nbytes > 0
    np.testing.assert_array_equal(pb.to_array(), b)
    pa = K.pack_levels(a, "u8")
    for path in PATHS:
        K.set_kernel_path(path)
        np.testing.assert_array_equal(K.quant_matmul_packed(pa, pb), ref, err_msg=path)
    pb2 = pickle.loads(pickle.dumps(pb))
    np.testing.assert_array_equal(K.quant_matmul_packed(pa, pb2), ref)
    # activations packed for the int8 kernel (no planes), then multiplied bit-serially too
    a4, b4 = values(rng, "u4", (5, 200)), values(rng, "o4", (6, 200), np.int8)
    pa4 = K.pack_levels(a4, "u4", weights_levels="o4")
    for path in PATHS:
        K.set_kernel_path(path)
        for kern in ("int8", "bitserial"):
            np.testing.assert_array_equal(K.quant_matmul_packed(pa4, K.pack_levels(b4, "o4"), kernel=kern),
                                          reference(a4, b4), err_msg=f"{path} {kern}")
    np.testing.assert_array_equal(pa4.to_array(), a4)
    c = values(rng, "o3", (4, 600), np.int8)
    np.testing.assert_array_equal(K.pack_levels(c, "o3").to_array(), c)
    with pytest.raises(ShapeError, match="packed as"):
        K.prepare_levels(pb, "u2", "u8")


def test_byte_values_to_codes_every_set_and_byte():
    """int8 / uint8 operands take a uint8-arithmetic path to codes: every byte value of both dtypes, for every
    set of at most 7 bits, gives the set's code or a refusal, exactly as the set's definition says."""
    from lowbit.kernels.quant import _codes

    for name, ls in LEVEL_SETS.items():
        if ls.bits > 7:
            continue
        for dt in (np.int8, np.uint8):
            values = np.arange(256, dtype=np.uint8).view(dt)
            inside = ls.contains(values.astype(np.int64))
            for v, ok in zip(values, inside):
                x = np.full((2, 3), v, dt)
                if ok:
                    want = (int(v) - ls.offset) // ls.step
                    np.testing.assert_array_equal(_codes(x, ls, "x"), np.full((2, 3), want, np.uint8), err_msg=name)
                else:
                    with pytest.raises(ShapeError, match=rf"x\[0, 0\] = {int(v)} is not in level set '{name}'"):
                        _codes(x, ls, "x")


def test_choose_kernel_rule(restore_path):
    assert K.choose_kernel("binary", "binary") == "xnor"
    assert K.choose_kernel("u8", "s8") == "int8"
    assert K.choose_kernel("u8", "ternary") == "int8"
    for path in PATHS:
        for an, bn in (("u2", "o2"), ("u2", "binary"), ("u4", "o4"), ("u3", "o3")):
            la, lb = LEVEL_SETS[an], LEVEL_SETS[bn]
            for rows in (None, 1, 31, 32, 256):
                # amx: tiles from 32 rows (and for weights prepared before the batch is known), else the rule
                tiles = path == "amx" and (rows is None or rows >= 32)
                want = "int8" if tiles or la.bits * lb.bits > K.BITSERIAL_MAX_PAIRS[path] else "bitserial"
                assert K.choose_kernel(an, bn, path=path, rows=rows) == want, (path, an, bn, rows)
    # the chosen kernel is the one that runs: activations packed for it (planes only for bit-serial)
    for path in PATHS:
        K.set_kernel_path(path)
        for rows in (1, 40):
            pa = K.pack_levels(np.ones((rows, 70), np.int8), "u2", weights_levels="o2")
            assert (pa.planes is not None) == (K.choose_kernel("u2", "o2", rows=rows) == "bitserial")


def test_choose_kernel_bad_path():
    from lowbit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown kernel path"):
        K.choose_kernel("u2", "o2", path="neon")


def test_probe():
    t, ops = _bitgemm.qg_probe(5 if "avx512" in PATHS else 3, 1000) if "avx2" in PATHS else (1.0, 1.0)
    assert ops > 0 and t != 0
    # the AMX probes run where the amx path does (an AMX build), else say so with -1
    from lowbit.benchmarking import PROBE_NAMES

    for kind in (6, 7):
        t, ops = _bitgemm.qg_probe(kind, 10)
        assert ops == 10 * 2 * 12 * 16 * 16 * 64 and PROBE_NAMES[kind]  # 12 tdpbusd an iteration
        assert (t > 0) if "amx" in PATHS else (t == -1.0 or t > 0)


@pytest.mark.parametrize(
    "a,b,al,bl,match",
    [
        (np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.int8), "u9", "s8", "unknown level set"),
        (np.full((2, 3), 4, np.uint8), np.zeros((2, 3), np.int8), "u2", "s8", r"a\[0, 0\] = 4 is not in level set 'u2'"),
        (np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.int8), "u2", "o2", r"b\[0, 0\] = 0 is not in level set 'o2'"),
        (np.zeros((2, 3), np.uint8), np.full((2, 3), 2, np.int8), "u2", "binary", "not in level set 'binary'"),
        (np.zeros((2, 3), np.uint8), np.zeros((2, 4), np.int8), "u2", "s2", "K=3 columns but b has K=4"),
        (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int8), "u2", "s2", "dtype float32"),
        (np.zeros((2, 3), np.uint8), np.zeros((2, 3), bool), "u2", "s2", "dtype bool"),
        (np.zeros(3, np.uint8), np.zeros((2, 3), np.int8), "u2", "s2", "2-D"),
        (np.zeros((1, 70000), np.uint8), np.zeros((1, 70000), np.int16), "u8", "s8", "could overflow"),
    ],
)
def test_bad_input(a, b, al, bl, match):
    with pytest.raises(ShapeError, match=match):
        K.quant_matmul(a, b, al, bl)


def test_bad_kernel_and_packed_operands():
    a, b = np.zeros((2, 3), np.uint8), np.ones((2, 3), np.int8)
    with pytest.raises(ShapeError, match="unknown kernel"):
        K.quant_matmul(a, b, "u2", "o1", kernel="fast")
    with pytest.raises(ShapeError, match="cannot multiply"):
        K.quant_matmul(a, b, "u8", "o1", kernel="bitserial")
    with pytest.raises(ShapeError, match="PackedLevels"):
        K.quant_matmul_packed(a, K.pack_levels(b, "o1"))
    with pytest.raises(ShapeError, match="same K"):
        K.quant_matmul_packed(K.pack_levels(np.zeros((2, 4), np.uint8), "u2"), K.pack_levels(b, "o1"))
