"""Every speed path of `condense.fast` (and `condense.higher_order`) against the plain code it replaces."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from condense import fast
from condense.higher_order import conv2d_higher_order
from condense.models import AvgPool2x2, build_model


def test_the_switch_turns_every_dispatch_off(monkeypatch):
    """With the switch off the plain code runs: neither the pooling nor the embedding reaches condense.fast."""
    def trap(*a, **k):
        raise AssertionError("fast path taken with the switch off")

    net = build_model("convnet", 1, 10, 28, seed=0, width=8)
    monkeypatch.setattr(fast, "avg_pool_2x2", trap)
    monkeypatch.setattr(fast, "lean_embed", trap)
    x = torch.randn(2, 1, 28, 28)
    with fast.use(False), torch.no_grad():
        net.embed(x)
        net(x)
    with fast.use(True), torch.no_grad(), pytest.raises(AssertionError, match="fast path taken"):
        net.embed(x)
    monkeypatch.setenv("CONDENSE_FAST", "0")
    assert not fast.is_fast()
    fast.set_fast(True)
    try:
        assert fast.is_fast()  # an explicit setting wins over the environment
    finally:
        fast.set_fast(None)
    monkeypatch.setenv("CONDENSE_FAST", "1")
    assert fast.is_fast()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fast_embedding_equals_the_plain_one_and_leaves_the_input_alone(layout):
    net = build_model("convnet", 1, 10, 28, seed=0).to(memory_format=layout)
    with torch.no_grad():  # a non-trivial affine map, so the in-place path must apply it
        for norm in net.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(6, 1, 28, 28).contiguous(memory_format=layout) * 3 + 1
    before = x.clone()
    with torch.no_grad():
        with fast.use(False):
            plain = net.embed(x)
        lean = fast.lean_embed(net, x)
        _, low = fast.features_lowmem(net, x, 4, lambda a: a.sum(1))
    assert torch.equal(x, before)
    assert torch.allclose(lean, plain, rtol=1e-5, atol=1e-5)
    assert torch.allclose(low, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["convnetbn", "convnet"])
@pytest.mark.parametrize("chunk", [7, 100])
def test_low_memory_forward_equals_one_big_forward_even_with_batchnorm(arch, chunk):
    net = build_model(arch, 1, 10, 28, seed=0).train()
    x = torch.randn(30, 1, 28, 28)
    reduce = lambda a: a.abs().sum(1).flatten(1)  # noqa: E731
    with torch.no_grad(), fast.use(False):
        acts, emb = net.features(x)
    small, emb2 = fast.features_lowmem(net, x, chunk, reduce)
    assert len(small) == len(acts)
    for a, b in zip(acts, small):
        assert torch.allclose(reduce(a), b, rtol=1e-4, atol=1e-4)
    assert torch.allclose(emb, emb2, atol=1e-4)


@pytest.mark.parametrize("cin,k,stride,dilation,padding", [(1, 3, 1, 1, 3), (3, 3, 2, 1, 1), (1, 5, 1, 2, 2), (3, 3, 1, 1, 0)])
def test_first_layer_statistics_from_the_input_equal_those_of_the_output(cin, k, stride, dilation, padding):
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(cin, 8, k, stride=stride, dilation=dilation, padding=padding).double()
    x = torch.randn(4, cin, 13, 13, generator=g, dtype=torch.double) * 2 + 1
    var, mean = torch.var_mean(conv(x), (2, 3), correction=0)
    got_mean, got_var = fast.conv_output_stats(conv, x)
    assert torch.allclose(got_mean, mean) and torch.allclose(got_var, var)
    assert fast.conv_output_stats(torch.nn.Conv2d(4, 8, 3, groups=2), x) is None  # grouped: not covered


@pytest.mark.parametrize("pool", ["avgpool", "maxpool"])
@pytest.mark.parametrize("signs", ["positive", "mixed"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_lean_block_equals_the_plain_block(pool, signs, layout):
    """The clamp-then-pool rewrite holds for positive norm weights; other weights take the plain path."""
    net = build_model("convnet", 3, 10, 32, seed=1, pool=pool).to(memory_format=layout)
    with torch.no_grad(), fast.use(False):
        for norm in net.norms:
            norm.weight.uniform_(0.5, 1.5) if signs == "positive" else norm.weight.uniform_(-1, 1)
            norm.bias.uniform_(-0.5, 0.5)
        x = (torch.randn(5, 3, 32, 32) * 2 + 0.5).contiguous(memory_format=layout)
        for conv, norm, act, pool_ in zip(net.convs, net.norms, net.acts, net.pools):
            plain = pool_(act(norm(conv(x))))
            with fast.use(True):
                lean = fast.lean_block(conv, norm, act, pool_, x)
            assert torch.allclose(lean, plain, rtol=1e-4, atol=1e-5)
            x = plain


def test_the_positive_weight_check_follows_in_place_changes():
    norm = torch.nn.GroupNorm(4, 4)
    assert fast.positive_weights(norm)
    with torch.no_grad():
        norm.weight[1] = -1.0
    assert not fast.positive_weights(norm)
    norm.load_state_dict({"weight": torch.ones(4), "bias": torch.zeros(4)})
    assert fast.positive_weights(norm)


def test_fast_average_pooling_is_avg_pool2d_to_every_order_and_falls_back_where_it_must(monkeypatch):
    pool = AvgPool2x2()
    x = torch.randn(2, 3, 6, 8, dtype=torch.double, requires_grad=True)
    assert fast.pool_applies(x)
    assert torch.allclose(fast.avg_pool_2x2(x), F.avg_pool2d(x, 2), atol=1e-12)
    assert torch.autograd.gradcheck(fast.avg_pool_2x2, (x,))
    assert torch.autograd.gradgradcheck(fast.avg_pool_2x2, (x,))
    # channels-last maps and odd sides go to the native kernel (same values, floor semantics)
    for t in (torch.randn(2, 3, 6, 8).contiguous(memory_format=torch.channels_last), torch.randn(2, 3, 7, 9)):
        assert not fast.pool_applies(t)
        assert torch.allclose(pool(t), F.avg_pool2d(t, 2), atol=1e-6)
    # a ConvNet-3 gets the same gradients with the switch on or off, compiled or not
    net = build_model("convnet", 1, 10, 28, seed=0, width=8)
    xb = torch.randn(4, 1, 28, 28)
    with fast.use(False):
        ref = torch.autograd.grad(net(xb).square().sum(), list(net.parameters()))
    for forward in (net, torch.compile(net)):
        got = torch.autograd.grad(forward(xb).square().sum(), list(net.parameters()))
        for a, b in zip(ref, got):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 3, 2)])
def test_higher_order_convolution_matches_autograd_to_third_order(stride, padding, groups):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 9, 9, generator=g, dtype=torch.double)
    w0 = torch.randn(6, 4 // groups, 3, 3, generator=g, dtype=torch.double)
    b0 = torch.randn(6, generator=g, dtype=torch.double)

    def third(conv):
        x, w, b = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
        y = conv(x, w, b, stride, padding, 1, groups)
        (gw,) = torch.autograd.grad(y.tanh().sum(), w, create_graph=True)  # first order
        (gx,) = torch.autograd.grad((gw * w).sum() + gw.square().sum(), x, create_graph=True)  # second
        return torch.autograd.grad(gx.square().sum(), [x, w, b])  # third

    for u, v in zip(third(F.conv2d), third(conv2d_higher_order)):
        assert torch.allclose(u, v, rtol=1e-9, atol=1e-9)
