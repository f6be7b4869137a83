"""Tests of the Triton kernels (lowbit.kernels.gpu): bit-exact against NumPy int64 products, packing
layout, the SWAR popcount, the float baseline GEMM, and input validation.

They run through Triton's interpreter on CPU tensors. ``triton.jit`` decides between interpreter and
compiler when a function is decorated, triton's own library included, so ``TRITON_INTERPRET=1`` must be
set before triton is first imported (and stay set while it runs): this module sets it to import triton
and the kernels, restores the environment, sets it again while its tests run, and afterwards drops the
interpreter-mode triton modules from ``sys.modules`` so that a later import in the same process gets
the compiler again. (If something
imported triton in compiler mode before this module, the module skips: run it on its own.)

The compiled kernels are checked in subprocesses: ahead-of-time compilation to PTX for sm_90 (no GPU
needed, only triton's CUDA backend) and, where CUDA is available, real runs on the GPU.
"""
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import lowbit


def _triton_mode():
    """None if triton is not imported yet, else "interpreter" / "compiler" by how its library was built."""
    if "triton" not in sys.modules:
        return None
    import triton.language.standard as std

    return "interpreter" if type(std.sigmoid).__name__ == "InterpretedFunction" else "compiler"


_MODE_BEFORE = _triton_mode()
if _MODE_BEFORE == "compiler":
    pytest.skip(
        "triton was imported in compiler mode before this module; its interpreter tests need "
        "TRITON_INTERPRET=1 before the first import of triton (run this file on its own)",
        allow_module_level=True,
    )
_ENV_BEFORE = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton", reason="triton is not installed (pip install 'lowbit[gpu]')")
    import torch

    from lowbit.errors import ShapeError
    from lowbit.kernels import gpu
    from lowbit.kernels import pack_bits as cpu_pack_bits
    from lowbit.kernels.levels import LEVEL_SETS

    gpu._k()  # import the kernels now, in interpreter mode
finally:
    if _ENV_BEFORE is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _ENV_BEFORE

SRC = str(Path(lowbit.__file__).resolve().parents[1])  # where the imported lowbit (and its build) lives


@pytest.fixture(scope="module", autouse=True)
def _interpreter_mode():
    """TRITON_INTERPRET=1 while this module's tests run (triton also reads it lazily, e.g. when it first
    specializes arguments); afterwards the environment is restored and, if this module was the first to
    import triton, the interpreter-mode triton is forgotten (its Python modules, not the loaded C
    extension) with the kernels built on it, so a later import starts afresh in compiler mode. The old
    modules stay in sys.modules under other names ("_interpreted_triton..."), finalized in order at exit
    (dropped outright, nanobind reports leaked objects at exit)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    if old is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = old
    if _MODE_BEFORE is None:
        for name in [n for n in sys.modules if n == "triton" or n.startswith("triton.")]:
            if not _is_extension(name):
                sys.modules["_interpreted_" + name] = sys.modules.pop(name)
        sys.modules.pop("lowbit.kernels._triton_kernels", None)
        import lowbit.kernels

        vars(lowbit.kernels).pop("_triton_kernels", None)
        gpu._kernels = None


def _is_extension(name: str) -> bool:
    return name == "triton._C" or name.startswith("triton._C.")


# ---------------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------------
def ref_matmul(a, b) -> np.ndarray:
    return np.asarray(a, dtype=np.int64) @ np.asarray(b, dtype=np.int64).T


def ref_pack32(bits: np.ndarray) -> np.ndarray:
    """bit j%32 of word j//32 = bits[:, j]; int32 words."""
    rows, k = bits.shape
    w = (k + 31) // 32
    padded = np.zeros((rows, 32 * w), dtype=bool)
    padded[:, :k] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u4").astype(np.uint32).view(np.int32).reshape(rows, w)


def pm1(rng, shape, dtype=torch.int8) -> torch.Tensor:
    return torch.from_numpy(rng.choice(np.array([-1, 1], dtype=np.int8), size=shape)).to(dtype)


def level_values(rng, name, shape) -> torch.Tensor:
    vals = LEVEL_SETS[name].values
    return torch.from_numpy(vals[rng.integers(0, len(vals), size=shape)])


def test_interpreter_mode():
    assert gpu.available() and gpu.interpreted()


# ---------------------------------------------------------------------------------------------------
# popcount and packing
# ---------------------------------------------------------------------------------------------------
def test_popcount_swar():
    rng = np.random.default_rng(0)
    words = np.concatenate([
        np.array([0, 1, -1, -2**31, 2**31 - 1, 0x55555555, -0x55555556, 0x0F0F0F0F], dtype=np.int32),
        rng.integers(-2**31, 2**31, size=300, dtype=np.int64).astype(np.int32),
    ])
    got = gpu.popcount(torch.from_numpy(words)).numpy()
    want = np.array([bin(int(w) & 0xFFFFFFFF).count("1") for w in words])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("rows,k", [(1, 1), (3, 31), (5, 32), (2, 33), (17, 100), (4, 300)])
def test_pack_bits_layout(rows, k):
    rng = np.random.default_rng(rows * 1000 + k)
    x = pm1(rng, (rows, k), torch.float32)
    got = gpu.pack_bits(x)
    assert got.dtype == torch.int32 and got.shape == (rows, (k + 31) // 32)
    np.testing.assert_array_equal(got.numpy(), ref_pack32(x.numpy() < 0))
    # the CPU packer's uint64 rows, viewed as uint32, are the same rows (when the word count is even)
    if ((k + 31) // 32) % 2 == 0:
        np.testing.assert_array_equal(cpu_pack_bits(x.numpy()).view(np.int32), got.numpy())


def test_pack_signs_zero_nan_and_strides():
    x = torch.tensor([[0.0, -0.0, float("nan"), -1e-30, 2.0, -3.0] * 7])  # 1 x 42
    got = gpu.pack_signs(x).numpy()
    np.testing.assert_array_equal(got, ref_pack32(np.array([[False, False, False, True, False, True] * 7])))
    big = torch.randn(40, 70)
    view = big.t()[:, ::2]  # (70, 20), non-contiguous both ways
    np.testing.assert_array_equal(gpu.pack_signs(view).numpy(), ref_pack32(view.numpy() < 0))


@pytest.mark.parametrize("name", ["binary", "ternary", "u2", "s3", "o2", "u4", "o4", "s4"])
def test_pack_levels_planes_and_rowsums(name):
    rng = np.random.default_rng(len(name))
    ls = LEVEL_SETS[name]
    x = level_values(rng, name, (6, 45))
    p = gpu.pack_levels(x, name)
    codes = ls.codes(x.numpy()).astype(np.int64)
    assert p.planes.shape == (ls.bits, 6, 2) and p.k == 45 and p.levels is ls
    for plane in range(ls.bits):
        np.testing.assert_array_equal(p.planes[plane].numpy(), ref_pack32((codes >> plane) & 1 == 1))
    np.testing.assert_array_equal(p.rowsum.numpy(), codes.sum(1))


# ---------------------------------------------------------------------------------------------------
# binary products
# ---------------------------------------------------------------------------------------------------
SHAPES = [(1, 1, 1), (1, 5, 31), (3, 1, 33), (7, 9, 64), (18, 17, 100), (5, 3, 257)]


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_binary_matmul_exact(m, n, k):
    rng = np.random.default_rng(m * 100 + n * 10 + k)
    a = pm1(rng, (m, k))
    b = pm1(rng, (n, k), torch.float32)
    got = gpu.binary_matmul(a, b)
    assert got.dtype == torch.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got.numpy(), ref_matmul(a.numpy(), b.numpy()))


@pytest.mark.parametrize("m,n,k", [(1, 5, 31), (6, 4, 100)])
def test_binary_naive_kernel_exact(m, n, k):
    rng = np.random.default_rng(k)
    a, b = pm1(rng, (m, k)), pm1(rng, (n, k))
    got = gpu.binary_matmul_naive(gpu.pack_bits(a), gpu.pack_bits(b), k)
    np.testing.assert_array_equal(got.numpy(), ref_matmul(a.numpy(), b.numpy()))


@pytest.mark.parametrize("block", [gpu.Block(16, 16, 1, 1), gpu.Block(16, 32, 4, 2), gpu.Block(32, 16, 2, 4)])
def test_binary_blocks_and_dtypes(block):
    rng = np.random.default_rng(7)
    a = pm1(rng, (20, 70), torch.int16)
    b = pm1(rng, (18, 70), torch.float64).t().contiguous().t()  # column-major view
    got = gpu.binary_matmul(a, b, block=block)
    np.testing.assert_array_equal(got.numpy(), ref_matmul(a.numpy(), b.numpy()))


def test_binary_packed_ignores_pad_bits_and_extra_words():
    rng = np.random.default_rng(3)
    k = 45
    a, b = pm1(rng, (6, k)), pm1(rng, (4, k))
    pa, pb = gpu.pack_bits(a), gpu.pack_bits(b)
    junk = torch.from_numpy(rng.integers(-2**31, 2**31, size=(6, 3), dtype=np.int64).astype(np.int32))
    pa_dirty = torch.cat([pa, junk[:, :1]], 1)  # 3 words for K=45
    pa_dirty[:, 1] |= junk[:, 1] & ~((1 << (k - 32)) - 1)  # garbage above bit 13 of word 1
    pb_wide = torch.cat([pb, torch.full((4, 1), -1, dtype=torch.int32)], 1)
    got = gpu.binary_matmul_packed(pa_dirty, pb_wide, k)
    np.testing.assert_array_equal(got.numpy(), ref_matmul(a.numpy(), b.numpy()))
    # CPU-packed operands (uint64 rows viewed as int32) multiply the same
    cpa = torch.from_numpy(cpu_pack_bits(a.numpy()).view(np.int32).copy())
    cpb = torch.from_numpy(cpu_pack_bits(b.numpy()).view(np.int32).copy())
    np.testing.assert_array_equal(gpu.binary_matmul_packed(cpa, cpb, k).numpy(), ref_matmul(a.numpy(), b.numpy()))


def test_empty_shapes():
    assert gpu.binary_matmul(torch.ones(0, 5), torch.ones(3, 5)).shape == (0, 3)
    assert gpu.binary_matmul(torch.ones(2, 0), torch.ones(3, 0)).eq(0).all()
    assert gpu.quant_matmul(torch.zeros(2, 0), torch.zeros(3, 0), "u2", "s2").eq(0).all()


# ---------------------------------------------------------------------------------------------------
# k-bit products
# ---------------------------------------------------------------------------------------------------
PAIRS = [
    ("binary", "binary"), ("o2", "u2"), ("binary", "u2"), ("ternary", "u4"), ("o4", "u4"), ("s4", "u3"),
    ("u1", "s2"), ("o3", "ternary"), ("u4", "o1"), ("s2", "s4"),
]


@pytest.mark.parametrize("la,lb", PAIRS)
@pytest.mark.parametrize("m,n,k", [(1, 6, 45), (9, 1, 70), (13, 11, 96)])
def test_quant_matmul_exact(la, lb, m, n, k):
    rng = np.random.default_rng(zlib.crc32(f"{la} {lb} {m} {n} {k}".encode()))
    a, b = level_values(rng, la, (m, k)), level_values(rng, lb, (n, k))
    got = gpu.quant_matmul(a.to(torch.int8), b.to(torch.float32), la, lb)
    assert got.dtype == torch.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got.numpy(), ref_matmul(a.numpy(), b.numpy()))


def test_quant_matmul_packed_reuses_weights_and_blocks():
    rng = np.random.default_rng(11)
    w = level_values(rng, "o2", (10, 77))
    pw = gpu.pack_levels(w, "o2")
    for m, block in ((3, None), (20, gpu.Block(16, 16, 1, 2))):
        x = level_values(rng, "u2", (m, 77)).to(torch.uint8)
        got = gpu.quant_matmul_packed(gpu.pack_levels(x, "u2"), pw, block=block)
        np.testing.assert_array_equal(got.numpy(), ref_matmul(x.numpy(), w.numpy()))


@pytest.mark.parametrize("la,lb", [("u8", "s8"), ("s6", "binary"), ("u5", "o4")])
def test_quant_matmul_wide_sets(la, lb):
    rng = np.random.default_rng(5)
    a, b = level_values(rng, la, (20, 40)), level_values(rng, lb, (16, 40))
    assert gpu.wide_path(la, lb, 20, 16, 40, "cpu") == "int64 matmul"
    assert gpu.wide_path(la, lb, 20, 16, 40, "cuda") == "torch._int_mm"
    assert gpu.wide_path(la, lb, 16, 16, 40, "cuda") == "float64 matmul"
    assert gpu.wide_path("u4", "o4", 20, 16, 40, "cuda") == "bit-serial"
    want = ref_matmul(a.numpy(), b.numpy())
    np.testing.assert_array_equal(gpu.quant_matmul(a, b, la, lb).numpy(), want)
    # the int8-shift fold that the CUDA torch._int_mm path uses (torch._int_mm runs on the CPU too)
    got = gpu._int8_matmul(a, b, LEVEL_SETS[la], LEVEL_SETS[lb])
    np.testing.assert_array_equal(got.numpy(), want)


# ---------------------------------------------------------------------------------------------------
# float baseline GEMM
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,n,k", [(1, 7, 5), (19, 23, 50)])
def test_float_matmul(dtype, m, n, k):
    g = torch.Generator().manual_seed(m + n + k)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(n, k, generator=g).to(dtype)
    got = gpu.float_matmul(a, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, a.float() @ b.float().t(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------
def test_bad_binary_inputs():
    ok = torch.ones(2, 8)
    with pytest.raises(ShapeError, match=r"only \+1/-1 values; found 0.5 at \[1, 3\]"):
        gpu.binary_matmul(ok, torch.tensor([[1.0] * 8, [1, 1, 1, 0.5, 1, 1, 1, 1]]))
    with pytest.raises(ShapeError, match="K=8 columns but b has K=9"):
        gpu.binary_matmul(ok, torch.ones(2, 9))
    with pytest.raises(ShapeError, match="2-D"):
        gpu.binary_matmul(torch.ones(8), ok)
    with pytest.raises(ShapeError, match="dtype torch.bool"):
        gpu.binary_matmul(torch.ones(2, 8, dtype=torch.bool), ok)
    with pytest.raises(ShapeError, match="dtype torch.uint8"):
        gpu.pack_bits(torch.ones(2, 8, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="torch tensor"):
        gpu.binary_matmul(np.ones((2, 8)), ok)
    with pytest.raises(ShapeError, match="meta"):
        gpu.binary_matmul(torch.ones(2, 8, device="meta"), ok)
    with pytest.raises(ShapeError, match="int32"):
        gpu.binary_matmul_packed(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 1, dtype=torch.int32), 8)
    with pytest.raises(ShapeError, match="words per row"):
        gpu.binary_matmul_packed(torch.zeros(2, 1, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.int32), 8)
    with pytest.raises(ShapeError, match="k=33 does not fit"):
        gpu.binary_matmul_packed(torch.zeros(2, 1, dtype=torch.int32), torch.zeros(2, 1, dtype=torch.int32), 33)
    with pytest.raises(ShapeError, match="power of two"):
        gpu.binary_matmul(ok, ok, block=gpu.Block(24, 16, 1))


def test_bad_level_inputs():
    a = torch.tensor([[1, 3, -1, -3]])
    with pytest.raises(ShapeError, match=r"a\[0, 2\] = 2 is not in level set 'o2'"):
        gpu.quant_matmul(torch.tensor([[1, 3, 2, -3]]), a, "o2", "o2")
    with pytest.raises(ShapeError, match=r"b\[0, 1\] = 1.5 is not in level set 'u2'"):
        gpu.quant_matmul(a, torch.tensor([[0.0, 1.5, 2.0, 3.0]]), "o2", "u2")
    with pytest.raises(ShapeError, match=r"= nan is not in level set"):
        gpu.quant_matmul(a, torch.tensor([[0.0, 1.0, float("nan"), 3.0]]), "o2", "u2")
    with pytest.raises(ShapeError, match=r"= 4 is not in level set 'u2'"):
        gpu.quant_matmul(a, torch.tensor([[0, 1, 4, 3]]), "o2", "u2")
    with pytest.raises(ShapeError, match="unknown level set 'u9'"):
        gpu.quant_matmul(a, a, "o2", "u9")
    with pytest.raises(ShapeError, match="K=4 columns but b has K=3"):
        gpu.quant_matmul(a, a[:, :3], "o2", "o2")
    with pytest.raises(ShapeError, match="can reach"):
        gpu.quant_matmul(torch.zeros(1, 140000, dtype=torch.int8), torch.zeros(1, 140000, dtype=torch.int8), "s8", "s8")
    with pytest.raises(ShapeError, match="1-4 bits"):
        gpu.pack_levels(a, "u5")
    with pytest.raises(ShapeError, match="same K"):
        gpu.quant_matmul_packed(gpu.pack_levels(a, "o2"), gpu.pack_levels(a[:, :3], "o2"))
    with pytest.raises(ShapeError, match="PackedLevels"):
        gpu.quant_matmul_packed(a, gpu.pack_levels(a, "o2"))
    with pytest.raises(ShapeError, match="float_matmul takes"):
        gpu.float_matmul(torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3))


# ---------------------------------------------------------------------------------------------------
# compiled kernels (subprocesses without TRITON_INTERPRET)
# ---------------------------------------------------------------------------------------------------
def _run_compiled(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def _has_cuda_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


@pytest.mark.skipif(not _has_cuda_backend(), reason="triton has no CUDA backend to compile for")
def test_ptx_uses_popc_sm90_ahead_of_time():
    """The SWAR count must become PTX popc (LLVM's idiom recognition); no GPU needed to compile."""
    code = (
        "import json\nfrom lowbit.kernels import gpu\n"
        "print(json.dumps(gpu.ptx_report(capability=(9, 0), compile_all=True)))\n"
    )
    r = _run_compiled(code)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["target"] == "sm_90"
    for name in ("xnor_gemm_kernel", "xnor_naive_kernel", "bitserial_gemm_kernel", "popcount_kernel"):
        assert report[name]["popc"] > 0, (name, report)
    assert report["also_compiled"] == ["pack_kernel", "pack_kernel", "float_gemm_kernel"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")
def test_compiled_kernels_on_cuda():
    code = r"""
import torch
from lowbit.kernels import gpu
assert not gpu.interpreted()
g = torch.Generator(device="cuda").manual_seed(0)
for m, n, k in [(1, 5, 31), (100, 4096, 784), (130, 70, 1000), (64, 10, 4096)]:
    a = torch.randint(0, 2, (m, k), device="cuda", generator=g, dtype=torch.int8) * 2 - 1
    b = torch.randint(0, 2, (n, k), device="cuda", generator=g, dtype=torch.int8) * 2 - 1
    want = (a.double() @ b.double().t()).to(torch.int32)
    assert torch.equal(gpu.binary_matmul(a, b), want), (m, n, k)
    assert torch.equal(gpu.binary_matmul_naive(gpu.pack_bits(a), gpu.pack_bits(b), k), want)
    for la, lb in [("o2", "u2"), ("ternary", "u4"), ("s4", "u3"), ("u8", "s8")]:
        from lowbit.kernels.levels import LEVEL_SETS
        va = torch.tensor(LEVEL_SETS[la].values, device="cuda")
        vb = torch.tensor(LEVEL_SETS[lb].values, device="cuda")
        x = va[torch.randint(0, len(va), (m, k), device="cuda", generator=g)]
        y = vb[torch.randint(0, len(vb), (n, k), device="cuda", generator=g)]
        want = (x.double() @ y.double().t()).to(torch.int32)
        assert torch.equal(gpu.quant_matmul(x, y, la, lb), want), (la, lb, m, n, k)
    assert torch.equal(gpu.float_matmul(a.float(), b.float()), (a.double() @ b.double().t()).float())
print("ok")
"""
    r = _run_compiled(code, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
