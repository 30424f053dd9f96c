"""Class-wise matching machinery (DM, DataDAM): losses, chunking, learning, resume."""
import pytest
import torch
import torch.nn.functional as F

from algorithms.base import Context, settings_from
from algorithms.datadam import DataDAM
from algorithms.dm import DM
from condense import fast
from condense.run import RunSpec, run_distill


def make(cls, real, seed=0, **over):
    cfg, execution = settings_from(cls, {"ipc": 2, "iters": 3, "batch_real": 8, "width": 16, **over})
    a = cls(cfg, real, Context(seed=seed, execution=execution))
    a.init()
    return a


def test_dm_loss_is_the_squared_gap_of_class_mean_embeddings(real):
    a = make(DM, real, dsa="none")
    net = a.sample_network()
    g_state = a.ctx.generator.get_state()
    params = a.siamese_params()
    means = a.real_class_means(net, params, list(range(10)))
    # recompute class 0 by hand with the same draws
    a.ctx.generator.set_state(g_state)
    a.siamese_params()
    x0 = a.real.images_of(0, 8, a.ctx.generator)
    with torch.no_grad():
        assert torch.allclose(means[0][0], net.embed(x0).mean(0), atol=1e-5)
    syn = a.syn_class_means(net, a.images, params, list(range(10)), 2)
    manual = (net.embed(a.images[:2]).mean(0) - means[0][0]).square().sum()
    assert torch.allclose(a.class_loss(means[0], syn[0]), manual, atol=1e-4)


def test_chunking_the_real_forward_is_exact_with_instance_norm(real):
    outs = []
    for chunk, largest in ((0, 80), (8, 8), (24, 24), (3, 3)):
        a = make(DM, real, chunk=chunk)
        net = a.sample_network()
        sizes: list[int] = []
        forward = a.real_features
        a.real_features = lambda n, x, phi: sizes.append(x.shape[0]) or forward(n, x, phi)  # noqa: B023
        outs.append(a.real_class_means(net, a.siamese_params(), list(range(10))))
        assert max(sizes) == largest and sum(sizes) == 80  # the pieces it promises, covering every image
    for other in outs[1:]:
        for c in range(10):
            assert torch.allclose(outs[0][c][0], other[c][0], atol=1e-5)


def test_auto_chunk_follows_the_device_and_bad_chunks_are_refused(real):
    from algorithms.ncfm import NCFM

    assert make(DM, real).chunk == DM.cpu_chunk  # -1 (the default) on a CPU context: the method's choice
    assert DM.cpu_chunk != NCFM.cpu_chunk  # so the line above tells the method's choice from a constant
    assert make(DM, real, chunk=40).chunk == 40
    with pytest.raises(Exception, match="chunk must be -1"):
        make(DM, real, chunk=-3)


def test_compile_auto_is_the_measured_choice_per_method_and_bad_values_are_refused(real):
    assert make(DM, real).compiles == DM.compile_on_cpu  # a CPU context: the method's measured choice
    assert make(DM, real, compile="true").compiles and make(DM, real, compile=True).compiles
    assert not make(DM, real, compile="false").compiles
    with pytest.raises(Exception, match="compile must be auto, true or false"):
        make(DM, real, compile="sometimes")


def test_dm_with_batchnorm_normalizes_over_all_classes_at_once(real):
    """As the official DM code does for BN networks: one batch of every class's real images."""
    outs = []
    for bn_chunk in (0, 8):  # 8: the bounded-memory exact path
        a = make(DM, real, bn_chunk=bn_chunk, norm="batchnorm", compile=False, dsa="none")
        net = a.sample_network()
        g_state = a.ctx.generator.get_state()
        outs.append(a.real_class_means(net, a.siamese_params(), list(range(10))))
    a.ctx.generator.set_state(g_state)
    a.siamese_params()
    x = torch.cat([a.real.images_of(c, 8, a.ctx.generator) for c in range(10)])
    with torch.no_grad():
        whole = net.embed(x).view(10, 8, -1).mean(1)
        alone = net.embed(x[:8]).mean(0)  # class 0 normalized by itself: not what BN should see
    for means in outs:
        assert torch.allclose(means[0][0], whole[0], atol=1e-4)
        assert torch.allclose(means[9][0], whole[9], atol=1e-4)
    assert not torch.allclose(outs[0][0][0], alone, atol=1e-3)


def test_datadam_attention_is_the_normalized_channel_sum():
    f = torch.randn(3, 5, 4, 4)
    for p in (1.0, 4.0):
        algo = DataDAM.__new__(DataDAM)
        algo.cfg = DataDAM.Config(power=p)
        net = type("N", (), {"features": lambda self, x: ([f, f * 2], x)})()
        att = algo.features(net, torch.zeros(3, 7))[0]
        expected = F.normalize(f.abs().pow(p).sum(1).flatten(1), dim=1)
        assert torch.allclose(att, expected, atol=1e-6) and att.shape == (3, 16)


def test_datadam_defaults_follow_the_official_code(real):
    cfg = DataDAM.Config()
    assert (cfg.norm, cfg.power, cfg.iters, cfg.batch_real, cfg.lr_img, cfg.momentum) == \
        ("batchnorm", 1.0, 20000, 64, 1.0, 0.5)
    a = make(DataDAM, real)
    assert a.lam == 0.01  # 28 px
    assert isinstance(a.sample_network().norms[0], torch.nn.BatchNorm2d)


@pytest.mark.parametrize("cls", [DM, DataDAM])
def test_steps_move_the_pixels_and_reduce_the_loss_on_a_fixed_network(real, cls):
    a = make(cls, real, dsa="none", lr_img=0.5)
    net = a.sample_network()
    a.sample_network = lambda: net
    before = a.images.detach().clone()
    losses = [a.step(i)["loss"] for i in range(8)]
    assert not torch.equal(before, a.images)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("cls", [DM, DataDAM])
def test_resume_gives_the_same_images(real, tmp_path, cls):
    whole = run_distill(make(cls, real, iters=4), RunSpec(cls.name, out=tmp_path / "a.h5"))
    half = make(cls, real, iters=4)
    half.cfg.iters = 2
    run_distill(half, RunSpec(cls.name, out=tmp_path / "tmp.h5"))
    state = {"generator": half.ctx.generator.get_state(), **half.state_dict()}
    b = make(cls, real, iters=4)
    b.load_state_dict(state)
    for it in range(2, 4):
        b.step(it)
    assert torch.allclose(b.images, whole.images.to(b.images.device), atol=1e-6)


def test_noise_init_and_bad_init(real):
    a = make(DM, real, init="noise")
    assert a.images.shape == (20, 1, 28, 28)
    from condense.errors import CondenseError

    with pytest.raises(CondenseError, match="init must be"):
        make(DM, real, init="zeros")


def test_pixel_sgd_is_torch_sgd_bit_for_bit_and_resumes_from_either_format():
    from algorithms.base import PixelSGD

    torch.manual_seed(0)
    grads = [torch.randn(4, 3) for _ in range(4)]
    a = torch.randn(4, 3).requires_grad_(True)
    b = a.detach().clone().requires_grad_(True)
    ours, ref = PixelSGD(a, lr=0.7, momentum=0.5), torch.optim.SGD([b], lr=0.7, momentum=0.5)
    for g in grads[:2]:
        for p, o in ((a, ours), (b, ref)):
            o.zero_grad()
            p.grad = g.clone()
            o.step()
    assert torch.equal(a, b)
    # resume both from saved states (ours, and a checkpoint written by torch.optim.SGD)
    for state in (ours.state_dict(), ref.state_dict()):
        c = a.detach().clone().requires_grad_(True)
        o = PixelSGD(c, lr=1.0, momentum=0.0)
        o.load_state_dict(state)
        for g in grads[2:]:
            c.grad = g.clone()
            o.step()
        d = b.detach().clone().requires_grad_(True)
        r = torch.optim.SGD([d], lr=0.7, momentum=0.5)
        r.load_state_dict(ref.state_dict())
        for g in grads[2:]:
            d.grad = g.clone()
            r.step()
        assert torch.equal(c, d)


@pytest.mark.parametrize("cls", [DM, DataDAM])
def test_synthetic_side_in_class_groups_gives_the_same_images(real, cls):
    """The loss is a sum over classes, so backward in groups of classes is exact with instance norm."""
    out = []
    for syn_chunk in (0, 2, 5):
        a = make(cls, real, syn_chunk=syn_chunk, norm="instancenorm", compile=False)
        assert len(a.syn_groups(list(range(10)))) == (1 if syn_chunk == 0 else 10 if syn_chunk == 2 else 5)
        for i in range(2):
            a.step(i)
        out.append(a.images.detach().clone())
    for x in out[1:]:
        assert torch.allclose(out[0], x, atol=1e-5)
    with pytest.raises(Exception, match="syn_chunk"):
        make(DM, real, syn_chunk=-2)


@pytest.mark.parametrize("cls", [DM, DataDAM])
def test_fast_paths_on_or_off_give_the_same_set(real, cls):
    """The `fast` execution setting changes how, not what: two steps either way, same images."""
    out = []
    for on in (True, False):
        a = make(cls, real, fast=on, norm="instancenorm", compile=False)
        with fast.use(on):
            for i in range(2):
                a.step(i)
        out.append(a.images.detach().clone())
    assert torch.allclose(out[0], out[1], atol=1e-5)
