"""Integer-only LSTM: fixed-point primitives, C kernel == NumPy reference bit for bit on every dispatch path,
calibration/export, torch-free loading, bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import check_integer_lm, run_without_torch, subprocess_env, tiny_phrase_lm
from lowbit.errors import CheckpointError, ConfigError, DataError, ShapeError
from lowbit.export.lstm import export_int_lstm, export_int_lstm_checkpoint
from lowbit.nn.recurrent import QuantGRU, QuantLSTM
from lowbit.runtime import int_lstm as il
from lowbit.runtime.int_lstm import load_int_lstm

PATHS = il.available_paths()
needs_ext = pytest.mark.skipif(not PATHS, reason=f"C extension not available: {il.extension_error()}")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- fixed point -------------------------------------------------------------------------------------------


def test_quantize_multiplier_and_rescale_round_correctly():
    rng = np.random.default_rng(0)
    for real in list(10.0 ** rng.uniform(-9, 3, 100)) + [0.5, 1.0, 2.0 ** -20, 2.0 ** 29]:
        m0, shift = il.quantize_multiplier(real)
        assert 2 ** 30 <= m0 < 2 ** 31 and -31 <= shift <= 30
        assert abs(m0 * 2.0 ** (shift - 31) / real - 1) < 2.0 ** -30
        x = rng.integers(-2 ** 31, 2 ** 31, 200)
        y = il.rescale(x, m0, shift)
        e = 31 - shift
        for xi, yi in zip(x.tolist(), y.tolist()):  # exact integer check: |y - x m0 / 2^e| <= 1/2
            exact2 = 2 * xi * m0  # 2^(e+1) times the exact value
            if abs(xi * m0) >= (2 ** 31 - 1) * 2 ** e:
                assert yi == (2 ** 31 - 1 if xi > 0 else -2 ** 31)  # saturated
            else:
                assert abs(yi * 2 ** (e + 1) - exact2) <= 2 ** e
    assert il.quantize_multiplier(1e-12) == (0, 0)
    assert il.rshift_round(np.array([5, -5, 6, -6, 7]), 1).tolist() == [3, -2, 3, -3, 4]  # ties up
    with pytest.raises(ConfigError):
        il.quantize_multiplier(0.0)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_table_activations_within_one_lsb_over_all_int16(name):
    """Bound tested: |out - f(x 2^-12) 2^15| <= 1 for every int16 x (Q3.12 in, Q0.15 out); <= 0.6 where f
    does not reach 1 (the table's own error), the rest is the saturation of +1.0 at 32767."""
    sig, th = il.standard_luts()
    table, f = (sig, il.sigmoid_f64) if name == "sigmoid" else (th, np.tanh)
    x = np.arange(-32768, 32768)
    out = il.lut_apply(table, x)
    ref = f(x * 2.0 ** -12) * 32768
    err = np.abs(out - ref)
    assert err.max() <= 1.0
    assert err[ref < 32767].max() <= 0.6
    assert out.min() >= -32768 and out.max() <= 32767


@pytest.mark.parametrize("cs", [0, 4, 9, 11, 12, 13, 15, 20, 25])
def test_cell_tanh_within_one_lsb(cs):
    x = np.arange(-32768, 32768)
    out = il.lut_apply(il.cell_lut(cs), il.cell_table_input(x, cs))
    assert np.abs(out - np.tanh(x * 2.0 ** -cs) * 32768).max() <= 1.0


# ---- C == NumPy, every path ----------------------------------------------------------------------------------


def _random_layer(rng, I, H):
    G = 4 * H
    qmul = np.zeros((4, G), np.int32)
    for r in (0, 2):
        for j in range(G):
            qmul[r, j], qmul[r + 1, j] = il.quantize_multiplier(10 ** rng.uniform(-2.5, 0.7))
    cs = int(rng.integers(4, 16))
    hm0, hsh = il.quantize_multiplier(2.0 ** -30 / rng.uniform(1 / 200, 1 / 60))
    arrays = dict(
        w_ih=rng.integers(-127, 128, (G, I), dtype=np.int8), w_hh=rng.integers(-127, 128, (G, H), dtype=np.int8),
        bias_x=rng.integers(-2 ** 22, 2 ** 22, G, dtype=np.int32), bias_h=rng.integers(-2 ** 22, 2 ** 22, G, dtype=np.int32),
        qmul=qmul, lut_cell=il.cell_lut(cs))
    scalars = dict(s_in=0.01, z_in=int(rng.integers(-128, 128)), s_h=0.01, z_h=int(rng.integers(-30, 30)),
                   cell_frac_bits=cs, hid_m0=hm0, hid_shift=hsh, cell_clip=int(rng.choice([0, 0, 12000])))
    return il.IntLSTMLayer(arrays, scalars)


@needs_ext
def test_kernel_equals_numpy_reference_bit_for_bit(kernel_path):
    path = kernel_path
    rng = np.random.default_rng(0)  # fixed: hash(str) changes per process, and a few seeds spread too little
    sig, th = il.standard_luts()
    k = il._Kernels("c")
    assert k.resolved_path == path
    shapes = [(1, 1, 1, 1), (0, 2, 3, 4), (1, 3, 16, 16), (2, 1, 17, 33)] + \
        [tuple(int(v) for v in rng.integers(1, 60, 4)) for _ in range(10)]
    seen, cells = set(), set()
    for T, B, I, H in shapes:
        layer = _random_layer(rng, I, H)
        x = rng.integers(-128, 128, (T, B, I), dtype=np.int8)
        h = rng.integers(-128, 128, (B, H), dtype=np.int8)
        c = rng.integers(-32768, 32768, (B, H), dtype=np.int16)
        ref = il.lstm_layer_reference(layer, x, h, c, sig, th)
        got = k.lstm_layer(layer, x, h, c, sig, th)
        for a, b, name in zip(ref, got, ("y", "h", "c")):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b), (path, (T, B, I, H), name)
        seen.update(np.unique(ref[0]).tolist())
        cells.update(np.unique(ref[2] // 256).tolist())
    assert len(seen) > 200 and len(cells) > 100  # the cases exercise a real spread of values
    # M past every register-tile edge (4 / 2 / 1 rows), K with whole and half 32-value steps
    for M, N, K in [(1, 1, 1), (1, 9, 33), (2, 4, 16), (5, 7, 31), (37, 130, 200), (3, 5, 47), (6, 13, 64),
                    (7, 4, 48)]:
        a = rng.integers(-128, 128, (M, K), dtype=np.int8)
        w = rng.integers(-128, 128, (N, K), dtype=np.int8)
        b = rng.integers(-10 ** 6, 10 ** 6, N, dtype=np.int32)
        assert np.array_equal(k.gemm(a, w, b), il.gemm_reference(a, w, b))


def _run_layer_ref(layer, T, B, rng, sig, th):
    x = rng.integers(-128, 128, (T, B, layer.input_size), dtype=np.int8)
    h = rng.integers(-128, 128, (B, layer.hidden_size), dtype=np.int8)
    c = rng.integers(-32768, 32768, (B, layer.hidden_size), dtype=np.int16)
    return (x, h, c), il.lstm_layer_reference(layer, x, h, c, sig, th)


def _layer_kwargs(layer):
    return dict(z_h=layer.z_h, cell_frac_bits=layer.cell_frac_bits, hid_m0=layer.hid_m0, hid_shift=layer.hid_shift,
                cell_clip=layer.cell_clip)


@needs_ext
def test_prepared_weights_gemm_equals_reference(kernel_path):
    """The panel GEMM (prepared weights: 16-row panels, u8 activations, effective bias) on every path: tiles
    of 1..4 rows and 1..4 panels, partial panels (N % 16), K of whole and partial 16-value steps, weights at
    -128, packed rows (k=), no bias, threads splitting the columns."""
    from lowbit.kernels import intlstm

    rng = np.random.default_rng(2)
    for M, N, K in [(1, 1, 1), (1, 16, 16), (1, 800, 200), (2, 17, 33), (3, 47, 5), (4, 64, 64), (5, 65, 100),
                    (9, 130, 47), (37, 200, 31), (6, 13, 655), (64, 130, 655), (256, 400, 655)]:
        a = rng.integers(-128, 128, (M, K), dtype=np.int8)
        w = rng.integers(-128, 128, (N, K), dtype=np.int8)
        w[0, :] = -128  # extremes: u = 255 against -128 in every product of a row
        a[0, :] = 127
        b = rng.integers(-2 ** 30, 2 ** 30, N, dtype=np.int32)
        want = il.gemm_reference(a, w, b)
        pw = intlstm.prepare_weights(w, b)
        assert pw.panels.ctypes.data % 64 == 0 and pw.panels.size == -(-N // 16) * 16 * -(-K // 16) * 16
        for threads in (1, 2, 3):
            assert np.array_equal(intlstm.gemm_prepared(a, pw, num_threads=threads), want), (kernel_path, M, N, K)
        if M * N * K > 6e7:  # threads split the columns in whole panels
            assert intlstm._ext.gemm_threads(M, N, K, 3) == 3
        assert np.array_equal(intlstm.gemm_prepared(a, intlstm.prepare_weights(il.pack_rows(w), b, k=K)), want)
        assert np.array_equal(intlstm.gemm_prepared(a, intlstm.prepare_weights(w)), il.gemm_reference(a, w, 0 * b))
        assert np.array_equal(il._Kernels("c").gemm(a, w, b, pw), want)
        assert np.array_equal(intlstm.gemm(a, il.pack_rows(w), b), want)  # the row kernels, kept
    with pytest.raises(ValueError, match="K=3"):
        intlstm.gemm_prepared(np.zeros((1, 3), np.int8), intlstm.prepare_weights(np.zeros((2, 4), np.int8)))
    with pytest.raises(TypeError, match="int8"):
        intlstm.prepare_weights(np.zeros((2, 4), np.int16))


@needs_ext
def test_layer_entry_points_and_threads_equal_reference(kernel_path):
    """lstm_layer (packed rows, prepared per call) and lstm_layer_prepared with 1..3 threads splitting the batch
    rows (evenly and not) give the reference's integers on every path."""
    from lowbit.kernels import intlstm

    rng = np.random.default_rng(3)
    sig, th = il.standard_luts()
    for T, B, I, H, threads in [(3, 1, 5, 7, 2), (4, 5, 33, 20, 3), (6, 4, 16, 24, 2)]:
        layer = _random_layer(rng, I, H)
        (x, h0, c0), ref = _run_layer_ref(layer, T, B, rng, sig, th)
        h, c, y = h0.copy(), c0.copy(), np.empty((T, B, H), np.int8)
        intlstm.lstm_layer(x, il.pack_rows(layer.w_ih), il.pack_rows(layer.w_hh), layer.bias_x, layer.bias_h,
                           layer.qmul, sig, th, layer.lut_cell, h, c, y, **_layer_kwargs(layer))
        assert all(np.array_equal(a, b) for a, b in zip(ref, (y, h, c))), (kernel_path, T, B, I, H)
        p_ih, p_hh = layer.prepared()
        for n in (1, threads):
            h, c, y = h0.copy(), c0.copy(), np.empty((T, B, H), np.int8)
            intlstm.lstm_layer_prepared(x, p_ih, p_hh, layer.qmul, sig, th, layer.lut_cell, h, c, y, num_threads=n,
                                        **_layer_kwargs(layer))
            assert all(np.array_equal(a, b) for a, b in zip(ref, (y, h, c))), (kernel_path, T, B, I, H, n)
    with pytest.raises(ValueError, match="do not fit"):
        intlstm.lstm_layer_prepared(x, p_hh, p_ih, layer.qmul, sig, th, layer.lut_cell, h, c, y,
                                    **_layer_kwargs(layer))
    # large enough that the driver starts threads: each takes whole batch rows, every step of them
    T, B, I, H = 80, 7, 96, 128
    layer = _random_layer(rng, I, H)
    assert intlstm.plan_threads(T, B, I, H, 1) == 1
    assert intlstm.plan_threads(T, B, I, H, 3) == 3 and intlstm.plan_threads(T, 1, I, H, 3) == 1
    assert intlstm.plan_threads(2, B, I, H, 3) == 1  # too little work
    (x, h0, c0), ref = _run_layer_ref(layer, T, B, rng, sig, th)
    p_ih, p_hh = layer.prepared()
    for n in (1, 2, 3):
        h, c, y = h0.copy(), c0.copy(), np.empty((T, B, H), np.int8)
        intlstm.lstm_layer_prepared(x, p_ih, p_hh, layer.qmul, sig, th, layer.lut_cell, h, c, y, num_threads=n,
                                    **_layer_kwargs(layer))
        assert all(np.array_equal(a, b) for a, b in zip(ref, (y, h, c))), (kernel_path, n)


@needs_ext
def test_kernel_primitives_equal_numpy(kernel_path):
    ext = il.extension()
    x = np.arange(-32768, 32768, dtype=np.int16)
    for table in (*il.standard_luts(), il.cell_lut(13)):
        out = np.empty_like(x)
        ext.lut(table, x, out)
        assert np.array_equal(out, il.lut_apply(table, x))
    rng = np.random.default_rng(1)
    v = rng.integers(-2 ** 31, 2 ** 31, 20000).astype(np.int32)
    for real in (3e-9, 0.003, 0.7, 1.0, 5.5, 1000.0):
        m0, sh = il.quantize_multiplier(real)
        out = np.empty_like(v)
        ext.rescale(v, m0, sh, out)
        assert np.array_equal(out, il.rescale(v, m0, sh))


@needs_ext
def test_path_selection_env_and_errors(monkeypatch):
    from lowbit.kernels import _intlstm, dispatch
    import lowbit.kernels as K

    ext = il.extension()
    monkeypatch.setitem(dispatch._state, "path", None)  # re-read LOWBIT_KERNEL_PATH, the one path setting
    monkeypatch.setenv("LOWBIT_KERNEL_PATH", "portable")
    assert ext.resolve_path("auto") == "portable" and il._Kernels("c").resolved_path == "portable"
    monkeypatch.setitem(dispatch._state, "path", None)
    monkeypatch.setenv("LOWBIT_KERNEL_PATH", "sse9")
    with pytest.raises(ConfigError, match="LOWBIT_KERNEL_PATH"):
        il._Kernels("c").resolved_path
    monkeypatch.setitem(dispatch._state, "path", None)
    monkeypatch.delenv("LOWBIT_KERNEL_PATH")
    assert ext.resolve_path("auto") == PATHS[-1] == K.active_path()
    k = il._Kernels("c")  # "auto" follows the setting at each call
    previous = K.set_kernel_path(PATHS[0])
    try:
        assert k.resolved_path == PATHS[0]
    finally:
        K.set_kernel_path(previous)
    with pytest.raises(ConfigError):
        il._Kernels("c", "neon")
    for p in set(K.PATHS) - set(PATHS):  # (none on a CPU that runs every path)
        with pytest.raises(ConfigError, match="not supported by this CPU"):
            il._Kernels("c", p)
    with pytest.raises(ValueError, match="bytes"):  # buffer sizes are checked in C
        _intlstm.gemm(np.zeros(3, np.int8), np.zeros(16, np.int8), np.zeros(1, np.int32), np.zeros(2, np.int32), 1, 1,
                      4, dispatch.path_id(PATHS[0]))
    with pytest.raises(ValueError, match="not available"):
        _intlstm.gemm(np.zeros(4, np.int8), np.zeros(16, np.int8), np.zeros(1, np.int32), np.zeros(1, np.int32), 1, 1,
                      4, 99)


@needs_ext
def test_legacy_path_variable_is_ignored_with_a_warning(monkeypatch):
    from lowbit.kernels import intlstm

    monkeypatch.setattr(intlstm, "_warned", [])
    monkeypatch.setenv("LOWBIT_INTLSTM_PATH", "portable")
    with pytest.warns(DeprecationWarning, match="LOWBIT_KERNEL_PATH"):
        assert intlstm.resolve_path() == il._Kernels("c").resolved_path


@needs_ext
def test_kernel_path_environment_in_a_fresh_process():
    env = subprocess_env(LOWBIT_KERNEL_PATH=PATHS[0])
    code = "from lowbit.runtime import int_lstm as il; print(il._Kernels('c').resolved_path)"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == PATHS[0], res.stderr


# ---- export ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 4])
def test_export_matches_float_model(tmp_path, bits):
    model, stream = tiny_phrase_lm("lstm", bits)  # (conftest) 2 x 32 units, 100 steps on repeated phrases
    path = tmp_path / "lm.lbt"
    m = export_int_lstm(model, stream[:2000], path, max_batches=4, batch_size=4, bptt=20)
    assert load_int_lstm(path).kind == "int_lstm"
    check_integer_lm(model, stream, m, path, rel_tol=0.03)


def test_export_bare_lstm_run_float(tmp_path):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(12, 20, num_layers=2)
    x = torch.randn(30, 3, 12)
    m = export_int_lstm(lstm, [x[:15], x[15:]], tmp_path / "bare.lbt")
    y, state = load_int_lstm(tmp_path / "bare.lbt").run_float(x.numpy())
    with torch.no_grad():
        ref = lstm(x)[0].numpy()
    assert y.shape == ref.shape and np.abs(y - ref).max() < 0.05
    assert len(state) == 2 and state[0][0].dtype == np.int8 and state[0][1].dtype == np.int16
    with pytest.raises(ConfigError, match="no decoder|no embedding"):
        m.log_probs(np.zeros((2, 1), np.int64))


def test_bad_input(tmp_path):
    model, stream = tiny_phrase_lm("lstm", 32)
    path = tmp_path / "lm.lbt"
    m = export_int_lstm(model, stream[:500], path, max_batches=2, batch_size=4)
    with pytest.raises(DataError, match="token id 40 is outside the vocabulary"):
        m.log_probs(np.array([[1], [40]]))
    with pytest.raises(DataError, match="token id -3"):
        m.run_ids(np.array([[-3]]))
    with pytest.raises(DataError, match="integers"):
        m.run_ids(np.array([[1.5]]))
    good = m.init_state(2)
    with pytest.raises(ShapeError, match=r"hidden state h of layer 0 has shape \(3, 32\), expected \(2, 32\)"):
        m.run_ids(np.zeros((4, 2), np.int64), [(np.zeros((3, 32), np.int8), good[0][1]), good[1]])
    with pytest.raises(ShapeError, match="dtype"):
        m.run_ids(np.zeros((4, 2), np.int64), [(good[0][0].astype(np.int16), good[0][1]), good[1]])
    with pytest.raises(ShapeError, match="list of 2"):
        m.run_ids(np.zeros((4, 2), np.int64), good[:1])
    with pytest.raises(ShapeError):
        m.run_quantized(np.zeros((4, 2, 7), np.int8))
    with pytest.raises(ConfigError, match="GRU|LSTM layers only"):
        export_int_lstm(QuantGRU(4, 4), [torch.randn(3, 1, 4)], None)
    with pytest.raises(ConfigError, match="unidirectional"):
        export_int_lstm(QuantLSTM(4, 4, bidirectional=True), [torch.randn(3, 1, 4)], None)
    with pytest.raises(DataError, match="outside the vocabulary"):
        export_int_lstm(model, np.array([1, 2, 99, 3] * 20), None, batch_size=2)
    # files: wrong kind, truncated, corrupt
    from lowbit.runtime.modelfile import save_model_file

    other = tmp_path / "other.lbt"
    save_model_file(other, "binary_mlp", {}, {"w": np.zeros(3, np.int8)})
    with pytest.raises(CheckpointError, match="not an integer LSTM"):
        load_int_lstm(other)
    blob = path.read_bytes()
    (tmp_path / "cut.lbt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError):
        load_int_lstm(tmp_path / "cut.lbt")
    with pytest.raises(ConfigError):
        load_int_lstm(path, backend="gpu")


def test_checkpoint_export_with_vocabulary_and_text(tmp_path):
    """A checkpoint of 'lowbit train' (task lm) exports with its vocabulary; text is encoded by the file's
    vocabulary and unknown characters are refused."""
    from lowbit.train.config import TrainConfig
    from lowbit.models.lm import LM_SETTINGS
    from lowbit.train import run

    text = "to be or not to be that is the question\n" * 200
    (tmp_path / "t.txt").write_text(text)
    cfg = TrainConfig(recipe="t", dataset="text", model="rnn_lm", task="lm", loss="cross_entropy",
                      model_args=dict(vocab_size=0, cell="lstm", emb_size=8, hidden_size=16, num_layers=1,
                                      **{**LM_SETTINGS, "level": "char", "text_file": str(tmp_path / "t.txt"), "bptt": 20}),
                      epochs=1, batch_size=8, eval_batch_size=8, lr_start=1e-2, lr_end=1e-2, lr_scale=False)
    run(cfg, tmp_path / "run", progress=False)
    m = export_int_lstm(tmp_path / "run" / "checkpoint.pt", tmp_path / "t.txt", tmp_path / "c.lbt", max_batches=2)
    assert m.vocab.level == "char" and m.meta["source"]["recipe"] == "t"
    ids = m.encode("to be or not")
    assert ids.tolist() == m.vocab.encode(list("to be or not")).tolist()
    assert m.perplexity(m.encode_file(tmp_path / "t.txt")[:500], batch_size=2, bptt=20)["bpc"] < 3.0
    with pytest.raises(DataError, match="characters are not in the model's vocabulary"):
        m.encode("xyz")
    # what 'lowbit export' calls for task "lm", and the torch-free text scorer
    report = export_int_lstm_checkpoint(tmp_path / "run" / "checkpoint.pt", tmp_path / "e.lbt", batches=2)
    assert report["kind"] == "int_lstm" and report["bytes"] == (tmp_path / "e.lbt").stat().st_size
    assert report["ratio"] > 0  # (tiny model: the activation tables, 16 KiB each, dominate the file)
    # 'lowbit eval' scores the model file on the split its training used (torch-free), and the checkpoint too
    from lowbit.cli import main as cli_main

    assert cli_main(["eval", str(tmp_path / "e.lbt"), "--batch-size", "2"]) == 0
    assert cli_main(["eval", str(tmp_path / "run" / "checkpoint.pt")]) == 0
    (tmp_path / "t.txt").write_text("XYZ\n" * 50)  # the data changed under the model: refused by name
    assert cli_main(["eval", str(tmp_path / "e.lbt")]) == 2


def test_runtime_does_not_import_torch(tmp_path):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 8)
    export_int_lstm(lstm, [torch.randn(10, 2, 6)], tmp_path / "m.lbt")
    r = run_without_torch("import numpy as np\nfrom lowbit.runtime.int_lstm import load_int_lstm\n"
                          f"m = load_int_lstm({str(tmp_path / 'm.lbt')!r})\n"
                          "y, _ = m.run_float(np.zeros((3, 1, 6), np.float32))\nprint(m.backend)\n")
    assert r.stdout.strip() in ("numpy", *(f"c/{p}" for p in PATHS))
