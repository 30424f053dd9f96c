import pytest
import torch

from condense.errors import CondenseError
from condense.models import MODELS, FlatParams, build_model, default_depth

ARCHS = ["convnet", "convnetbn", "mlp", "lenet", "alexnet", "vgg11", "vgg11bn", "resnet18", "resnet18bn"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_every_network_gives_logits_embedding_and_activations(arch, shape):
    c, s = shape
    net = build_model(arch, c, 7, s, seed=0)
    x = torch.randn(2, c, s, s)
    logits = net(x)
    acts, emb = net.features(x)
    assert logits.shape == (2, 7)
    assert emb.shape[0] == 2 and emb.ndim == 2
    assert torch.allclose(net.classifier(emb), logits, atol=1e-5)
    assert len(acts) >= 2 and all(a.shape[0] == 2 for a in acts)


def test_convnet3_matches_the_standard_shapes():
    net = build_model("convnet", 1, 10, 28, seed=0)
    assert net.embed(torch.randn(1, 1, 28, 28)).shape[1] == 2048  # 28 px padded to 32 -> 128 x 4 x 4
    assert sum(p.numel() for p in net.parameters()) == 317_706  # DC's ConvNet on MNIST
    assert sum(p.numel() for p in build_model("convnet", 3, 10, 32).parameters()) == 320_010
    assert [default_depth(s) for s in (28, 32, 64, 128)] == [3, 3, 4, 5]
    assert len(build_model("convnet", 3, 10, 64).convs) == 4


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    a = build_model("convnet", 1, 10, 28, seed=42)
    b = build_model("convnet", 1, 10, 28, seed=42)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build_model("convnet", 1, 10, 28, seed=43)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_functional_call_from_a_flat_vector_matches_the_module_and_is_differentiable():
    net = build_model("convnet", 1, 10, 28, seed=0)
    fp = FlatParams(net)
    theta = fp.flatten(net).requires_grad_(True)
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    out = fp.call(net, theta, x)
    assert torch.allclose(out, net(x), atol=1e-5)
    out.sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    other = build_model("convnet", 1, 10, 28, seed=1)
    fp.load_into(other, theta.detach())
    assert torch.allclose(other(x), net(x), atol=1e-5)


def test_unknown_architecture_names_the_choices():
    with pytest.raises(CondenseError, match="convnet"):
        MODELS.get("convnext")
    with pytest.raises(CondenseError, match="Unknown norm"):
        build_model("convnet", 1, 10, 28, norm="layer")


@pytest.mark.parametrize("arch", ["convnetbn", "convnet"])
@pytest.mark.parametrize("chunk", [7, 100])
def test_low_memory_forward_equals_one_big_forward_even_with_batchnorm(arch, chunk):
    net = build_model(arch, 1, 10, 28, seed=0).train()
    x = torch.randn(30, 1, 28, 28)
    reduce = lambda a: a.abs().sum(1).flatten(1)  # noqa: E731
    with torch.no_grad():
        acts, emb = net.features(x)
        small, emb2 = net.features_lowmem(x, chunk, reduce)
    assert len(small) == len(acts)
    for a, b in zip(acts, small):
        assert torch.allclose(reduce(a), b, rtol=1e-4, atol=1e-4)
    assert torch.allclose(emb, emb2, atol=1e-4)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gradient_free_embedding_works_in_place_and_equals_the_autograd_one(layout):
    net = build_model("convnet", 1, 10, 28, seed=0).to(memory_format=layout)
    with torch.no_grad():  # a non-trivial affine map, so the in-place path must apply it
        for norm in net.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(6, 1, 28, 28).contiguous(memory_format=layout) * 3 + 1
    before = x.clone()
    reference = net.embed(x)
    with torch.no_grad():
        lean = net.embed(x)
        _, low = net.features_lowmem(x, 4, lambda a: a.sum(1))
    assert torch.equal(x, before)
    assert torch.allclose(lean, reference, rtol=1e-5, atol=1e-5)
    assert torch.allclose(low, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cin,k,stride,dilation,padding", [(1, 3, 1, 1, 3), (3, 3, 2, 1, 1), (1, 5, 1, 2, 2), (3, 3, 1, 1, 0)])
def test_first_layer_statistics_from_the_input_equal_those_of_the_output(cin, k, stride, dilation, padding):
    from condense.models import conv_output_stats

    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(cin, 8, k, stride=stride, dilation=dilation, padding=padding).double()
    x = torch.randn(4, cin, 13, 13, generator=g, dtype=torch.double) * 2 + 1
    var, mean = torch.var_mean(conv(x), (2, 3), correction=0)
    got_mean, got_var = conv_output_stats(conv, x)
    assert torch.allclose(got_mean, mean) and torch.allclose(got_var, var)
    assert conv_output_stats(torch.nn.Conv2d(4, 8, 3, groups=2), x) is None  # grouped: not covered
    assert conv_output_stats(torch.nn.Conv2d(16, 8, 3), x) is None  # 144 inputs per output: not worth it


@pytest.mark.parametrize("pool", ["avgpool", "maxpool"])
@pytest.mark.parametrize("signs", ["positive", "mixed"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_lean_block_equals_the_plain_block(pool, signs, layout):
    """The clamp-then-pool rewrite holds for positive norm weights; other weights take the plain path."""
    from condense.models import lean_block

    net = build_model("convnet", 3, 10, 32, seed=1, pool=pool).to(memory_format=layout)
    with torch.no_grad():
        for norm in net.norms:
            norm.weight.uniform_(0.5, 1.5) if signs == "positive" else norm.weight.uniform_(-1, 1)
            norm.bias.uniform_(-0.5, 0.5)
        x = (torch.randn(5, 3, 32, 32) * 2 + 0.5).contiguous(memory_format=layout)
        for conv, norm, act, pool_ in zip(net.convs, net.norms, net.acts, net.pools):
            plain = pool_(act(norm(conv(x))))
            assert torch.allclose(lean_block(conv, norm, act, pool_, x), plain, rtol=1e-4, atol=1e-5)
            x = plain


def test_the_positive_weight_check_follows_in_place_changes():
    from condense.models import InstanceNorm

    norm = InstanceNorm(4)
    assert norm.positive()
    with torch.no_grad():
        norm.weight[1] = -1.0
    assert not norm.positive()
    norm.load_state_dict({"weight": torch.ones(4), "bias": torch.zeros(4)})
    assert norm.positive()


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 3, 2)])
def test_higher_order_convolution_matches_autograd_to_third_order(stride, padding, groups):
    from condense.models import conv2d_higher_order

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

    for u, v in zip(third(torch.nn.functional.conv2d), third(conv2d_higher_order)):
        assert torch.allclose(u, v, rtol=1e-9, atol=1e-9)


def test_fast_average_pooling_is_avg_pool2d_to_every_order_and_falls_back_where_it_must():
    from condense.models import AvgPool2x2

    pool = AvgPool2x2()
    x = torch.randn(2, 3, 6, 8, dtype=torch.double, requires_grad=True)
    assert torch.allclose(pool(x), torch.nn.functional.avg_pool2d(x, 2), atol=1e-12)
    assert torch.autograd.gradcheck(pool, (x,))
    assert torch.autograd.gradgradcheck(pool, (x,))
    # channels-last and odd sides go to the native kernel (same values, floor semantics)
    for t in (torch.randn(2, 3, 6, 8).contiguous(memory_format=torch.channels_last), torch.randn(2, 3, 7, 9)):
        assert torch.allclose(pool(t), torch.nn.functional.avg_pool2d(t, 2), atol=1e-6)
    # a ConvNet-3 trains the same through it, compiled or not (torch.compile traces the functions)
    from condense.models import build_model

    net = build_model("convnet", 1, 10, 28, seed=0, width=8)
    xb = torch.randn(4, 1, 28, 28)
    ref = torch.autograd.grad(net(xb).square().sum(), list(net.parameters()))
    got = torch.autograd.grad(torch.compile(net)(xb).square().sum(), list(net.parameters()))
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
