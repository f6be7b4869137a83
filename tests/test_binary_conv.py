"""The native binary convolution (lowbit.kernels.binary_conv2d): bit-exact against a NumPy reference (im2col
with +1 padding and a +-1 matmul in int64) on every kernel path this CPU runs, the fused threshold against
threshold(int32 result), the errors, and its use by the runtime's Conv2d / Layer."""
import pickle

import numpy as np
import pytest

import lowbit.kernels as K
from lowbit.errors import ShapeError


@pytest.fixture()
def path(kernel_path):  # conftest's kernel_path: every path this CPU runs, forced and restored
    return kernel_path


# ---- the reference ----------------------------------------------------------------------------------------
def pack_channels(pm: np.ndarray, garbage_rng=None) -> np.ndarray:
    """(..., C) +-1 values -> (..., ceil(C/64)) uint64 words (bit 1 = -1), independently of lowbit's packer.
    With garbage_rng, the pad bits past C are random instead of 0."""
    *lead, c = pm.shape
    words = (c + 63) // 64
    bits = np.zeros((*lead, words * 64), dtype=bool)
    bits[..., :c] = pm < 0
    if garbage_rng is not None and c % 64:
        bits[..., c:] = garbage_rng.random((*lead, words * 64 - c)) < 0.5
    return np.packbits(bits, axis=-1, bitorder="little").view(np.uint64).reshape(*lead, words)


def reference_conv(x: np.ndarray, w: np.ndarray, stride, padding) -> np.ndarray:
    """x (N, H, W, C), w (O, kh, kw, C) of +-1 -> int64 (N, OH, OW, O): im2col padded with +1, then a matmul."""
    (sh, sw), (ph, pw) = stride, padding
    n, h, wd, c = x.shape
    o, kh, kw, _ = w.shape
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=1).astype(np.int64)
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=np.int64)
    for dy in range(kh):
        for dx in range(kw):
            cols[:, :, :, dy, dx] = xp[:, dy:dy + sh * (oh - 1) + 1:sh, dx:dx + sw * (ow - 1) + 1:sw]
    return (cols.reshape(n * oh * ow, -1) @ w.reshape(o, -1).T.astype(np.int64)).reshape(n, oh, ow, o)


def reference_threshold(acc: np.ndarray, sign, thr, pad_bits) -> np.ndarray:
    """bit j = sign[j] * (acc - pad_bits) < thr[j] in wrapping int32, packed like pack_channels."""
    a = (acc.astype(np.int64) - pad_bits).astype(np.int32)  # wraps (int64 -> int32 keeps the low 32 bits)
    a = np.where(np.asarray(sign) < 0, (-a.astype(np.int64)).astype(np.int32), a)
    return pack_channels(np.where(a < np.asarray(thr, dtype=np.int32), -1, 1))


def pm1(rng, *shape):
    return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)


def thresholds(rng, o, k):
    sign = np.where(rng.random(o) < 0.3, -1, 1).astype(np.int32)
    thr = rng.integers(-k // 3 - 2, k // 3 + 3, o).astype(np.int32)
    return sign, thr


# (batch, H, W, C, out, kh, kw, stride, padding)
SHAPES = [
    (1, 7, 9, 64, 32, 3, 3, 1, 1),      # one word per pixel, one channel group
    (2, 8, 5, 100, 70, 3, 3, 2, 1),     # C and out not multiples of 64, stride 2, batch > 1
    (1, 6, 6, 130, 33, 5, 5, 1, 2),     # 3 words per pixel, kernel 5, padding 2
    (1, 5, 5, 1, 5, 1, 1, 1, 0),        # kernel 1, one channel
    (3, 9, 7, 64, 256, 3, 3, 1, 1),     # full 256-channel layer, odd sizes
    (1, 11, 10, 200, 65, 3, 3, 2, 0),   # stride 2, no padding, out just past one word
    (1, 4, 4, 256, 130, 5, 5, 1, 2),    # 100 words per patch: > 31 steps (AVX2 byte counters), 5 groups
    (2, 9, 13, 3, 64, 3, 5, (2, 1), (0, 2)),  # non-square kernel, stride, padding
    (1, 3, 3, 64, 16, 5, 5, 1, 1),      # a kernel wider than the image (padding makes it fit)
    (1, 2, 17, 96, 40, 1, 3, (1, 3), (1, 1)),  # stride along W only
    (5, 5, 5, 64, 7, 3, 3, 2, 2),       # fewer outputs than a tile row, big padding
]


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bit_exact_on_every_path(path, shape):
    n, h, w, c, o, kh, kw, stride, padding = shape
    rng = np.random.default_rng(hash(shape) % 2**32)
    x, wt = pm1(rng, n, h, w, c), pm1(rng, o, kh, kw, c)
    ref = reference_conv(x, wt, _pair(stride), _pair(padding))
    # pad bits of activations and weights carry garbage: in_channels=c must ignore them
    xw, ww = pack_channels(x, rng), pack_channels(wt, rng)
    prepared = K.prepare_conv_weights(ww, in_channels=c)
    for threads in (1, 2):
        got = K.binary_conv2d(xw, prepared, kh, kw, stride, padding, num_threads=threads)
        assert got.dtype == np.int32 and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
    # the fused threshold = threshold(int32 result), as threshold_pack computes it and as the reference does
    sign, thr = thresholds(rng, o, kh * kw * c)
    for pad_bits in (0, 7, -3):
        bits = K.binary_conv2d(xw, prepared, kh, kw, stride, padding, thresholds=(sign, thr), pad_bits=pad_bits)
        assert bits.dtype == np.uint64 and bits.shape == (*ref.shape[:3], (o + 63) // 64)
        np.testing.assert_array_equal(bits, reference_threshold(ref, sign, thr, pad_bits))
        by_pass = K.threshold_pack(ref.reshape(-1, o).astype(np.int32), sign, thr, pad_bits)
        np.testing.assert_array_equal(bits.reshape(-1, bits.shape[-1]), by_pass)


@pytest.mark.parametrize("c,kernel,padding", [(64, 3, 1), (70, 3, 1), (256, 3, 1), (130, 1, 0)])
def test_every_bit_counts_by_default(path, c, kernel, padding):
    """in_channels defaults to 64 * words: zero pad bits in activations and weights then add
    kernel^2 * (64 * words - C) to every output (the runtime's pad_bits convention, its old im2col GEMM's)."""
    rng = np.random.default_rng(c)
    x, wt = pm1(rng, 2, 6, 7, c), pm1(rng, 24, kernel, kernel, c)
    ref = reference_conv(x, wt, (1, 1), (padding, padding))
    words = (c + 63) // 64
    got = K.binary_conv2d(pack_channels(x), K.prepare_conv_weights(pack_channels(wt)), padding=padding)
    np.testing.assert_array_equal(got, ref + kernel * kernel * (64 * words - c))
    # the same as the runtime's old path: im2col on the words, padded with zero words, then the binary GEMM
    from lowbit.runtime.ops import im2col
    patches = im2col(pack_channels(x), kernel, kernel, 1, 1, padding, padding, 0)
    gemm = K.binary_matmul_packed(patches.reshape(-1, patches.shape[-1]),
                                  pack_channels(wt).reshape(24, -1), patches.shape[-1] * 64)
    np.testing.assert_array_equal(got.reshape(-1, 24), gemm)


def test_saturating_sums_and_extreme_thresholds(path):
    """All outputs at -K or +K, int32 extremes for thresholds and pad_bits (wrapping like threshold_pack)."""
    o, c = 40, 256
    x = np.full((1, 5, 6, c), -1, np.int8)
    wt = np.ones((o, 3, 3, c), np.int8)
    wt[::2] = -1
    ref = reference_conv(x, wt, (1, 1), (0, 0))
    assert ref.min() == -9 * c and ref.max() == 9 * c
    prepared = K.prepare_conv_weights(pack_channels(wt))
    np.testing.assert_array_equal(K.binary_conv2d(pack_channels(x), prepared), ref)
    rng = np.random.default_rng(0)
    sign = np.where(rng.random(o) < 0.5, -1, 1).astype(np.int32)
    thr = rng.choice(np.array([-2**31, 2**31 - 1, 0, -9 * c, 9 * c + 1], np.int32), o)
    k = 9 * c
    # the kernels compare the popcount itself while K - 2 pop - pad_bits cannot leave int32, else the wrapped
    # int32 value: both sides of that boundary, with thresholds everywhere in int32
    for pad_bits in (0, 2**31 - 1, -2**31, k - 2**31 + 1, k - 2**31, 2**31 - k - 1, 2**31 - k, 2**31 - k - 2):
        for t in (thr, rng.integers(-2**31, 2**31, o).astype(np.int32),
                  (np.int64(k) - pad_bits + rng.integers(-3, 4, o)).clip(-2**31, 2**31 - 1).astype(np.int32)):
            bits = K.binary_conv2d(pack_channels(x), prepared, thresholds=(sign, t), pad_bits=pad_bits)
            np.testing.assert_array_equal(bits, reference_threshold(ref, sign, t, pad_bits))


def test_threshold_near_every_output_value(path):
    """Thresholds at, just below and just above the actual outputs, both signs, odd and even K."""
    rng = np.random.default_rng(11)
    for c, o in ((64, 40), (65, 70), (3, 33)):
        x, wt = pm1(rng, 2, 5, 6, c), pm1(rng, o, 3, 3, c)
        ref = reference_conv(x, wt, (1, 1), (1, 1))
        prepared = K.prepare_conv_weights(pack_channels(wt), in_channels=c)
        sign = np.where(rng.random(o) < 0.5, -1, 1).astype(np.int32)
        for pad_bits in (0, 1, -2, 5):
            centre = ref[0, 2, 3] - pad_bits  # the value of one output pixel, per channel
            for delta in (-1, 0, 1):
                t = (sign * centre + delta).astype(np.int32)
                bits = K.binary_conv2d(pack_channels(x), prepared, padding=1, thresholds=(sign, t), pad_bits=pad_bits)
                np.testing.assert_array_equal(bits, reference_threshold(ref, sign, t, pad_bits))


def test_raw_weights_int64_views_and_non_contiguous_input(path):
    rng = np.random.default_rng(5)
    x, wt = pm1(rng, 2, 8, 8, 80), pm1(rng, 20, 3, 3, 80)
    ref = reference_conv(x, wt, (1, 1), (1, 1))
    xw = pack_channels(x)
    got = K.binary_conv2d(xw.view(np.int64), pack_channels(wt), padding=1, in_channels=80)
    np.testing.assert_array_equal(got, ref)
    # a strided view (every other column of a wider map) is copied, not misread
    wide = np.zeros((2, 8, 16, 2), np.uint64)
    wide[:, :, ::2] = xw
    prepared = K.prepare_conv_weights(pack_channels(wt).reshape(20, -1), 3, 3, in_channels=80)
    np.testing.assert_array_equal(K.binary_conv2d(wide[:, :, ::2], prepared, padding=1), ref)


def test_empty_batch_and_threads(path):
    rng = np.random.default_rng(9)
    prepared = K.prepare_conv_weights(pack_channels(pm1(rng, 8, 3, 3, 64)))
    assert K.binary_conv2d(np.zeros((0, 5, 5, 1), np.uint64), prepared, padding=1).shape == (0, 5, 5, 8)
    assert K.binary_conv2d(np.zeros((0, 5, 5, 1), np.uint64), prepared,
                           thresholds=(np.ones(8, np.int32), np.zeros(8, np.int32))).shape == (0, 3, 3, 1)
    assert K.conv_planned_threads(1, 56, 56, 256, 36, num_threads=2) == 2
    assert K.conv_planned_threads(1, 2, 2, 8, 1, num_threads=8) == 1
    assert K.conv_output_size(56, 56, 3, 1, 1) == (56, 56) and K.conv_output_size(7, 9, (3, 1), 2, (0, 1)) == (3, 6)


def test_prepared_weights_follow_the_path_and_pickle():
    rng = np.random.default_rng(2)
    x, wt = pm1(rng, 1, 6, 6, 70), pm1(rng, 33, 3, 3, 70)
    ref = reference_conv(x, wt, (1, 1), (1, 1))
    prepared = K.prepare_conv_weights(pack_channels(wt, rng), in_channels=70)
    previous = K.active_path()
    try:
        for p in K.available_paths():  # prepared for one path, used on every other one
            K.set_kernel_path(p)
            np.testing.assert_array_equal(K.binary_conv2d(pack_channels(x, rng), prepared, padding=1), ref)
            assert prepared.path == p
    finally:
        K.set_kernel_path(previous)
    again = pickle.loads(pickle.dumps(prepared))
    assert (again.out_channels, again.kh, again.kw, again.words, again.in_channels, again.k) == (33, 3, 3, 2, 70, 630)
    np.testing.assert_array_equal(K.binary_conv2d(pack_channels(x), again, padding=1), ref)
    assert "PreparedConvWeights(out=33" in repr(again) and again.nbytes > again.packed.nbytes


def test_errors():
    rng = np.random.default_rng(3)
    w = pack_channels(pm1(rng, 8, 3, 3, 100))  # (8, 3, 3, 2)
    prepared = K.prepare_conv_weights(w, in_channels=100)
    x = pack_channels(pm1(rng, 1, 6, 6, 100))  # (1, 6, 6, 2)
    cases = [
        (lambda: K.binary_conv2d(x.astype(np.float32), prepared), "dtype float32"),
        (lambda: K.binary_conv2d(x.astype(np.uint32), prepared), "packed bits must be uint64"),
        (lambda: K.binary_conv2d(x[0], prepared), "must be a 4-D array (N, H, W, words)"),
        (lambda: K.binary_conv2d(x[..., :1], prepared), "x has 1 word(s) per pixel (64 channel bits) but the weights have 2"),
        (lambda: K.binary_conv2d(x, prepared, 3, 5), "kw=5 does not match the weights, whose kernel is (3, 3)"),
        (lambda: K.binary_conv2d(x, prepared, stride=0), "stride must be >= 1"),
        (lambda: K.binary_conv2d(x, prepared, stride=(1, 2, 3)), "stride must be an integer or a pair"),
        (lambda: K.binary_conv2d(x, prepared, stride=1.5), "stride must be an integer or a pair"),
        (lambda: K.binary_conv2d(x, prepared, padding=-1), "padding must be >= 0"),
        (lambda: K.binary_conv2d(x[:, :2], prepared), "smaller than the 3x3 kernel"),
        (lambda: K.binary_conv2d(x, prepared, in_channels=99), "in_channels=99 does not match the prepared weights"),
        (lambda: K.binary_conv2d(x, prepared, thresholds=np.zeros(8)), "thresholds must be a pair"),
        (lambda: K.binary_conv2d(x, prepared, thresholds=(np.ones(7), np.zeros(8))), "sign must be a 1-D array of 8"),
        (lambda: K.binary_conv2d(x, prepared, thresholds=(np.full(8, 2), np.zeros(8, int))), "sign must hold only +1/-1"),
        (lambda: K.binary_conv2d(x, prepared, thresholds=(np.ones(8, int), np.zeros(8))), "dtype float64; expected an integer"),
        (lambda: K.binary_conv2d(x, prepared, thresholds=(np.ones(8, int), np.full(8, 2**40))), "outside the int32 range"),
        (lambda: K.binary_conv2d(x, prepared, pad_bits=3), "pad_bits is for the fused threshold"),
        (lambda: K.binary_conv2d(x, prepared, thresholds=(np.ones(8, int), np.zeros(8, int)), pad_bits=2**31),
         "pad_bits=2147483648 does not fit int32"),
        (lambda: K.binary_conv2d(x, w[:, :, :, 0]), "weights must be PreparedConvWeights or a 4-D array"),
        (lambda: K.binary_conv2d(x, w.astype(np.int32)), "weights has dtype int32"),
        (lambda: K.prepare_conv_weights(w, in_channels=64), "in_channels=64 does not fill the weights' 2 word(s)"),
        (lambda: K.prepare_conv_weights(w, in_channels=129), "need 65..128"),
        (lambda: K.prepare_conv_weights(w.reshape(8, -1)), "2-D weights (out, kh*kw*words) need kh and kw"),
        (lambda: K.prepare_conv_weights(w.reshape(8, -1), 2, 2), "not a multiple of kh*kw = 4"),
        (lambda: K.prepare_conv_weights(w, 1, 3), "kh=1 does not match the weights, whose kernel is (3, 3)"),
        (lambda: K.prepare_conv_weights(np.zeros((0, 3, 3, 1), np.uint64)), "must be >= 1"),
    ]
    for call, message in cases:
        with pytest.raises(ShapeError) as info:
            call()
        assert message in str(info.value), (message, str(info.value))


def test_kernels_package_exports():
    for name in ("binary_conv2d", "prepare_conv_weights", "PreparedConvWeights", "conv_output_size",
                 "conv_planned_threads"):
        assert name in K.__all__ and hasattr(K, name)


# ---- the runtime ------------------------------------------------------------------------------------------
def _exported(model, input_shape, **kw):
    from lowbit.export.image import export_model
    from lowbit.runtime.engine import BinaryNetwork

    meta, arrays = export_model(model, input_shape, 10, **kw)
    return BinaryNetwork(meta, arrays)


def _randomize_bn(model, seed):
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 20 + 1)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.5)


@pytest.mark.parametrize("cin,pool", [(64, False), (70, False), (130, True)])
def test_runtime_conv_layers_native_equal_im2col_and_torch(path, cin, pool):
    """An exported binary conv stack (with and without max-pool between conv and BN: the int32 variant) gives
    the same bits through the native convolution (fused threshold), through the old im2col path, and in torch."""
    import torch
    from torch import nn

    from lowbit.nn.layers import QuantAct, QuantConv2d
    from lowbit.runtime.ops import Conv2d

    torch.manual_seed(cin)
    layers = []
    for i, (a, b) in enumerate([(cin, 70), (70, 64), (64, 40)]):
        layers += [QuantConv2d(a, b, 3, stride=2 if i == 1 else 1, padding=1, bias=False, pad_value=1.0)]
        if pool and i == 0:
            layers += [nn.MaxPool2d(2)]
        layers += [nn.BatchNorm2d(b), QuantAct()]
    model = nn.Sequential(*layers)
    _randomize_bn(model, cin)
    model.eval()
    net = _exported(model, (cin, 12, 11), binary_input=True, output="bits")
    convs = [layer.reduction for layer in net.layers]
    assert all(isinstance(r, Conv2d) and r.fuses_threshold for r in convs)
    x = torch.where(torch.randn(3, cin, 12, 11) >= 0, 1.0, -1.0)
    with torch.no_grad():
        ref = model(x).numpy()
    native = net.predict(x.numpy())
    for r in convs:
        r.use_native = False
    old = net.predict(x.numpy())
    np.testing.assert_array_equal(native, old)
    np.testing.assert_array_equal(native, ref)
    # the int32 accumulators of each layer agree too (what a max-pool or a float epilogue reads)
    h = K.pack_signs(np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1)).reshape(-1, cin)).reshape(3, 12, 11, -1)
    for layer, r in zip(net.layers, convs):
        r.use_native = True
        acc_native = r.run(K, h)
        r.use_native = False
        np.testing.assert_array_equal(acc_native, r.run(K, h))
        r.use_native = True
        h = layer.run(K, h)


def test_output_bits_unpack_to_pm1_floats():
    """The runtime's bits output (predict of a network exported with output="bits"): +-1 float32, NCHW."""
    from lowbit.runtime.engine import BinaryNetwork

    rng = np.random.default_rng(4)

    class Net:
        pass

    for shape, n_out in [((1, 6, 5, 4), 256), ((3, 5, 5, 2), 70), ((7, 2), 100), ((2, 1), 1), ((0, 3), 130)]:
        h = rng.integers(0, 2**63, shape, dtype=np.uint64)
        minus = np.unpackbits(h.view(np.uint8), axis=-1, bitorder="little")[..., :n_out].astype(np.float32)
        ref = 1 - 2 * minus
        ref = ref.transpose(0, 3, 1, 2) if ref.ndim == 4 else ref
        net = Net()
        net.ops = [{("out_features" if len(shape) == 2 else "out_channels"): n_out}]
        got = BinaryNetwork._unpack_output(net, h)
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)


def test_concurrent_callers_share_the_worker_pool(run_in_threads):
    """Calls from several Python threads at once (the GIL is released): one holds the persistent workers, the
    others run on threads of their own; every result exact."""
    rng = np.random.default_rng(21)
    cases = []
    for i in range(4):
        x, wt = pm1(rng, 1, 12, 10, 64 * (i % 2 + 1)), pm1(rng, 48, 3, 3, 64 * (i % 2 + 1))
        cases.append((pack_channels(x), K.prepare_conv_weights(pack_channels(wt)),
                      reference_conv(x, wt, (1, 1), (1, 1))))

    def work(i):
        xw, prepared, ref = cases[i]
        for _ in range(25):
            np.testing.assert_array_equal(K.binary_conv2d(xw, prepared, padding=1, num_threads=2), ref)

    run_in_threads(work)


def test_fork_after_the_pool_started():
    """A forked child (multiprocessing's default on Linux) has none of the parent's worker threads: the pool
    starts again there instead of waiting for workers that do not exist."""
    import os

    if not hasattr(os, "fork"):
        pytest.skip("no fork on this OS")
    rng = np.random.default_rng(22)
    x, wt = pm1(rng, 2, 20, 20, 64), pm1(rng, 64, 3, 3, 64)
    xw, prepared = pack_channels(x), K.prepare_conv_weights(pack_channels(wt))
    ref = reference_conv(x, wt, (1, 1), (1, 1))
    np.testing.assert_array_equal(K.binary_conv2d(xw, prepared, padding=1, num_threads=2), ref)  # pool started
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 if exact, 1 if not (never returns into pytest)
        ok = False
        try:
            ok = np.array_equal(K.binary_conv2d(xw, prepared, padding=1, num_threads=2), ref)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    np.testing.assert_array_equal(K.binary_conv2d(xw, prepared, padding=1, num_threads=2), ref)
