import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.quant.base import (
    QUANTIZERS, Identity, SteSign, StochasticSign, get_quantizer, hard_sigmoid, ste_sign, stochastic_sign,
)


def test_ste_sign_forward_hand_values():
    x = torch.tensor([-2.0, -1.0, -0.5, -1e-8, 0.0, 1e-8, 0.5, 1.0, 2.0])
    expected = torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert torch.equal(ste_sign(x), expected)


def test_ste_sign_backward_cancels_beyond_one_and_passes_at_exactly_one():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0001, 3.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    ste_sign(x).backward(g)
    # g_r = g_q * 1{|x| <= 1}: |x| = 1 passes, |x| > 1 is cancelled
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]))


def test_ste_sign_clip_value():
    x = torch.tensor([-1.5, 1.5, 2.5], requires_grad=True)
    ste_sign(x, clip_value=2.0).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 0.0]))


def test_hard_sigmoid_values():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    assert torch.allclose(hard_sigmoid(x), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))


def test_stochastic_sign_mean_matches_hard_sigmoid():
    torch.manual_seed(0)
    values = torch.tensor([-1.5, -0.6, -0.2, 0.0, 0.3, 0.8, 1.2])
    n = 200_000
    x = values.repeat(n, 1)
    q = stochastic_sign(x)
    assert set(q.unique().tolist()) <= {-1.0, 1.0}
    p_plus = (q == 1).float().mean(0)
    expected = hard_sigmoid(values)
    # binomial standard error <= 0.5 / sqrt(n) ~ 0.0011; allow 5 sigma
    assert torch.allclose(p_plus, expected, atol=0.006)
    # E[q] = 2 p - 1
    assert torch.allclose(q.mean(0), 2 * expected - 1, atol=0.012)


def test_stochastic_sign_backward_is_ste():
    x = torch.tensor([-2.0, -0.3, 0.7, 1.0, 1.2], requires_grad=True)
    stochastic_sign(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_stochastic_module_is_deterministic_in_eval():
    q = StochasticSign()
    x = torch.linspace(-1, 1, 101)
    q.eval()
    assert torch.equal(q(x), ste_sign(x))
    q.train()
    torch.manual_seed(1)
    assert not torch.equal(q(x), ste_sign(x))  # some of the 101 values near 0 flip


def test_registry_names_callables_and_errors():
    assert isinstance(get_quantizer("ste_sign"), SteSign)
    assert isinstance(get_quantizer("STE_SIGN"), SteSign)
    assert isinstance(get_quantizer(None), Identity)
    assert isinstance(get_quantizer("identity"), Identity)
    custom = get_quantizer(lambda t: t.round())
    assert torch.equal(custom(torch.tensor([0.4, 1.6])), torch.tensor([0.0, 2.0]))
    with pytest.raises(ConfigError, match="unknown quantizer 'nope'.*ste_sign"):
        get_quantizer("nope")
    with pytest.raises(ConfigError, match="clip_value"):
        get_quantizer("ste_sign", clip_value=0)
    with pytest.raises(ConfigError):
        get_quantizer(3)
    assert {"ste_sign", "stochastic_sign", "identity"} <= set(QUANTIZERS)


def test_identity_passes_gradient():
    x = torch.tensor([-5.0, 0.0, 5.0], requires_grad=True)
    get_quantizer("identity")(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
