import pytest
import torch

from condense.augment import DSA, FAMILIES, make_dsa


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_params_apply_identically_to_both_batches(family):
    aug = DSA(family)
    a = torch.randn(6, 3, 32, 32)
    b = torch.randn(6, 3, 32, 32)
    p = aug.sample(6, gen(1), 32)
    # A per-sample draw is one transform per image: image i under the whole draw equals image i
    # alone under its own slice of the draw; and a shared draw broadcasts to any batch, [a; b] or each.
    whole = aug(a, p)
    for i in (0, 5):
        own = type(p)(tuple((name, {k: v[i:i + 1] for k, v in d.items()}) for name, d in p.ops), 1)
        assert torch.allclose(aug(a[i:i + 1], own)[0], whole[i], atol=1e-5)
    shared = aug.sample(6, gen(2), 32, per_sample=False)
    both = aug(torch.cat([a, b]), shared)
    assert torch.allclose(both[:6], aug(a, shared), atol=1e-6)
    assert torch.allclose(both[6:], aug(b, shared), atol=1e-6)


def test_siamese_transform_is_the_same_geometry_on_two_batches():
    # A real batch and a synthetic batch that differ by a constant image get transformed by the same
    # map: for a linear (geometric) family the difference is the transformed difference.
    aug = DSA("rotate")
    a, d = torch.randn(4, 1, 28, 28), torch.randn(1, 1, 28, 28)
    p = aug.sample(4, gen(3), 28)
    assert torch.allclose(aug(a + d, p) - aug(a, p), aug(d.expand(4, -1, -1, -1), p), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_the_input_pixels(family):
    aug = DSA(family)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    g = gen(4)
    p = aug.sample(4, g, 32)
    if family == "flip":  # make sure something is flipped and something is not
        p = aug.sample(4, gen(7), 32)
    aug(x, p).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_draws_differ_and_never_touch_the_global_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    aug = DSA()
    g = gen(5)
    ps = [aug.sample(8, g, 32) for _ in range(20)]
    assert torch.equal(before, torch.random.get_rng_state())
    assert len({p.ops[0][0] for p in ps}) > 1  # several families drawn over 20 calls


def test_single_mode_draws_one_family_and_all_mode_every_family():
    single = DSA(mode="single").sample(2, gen(0), 32)
    every = DSA(mode="all").sample(2, gen(0), 32)
    assert len({name for name, _ in single.ops}) in (1, 3)  # color is three ops
    assert [n for n, _ in every.ops] == ["brightness", "saturation", "contrast", "crop", "cutout", "flip", "scale",
                                         "rotate"]


def test_parameter_ranges_follow_dsa():
    g = gen(6)
    for _ in range(50):
        crop = DSA("crop").sample(16, g, 32).ops[0][1]["shift"]
        assert crop.abs().max() <= 4  # int(0.125 * 32 + 0.5)
        sc = DSA("scale").sample(16, g, 32).ops[0][1]["factor"]
        assert sc.min() >= 1 / 1.2 - 1e-6 and sc.max() <= 1.2 + 1e-6
        rot = DSA("rotate").sample(16, g, 32).ops[0][1]["degrees"]
        assert rot.abs().max() <= 15
    side = DSA("cutout").sample(1, g, 32).ops[0][1]["side"]
    assert int(side) == 16


def test_crop_is_an_exact_integer_shift_with_zero_fill():
    aug = DSA("crop")
    x = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    p = aug.sample(1, gen(0), 32)
    dx, dy = (int(v) for v in p.ops[0][1]["shift"][0])
    out = aug(x, p)
    assert dx != 0 or dy != 0
    expected = torch.roll(x, (dy, dx), (2, 3))
    inner = (slice(None), slice(None), slice(5, 27), slice(5, 27))
    assert torch.allclose(out[inner], expected[inner], atol=1e-3)


def test_flip_and_cutout_behave():
    x = torch.randn(1, 1, 8, 8)
    aug = DSA("flip")
    p = aug.sample(1, gen(0), 8)
    p = type(p)((("flip", {"flip": torch.tensor([True])}),), 1)
    assert torch.equal(aug(x, p), x.flip(3))
    cut = DSA("cutout")
    q = cut.sample(1, gen(0), 8)
    out = cut(torch.ones(1, 1, 8, 8), q)
    zeros = int((out == 0).sum())
    assert 0 < zeros <= 16  # a 4x4 square, clipped at the border


def test_digits_drop_flip_and_bad_strategy_is_a_clear_error():
    from condense.errors import CondenseError

    assert "flip" not in make_dsa("color_flip", allow_flip=False).families
    assert make_dsa("none") is None
    with pytest.raises(CondenseError, match="Unknown augmentation"):
        DSA("color_blur")


def test_idc_mode_applies_flip_color_and_cutout_always_and_one_geometric_family():
    aug = DSA("color_crop_cutout_flip_scale_rotate", mode="idc")
    g = gen(9)
    seen = set()
    for _ in range(30):
        names = [n for n, _ in aug.sample(2, g, 32).ops]
        assert names[:4] == ["flip", "brightness", "saturation", "contrast"] and names[-1] == "cutout"
        assert len(names) == 6 and names[4] in ("crop", "scale", "rotate")
        seen.add(names[4])
    assert seen == {"crop", "scale", "rotate"}
    ncfm = [n for n, _ in DSA("color_crop_cutout", mode="idc").sample(1, g, 32).ops]
    assert ncfm == ["brightness", "saturation", "contrast", "crop", "cutout"]


def test_dc_step_schedule_is_the_dsa_codes():
    from condense.train import TrainConfig, lr_at, total_epochs

    cfg = TrainConfig(epochs=1000, dc_step=True)
    assert total_epochs(cfg) == 1001
    assert lr_at(cfg, 0.01, 501) == 0.01 and lr_at(cfg, 0.01, 502) == pytest.approx(0.001)
