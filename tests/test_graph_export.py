"""The graph exporter + runtime (lowbit.export.graph, lowbit.runtime.graph) against PyTorch eval.

Every check compares the runtime's logits with the PyTorch model's on the same 8-bit images: integer parts
must be exact, so the logits agree to float32 rounding (relative 1e-5) and the predicted classes are
identical. Batch-norm statistics are randomized (trained-looking, with some negative scales) so every
threshold and flip path is exercised.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.errors import CheckpointError
from lowbit.export import export_model
from lowbit.export.graph import build_graph, quantizer_levels, thresholds
from lowbit.models import build_model
from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear
from lowbit.runtime import load, load_model_file, save_model_file
from lowbit.train.config import apply_overrides, get_recipe

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    """Each test draws the same latent weights whatever ran before it (float layers may meet a near-tie
    for some draws, where float32 summation order decides a code; these draws have none)."""
    torch.manual_seed(1234)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "running_mean") and m.running_mean is not None:
            c = m.running_mean.numel()
            m.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 8)
            m.running_var.copy_(torch.rand(c, generator=g) * 8 + 0.5)
            if m.affine:
                m.weight.data.copy_((torch.rand(c, generator=g) - 0.3) * 2)  # ~15% negative scales
                m.bias.data.copy_((torch.rand(c, generator=g) - 0.5))
        if type(m).__name__ == "PACT":
            m.alpha.data.fill_(2.5)
    return model.eval()


def roundtrip(model, shape, tmp_path, n=16, seed=0, name="m.lbt"):
    model = randomize(model, seed)
    x = torch.randint(0, 256, (n,) + tuple(shape), generator=torch.Generator().manual_seed(seed + 1)).float()
    report = export_model(model, x[:1], tmp_path / name)
    net = load(tmp_path / name)
    with torch.no_grad():
        ref = model(x).numpy()
    out = net.predict(x.numpy().astype(np.uint8))
    assert out.shape == ref.shape and out.dtype == np.float32
    scale = np.abs(ref).max() + 1e-6
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * scale)
    np.testing.assert_array_equal(out.argmax(1), ref.argmax(1))
    return report, net


# ---- per op kind --------------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self, *mods, forward=None):
        super().__init__()
        self.m = nn.ModuleList(mods)
        self._forward = forward

    def forward(self, x):
        for m in self.m:
            x = m(x)
        return x


def seq(*mods):
    return nn.Sequential(*mods)


def test_dense_binary_runs_on_xnor_and_first_layer_on_pixels(tmp_path):
    model = seq(nn.Flatten(), QuantLinear(64, 70, bias=False, pixel_input=True), nn.BatchNorm1d(70), QuantAct(),
                QuantLinear(70, 10, bias=False), nn.BatchNorm1d(10))
    report, net = roundtrip(model, (1, 8, 8), tmp_path)
    assert "xnor" in report["layers"][-1] and "u8 x binary" in report["layers"][1]


@pytest.mark.parametrize("wq,aq", [("linear:bits=2", "linear:bits=2"), ("linear:bits=3", "linear:bits=4"),
                                   ("linear:bits=6", "linear:bits=6"), ("sawb:bits=2", "pact:bits=2,alpha=2.0"),
                                   ("log:bits=3", "log:bits=3"), ("log:bits=4", "log:bits=4"),
                                   ("ste_sign", "linear:bits=2,mode=unsigned"), ("linear:bits=2", "identity")])
def test_kbit_dense_and_conv_match_pytorch(tmp_path, wq, aq):
    model = build_model("convnet", in_shape=(1, 12, 12), channels=[8, "M", 16], fc=[24], weight_quantizer=wq,
                        act_quantizer=aq, init="glorot")
    # spread the latent weights so every weight level occurs
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (QuantConv2d, QuantLinear)):
                m.weight.uniform_(-1, 1)
    roundtrip(model, (1, 12, 12), tmp_path)


def test_shift_bn_and_negative_scales(tmp_path):
    model = build_model("convnet", in_shape=(3, 10, 10), channels=[8, "M", 8], fc=[16], norm="shift_bn")
    roundtrip(model, (3, 10, 10), tmp_path, seed=3)


def test_zero_padded_binary_conv_with_bias_and_larq_order(tmp_path):
    """conv -> BN -> sign -> pool (Larq's order), zero padding of a binary conv (border correction), bias."""
    model = seq(QuantConv2d(2, 8, 3, padding=1, bias=True, pixel_input=True, pad_value=-1.0), nn.BatchNorm2d(8),
                QuantAct(), nn.MaxPool2d(2),
                QuantConv2d(8, 70, 3, padding=1, bias=True, pad_value=0.0), nn.BatchNorm2d(70), QuantAct(),
                nn.MaxPool2d(2), nn.Flatten(), QuantLinear(70 * 4, 10, bias=False), nn.BatchNorm1d(10))
    report, _ = roundtrip(model, (2, 9, 9), tmp_path)
    kinds = [line.split()[0] for line in report["layers"]]
    assert kinds.count("maxpool") == 2  # pooling the +-1 codes (packed bits: a bitwise AND)


def test_symmetric_kbit_input_with_zero_padding(tmp_path):
    """2-bit symmetric codes have no zero: zero padding needs the exact border map."""
    model = seq(QuantConv2d(1, 8, 3, padding=1, bias=False, pixel_input=True, pad_value=-1.0), nn.BatchNorm2d(8),
                QuantAct("linear:bits=2"), QuantConv2d(8, 8, 3, stride=2, padding=2, bias=False, pad_value=0.0),
                nn.BatchNorm2d(8), QuantAct("linear:bits=2"), nn.Flatten(), QuantLinear(8 * 6 * 6, 10, bias=False),
                nn.BatchNorm1d(10))
    roundtrip(model, (1, 9, 9), tmp_path)


class BiRealBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.act = QuantAct("ste_sign")
        self.conv = QuantConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, pad_value=1.0)
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else seq(
            nn.AvgPool2d(2), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.bn(self.conv(self.act(x))) + self.shortcut(x)


class BiReal(nn.Module):
    """A binary residual network written as a user would: real-valued shortcuts, a plain forward."""

    def __init__(self):
        super().__init__()
        self.stem = QuantConv2d(1, 16, 3, padding=1, bias=False, pixel_input=True, pad_value=-1.0)
        self.bn = nn.BatchNorm2d(16)
        self.blocks = seq(BiRealBlock(16, 16, 1), BiRealBlock(16, 32, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.blocks(self.bn(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_binary_residual_network_with_real_shortcuts(tmp_path):
    report, _ = roundtrip(BiReal(), (1, 12, 12), tmp_path)
    kinds = [line.split()[0] for line in report["layers"]]
    assert "add" in kinds and "global_avgpool" in kinds and "avgpool" in kinds
    assert sum("xnor" in line for line in report["layers"]) == 2


def test_binary_conv_stack_runs_the_native_conv_on_every_path(tmp_path, kernel_path, monkeypatch):
    """Binary convs with +1 padding run kernels.binary_conv2d (no im2col), with the next layer's sign
    threshold fused when nothing comes between, the int32 variant before a max-pool; same logits as PyTorch."""
    import lowbit.kernels as K

    calls = []
    real = K.binary_conv2d

    def counting(*args, **kwargs):
        calls.append(kwargs.get("thresholds") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(K, "binary_conv2d", counting)
    model = seq(QuantConv2d(3, 70, 3, padding=1, bias=False, pixel_input=True, pad_value=-1.0), nn.BatchNorm2d(70),
                QuantAct(), QuantConv2d(70, 130, 3, stride=2, padding=1, bias=False, pad_value=1.0),
                nn.BatchNorm2d(130), QuantAct(), QuantConv2d(130, 64, 3, padding=1, bias=False, pad_value=1.0),
                nn.MaxPool2d(2), nn.BatchNorm2d(64), QuantAct(), nn.Flatten(),
                QuantLinear(64 * 3 * 3, 10, bias=False), nn.BatchNorm1d(10))
    roundtrip(model, (3, 13, 13), tmp_path, n=5)
    assert sorted(calls) == [False, True]  # the pooled conv on int32, the strided one fused


class PlainW2A2(nn.Module):
    """A W2A2 PACT+SAWB ConvNet in plain PyTorch style: float input scaling, ReLU before PACT, x.view."""

    def __init__(self):
        super().__init__()
        self.c1 = QuantConv2d(1, 8, 3, padding=1, bias=False, weight_quantizer="sawb:bits=2")
        self.b1 = nn.BatchNorm2d(8)
        self.a1 = QuantAct("pact:bits=2,alpha=2.0")
        self.c2 = QuantConv2d(8, 8, 3, padding=1, bias=False, weight_quantizer="sawb:bits=2")
        self.b2 = nn.BatchNorm2d(8)
        self.a2 = QuantAct("pact:bits=2,alpha=2.0")
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 5 * 5, 10)

    def forward(self, x):
        x = x / 255.0
        x = self.a1(torch.relu(self.b1(self.c1(x))))
        x = self.pool(self.a2(self.b2(self.c2(x))))
        return self.fc(x.view(x.size(0), -1))


def test_plain_pytorch_w2a2_pact_sawb_convnet(tmp_path):
    report, _ = roundtrip(PlainW2A2(), (1, 10, 10), tmp_path)
    assert any("u2 x o2" in line or "u2 x binary" in line for line in report["layers"])
    assert not any(line.startswith("clamp") for line in report["layers"])  # the ReLU folded into PACT


def test_quantizer_levels_match_the_quantizer_on_a_dense_grid():
    from lowbit.quant.base import get_quantizer

    for spec in ("ste_sign", "linear:bits=3", "linear:bits=2,mode=unsigned", "pact:bits=2,alpha=1.7", "log:bits=4"):
        q = get_quantizer(spec).eval()
        lv = quantizer_levels(q, spec)
        x = torch.linspace(-3, 3, 200001)
        with torch.no_grad():
            y = q(x).double().numpy()
        codes = (x.double().numpy()[:, None] >= lv.boundaries[None, :]).sum(1)
        np.testing.assert_allclose(lv.table[codes] * lv.unit, y, rtol=1e-6, atol=0)


def test_thresholds_by_hand():
    # z = 2 acc + 1; code >= 1 iff z >= 0.5 -> acc >= -0.25 -> acc >= 0; z >= 4 -> acc >= 1.5 -> 2
    t, s = thresholds(np.array([2.0]), np.array([1.0]), np.array([0.5, 4.0]))
    assert t.tolist() == [[0, 2]] and s.tolist() == [1]
    # negative slope: -2 acc + 1 >= 0.5 iff acc <= 0.25 -> acc <= 0
    t, s = thresholds(np.array([-2.0]), np.array([1.0]), np.array([0.5]))
    assert t.tolist() == [[0]] and s.tolist() == [-1]
    # zero slope: constant output, saturated thresholds
    t, _ = thresholds(np.array([0.0, 0.0]), np.array([1.0, -1.0]), np.array([0.0]))
    assert t[0, 0] < -2**30 and t[1, 0] > 2**30


# ---- recipes --------------------------------------------------------------------------------------------------

TINY = {
    "mnist-mlp": ["model.hidden=48"], "mnist-mlp-qnn": ["model.hidden=48"],
    "mnist-cnn": ["model.channels=8,M,16,M", "model.fc=32"], "mnist-cnn-qnn": ["model.channels=8,M,16,M", "model.fc=32"],
    "cifar10-cnn": ["model.channels=8,8,M,16,M", "model.fc=32"], "svhn-cnn": ["model.channels=8,8,M,16,M", "model.fc=32"],
}
GRID = [(1, 1), (1, 2), (2, 2), (3, 3), (4, 4), (6, 6), (32, 32)]


def _spec(bits):
    return {1: "ste_sign", 32: "identity"}.get(bits, f"linear:bits={bits}")


RECIPE_CASES = [(r, []) for r in ("mnist-mlp", "mnist-cnn", "cifar10-cnn", "svhn-cnn")]
for _r in ("mnist-mlp-qnn", "mnist-cnn-qnn"):
    RECIPE_CASES += [(_r, [f"model.weight_quantizer={_spec(w)}", f"model.act_quantizer={_spec(a)}"]) for w, a in GRID]
    RECIPE_CASES += [(_r, ["model.weight_quantizer=sawb:bits=2", "model.act_quantizer=pact:bits=2,alpha=3.0"]),
                     (_r, ["model.weight_quantizer=log:bits=4", "model.act_quantizer=log:bits=3"]),
                     (_r, ["model.norm=shift_bn"]), (_r, ["model.grad_quantizer=grad:bits=6",
                                                          "model.weight_quantizer=linear:bits=4",
                                                          "model.act_quantizer=linear:bits=4"])]


@pytest.mark.parametrize("recipe,sets", RECIPE_CASES, ids=[f"{r}[{','.join(s)}]" for r, s in RECIPE_CASES])
def test_recipe_variant_exports_exactly(tmp_path, recipe, sets):
    cfg = apply_overrides(get_recipe(recipe), TINY[recipe] + sets)
    model = build_model(cfg.model, **cfg.model_args)
    roundtrip(model, cfg.model_args["in_shape"], tmp_path, n=8)


def test_imagenet_recipes_export_exactly(tmp_path):
    cfg = get_recipe("imagenet-alexnet")
    args = dict(cfg.model_args, num_classes=10, widths=[8, 8, 16, 8, 8], fc=[16, 16])
    roundtrip(build_model(cfg.model, **args), (3, 224, 224), tmp_path, n=2, name="alex.lbt")
    cfg = get_recipe("imagenet-resnet18-pact-sawb")
    args = dict(cfg.model_args, num_classes=10, widths=[8, 16], blocks=[1, 1])
    report, _ = roundtrip(build_model(cfg.model, **args), (3, 64, 64), tmp_path, n=2, name="res.lbt")
    assert sum("u2 x o2" in line for line in report["layers"]) == 4


def test_float_convs_on_codes_read_the_codes(tmp_path):
    """decode -> affine -> float conv (a first layer on pixels) and decode -> float conv (a real-valued shortcut
    conv on k-bit codes) run from the 8-bit codes: the float conv reads the same float32 values, bit for bit,
    as the ops it replaces make (on every code value and at the padded edges), so its output equals the float
    kernel's on the unfused ops' padded output bit for bit."""
    from lowbit.runtime.graph import AffineNode, Decode, Gemm

    cfg = get_recipe("imagenet-resnet18-pact-sawb")
    args = dict(cfg.model_args, num_classes=10, widths=[8, 16], blocks=[1, 1])
    _, graph = roundtrip(build_model(cfg.model, **args), (3, 64, 64), tmp_path, n=2, name="res.lbt")
    k = graph._k
    fused = [n for n in graph.nodes if isinstance(n, Gemm) and n.codes_input is not None]
    first = [g for g in fused if g.codes_input[2] is not None]
    shortcut = [g for g in fused if g.codes_input[2] is None]
    assert len(first) == 1 and "decode + affine in one pass" in first[0].describe()
    assert len(shortcut) == 1 and "decode in one pass" in shortcut[0].describe()  # the one strided 1x1 shortcut
    rng = np.random.default_rng(3)
    for g in fused:
        tables, decode, affine = g.codes_input
        assert decode not in graph.nodes and affine not in graph.nodes
        assert not any(isinstance(n, (Decode, AffineNode)) and n.output in g.inputs for n in graph.nodes)
        c, ncodes = decode.channels, len(decode.table)
        x = rng.integers(0, ncodes, (2, 16, 16, c)).astype(np.uint8)
        x.reshape(-1)[:ncodes] = np.arange(ncodes)  # every code
        y = decode.run(k, x)
        y = y if affine is None else affine.run(k, y)
        ref = k.float_conv2d(k.pad_map(y, g.padding, g.pad_fill), g.state, g.kernel, g.stride)
        got = g.reduce(k, x)
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
        # a code the decode table lacks: the replaced ops' own error, as before
        decode.table = decode.table[:ncodes - 1]
        with pytest.raises(IndexError):
            g.reduce(k, x)


def test_residual_add_and_quantizer_run_as_one_pass(tmp_path, monkeypatch):
    """[decode ->] add -> quantize of each residual block (an identity shortcut on k-bit codes, and a conv
    shortcut's float sum) runs as one fused node: the same codes, bit for bit, as the three / two ops it
    replaces, and a code the decode table lacks still raises their error."""
    from lowbit.runtime.graph import Add, AddQuantize, GraphNetwork, Quantize

    cfg = get_recipe("imagenet-resnet18-pact-sawb")
    args = dict(cfg.model_args, num_classes=10, widths=[8, 16], blocks=[2, 1])
    _, graph = roundtrip(build_model(cfg.model, **args), (3, 64, 64), tmp_path, n=2, name="res.lbt")
    fused = [n for n in graph.nodes if isinstance(n, AddQuantize)]
    assert len(fused) == 3 and not any(isinstance(n, (Add, Quantize)) for n in graph.nodes)
    assert sum(f.decode is not None for f in fused) == 2  # the identity shortcuts; the strided block adds floats
    assert all("add + " in f.describe() for f in fused)
    monkeypatch.setattr(GraphNetwork, "_fuse_residual_adds", lambda self: None)
    plain = load(tmp_path / "res.lbt")
    assert not any(isinstance(n, AddQuantize) for n in plain.nodes)
    x = np.random.default_rng(5).integers(0, 256, (3, 3, 64, 64)).astype(np.uint8)
    np.testing.assert_array_equal(graph.predict(x).view(np.uint32), plain.predict(x).view(np.uint32))
    f = next(f for f in fused if f.decode is not None)
    f.decode.table = f.decode.table[:-1]  # the largest code now has no entry
    codes = np.full((1, 16, 16, f.decode.channels), len(f.decode.table), np.uint8)
    with pytest.raises(IndexError):
        f.run(graph._k, np.zeros(codes.shape, np.float32), codes)


# ---- refusals and file validation -----------------------------------------------------------------------------


def test_unsupported_module_is_named(tmp_path):
    model = seq(nn.Flatten(), QuantLinear(16, 8, bias=False, pixel_input=True), nn.GELU(), nn.Linear(8, 2))
    with pytest.raises(CheckpointError, match="2.*GELU has no runtime op"):
        build_graph(model, torch.zeros(1, 1, 4, 4))


def test_non_monotone_quantizer_is_refused():
    model = seq(nn.Flatten(), QuantLinear(16, 8, bias=False, pixel_input=True), nn.BatchNorm1d(8),
                QuantAct(lambda x: torch.sign(torch.sin(x))), QuantLinear(8, 2, bias=False))
    with pytest.raises(CheckpointError, match="not monotone"):
        build_graph(model.eval(), torch.zeros(1, 1, 4, 4))


def test_grouped_conv_is_refused():
    model = seq(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten())
    with pytest.raises(CheckpointError, match="groups"):
        build_graph(model.eval(), torch.zeros(1, 2, 5, 5))


def test_corrupt_graph_fields_are_reported(tmp_path):
    model = randomize(seq(nn.Flatten(), QuantLinear(16, 8, bias=False, pixel_input=True), nn.BatchNorm1d(8),
                          QuantAct(), QuantLinear(8, 3, bias=False), nn.BatchNorm1d(3)))
    meta, arrays = build_graph(model, torch.zeros(1, 1, 4, 4))

    def broken(edit, match):
        m, a = json.loads(json.dumps(meta)), dict(arrays)
        edit(m, a)
        save_model_file(tmp_path / "b.lbt", "graph", m, a)
        with pytest.raises(CheckpointError, match=match):
            load(tmp_path / "b.lbt")

    gemm = next(i for i, n in enumerate(meta["graph"]["nodes"]) if n["op"] == "gemm")
    broken(lambda m, a: m["graph"]["nodes"][gemm].update(op="conv3d"), "field 'op' must be one of")
    broken(lambda m, a: m["graph"]["nodes"][gemm].update(inputs=["nowhere"]), "reads 'nowhere'")
    broken(lambda m, a: m["graph"]["nodes"][gemm].pop("k"), "lacks the field 'k'")
    broken(lambda m, a: m["graph"]["nodes"][gemm].update(out_channels=9), "has shape")
    name = meta["graph"]["nodes"][gemm]["name"]
    broken(lambda m, a: a.pop(name + ".thresholds"), "missing from the file")
    broken(lambda m, a: m["graph"].pop("nodes"), "lacks a valid graph")


def test_runtime_loads_and_predicts_without_torch(tmp_path):
    model = randomize(build_model("convnet", in_shape=(1, 8, 8), channels=[8, "M"], fc=[16],
                                  weight_quantizer="sawb:bits=2", act_quantizer="pact:bits=2,alpha=2.0"))
    export_model(model, torch.zeros(1, 1, 8, 8), tmp_path / "m.lbt")
    code = ("import sys, numpy as np; from lowbit.runtime import load; "
            f"net = load({str(tmp_path / 'm.lbt')!r}); y = net.predict(np.zeros((2, 1, 8, 8), np.uint8)); "
            "assert y.shape == (2, 10); assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
