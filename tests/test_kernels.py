"""Tests of the binary GEMM kernels (lowbit.kernels): bit-exactness against NumPy integer references on
every code path this CPU runs, packing, threading, non-contiguous inputs, and input validation."""
import os
import subprocess
import sys

import numpy as np
import pytest

import lowbit.kernels as K
from lowbit.errors import ConfigError, ShapeError
from lowbit.kernels import _bitgemm, dispatch

PATHS = K.available_paths()
RNG_SEED = 1234


# ---------------------------------------------------------------------------------------------------
# references (pure NumPy)
# ---------------------------------------------------------------------------------------------------
def ref_pack(x) -> np.ndarray:
    """bit j%64 of word j//64 is set where x[:, j] < 0; pad bits zero."""
    bits = np.asarray(x) < 0
    rows, k = bits.shape
    w = (k + 63) // 64
    padded = np.zeros((rows, 64 * w), dtype=bool)
    padded[:, :k] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64).reshape(rows, w)


def ref_matmul(a, b) -> np.ndarray:
    return np.asarray(a).astype(np.int64) @ np.asarray(b).astype(np.int64).T


def pm1(rng, shape, dtype=np.int8) -> np.ndarray:
    return rng.choice(np.array([-1, 1], dtype=dtype), size=shape)


@pytest.fixture()
def path(kernel_path):  # conftest's kernel_path, under the name these tests use
    return kernel_path


# Shapes: K = 1, 63, 64, 65, K not a multiple of 64, M or N = 1, tails of every length in the AVX2
# (4 words) and AVX-512 (8 words) vectors, odd rows/cols for the 2x4 / 4x4 tile edges, M and N past
# the 256-row cache blocks, K past the AVX2 byte-counter run (30 vectors = 7680 bits) and past the
# 8192-bit K block (two K blocks, the second accumulating into C).
SHAPES = [
    (1, 1, 1), (1, 1, 64), (2, 3, 63), (3, 2, 65), (1, 7, 128), (7, 1, 129), (5, 9, 191), (9, 5, 192),
    (6, 10, 255), (11, 4, 256), (4, 11, 257), (13, 17, 300), (3, 5, 448), (5, 3, 511), (8, 8, 512),
    (17, 3, 513), (33, 31, 784), (1, 300, 100), (300, 1, 100), (261, 259, 70), (2, 6, 7680),
    (3, 5, 7745), (5, 6, 8192), (6, 5, 8300),
]
_rng = np.random.default_rng(RNG_SEED)
SHAPES += [tuple(int(v) for v in _rng.integers(1, 301, size=3)) for _ in range(12)]

_cases = {}


def case(m, n, k):
    """Random +-1 operands and their int64 reference, built once per shape for all paths/threads."""
    key = (m, n, k)
    if key not in _cases:
        rng = np.random.default_rng([RNG_SEED, m, n, k])
        a, b = pm1(rng, (m, k)), pm1(rng, (n, k))
        _cases[key] = (a, b, ref_matmul(a, b))
    return _cases[key]


# ---------------------------------------------------------------------------------------------------
# bit-exactness
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_binary_matmul_bit_exact(path, shape, threads):
    a, b, ref = case(*shape)
    out = K.binary_matmul(a, b, num_threads=threads)
    assert out.dtype == np.int32 and out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)
    pa, pb = K.pack_bits(a), K.pack_bits(b)
    np.testing.assert_array_equal(K.binary_matmul_packed(pa, pb, shape[2], num_threads=threads), ref)


@pytest.mark.parametrize("k", [64, 7680, 7745, 7936, 8000, 8192, 8300, 20000])
def test_saturating_operands(path, k):
    """Rows that are all +1, all -1 or alternating: XOR bytes of 0xFF in every vector, the worst case
    for the AVX2 per-byte counters (8 per vector step) that random bits (4 on average) never reach."""
    rows = np.ones((4, k), np.int8)
    rows[1] = -1
    rows[2, ::2] = -1
    rows[3, : k // 2] = -1
    a, b = rows, -rows[[0, 1, 2, 3, 1]]
    np.testing.assert_array_equal(K.binary_matmul(a, b), ref_matmul(a, b))


# Large enough that the work threshold lets 2 threads run, splitting B's rows (first) and A's rows
# (second: only 6 rows of B, too few to split evenly).
THREADED = [(300, 300, 4096), (2000, 6, 8192 + 100)]


@pytest.mark.parametrize("shape", THREADED, ids=lambda s: "x".join(map(str, s)))
def test_multithreaded_bit_exact(path, shape):
    assert K.planned_threads(*shape, num_threads=2) == 2  # otherwise this test would not test threads
    a, b, ref = case(*shape)
    pa, pb = K.pack_bits(a), K.pack_bits(b)
    np.testing.assert_array_equal(K.binary_matmul_packed(pa, pb, shape[2], num_threads=2), ref)
    np.testing.assert_array_equal(K.binary_matmul_packed(pa, pb, shape[2], num_threads=1), ref)


def test_small_problems_run_single_threaded():
    assert K.planned_threads(8, 8, 64, num_threads=8) == 1
    assert K.planned_threads(1, 4096, 4096, num_threads=1) == 1
    assert K.planned_threads(4096, 4096, 4096, num_threads=2) == 2
    assert K.planned_threads(4096, 4096, 4096, num_threads=1) == 1


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 65), (13, 17, 300), (5, 6, 8300)])
@pytest.mark.parametrize("hw", [False, True])
def test_naive_kernel_bit_exact(shape, hw):
    if hw and "popcnt" not in PATHS:
        pytest.skip("no POPCNT on this CPU")
    a, b, ref = case(*shape)
    out = K.binary_matmul_naive(K.pack_bits(a), K.pack_bits(b), shape[2], hw_popcount=hw)
    np.testing.assert_array_equal(out, ref)


def test_pad_bits_and_spare_words_are_ignored(path):
    rng = np.random.default_rng(7)
    for m, n, k in [(5, 7, 1), (5, 7, 63), (6, 9, 65), (9, 6, 200), (3, 4, 449), (4, 3, 8300)]:
        a, b, ref = case(m, n, k)
        pa, pb = K.pack_bits(a), K.pack_bits(b)
        w = pa.shape[1]
        # garbage in the pad bits and in two spare words per row
        noise_a = rng.integers(0, 2**64, size=(m, w + 2), dtype=np.uint64)
        noise_b = rng.integers(0, 2**64, size=(n, w + 2), dtype=np.uint64)
        keep = np.zeros(w + 2, dtype=np.uint64)
        keep[: k // 64] = np.uint64(2**64 - 1)
        if k % 64:
            keep[k // 64] = np.uint64((1 << (k % 64)) - 1)
        da = (noise_a & ~keep) | np.pad(pa, ((0, 0), (0, 2)))
        db = (noise_b & ~keep) | np.pad(pb, ((0, 0), (0, 2)))
        assert (da != np.pad(pa, ((0, 0), (0, 2)))).any()
        np.testing.assert_array_equal(K.binary_matmul_packed(da, db, k), ref)
        np.testing.assert_array_equal(K.binary_matmul_naive(da, db, k), ref)


def test_empty_dimensions(path):
    assert K.binary_matmul(np.ones((0, 5), np.int8), np.ones((3, 5), np.int8)).shape == (0, 3)
    assert K.binary_matmul(np.ones((4, 5), np.int8), np.ones((0, 5), np.int8)).shape == (4, 0)
    out = K.binary_matmul(np.ones((4, 0), np.int8), np.ones((3, 0), np.int8))
    np.testing.assert_array_equal(out, np.zeros((4, 3), np.int32))
    assert K.pack_bits(np.ones((4, 0), np.float32)).shape == (4, 0)


# ---------------------------------------------------------------------------------------------------
# dtypes, layouts, torch, out=
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64])
def test_dtypes(dtype):
    rng = np.random.default_rng(3)
    a, b = pm1(rng, (9, 200), dtype), pm1(rng, (7, 200), dtype)
    np.testing.assert_array_equal(K.binary_matmul(a, b), ref_matmul(a, b))
    np.testing.assert_array_equal(K.pack_bits(a), ref_pack(a))


def test_non_contiguous_inputs(path):
    rng = np.random.default_rng(11)
    big = pm1(rng, (90, 400), np.float32)
    cases = [
        (big[::2, ::3], big[1::3, ::3]),  # steps on both axes
        (big[:40, :].T[:130], big[40:80].T[:130]),  # transposed views (rows strided by 400)
        (big[::-1, :257], big[5:16, 300:43:-1][:, :257]),  # negative strides
        (np.asfortranarray(big[:20, :150]), big[20:33, :150]),
    ]
    for a, b in cases:
        assert not (a.flags.c_contiguous and b.flags.c_contiguous)
        np.testing.assert_array_equal(K.binary_matmul(a, b), ref_matmul(a, b))
        np.testing.assert_array_equal(K.pack_bits(a), ref_pack(a))
    # strided packed operands (every other row, a column slice of wider words, a transposed copy)
    a, b = big[:30, :320], big[30:60, :320]
    pa, pb = K.pack_bits(a), K.pack_bits(b)
    wide = np.zeros((60, 9), np.uint64)
    wide[::2, 2:7] = pa
    ref = ref_matmul(a, b)
    np.testing.assert_array_equal(K.binary_matmul_packed(wide[::2, 2:7], pb, 320), ref)
    np.testing.assert_array_equal(K.binary_matmul_packed(pa, np.asfortranarray(pb), 320), ref)
    np.testing.assert_array_equal(K.binary_matmul_packed(pa.astype(np.int64), pb, 320), ref)


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 2, (12, 130), generator=g).float() * 2 - 1
    b = (torch.randint(0, 2, (9, 130), generator=g) * 2 - 1).to(torch.int8)
    ref = ref_matmul(a.numpy(), b.numpy())
    np.testing.assert_array_equal(K.binary_matmul(a, b), ref)
    np.testing.assert_array_equal(K.binary_matmul(a.requires_grad_(), b.t().contiguous().t()), ref)
    np.testing.assert_array_equal(K.binary_matmul(a.detach().to(torch.bfloat16), b), ref)
    np.testing.assert_array_equal(K.pack_signs(a.detach() * 0.3), ref_pack(a.detach().numpy()))
    pa, pb = K.pack_bits(a.detach()), K.pack_bits(b)
    np.testing.assert_array_equal(K.binary_matmul_packed(torch.from_numpy(pa.view(np.int64)), pb, 130), ref)


def test_kernels_package_does_not_import_torch():
    code = "import sys, lowbit.kernels as K, numpy as np; K.binary_matmul(np.ones((2, 3)), np.ones((2, 3))); " \
           "sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_out_parameter(path):
    a, b, ref = case(13, 17, 300)
    pa, pb = K.pack_bits(a), K.pack_bits(b)
    out = np.full((13, 17), 99, np.int32)
    assert K.binary_matmul_packed(pa, pb, 300, out=out) is out
    np.testing.assert_array_equal(out, ref)
    wide = np.full((13, 40), 7, np.int32)  # a row slice of a wider buffer: the rest is left alone
    K.binary_matmul_packed(pa, pb, 300, out=wide[:, 5:22])
    np.testing.assert_array_equal(wide[:, 5:22], ref)
    assert (wide[:, :5] == 7).all() and (wide[:, 22:] == 7).all()


# ---------------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 7, 63, 64, 65, 127, 128, 129, 200, 1000])
def test_pack_bits_matches_reference(k):
    rng = np.random.default_rng(k)
    for dtype in (np.int8, np.float32, np.float64, np.int32):
        x = pm1(rng, (5, k), dtype)
        p = K.pack_bits(x)
        assert p.dtype == np.uint64 and p.shape == (5, (k + 63) // 64)
        np.testing.assert_array_equal(p, ref_pack(x))


def test_pack_bits_bit_order():
    x = np.ones((1, 130), np.int8)
    x[0, [0, 5, 63, 64, 129]] = -1
    p = K.pack_bits(x)
    assert p[0, 0] == (1 << 0) | (1 << 5) | (1 << 63)
    assert p[0, 1] == 1
    assert p[0, 2] == 2


def test_pack_signs_of_reals_and_integers():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, 333)).astype(np.float32)
    x[0, :6] = [0.0, -0.0, np.inf, -np.inf, np.nan, -1e-30]
    p = K.pack_signs(x)
    np.testing.assert_array_equal(p, ref_pack(x))  # NaN < 0 is False: NaN packs as +1
    assert p[0, 0] & 0b111111 == 0b101000  # only -inf and -1e-30 set; 0 and -0.0 are +1
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.float64, np.float16):
        y = (rng.normal(size=(4, 150)) * 50).astype(dtype)
        np.testing.assert_array_equal(K.pack_signs(y), ref_pack(y))
    np.testing.assert_array_equal(K.pack_signs(rng.integers(0, 255, (3, 70), dtype=np.uint8)), np.zeros((3, 2), np.uint64))
    big = rng.normal(size=(1100, 1000))  # large enough to be packed on 2 threads
    np.testing.assert_array_equal(K.pack_signs(big, num_threads=2), ref_pack(big))
    np.testing.assert_array_equal(K.pack_signs(big.T[:, ::3]), ref_pack(big.T[:, ::3]))


# ---------------------------------------------------------------------------------------------------
# dispatch and settings
# ---------------------------------------------------------------------------------------------------
def test_paths():
    assert PATHS[0] == "portable" and set(PATHS) <= set(K.PATHS)
    assert K.active_path() in PATHS
    for p in PATHS:
        previous = K.set_kernel_path(p)
        try:
            assert K.active_path() == p
        finally:
            K.set_kernel_path(previous)
    assert K.set_kernel_path("auto") in PATHS and K.active_path() == _bitgemm.best_path()
    with pytest.raises(ConfigError, match="unknown kernel path"):
        K.set_kernel_path("sse9")
    for p in set(K.PATHS) - set(PATHS):
        with pytest.raises(ConfigError, match="not supported by this CPU"):
            K.set_kernel_path(p)


def test_environment_settings(monkeypatch):
    monkeypatch.setitem(dispatch._state, "path", None)
    monkeypatch.setitem(dispatch._state, "threads", None)
    monkeypatch.setenv("LOWBIT_KERNEL_PATH", "portable")
    monkeypatch.setenv("LOWBIT_NUM_THREADS", "3")
    assert K.active_path() == "portable" and K.get_num_threads() == 3
    monkeypatch.setitem(dispatch._state, "path", None)
    monkeypatch.setitem(dispatch._state, "threads", None)
    monkeypatch.setenv("LOWBIT_KERNEL_PATH", "bogus")
    monkeypatch.setenv("LOWBIT_NUM_THREADS", "many")
    with pytest.raises(ConfigError, match="LOWBIT_KERNEL_PATH"):
        K.active_path()
    with pytest.raises(ConfigError, match="LOWBIT_NUM_THREADS"):
        K.get_num_threads()
    monkeypatch.delenv("LOWBIT_NUM_THREADS")
    assert K.get_num_threads() == (os.cpu_count() or 1)


def test_environment_forces_path_in_a_fresh_process():
    env = dict(os.environ, LOWBIT_KERNEL_PATH=PATHS[0])
    code = "import lowbit.kernels as K; print(K.active_path())"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == PATHS[0]


def test_num_threads_setting():
    previous = K.set_num_threads(3)
    try:
        assert K.get_num_threads() == 3
        for bad in (0, -1, 1.5, "2", True, None):
            with pytest.raises(ConfigError, match="positive integer"):
                K.set_num_threads(bad)
        with pytest.raises(ConfigError):
            K.binary_matmul(np.ones((2, 2)), np.ones((2, 2)), num_threads=0)
    finally:
        K.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------------
# prepared weights (prepare_packed / PreparedMatrix): bit-exact with the unprepared product
# ---------------------------------------------------------------------------------------------------
# On top of SHAPES: N across the AVX2 tile (4), C group (16) and block (128) edges, M = 1..5 (the
# direct kernel below 4 rows, panels from 4 on), M past the 128-row A block, K across the 64-word
# (4096-bit) K block of the AVX2 panels (one full block + a partial one, two full ones).
PREP_SHAPES = SHAPES + [
    (1, 129, 4096), (2, 131, 4097), (3, 17, 130), (4, 15, 130), (5, 16, 4095), (8, 3, 64), (129, 127, 1000),
    (130, 4, 4160), (64, 257, 8192), (7, 33, 8257), (256, 129, 784), (4, 1, 12000),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", PREP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_prepared_equals_unprepared(path, shape, threads):
    m, n, k = shape
    a, b, ref = case(m, n, k)
    pa, pb = K.pack_bits(a), K.pack_bits(b)
    prep = K.prepare_packed(pb, k, num_threads=threads)
    assert isinstance(prep, K.PreparedMatrix) and prep.path == path and (prep.rows, prep.k) == (n, k)
    plain = K.binary_matmul_packed(pa, pb, k, num_threads=threads)
    np.testing.assert_array_equal(plain, ref)
    np.testing.assert_array_equal(K.binary_matmul_packed(pa, prep, k, num_threads=threads), plain)


@pytest.mark.parametrize("shape", THREADED + [(256, 1000, 4096)], ids=lambda s: "x".join(map(str, s)))
def test_prepared_multithreaded(path, shape):
    assert K.planned_threads(*shape, num_threads=2) == 2
    a, b, ref = case(*shape)
    pa, pb = K.pack_bits(a), K.pack_bits(b)
    prep = K.prepare_packed(pb, shape[2], num_threads=2)
    for threads in (1, 2):
        np.testing.assert_array_equal(K.binary_matmul_packed(pa, prep, shape[2], num_threads=threads), ref)


@pytest.mark.parametrize("k", [64, 4096, 4100, 8192, 8300])
def test_prepared_saturating_operands(path, k):
    rows = np.ones((6, k), np.int8)
    rows[1] = -1
    rows[2, ::2] = -1
    rows[3, : k // 2] = -1
    rows[4:] = -rows[2:4]
    a, b = rows, -rows[[0, 1, 2, 3, 1, 4, 5]]
    prep = K.prepare_packed(K.pack_bits(b), k)
    np.testing.assert_array_equal(K.binary_matmul_packed(K.pack_bits(a), prep, k), ref_matmul(a, b))


def test_prepared_follows_the_kernel_path():
    """Prepared for one path, used under each of the others: re-prepared transparently, still exact."""
    a, b, ref = case(33, 31, 784)
    pa = K.pack_bits(a)
    previous = K.set_kernel_path(PATHS[-1])
    try:
        prep = K.prepare_packed(K.pack_bits(b), 784)
        assert prep.path == PATHS[-1]
        for name in PATHS + PATHS[::-1]:
            K.set_kernel_path(name)
            np.testing.assert_array_equal(K.binary_matmul_packed(pa, prep, 784), ref)
            assert prep.path == name
            if name == "avx2":
                assert prep.native is not None and prep.native.ctypes.data % 64 == 0
                assert prep.nbytes == prep.packed.nbytes + prep.native.nbytes
            else:  # these paths read the packed rows in place
                assert prep.native is None
    finally:
        K.set_kernel_path(previous)


def test_prepared_owns_its_data_and_ignores_pad_bits(path):
    rng = np.random.default_rng(5)
    a, b, ref = case(9, 6, 200)
    pa, pb = K.pack_bits(a), K.pack_bits(b)
    noisy = pb | (rng.integers(0, 2**64, size=pb.shape, dtype=np.uint64) & ~np.uint64((1 << 8) - 1)) * \
        (np.arange(pb.shape[1]) == pb.shape[1] - 1)  # garbage in the last word's pad bits
    assert (noisy != pb).any()
    prep = K.prepare_packed(noisy, 200)
    noisy[:] = 0  # the prepared matrix took a copy
    assert not prep.packed.flags.writeable
    np.testing.assert_array_equal(K.binary_matmul_packed(pa, prep, 200), ref)
    out = np.full((9, 6), 3, np.int32)
    assert K.binary_matmul_packed(pa, prep, 200, out=out) is out
    np.testing.assert_array_equal(out, ref)


def test_prepared_pickles_and_accepts_torch():
    import pickle

    a, b, ref = case(13, 17, 300)
    pa = K.pack_bits(a)
    prep = K.prepare_packed(K.pack_bits(b).view(np.int64), 300)
    again = pickle.loads(pickle.dumps(prep))
    assert (again.rows, again.k, again.path) == (prep.rows, prep.k, prep.path)
    np.testing.assert_array_equal(K.binary_matmul_packed(pa, again, 300), ref)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(K.binary_matmul_packed(torch.from_numpy(pa.view(np.int64)), prep, 300), ref)
    prep_t = K.prepare_packed(torch.from_numpy(K.pack_bits(b).view(np.int64)), 300)
    np.testing.assert_array_equal(K.binary_matmul_packed(pa, prep_t, 300), ref)


def test_prepared_empty_dimensions(path):
    prep = K.prepare_packed(np.zeros((0, 2), np.uint64), 100)
    assert K.binary_matmul_packed(np.zeros((3, 2), np.uint64), prep, 100).shape == (3, 0)
    prep = K.prepare_packed(np.zeros((4, 2), np.uint64), 100)
    assert K.binary_matmul_packed(np.zeros((0, 2), np.uint64), prep, 100).shape == (0, 4)
    prep = K.prepare_packed(np.zeros((4, 0), np.uint64), 0)
    np.testing.assert_array_equal(K.binary_matmul_packed(np.zeros((3, 0), np.uint64), prep, 0), np.zeros((3, 4)))


# ---------------------------------------------------------------------------------------------------
# threshold epilogue (threshold_pack / binary_matmul_threshold) against NumPy
# ---------------------------------------------------------------------------------------------------
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def ref_threshold(acc, sign, thr, pad) -> np.ndarray:
    """bit = sign * (acc - pad) < thr in wrapping int32 arithmetic, packed as pack_bits does."""
    x = (np.asarray(acc, np.int64) - pad + 2**31) % 2**32 - 2**31
    sx = (x * np.asarray(sign, np.int64) + 2**31) % 2**32 - 2**31
    bits = sx < np.asarray(thr, np.int64)
    return ref_pack(np.where(bits, -1, 1))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 63), (5, 64), (4, 65), (9, 100), (1, 130), (7, 4096),
                                   (300, 4003), (256, 4096)], ids=lambda s: "x".join(map(str, s)))
def test_threshold_pack_matches_reference(path, shape, threads):
    m, n = shape
    rng = np.random.default_rng([m, n])
    acc = rng.integers(-5000, 5001, size=(m, n), dtype=np.int32)
    sign = rng.choice(np.array([-1, 1], np.int32), size=n)
    thr = rng.integers(-3000, 3001, size=n).astype(np.int32)
    # extremes: always / never true whatever the accumulator, and the clipped int32 range
    for j, t in zip(range(0, n, 7), [I32_MIN, I32_MAX, I32_MIN + 1, 0, -1, 1]):
        thr[j] = t
    pad = int(rng.integers(0, 100))
    out = K.threshold_pack(acc, sign, thr, pad, num_threads=threads)
    assert out.dtype == np.uint64 and out.shape == (m, (n + 63) // 64)
    np.testing.assert_array_equal(out, ref_threshold(acc, sign, thr, pad))


def test_threshold_pack_extremes(path):
    """int32 wrap-around in acc - pad and in the negation, all-negative signs, every column of a word."""
    acc = np.array([[I32_MIN, I32_MAX, 0, -1, 1, I32_MIN + 1, 100, -100] * 9], np.int32)
    n = acc.shape[1]
    for sign in (np.ones(n, np.int32), -np.ones(n, np.int32), np.resize(np.array([1, -1], np.int64), n)):
        for pad in (0, 1, -1, I32_MAX, I32_MIN):
            for thr in (np.zeros(n, np.int32), np.full(n, I32_MIN, np.int32), np.full(n, I32_MAX, np.int32),
                        np.resize(np.array([I32_MIN + 1, I32_MAX, 5, -5], np.int32), n)):
                np.testing.assert_array_equal(K.threshold_pack(acc, sign, thr, pad), ref_threshold(acc, sign, thr, pad))


def test_threshold_pack_layouts():
    rng = np.random.default_rng(9)
    acc = rng.integers(-50, 50, size=(20, 150), dtype=np.int32)
    sign = rng.choice([-1, 1], size=150)  # int64 is converted
    thr = rng.integers(-20, 20, size=150)
    ref = ref_threshold(acc, sign, thr, 2)
    np.testing.assert_array_equal(K.threshold_pack(np.asfortranarray(acc), sign, thr, 2), ref)  # copied
    wide = np.zeros((40, 160), np.int32)
    wide[::2, 5:155] = acc
    np.testing.assert_array_equal(K.threshold_pack(wide[::2, 5:155], sign, thr, 2), ref)  # strided rows in place
    out = np.full((20, 6), 7, np.uint64)
    assert K.threshold_pack(acc, sign, thr, 2, out=out[:, 2:5]) is not None
    np.testing.assert_array_equal(out[:, 2:5], ref)
    assert (out[:, :2] == 7).all() and (out[:, 5:] == 7).all()
    assert K.threshold_pack(np.zeros((0, 10), np.int32), np.ones(10, int), np.zeros(10, int)).shape == (0, 1)
    assert K.threshold_pack(np.zeros((3, 0), np.int32), np.ones(0, int), np.zeros(0, int)).shape == (3, 0)


@pytest.mark.parametrize("prepared", [False, True])
def test_binary_matmul_threshold(path, prepared):
    for m, n, k in [(1, 10, 64), (13, 17, 300), (33, 70, 784), (256, 130, 4100)]:
        a, b, ref = case(m, n, k)
        rng = np.random.default_rng([m, n, k])
        sign = rng.choice([-1, 1], size=n)
        thr = rng.integers(-k // 8, k // 8 + 1, size=n)
        pad = int(rng.integers(0, 64))
        pb = K.pack_bits(b)
        out = K.binary_matmul_threshold(K.pack_bits(a), K.prepare_packed(pb, k) if prepared else pb, k, sign, thr,
                                        pad, num_threads=2)
        np.testing.assert_array_equal(out, ref_threshold(ref, sign, thr, pad))


# ---------------------------------------------------------------------------------------------------
# first layer: uint8 x {-1, 0, +1} (u8_matmul), exact
# ---------------------------------------------------------------------------------------------------
# M across the 4-row tile, N across the 32-row panels and 16-lane vectors, K odd / even and across the
# 128-value int16 run (64 pairs)
U8_SHAPES = [(1, 1, 1), (1, 1, 2), (2, 3, 3), (3, 17, 127), (4, 32, 128), (5, 33, 129), (6, 16, 255),
             (7, 15, 256), (8, 31, 257), (9, 64, 784), (13, 100, 785), (256, 70, 300), (1, 4096, 784), (2, 5, 0)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", U8_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_u8_matmul_exact(path, shape, threads):
    m, n, k = shape
    rng = np.random.default_rng([m, n, k, 8])
    x = rng.integers(0, 256, size=(m, k), dtype=np.uint8)
    w = rng.choice(np.array([-1, 0, 1], np.int8), size=(n, k))
    prep = K.prepare_u8_weights(w)
    np.testing.assert_array_equal(prep.to_array(), w)
    out = K.u8_matmul(x, prep, num_threads=threads)
    assert out.dtype == np.int32 and out.shape == (m, n)
    np.testing.assert_array_equal(out, x.astype(np.int64) @ w.astype(np.int64).T)


@pytest.mark.parametrize("k", [128, 129, 5000, 20001])
def test_u8_matmul_extremes(path, k):
    """All-255 inputs against all +1 / all -1 rows: the largest int16 runs (64 x +-510) and int32 sums."""
    x = np.full((5, k), 255, np.uint8)
    x[1, ::2] = 0
    w = np.ones((6, k), np.int8)
    w[1] = -1
    w[2, ::2] = -1
    w[3, 1::2] = -1
    w[4, : k // 2] = 0
    w[5] = -w[2]
    out = K.u8_matmul(x, K.prepare_u8_weights(w), num_threads=2)
    np.testing.assert_array_equal(out, x.astype(np.int64) @ w.astype(np.int64).T)


def test_u8_matmul_layouts_and_pickle():
    import pickle

    rng = np.random.default_rng(21)
    big = rng.integers(0, 256, size=(40, 300), dtype=np.uint8)
    w = rng.choice([-1.0, 1.0], size=(37, 150))  # float +-1 is accepted
    prep = K.prepare_u8_weights(w)
    ref = big[::2, 10:160].astype(np.int64) @ w.T.astype(np.int64)
    np.testing.assert_array_equal(K.u8_matmul(big[::2, 10:160], prep), ref)  # strided rows, in place
    np.testing.assert_array_equal(K.u8_matmul(np.asfortranarray(big[::2, 10:160]), prep), ref)
    np.testing.assert_array_equal(K.u8_matmul(big[::2, 10:160], pickle.loads(pickle.dumps(prep))), ref)
    out = np.zeros((20, 50), np.int32)
    K.u8_matmul(big[::2, 10:160], prep, out=out[:, 5:42])
    np.testing.assert_array_equal(out[:, 5:42], ref)
    assert K.u8_matmul_is_fast() == (K.active_path() in ("avx2", "avx512", "avx512vnni", "amx"))


# ---------------------------------------------------------------------------------------------------
# bad input: ShapeError with a message naming the problem
# ---------------------------------------------------------------------------------------------------
ok = np.ones((3, 70), np.int8)
pok = K.pack_bits(ok)


def _bad_value_two():
    x = np.full((2, 100), -1.0)
    x[1, 77] = 2.0
    K.pack_bits(x)


BAD = [
    ("1-D a", lambda: K.binary_matmul(np.ones(70, np.int8), ok), r"a must be a 2-D array.*1-D"),
    ("3-D b", lambda: K.binary_matmul(ok, np.ones((2, 3, 70))), r"b must be a 2-D array.*3-D"),
    ("K mismatch", lambda: K.binary_matmul(ok, np.ones((3, 71), np.int8)), r"a has K=70 columns but b has K=71"),
    ("bool", lambda: K.binary_matmul(ok.astype(bool), ok), r"a has dtype bool"),
    ("uint8", lambda: K.binary_matmul(ok, ok.astype(np.uint8)), r"b has dtype uint8"),
    ("complex", lambda: K.pack_bits(ok.astype(complex)), r"x has dtype complex128"),
    ("strings", lambda: K.pack_signs(np.array([["a", "b"]])), r"x has dtype <U1"),
    ("ragged", lambda: K.binary_matmul([[1, -1], [1]], ok), r"a (cannot be read|has dtype object|must be a 2-D)"),
    ("zero", lambda: K.binary_matmul(np.where(np.eye(3, 70) > 0, 0, 1).astype(np.int8), ok),
     r"a must hold only \+1/-1 values; found 0 at \[0, 0\]"),
    ("two", lambda: _bad_value_two(), r"x must hold only \+1/-1 values; found 2.0 at \[1, 77\]"),
    ("half", lambda: K.binary_matmul(ok, np.full((2, 70), 0.5, np.float32)), r"b must hold only \+1/-1 values; found 0.5 at \[0, 0\]"),
    ("nan", lambda: K.pack_bits(np.array([[1.0, np.nan]])), r"found nan at \[0, 1\]"),
    ("packed dtype", lambda: K.binary_matmul_packed(pok.astype(np.int32), pok, 70), r"pa has dtype int32; packed bits must be uint64"),
    ("packed 1-D", lambda: K.binary_matmul_packed(pok, pok[0], 70), r"pb must be a 2-D packed array"),
    ("words mismatch", lambda: K.binary_matmul_packed(pok, K.pack_bits(np.ones((3, 200), np.int8)), 70),
     r"pa has 2 words per row but pb has 4"),
    ("k too large", lambda: K.binary_matmul_packed(pok, pok, 129), r"k=129 bits does not fit the packed rows: 2 word\(s\)"),
    ("k negative", lambda: K.binary_matmul_packed(pok, pok, -1), r"k must be >= 0"),
    ("k float", lambda: K.binary_matmul_packed(pok, pok, 70.0), r"k must be an integer"),
    ("k bool", lambda: K.binary_matmul_packed(pok, pok, True), r"k must be an integer"),
    ("naive k", lambda: K.binary_matmul_naive(pok, pok, 200), r"k=200 bits does not fit"),
    ("out dtype", lambda: K.binary_matmul_packed(pok, pok, 70, out=np.zeros((3, 3), np.int64)), r"out must have dtype int32"),
    ("out shape", lambda: K.binary_matmul_packed(pok, pok, 70, out=np.zeros((3, 4), np.int32)), r"out has shape \(3, 4\), expected \(3, 3\)"),
    ("out strided", lambda: K.binary_matmul_packed(pok, pok, 70, out=np.zeros((3, 6), np.int32)[:, ::2]), r"out must have contiguous rows"),
    ("out list", lambda: K.binary_matmul_packed(pok, pok, 70, out=[[0] * 3] * 3), r"out must be a NumPy int32 array"),
    # prepared weights
    ("prep k mismatch", lambda: K.binary_matmul_packed(pok, K.prepare_packed(pok, 70), 71),
     r"k=71 does not match the prepared matrix, which was prepared for k=70"),
    ("prep k too large", lambda: K.binary_matmul_packed(pok, K.prepare_packed(pok, 70), 129), r"k=129 bits does not fit"),
    ("prep words", lambda: K.binary_matmul_packed(K.pack_bits(np.ones((3, 200), np.int8)), K.prepare_packed(pok, 70), 70),
     r"pa has 4 words per row but the prepared matrix has 2"),
    ("prep pa dtype", lambda: K.binary_matmul_packed(pok.astype(np.float64), K.prepare_packed(pok, 70), 70),
     r"pa has dtype float64"),
    ("prep out shape", lambda: K.binary_matmul_packed(pok, K.prepare_packed(pok, 70), 70, out=np.zeros((3, 4), np.int32)),
     r"out has shape \(3, 4\)"),
    ("prepare dtype", lambda: K.prepare_packed(pok.astype(np.int32), 70), r"pb has dtype int32"),
    ("prepare 1-D", lambda: K.prepare_packed(pok[0], 70), r"pb must be a 2-D packed array"),
    ("prepare k", lambda: K.prepare_packed(pok, 200), r"k=200 bits does not fit"),
    ("prepare k float", lambda: K.prepare_packed(pok, 70.0), r"k must be an integer"),
    # threshold epilogue
    ("thr acc dtype", lambda: K.threshold_pack(np.zeros((2, 3), np.int64), [1, 1, 1], [0, 0, 0]), r"acc has dtype int64"),
    ("thr acc 1-D", lambda: K.threshold_pack(np.zeros(3, np.int32), [1, 1, 1], [0, 0, 0]), r"acc must be a 2-D array"),
    ("thr sign length", lambda: K.threshold_pack(np.zeros((2, 3), np.int32), [1, 1], [0, 0, 0]),
     r"sign must be a 1-D array of 3 values"),
    ("thr sign value", lambda: K.threshold_pack(np.zeros((2, 3), np.int32), [1, 0, 1], [0, 0, 0]), r"sign must hold only \+1/-1"),
    ("thr sign float", lambda: K.threshold_pack(np.zeros((2, 3), np.int32), [1.0, 1.0, 1.0], [0, 0, 0]), r"sign has dtype float64"),
    ("thr 2-D", lambda: K.threshold_pack(np.zeros((2, 3), np.int32), [1, 1, 1], np.zeros((1, 3), np.int32)),
     r"signed_threshold must be a 1-D array of 3 values"),
    ("thr range", lambda: K.threshold_pack(np.zeros((2, 3), np.int32), [1, 1, 1], [0, 2**31, 0]), r"signed_threshold has values outside"),
    ("thr pad float", lambda: K.threshold_pack(np.zeros((2, 3), np.int32), [1, 1, 1], [0, 0, 0], 1.5), r"pad_bits must be an integer"),
    ("thr pad range", lambda: K.threshold_pack(np.zeros((2, 3), np.int32), [1, 1, 1], [0, 0, 0], 2**31), r"pad_bits=2147483648 does not fit"),
    ("thr out shape", lambda: K.threshold_pack(np.zeros((2, 3), np.int32), [1, 1, 1], [0, 0, 0], out=np.zeros((2, 2), np.uint64)),
     r"out has shape \(2, 2\), expected \(2, 1\)"),
    ("thr out dtype", lambda: K.threshold_pack(np.zeros((2, 3), np.int32), [1, 1, 1], [0, 0, 0], out=np.zeros((2, 1), np.int64)),
     r"out must be a NumPy uint64 array"),
    ("mm thr sign", lambda: K.binary_matmul_threshold(pok, pok, 70, [1, 1], [0, 0, 0]), r"sign must be a 1-D array of 3"),
    ("mm thr k", lambda: K.binary_matmul_threshold(pok, K.prepare_packed(pok, 70), 64, [1, 1, 1], [0, 0, 0]),
     r"k=64 does not match the prepared matrix"),
    # uint8 x +-1
    ("u8 w value", lambda: K.prepare_u8_weights(np.full((2, 3), 2)), r"w must hold only -1, 0, \+1 values; found 2 at \[0, 0\]"),
    ("u8 w 1-D", lambda: K.prepare_u8_weights(np.ones(3)), r"w must be a 2-D array"),
    ("u8 w dtype", lambda: K.prepare_u8_weights(np.ones((2, 3), bool)), r"w has dtype bool"),
    ("u8 x dtype", lambda: K.u8_matmul(np.ones((2, 3), np.int8), K.prepare_u8_weights(np.ones((4, 3)))), r"x has dtype int8; expected uint8"),
    ("u8 x 3-D", lambda: K.u8_matmul(np.ones((2, 3, 1), np.uint8), K.prepare_u8_weights(np.ones((4, 3)))), r"x must be a 2-D array"),
    ("u8 k mismatch", lambda: K.u8_matmul(np.ones((2, 4), np.uint8), K.prepare_u8_weights(np.ones((4, 3)))),
     r"x has K=4 columns but the weights were prepared for K=3"),
    ("u8 not prepared", lambda: K.u8_matmul(np.ones((2, 3), np.uint8), np.ones((4, 3), np.int8)), r"w must be a PreparedU8Weights"),
    ("u8 out shape", lambda: K.u8_matmul(np.ones((2, 3), np.uint8), K.prepare_u8_weights(np.ones((4, 3))), out=np.zeros((2, 3), np.int32)),
     r"out has shape \(2, 3\), expected \(2, 4\)"),
]


@pytest.mark.parametrize("call,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_shape_error(call, message):
    with pytest.raises(ShapeError, match=message):
        call()


def test_read_only_out():
    out = np.zeros((3, 3), np.int32)
    out.flags.writeable = False
    with pytest.raises(ShapeError, match="out is read-only"):
        K.binary_matmul_packed(pok, pok, 70, out=out)


def test_cpu_feature_report():
    """One report for every extension: the features the kernels test, consistent with the paths and (on
    Linux) with the flags the kernel lists in /proc/cpuinfo (cpuid masked by what the OS saves)."""
    from lowbit.kernels import _intlstm
    from lowbit.benchmarking import machine_record

    feats = K.cpu_features()
    known = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512vpopcntdq", "avx512vnni", "avx512bitalg",
             "avxvnni", "amx-tile", "amx-int8", "fma")
    assert isinstance(feats, tuple) and set(feats) <= set(known)
    assert list(feats) == [f for f in known if f in feats]  # a fixed order
    assert ("popcnt" in PATHS) == ("popcnt" in feats)
    assert ("avx2" in PATHS) == ({"popcnt", "avx2"} <= set(feats))
    assert ("avx512" in PATHS) == ({"popcnt", "avx2", "avx512f", "avx512vpopcntdq"} <= set(feats))
    assert ("avx512vnni" in PATHS) == ("avx512" in PATHS and {"avx512bw", "avx512vl", "avx512vnni"} <= set(feats))
    assert ("amx" in PATHS) == ("avx512vnni" in PATHS and {"amx-tile", "amx-int8"} <= set(feats))
    assert _intlstm.cpu_features() == _bitgemm.cpu_features() and _intlstm.path_names() == K.PATHS
    assert _intlstm.supported_paths() == PATHS and _intlstm.best_path() == _bitgemm.best_path()
    assert machine_record()["dispatch_flags"] == list(feats)
    try:
        flags_line = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        return
    linux = {"avx512vpopcntdq": "avx512_vpopcntdq", "avx512vnni": "avx512_vnni", "avx512bitalg": "avx512_bitalg",
             "avxvnni": "avx_vnni", "amx-tile": "amx_tile", "amx-int8": "amx_int8"}
    have = set(flags_line.split(":", 1)[1].split())
    assert set(feats) == {f for f in known if linux.get(f, f) in have}


def test_buffer_argument_errors_name_the_argument():
    """pybuf.h, shared by both bindings: wrong element type, read-only output and non-contiguous input raise
    errors that name the argument, and every buffer acquired before the error is released."""
    from lowbit.kernels import _intlstm

    path = dispatch.path_id("portable")
    out = np.zeros((3, 3), np.int32)
    with pytest.raises(TypeError, match="out must hold int32, got format 'l'"):
        _bitgemm.gemm(pok, pok, 70, np.zeros((3, 3), np.int64), path, 1)
    with pytest.raises(TypeError, match="b must hold 64-bit words"):
        _bitgemm.gemm(pok, pok.view(np.float64), 70, out, path, 1)
    ro = np.zeros((3, 3), np.int32)
    ro.flags.writeable = False
    with pytest.raises(BufferError, match="out is an output and must be writable"):
        _bitgemm.gemm(pok, pok, 70, ro, path, 1)
    with pytest.raises(ValueError, match="a must have contiguous rows"):
        _bitgemm.gemm(np.zeros((3, 4), np.uint64)[:, ::2], pok, 70, out, path, 1)
    with pytest.raises(TypeError, match="b must be an array"):
        _bitgemm.gemm(pok, [[1, 2]], 70, out, path, 1)

    a, w, bias, res = np.zeros((2, 5), np.int8), np.zeros((3, 16), np.int8), np.zeros(3, np.int32), np.zeros((2, 3), np.int32)
    _intlstm.gemm(a, w, bias, res, 2, 3, 5, path)
    with pytest.raises(TypeError, match="a must hold int8, got format 'f'"):
        _intlstm.gemm(a.astype(np.float32), w, bias, res, 2, 3, 5, path)
    with pytest.raises(TypeError, match="bias must hold int32"):
        _intlstm.gemm(a, w, bias.astype(np.int64), res, 2, 3, 5, path)
    res_ro = res.copy()
    res_ro.flags.writeable = False
    with pytest.raises(BufferError, match="out is an output and must be writable"):
        _intlstm.gemm(a, w, bias, res_ro, 2, 3, 5, path)
    with pytest.raises(ValueError, match="a must be C-contiguous"):
        _intlstm.gemm(np.zeros((2, 10), np.int8)[:, ::2], w, bias, res, 2, 3, 5, path)
    with pytest.raises(ValueError, match="out has 24 bytes, expected 36"):
        _intlstm.gemm(np.zeros((3, 5), np.int8), w, bias, res, 3, 3, 5, path)
    x16 = np.zeros(8, np.int16)
    with pytest.raises(BufferError, match="out is an output"):
        _intlstm.lut(np.zeros(4097, np.int32), x16, b"\0" * 16)
    with pytest.raises(TypeError, match="x must hold int32"):
        _intlstm.rescale(x16, 2**30, 0, np.zeros(8, np.int32))
    # the views taken before the failing argument are released (a memoryview with a live export cannot be)
    mv_a = memoryview(bytearray(10)).cast("b", (2, 5))
    mv_w = memoryview(bytearray(48)).cast("b", (3, 16))
    for bad_out in (res_ro, np.zeros((2, 3), np.float32), np.zeros((2, 6), np.int32)[:, ::2]):
        with pytest.raises((BufferError, TypeError, ValueError), match="out"):
            _intlstm.gemm(mv_a, mv_w, bias, bad_out, 2, 3, 5, path)
    mv_w.release()
    mv_a.release()
    mv_p = memoryview(bytearray(3 * 2 * 8)).cast("Q", (3, 2))
    with pytest.raises(BufferError, match="out"):
        _bitgemm.gemm(mv_p, mv_p, 70, ro, path, 1)
    mv_p.release()


def test_c_layer_is_defensive():
    """Called directly, past the Python checks, the extension raises instead of crashing."""
    out = np.zeros((3, 3), np.int32)
    path = dispatch.path_id("portable")
    with pytest.raises(ValueError, match="does not fit"):
        _bitgemm.gemm(pok, pok, 129, out, path, 1)
    with pytest.raises(ValueError, match="does not fit"):
        _bitgemm.gemm(pok, pok, -5, out, path, 1)
    with pytest.raises(ValueError, match="out has shape"):
        _bitgemm.gemm(pok, pok, 70, np.zeros((3, 2), np.int32), path, 1)
    with pytest.raises(ValueError, match="a has 2 words per row, b has 1"):
        _bitgemm.gemm(pok, pok[:, :1], 70, out, path, 1)
    with pytest.raises(ValueError, match="contiguous rows"):
        _bitgemm.gemm(np.zeros((3, 4), np.uint64)[:, ::2], pok, 70, out, path, 1)
    with pytest.raises(TypeError, match="64-bit words"):
        _bitgemm.gemm(pok.view(np.float64), pok, 70, out, path, 1)
    with pytest.raises(TypeError, match="int32"):
        _bitgemm.gemm(pok, pok, 70, np.zeros((3, 3), np.float32), path, 1)
    with pytest.raises(ValueError, match="2-D"):
        _bitgemm.gemm(pok[0], pok, 70, out, path, 1)
    with pytest.raises(ValueError, match="not available"):
        _bitgemm.gemm(pok, pok, 70, out, 99, 1)
    with pytest.raises(ValueError, match="nthreads"):
        _bitgemm.gemm(pok, pok, 70, out, path, 0)
    with pytest.raises(BufferError):  # read-only output buffer
        _bitgemm.gemm(pok, pok, 70, b"x" * 36, path, 1)
    with pytest.raises(ValueError, match="dst has shape"):
        _bitgemm.pack(ok, np.zeros((3, 1), np.uint64), True, 1)
    with pytest.raises(TypeError, match="unsupported element format"):
        _bitgemm.pack(ok.astype(np.float16), np.zeros((3, 2), np.uint64), True, 1)
    with pytest.raises(TypeError, match="unsupported element format"):
        _bitgemm.pack(ok.astype(">f4"), np.zeros((3, 2), np.uint64), True, 1)
    # prepared B and the threshold epilogue
    avx2 = dispatch.path_id("avx2") if "avx2" in PATHS else None
    if avx2 is not None:
        nbytes = _bitgemm.prepared_bytes(avx2, 3, 70)
        assert nbytes > 0
        raw = np.zeros(nbytes + 128, np.uint8)
        off = (-raw.ctypes.data) % 64
        good = raw[off:off + nbytes]
        _bitgemm.prepare(pok, 70, good, avx2, 1)
        _bitgemm.gemm_prepared(pok, pok, good, 70, out, avx2, 1)
        np.testing.assert_array_equal(out, K.binary_matmul_packed(pok, pok, 70))
        with pytest.raises(ValueError, match="prepared matrix needs"):
            _bitgemm.gemm_prepared(pok, pok, raw[off:off + nbytes - 64], 70, out, avx2, 1)
        with pytest.raises(ValueError, match="prepared matrix needs"):  # made for another B (n)
            _bitgemm.gemm_prepared(pok, np.vstack([pok, pok]), good, 70, np.zeros((3, 6), np.int32), avx2, 1)
        with pytest.raises(ValueError, match="64-byte aligned"):
            _bitgemm.gemm_prepared(pok, pok, raw[off + 8:off + 8 + nbytes], 70, out, avx2, 1)
        with pytest.raises(ValueError, match="prepared matrix needs"):
            _bitgemm.prepare(pok, 70, raw[off:off + nbytes + 64], avx2, 1)
        with pytest.raises(BufferError):  # read-only destination
            _bitgemm.prepare(pok, 70, bytes(nbytes), avx2, 1)
    with pytest.raises(ValueError, match="not available"):
        _bitgemm.gemm_prepared(pok, pok, np.zeros(0, np.uint8), 70, out, 99, 1)
    acc, one, zero = np.zeros((3, 70), np.int32), np.ones(70, np.int32), np.zeros(70, np.int32)
    bits = np.zeros((3, 2), np.uint64)
    _bitgemm.threshold_pack(acc, one, zero, 0, bits, path, 1)
    with pytest.raises(ValueError, match="sign must be a contiguous 1-D int32 array of length 70"):
        _bitgemm.threshold_pack(acc, one[:69], zero, 0, bits, path, 1)
    with pytest.raises(ValueError, match="thr must be a contiguous 1-D int32"):
        _bitgemm.threshold_pack(acc, one, zero.astype(np.int64), 0, bits, path, 1)
    with pytest.raises(ValueError, match="out has shape"):
        _bitgemm.threshold_pack(acc, one, zero, 0, np.zeros((3, 1), np.uint64), path, 1)
    with pytest.raises(TypeError, match="int32"):
        _bitgemm.threshold_pack(acc.astype(np.int64), one, zero, 0, bits, path, 1)
    with pytest.raises(ValueError, match="bias must fit int32"):
        _bitgemm.threshold_pack(acc, one, zero, 2**31, bits, path, 1)
    wp = K.prepare_u8_weights(np.ones((4, 70))).native
    x8 = np.ones((3, 70), np.uint8)
    c8 = np.zeros((3, 4), np.int32)
    _bitgemm.u8_gemm(x8, wp, 4, c8, path, 1)
    assert (c8 == 70).all()
    with pytest.raises(ValueError, match="prepared matrix needs"):  # panels for another n / k
        _bitgemm.u8_gemm(x8, wp, 40, np.zeros((3, 40), np.int32), path, 1)
    with pytest.raises(ValueError, match="prepared matrix needs"):
        _bitgemm.u8_gemm(np.ones((3, 200), np.uint8), wp, 4, c8, path, 1)
    with pytest.raises(TypeError, match="uint8"):
        _bitgemm.u8_gemm(x8.astype(np.int8), wp, 4, c8, path, 1)
    with pytest.raises(ValueError, match="contiguous rows"):
        _bitgemm.u8_gemm(np.ones((3, 140), np.uint8)[:, ::2], wp, 4, c8, path, 1)
    with pytest.raises(ValueError, match="out has shape"):
        _bitgemm.u8_gemm(x8, wp, 4, np.zeros((3, 5), np.int32), path, 1)
    with pytest.raises(TypeError, match="int8"):
        _bitgemm.u8_prepare(np.ones((4, 70), np.int16), np.zeros(wp.nbytes, np.uint8))
