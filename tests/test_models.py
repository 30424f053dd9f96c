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


@pytest.mark.parametrize("arch", ["convnet", "convnetbn", "resnet18bn", "vgg11", "mlp"])
def test_reinitialize_draws_what_build_model_draws_whatever_the_layout(arch):
    """DM and DataDAM redraw one persistent network in place on the device; on a CPU the draws must
    be the ones a freshly built network of the same seed gets (so CPU results never change)."""
    from condense.models import reinitialize_

    fresh = build_model(arch, 1, 10, 28, seed=123)
    kept = build_model(arch, 1, 10, 28, seed=5).to(memory_format=torch.channels_last)
    reinitialize_(kept, torch.Generator().manual_seed(123))
    theirs = kept.state_dict()
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    reinitialize_(kept, torch.Generator().manual_seed(124))
    assert not torch.equal(kept.classifier.weight, fresh.classifier.weight)

