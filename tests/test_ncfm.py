"""NCFM: the CF loss, the psi ascent, multi-formation, the pool, and the file it writes."""
import math

import pytest
import torch

import condense
from algorithms.base import Context, config_from
from algorithms.ncfm import NCFM, FrequencySampler, ascend, cf_loss, cf_terms, decode, mosaic, real_side_t_grad
from condense.artifacts import Artifacts
from condense.run import RunSpec, run_distill


def cf_of(x, t):
    cos, sin = cf_terms(x, t)
    return cos.mean(0), sin.mean(0)


def test_cf_loss_is_a_constant_times_the_mean_modulus_of_the_cf_gap():
    g = torch.Generator().manual_seed(0)
    x, y, t = torch.randn(50, 6, generator=g), torch.randn(7, 6, generator=g) + 0.3, torch.randn(32, 6, generator=g)
    r, s = cf_of(x, t), cf_of(y, t)
    phi_r = torch.complex(*r)
    phi_s = torch.complex(*s)
    expected = 300 / math.sqrt(2) * (phi_r - phi_s).abs().mean()
    assert torch.allclose(cf_loss(r, s), expected, rtol=1e-5)
    assert cf_loss(r, r) < 1e-3 * expected  # the same distribution: (almost) zero
    # alpha = 1, beta = 0 leaves the amplitude gap; alpha = beta = 1 the full modulus
    assert torch.allclose(cf_loss(r, s, 1, 0, 1), (phi_r.abs() - phi_s.abs()).abs().mean(), atol=1e-5)
    assert torch.allclose(cf_loss(r, s, 1, 1, 1), (phi_r - phi_s).abs().mean(), atol=1e-5)


def test_psi_ascent_changes_psi_and_increases_the_discrepancy():
    g0 = torch.Generator().manual_seed(1)
    real, syn = torch.randn(64, 8, generator=g0), torch.randn(16, 8, generator=g0) * 0.5 + 0.2
    psi = FrequencySampler(8, noise_dim=4, hidden=16)
    opt = torch.optim.SGD(psi.parameters(), lr=0.05, momentum=0.5)
    before = [p.detach().clone() for p in psi.parameters()]

    def discrepancy():  # the same z and eps every time: a deterministic function of psi
        t = psi(64, 16, torch.Generator().manual_seed(7))
        leaf = t.detach().requires_grad_(True)
        loss = cf_loss(cf_of(real, leaf), cf_of(syn, leaf))
        return t, leaf, loss

    start = float(discrepancy()[2].detach())
    for _ in range(25):
        t, leaf, loss = discrepancy()
        loss.backward()
        ascend(opt, t, leaf)
    assert any(not torch.equal(a, b) for a, b in zip(before, psi.parameters()))
    assert float(discrepancy()[2].detach()) > start * 1.05


def test_real_side_frequency_gradient_matches_autograd():
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(40, 5, generator=g), dim=1)
    y = torch.randn(9, 5, generator=g)
    t = torch.randn(12, 5, generator=g, requires_grad=True)
    loss = cf_loss(cf_of(x, t), cf_of(y, t.detach()))  # only the real side depends on t here
    (auto,) = torch.autograd.grad(loss, t)
    re, im = [m.detach().requires_grad_(True) for m in cf_of(x, t.detach())]
    cf_loss((re, im), cf_of(y, t.detach())).backward()
    manual = real_side_t_grad(x, t.detach(), re.grad, im.grad, chunk=7)
    assert torch.allclose(manual, auto, atol=1e-5)


def test_sampler_starts_as_the_unit_gaussian():
    psi = FrequencySampler(32)
    t = psi(4096, 16, torch.Generator().manual_seed(0))
    assert t.shape == (4096, 32)
    t = t.detach()
    assert abs(float(t.std()) - 1.0) < 0.05 and abs(float(t.mean())) < 0.05


def test_mosaic_and_decode_are_multi_formation():
    x = torch.rand(8, 1, 28, 28)
    m = mosaic(x, 2)
    assert m.shape == (2, 1, 28, 28)
    assert torch.allclose(m[0, :, :14, :14], torch.nn.functional.interpolate(
        x[:1], size=(14, 14), mode="bilinear", align_corners=False, antialias=True)[0], atol=1e-5)
    d = decode(m, 2)
    assert d.shape == (8, 1, 28, 28)
    # each decoded image is an upsampled quarter: close to its source image, far from the others
    err = torch.cdist(d.flatten(1), x.flatten(1))
    assert bool((err.argmin(1) == torch.arange(8)).all())
    assert torch.equal(decode(x, 1), x)


def make(real, tmp_path, **over):
    cfg = config_from(NCFM, {"ipc": 2, "iters": 3, "batch_real": 8, "pool_size": 2, "pool_epochs": 1,
                             "num_freqs": 32, **over})
    a = NCFM(cfg, real, Context(seed=0, artifacts=Artifacts(tmp_path / "cache")))
    return a


def test_pool_is_built_once_with_init_and_trained_weights(real, tmp_path):
    a = make(real, tmp_path)
    a.init()
    assert len(a.pool) == 2 and not torch.equal(a.pool[0][0], a.pool[0][1])
    files = sorted((tmp_path / "cache" / "networks").glob("*.pt"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]
    b = make(real, tmp_path)
    b.init()
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # reused, not rebuilt
    assert torch.equal(a.pool[1][1], b.pool[1][1])


def test_file_stores_compact_and_decoded_images(real, tmp_path):
    out = tmp_path / "n.h5"
    run_distill(make(real, tmp_path), RunSpec("ncfm", out=out))
    s = condense.load(out)
    assert s.images.shape == (80, 1, 28, 28) and s.counts() == [8] * 10
    assert s.compact["images"].shape == (20, 1, 28, 28) and s.stored_images() == 20
    assert s.compact_attrs == {"factor": 2, "decode": "zoom"}
    assert torch.allclose(decode(s.compact["images"], 2), s.images, atol=1e-5)
    lo, hi = s.preprocess(torch.zeros(1, 1, 1, 1)), s.preprocess(torch.ones(1, 1, 1, 1))
    assert float(s.compact["images"].min()) >= float(lo) - 1e-5 and float(s.compact["images"].max()) <= float(hi) + 1e-5
    plain = run_distill(make(real, tmp_path, factor=1, calib=False), RunSpec("ncfm", out=tmp_path / "p.h5"))
    assert plain.images.shape == (20, 1, 28, 28) and not plain.compact


@pytest.mark.parametrize("over", [{"psi": True}, {"class_steps": False}])
def test_steps_update_pixels_and_resume_exactly(real, tmp_path, over):
    whole = make(real, tmp_path, iters=3, **over)
    whole.init()
    psi_start = [p.detach().clone() for p in whole.psi.parameters()] if over.get("psi") else []
    for i in range(3):
        logs = whole.step(i)
    assert set(logs) == {"loss", "calib", "lr"} and math.isfinite(logs["loss"])
    half = make(real, tmp_path, iters=3, **over)
    half.init()
    half.step(0)
    state = half.state_dict()
    resumed = make(real, tmp_path, iters=3, **over)
    resumed.load_state_dict(state)
    for i in (1, 2):
        resumed.step(i)
    assert torch.allclose(resumed.images, whole.images, atol=1e-6)
    if over.get("psi"):  # psi learned (its ascent steps moved it)
        assert any(not torch.equal(p, q) for p, q in zip(whole.psi.parameters(), psi_start))
