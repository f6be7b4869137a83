import math

import pytest
import torch
import torch.nn.functional as F

from lowbit.errors import ConfigError
from lowbit.nn.layers import PixelScale, QuantAct, QuantConv2d, QuantLinear
from lowbit.train.optim import build_optimizer, build_scheduler, exponential_decay, param_groups


def _binarize(t):
    return torch.where(t >= 0, 1.0, -1.0)


def test_quant_linear_equals_float_linear_on_binarized_operands():
    torch.manual_seed(0)
    layer = QuantLinear(37, 11, bias=True, weight_quantizer="ste_sign", input_quantizer="ste_sign")
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    x = torch.randn(5, 37)
    expected = F.linear(_binarize(x), _binarize(layer.weight), layer.bias).double()
    # float64 reference: integer dot products of +-1 values plus bias
    ref = _binarize(x).double() @ _binarize(layer.weight).double().T + layer.bias.double()
    out = layer(x)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    assert torch.allclose(out.double(), expected)
    assert set(layer.quantized_weight.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("stride,padding,pad_value", [(1, 0, 0.0), (1, 1, 0.0), (2, 1, 1.0), (1, 2, -1.0)])
def test_quant_conv_equals_float_conv_on_binarized_operands(stride, padding, pad_value):
    torch.manual_seed(1)
    layer = QuantConv2d(3, 4, 3, stride=stride, padding=padding, bias=False,
                        input_quantizer="ste_sign", pad_value=pad_value)
    x = torch.randn(2, 3, 9, 8)
    xb = _binarize(x)
    xb_padded = F.pad(xb, (padding,) * 4, value=pad_value)
    ref = F.conv2d(xb_padded.double(), _binarize(layer.weight).double(), stride=stride)
    assert torch.allclose(layer(x).double(), ref, atol=1e-5)


def test_latent_weights_clipped_after_every_step():
    torch.manual_seed(0)
    layer = QuantLinear(20, 10, bias=False)
    opt = build_optimizer(torch.nn.Sequential(layer), "sgd", lr=50.0)  # huge steps
    for _ in range(3):
        loss = (layer(torch.randn(8, 20)) * torch.randn(8, 10)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert layer.weight.abs().max() <= 1.0
    assert (layer.weight.abs() == 1.0).any()  # the steps were big enough to hit the clip


def test_adam_is_fused_and_follows_adams_formula_with_clip():
    """build_optimizer picks torch's fused Adam on CPU; its steps must still be Adam's (float64 re-computation
    of m, v, bias correction and the step, then the latent clip), group by group with the Glorot LR scale."""
    torch.manual_seed(0)
    layer = QuantLinear(20, 10, bias=False)
    opt = build_optimizer(torch.nn.Sequential(layer), "adam", lr=0.05)
    assert opt.param_groups[0]["fused"] is True
    lr = 0.05 * layer.glorot_lr_scale
    w = layer.weight.detach().double().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    for t in range(1, 6):
        loss = (layer(torch.randn(8, 20)) * torch.randn(8, 10)).sum()
        opt.zero_grad()
        loss.backward()
        g = layer.weight.grad.double()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        step = lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
        w = (w - step).clamp(-1.0, 1.0)
        opt.step()
        assert torch.allclose(layer.weight.double(), w, atol=1e-5), t
    assert (w.abs() == 1.0).any()  # the scaled steps reached the clip


def test_float_layer_is_not_clipped():
    layer = QuantLinear(4, 4, weight_quantizer="identity")
    assert layer.weight_clip is None
    with torch.no_grad():
        layer.weight.fill_(3.0)
    opt = build_optimizer(torch.nn.Sequential(layer), "sgd", lr=0.0001)
    layer(torch.ones(1, 4)).sum().backward()
    opt.step()
    assert layer.weight.max() > 2.9


def test_lr_scale_equals_glorot_formula():
    lin = QuantLinear(784, 4096, bias=False)
    conv = QuantConv2d(128, 256, 3, bias=False)
    assert lin.glorot_lr_scale == pytest.approx(1 / math.sqrt(1.5 / (784 + 4096)))
    assert conv.glorot_lr_scale == pytest.approx(1 / math.sqrt(1.5 / (9 * 128 + 9 * 256)))
    model = torch.nn.Sequential(lin, torch.nn.BatchNorm1d(4096))
    groups = param_groups(model, lr=0.01)
    assert groups[0]["params"][0] is lin.weight
    assert groups[0]["lr"] == pytest.approx(0.01 / math.sqrt(1.5 / (784 + 4096)))
    assert groups[-1]["lr"] == 0.01 and len(groups[-1]["params"]) == 2  # BN weight and bias: plain lr
    # init="glorot": initial latent weights uniform in [-H, H], H = sqrt(1.5 / (fan_in + fan_out))
    glorot = QuantLinear(784, 4096, bias=False, init="glorot")
    assert glorot.weight.abs().max() <= math.sqrt(1.5 / (784 + 4096)) + 1e-7


def test_reference_init_is_binarynet_h_equal_one():
    """The BinaryNet Theano code's H = 1: binary latent weights start uniform over the whole clip range
    [-1, 1] (mean |w| = 1/2); k-bit weights keep the Glorot range (their values enter the product)."""
    torch.manual_seed(0)
    w = QuantLinear(784, 4096, bias=False).weight.detach()
    assert w.abs().max() <= 1.0 and w.abs().max() > 0.999
    assert abs(w.abs().mean().item() - 0.5) < 0.002 and abs(w.mean().item()) < 0.002
    h = math.sqrt(1.5 / (9 * 8 + 9 * 16))
    conv = QuantConv2d(8, 16, 3, bias=False).weight.detach()
    assert conv.abs().max() > 10 * h  # binary conv: the reference range too
    k_bit = QuantLinear(784, 4096, bias=False, weight_quantizer="linear:bits=2").weight.detach()
    assert k_bit.abs().max() <= math.sqrt(1.5 / (784 + 4096)) + 1e-7
    with pytest.raises(ConfigError, match="init"):
        QuantLinear(4, 4, init="xavier")


def test_exponential_decay_hits_end_value():
    f = exponential_decay(3e-3, 3e-7, 100)
    assert f(0) == 1.0
    assert 3e-3 * f(100) == pytest.approx(3e-7)
    assert 3e-3 * f(50) == pytest.approx(3e-5)
    model = torch.nn.Sequential(QuantLinear(4, 4))
    opt = build_optimizer(model, lr=3e-3)
    sched = build_scheduler(opt, 3e-3, 3e-7, 10)
    scale = opt.param_groups[0]["lr_scale"]
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-7 * scale)
    assert opt.param_groups[-1]["lr"] == pytest.approx(3e-7)


def test_quant_act_binary_and_float_twin():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    QuantAct("ste_sign")(x).sum().backward()
    assert torch.equal(QuantAct("ste_sign")(x.detach()), torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0]))
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    assert torch.equal(QuantAct("identity")(x.detach()), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))


def test_pixel_scale():
    assert torch.allclose(PixelScale()(torch.tensor([0.0, 127.5, 255.0])), torch.tensor([-1.0, 0.0, 1.0]))


def test_bad_layer_arguments():
    with pytest.raises(ConfigError, match="unknown quantizer"):
        QuantLinear(3, 3, weight_quantizer="binaryy")
    with pytest.raises(ConfigError, match="weight_clip"):
        QuantLinear(3, 3, weight_clip=-1.0)
    with pytest.raises(ConfigError, match="float_activation"):
        QuantAct("identity", float_activation="tanhh")


def test_extra_repr_names_quantizers():
    r = repr(QuantLinear(3, 2, input_quantizer="ste_sign"))
    assert "weight_quantizer=ste_sign" in r and "input_quantizer=ste_sign" in r
