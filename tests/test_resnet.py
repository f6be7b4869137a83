"""The binary ResNet with real-valued shortcuts (lowbit.models.resnet, recipes mnist-resnet / cifar10-resnet):
structure, the block computed by hand, latent weights, recipes, torch.fx tracing, a short real training run."""
from __future__ import annotations

import json
import operator

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.cli import main
from lowbit.errors import ConfigError
from lowbit.models import build_model
from lowbit.models.resnet import BinaryBlock, binary_resnet
from lowbit.nn.layers import QuantAct, QuantConv2d, QuantLinear
from lowbit.nn.norm import ShiftBatchNorm2d
from lowbit.registry import MODELS, RECIPES
from lowbit.train.config import apply_overrides, count_parameters, get_recipe
from lowbit.train.optim import build_optimizer, param_groups


def _sign(x):
    return torch.where(x >= 0, 1.0, -1.0)


def _randomize_bn(model, gen):
    """Non-trivial running statistics and affine parameters in every batch norm."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))


def _pixels(n, shape, seed=0):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed)).float()


# ---- structure --------------------------------------------------------------------------------------------


def test_registered_and_output_shapes():
    assert MODELS.get("binary_resnet") is binary_resnet
    for shape, widths, blocks, strides in [((1, 28, 28), [8, 16], [1, 2], [2, 2]),
                                           ((3, 32, 32), [8, 16, 16, 32], [1, 1, 1, 1], [])]:
        model = build_model("binary_resnet", in_shape=list(shape), num_classes=7, widths=widths, blocks=blocks,
                            strides=strides)
        assert model(_pixels(3, shape)).shape == (3, 7)
        model.eval()
        assert model(_pixels(2, shape)).shape == (2, 7)


def test_layout_stem_blocks_shortcuts_head():
    model = binary_resnet(in_shape=(3, 32, 32), widths=(8, 16, 16), blocks=(2, 1, 2), strides=(1, 2, 1))
    names = [n for n, _ in model.named_children()]
    assert names == ["stem", "stem_bn", "stage1", "stage2", "stage3", "pool", "flatten", "fc"]
    stem = model.stem
    assert isinstance(stem, QuantConv2d) and stem.pixel_input and stem.pad_value == -1.0 and stem.bias is None
    assert stem.padding == (1, 1) and stem.kernel_size == (3, 3) and stem.weight_bits == 1
    assert isinstance(model.stem_bn, nn.BatchNorm2d)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d) and isinstance(model.flatten, nn.Flatten)
    assert type(model.fc) is nn.Linear and model.fc.in_features == 16  # real-valued logits

    blocks = [b for b in model.modules() if isinstance(b, BinaryBlock)]
    assert len(blocks) == 5
    for b in blocks:
        assert b.act.binary and b.conv.weight_bits == 1 and b.conv.pad_value == 1.0 and not b.conv.pixel_input
        assert b.conv.kernel_size == (3, 3) and b.conv.bias is None
    # stage1: identity shortcuts; stage2 block 0: stride 2 + width change -> AvgPool2 -> 1x1 conv -> BN;
    # stage3: same width, stride 1 -> identity
    kinds = [type(b.shortcut).__name__ for b in blocks]
    assert kinds == ["Identity", "Identity", "Sequential", "Identity", "Identity"]
    down = blocks[2]
    assert down.conv.stride == (2, 2)
    assert [type(m) for m in down.shortcut] == [nn.AvgPool2d, nn.Conv2d, nn.BatchNorm2d]
    conv1 = down.shortcut[1]
    assert type(conv1) is nn.Conv2d and conv1.kernel_size == (1, 1) and conv1.bias is None
    # a width change at stride 1 keeps the resolution: 1x1 conv + BN without the pool
    widen = BinaryBlock(8, 16, stride=1)
    assert [type(m) for m in widen.shortcut] == [nn.Conv2d, nn.BatchNorm2d]


def test_stem_stride_halves_the_input_first():
    model = binary_resnet(in_shape=(1, 28, 28), widths=(8, 16), blocks=(1, 2), strides=(1, 2), stem_stride=2)
    assert model.stem.stride == (2, 2) and model.stem.pixel_input
    sizes = []
    hook = model.stage2.register_forward_hook(lambda m, i, o: sizes.append((i[0].shape[-1], o.shape[-1])))
    model(_pixels(2, (1, 28, 28)))
    hook.remove()
    assert sizes == [(14, 7)]
    assert isinstance(model.stage1[0].shortcut, nn.Identity)  # stride 1, same width as the stem


def test_defaults_are_bi_real_18():
    model = binary_resnet()
    blocks = [b for b in model.modules() if isinstance(b, BinaryBlock)]
    assert len(blocks) == 16
    assert [b.conv.stride[0] for b in blocks] == [1, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1]
    assert [b.conv.out_channels for b in blocks[::4]] == [64, 128, 256, 512]


def test_knobs_reach_every_layer():
    model = binary_resnet(in_shape=(1, 8, 8), widths=(4, 8), blocks=(1, 1), weight_quantizer="linear:bits=2",
                          act_quantizer="linear:bits=2", norm="shift_bn", grad_quantizer="grad:bits=6")
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 3 and all(c.weight_bits == 2 and c.grad_bits == 6 for c in convs)
    acts = [m for m in model.modules() if isinstance(m, QuantAct)]
    assert len(acts) == 2 and all(a.bits == 2 for a in acts)
    assert acts[0].quantizer is not acts[1].quantizer  # one quantizer per place (a PACT alpha each)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert len(norms) == 4 and all(isinstance(m, ShiftBatchNorm2d) for m in norms)
    model(_pixels(2, (1, 8, 8))).sum().backward()


@pytest.mark.parametrize("kwargs, match", [
    (dict(widths=(8, 16), blocks=(1,)), "equally long"),
    (dict(widths=(8, 0), blocks=(1, 1)), "positive"),
    (dict(widths=(8, 16), blocks=(1, 0)), "positive"),
    (dict(widths=(8, 16), blocks=(1, 1), strides=(1, 3)), "strides"),
    (dict(widths=(8, 16), blocks=(1, 1), strides=(2,)), "strides"),
    (dict(in_shape=(1, 7, 7), widths=(8, 16), blocks=(1, 1)), "even"),
    (dict(in_shape=(1, 14, 14), widths=(8, 16), blocks=(1, 1), stem_stride=2), "even"),
    (dict(stem_stride=3), "stem_stride"),
    (dict(norm="layer"), "norm"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        binary_resnet(**kwargs)


# ---- the block, by hand -------------------------------------------------------------------------------------


def _bn(x, bn, training):
    if training:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("cin, cout, stride", [(6, 6, 1), (6, 10, 2), (6, 10, 1)])
def test_block_is_bn_of_binary_conv_of_sign_plus_shortcut(cin, cout, stride, training):
    gen = torch.Generator().manual_seed(cin * 100 + cout + stride)
    block = BinaryBlock(cin, cout, stride)
    _randomize_bn(block, gen)
    block.train(training)
    x = torch.randn(3, cin, 8, 8, generator=gen) * 2  # real-valued input, zeros included
    x[0, 0, 0, :3] = 0.0
    with torch.no_grad():
        y = block(x)
        # binary branch: sign (0 -> +1), +1 padding, conv with +-1 weights, batch norm
        s = F.pad(_sign(x), (1, 1, 1, 1), value=1.0)
        z = F.conv2d(s, _sign(block.conv.weight), stride=stride)
        assert torch.equal(z, z.round()) and ((z + 9 * cin) % 2 == 0).all()  # integer sums of +-1 products
        branch = _bn(z, block.bn, training)
        if stride == 1 and cin == cout:
            short = x
        else:
            pooled = F.avg_pool2d(x, 2) if stride == 2 else x
            short = _bn(F.conv2d(pooled, block.shortcut[-2].weight), block.shortcut[-1], training)
        torch.testing.assert_close(y, branch + short, rtol=1e-5, atol=1e-5)


def test_model_in_eval_is_stem_blocks_and_head_by_hand():
    gen = torch.Generator().manual_seed(3)
    model = binary_resnet(in_shape=(1, 8, 8), widths=(4, 8), blocks=(1, 1), strides=(1, 2)).eval()
    _randomize_bn(model, gen)
    p = _pixels(2, (1, 8, 8), seed=1)
    with torch.no_grad():
        w = _sign(model.stem.weight)
        h = F.conv2d(F.pad(p * 2 / 255 - 1, (1, 1, 1, 1), value=-1.0), w)  # the stem sees 2p/255 - 1
        h = _bn(h, model.stem_bn, False)
        for block in (model.stage1[0], model.stage2[0]):
            h = block(h)
        expect = model.fc(h.mean((2, 3)))
        torch.testing.assert_close(model(p), expect, rtol=1e-4, atol=1e-4)


# ---- latent weights -------------------------------------------------------------------------------------


def test_latent_weights_clip_and_the_forward_is_binary():
    torch.manual_seed(0)
    model = binary_resnet(in_shape=(1, 8, 8), widths=(4, 8), blocks=(1, 1), init="glorot")
    groups = param_groups(model, lr=1.0, lr_scale=False)
    clipped = {id(p) for g in groups if g["weight_clip"] is not None for p in g["params"]}
    binary = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert clipped == {id(m.weight) for m in binary}  # 1x1 shortcut convs, BN and the FC stay real, unclipped
    opt = build_optimizer(model, "sgd", lr=50.0, lr_scale=False)  # steps far past the clip
    x, y = _pixels(8, (1, 8, 8)), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for m in binary:
        assert m.weight.abs().max() <= 1.0
        assert (m.weight.abs() == 1.0).any()  # the clip bit
        q = m.quantized_weight
        assert set(q.unique().tolist()) <= {-1.0, 1.0}
    assert max(model.fc.weight.abs().max(), model.stage2[0].shortcut[1].weight.abs().max()) > 1.0
    # the forward uses the signs only: shifting every latent weight (keeping its sign) changes nothing
    model.eval()
    with torch.no_grad():
        before = model(x)
        for m in binary:
            m.weight.copy_(torch.where(m.weight >= 0, 0.5, -0.5))
        torch.testing.assert_close(model(x), before)


# ---- torch.fx (the graph exporter traces the model) --------------------------------------------------------


class LeafTracer(torch.fx.Tracer):
    """lowbit's quantized layers stay leaf modules (and shift BN, whose forward checks x.dim())."""

    def is_leaf_module(self, m, qualname):
        return (isinstance(m, (QuantConv2d, QuantLinear, QuantAct, ShiftBatchNorm2d))
                or super().is_leaf_module(m, qualname))


@pytest.mark.parametrize("norm", ["bn", "shift_bn"])
def test_symbolic_trace_gives_the_same_network(norm):
    model = binary_resnet(in_shape=(1, 16, 16), widths=(4, 8), blocks=(2, 2), norm=norm).eval()
    _randomize_bn(model, torch.Generator().manual_seed(5))
    graph = LeafTracer().trace(model)
    traced = torch.fx.GraphModule(model, graph)
    x = _pixels(3, (1, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    mods = dict(traced.named_modules())
    called = [mods[n.target] for n in graph.nodes if n.op == "call_module"]
    assert sum(isinstance(m, QuantConv2d) for m in called) == 5
    assert sum(isinstance(m, QuantAct) for m in called) == 4
    adds = [n for n in graph.nodes if n.op == "call_function" and n.target in (torch.add, operator.add)]
    assert len(adds) == 4  # one residual add per block


# ---- recipes ----------------------------------------------------------------------------------------------


def test_recipes_are_registered_and_listed(capsys):
    assert {"mnist-resnet", "cifar10-resnet"} <= set(RECIPES)
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "mnist-resnet" in out and "cifar10-resnet" in out
    for name, dataset, shape in [("mnist-resnet", "mnist", [1, 28, 28]), ("cifar10-resnet", "cifar10", [3, 32, 32])]:
        cfg = get_recipe(name)
        assert (cfg.dataset, cfg.model, cfg.loss, cfg.optimizer) == (dataset, "binary_resnet", "cross_entropy", "adam")
        assert cfg.model_args["in_shape"] == shape
        assert {"weight_quantizer", "act_quantizer", "norm", "grad_quantizer", "init", "widths", "blocks",
                "strides", "stem_stride", "pad_value"} <= set(cfg.model_args)
    cifar = get_recipe("cifar10-resnet").model_args
    assert (cifar["widths"], cifar["blocks"]) == ([64, 128, 256, 512], [4, 4, 4, 4])
    assert 11_000_000 < count_parameters(get_recipe("cifar10-resnet")) < 11_300_000
    mnist = get_recipe("mnist-resnet")
    args = mnist.model_args
    assert (args["widths"], args["blocks"], args["strides"], args["stem_stride"]) == ([32, 64], [3, 8], [1, 2], 2)
    assert (mnist.epochs, mnist.bn_recalibrate) == (2, 10000)


def test_set_reaches_the_model_knobs():
    cfg = apply_overrides(get_recipe("mnist-resnet"), [
        "model.widths=8,16", "model.blocks=1,1", "model.norm=shift_bn", "model.weight_quantizer=linear:bits=2",
        "model.act_quantizer=pact:bits=2,alpha=3", "model.grad_quantizer=grad:bits=6"])
    model = build_model(cfg.model, **cfg.model_args)
    assert sum(isinstance(m, ShiftBatchNorm2d) for m in model.modules()) >= 3
    assert all(m.weight_bits == 2 and m.grad_bits == 6 for m in model.modules() if isinstance(m, QuantConv2d))
    assert model(_pixels(2, (1, 28, 28))).shape == (2, 10)


def test_short_real_mnist_run_lowers_the_loss(shared_data, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "mnist-resnet", "--epochs", "3", "--data-dir", str(shared_data), "--out", str(out),
               "--no-progress", "--set", "train_subset=1000", "--set", "test_subset=300", "--set", "batch_size=50",
               "--set", "model.widths=16,32", "--set", "model.blocks=1,2", "--set", "bn_recalibrate=0"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [e["train_loss"] for e in metrics["epochs"]]
    assert losses[2] < losses[1] < losses[0], losses
    assert metrics["epochs"][-1]["train_accuracy"] > 0.25  # chance: 0.1 (60 steps of a binary net)
    model = lowbit.load_checkpoint(out / "checkpoint.pt")  # rebuilt from the recipe's config
    assert isinstance(model.stage1[0], BinaryBlock) and not model.training


def test_cifar10_recipe_trains_on_cifar_files(tmp_path):
    from test_data import _write_cifar

    _write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py", n=8)
    out = tmp_path / "run"
    rc = main(["train", "cifar10-resnet", "--epochs", "1", "--data-dir", str(tmp_path), "--out", str(out),
               "--no-progress", "--set", "model.widths=4,8,8,8", "--set", "model.blocks=1,1,1,1",
               "--set", "batch_size=20"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["recipe"] == "cifar10-resnet" and len(metrics["epochs"]) == 1
