import pytest
import torch

from algorithms.base import Context, config_from
from algorithms.herding import Herding, herding
from algorithms.kcenter import KCenter, kcenter_greedy
from algorithms.random import Random
from condense.artifacts import Artifacts
from condense.errors import CondenseError


def test_herding_tracks_the_mean_better_than_chance():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(500, 16, generator=g)
    idx = herding(f, 10)
    assert len(set(idx.tolist())) == 10
    err = (f[idx].mean(0) - f.mean(0)).norm()
    rand = torch.stack([(f[torch.randperm(500, generator=g)[:10]].mean(0) - f.mean(0)).norm() for _ in range(50)])
    assert err < rand.quantile(0.05)


def test_kcenter_covers_separated_clusters():
    centres = torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10]])
    pts = torch.cat([c + 0.1 * torch.randn(25, 2, generator=torch.Generator().manual_seed(i)) for i, c in
                     enumerate(centres)])
    idx = kcenter_greedy(pts, 4)
    assert sorted((i // 25) for i in idx.tolist()) == [0, 1, 2, 3]
    assert kcenter_greedy(pts, 1).numel() == 1


@pytest.mark.parametrize("cls", [Random, Herding, KCenter])
def test_selection_baselines_pick_ipc_real_images_per_class_reproducibly(real, cls, tmp_path):
    def run():
        cfg = config_from(cls, {"ipc": 3, "embed_epochs": 1})
        algo = cls(cfg, real, Context(seed=1, artifacts=Artifacts(tmp_path)))
        algo.init()
        return algo.synthetic()

    s1, s2 = run(), run()
    assert s1.counts() == [3] * 10 and torch.equal(s1.images, s2.images)
    assert s1.meta.algorithm == cls.name and s1.meta.ipc == 3
    # every chosen image is a real training image of its class
    pool = real.pre(real.train.images)
    for img, c in zip(s1.images, s1.labels):
        match = (pool - img).flatten(1).abs().amax(1) < 1e-6
        assert bool(match.any()) and bool((real.train.labels[match] == c).all())


def test_random_embed_and_bad_ipc(real, tmp_path):
    cfg = config_from(Herding, {"ipc": 2, "embed": "random"})
    algo = Herding(cfg, real, Context(artifacts=Artifacts(tmp_path)))
    algo.init()
    assert algo.synthetic().counts() == [2] * 10
    too_many = Random(config_from(Random, {"ipc": 1000}), real, Context())
    with pytest.raises(CondenseError, match="has only 24 training images"):
        too_many.init()
    with pytest.raises(CondenseError, match="not a setting"):
        config_from(Random, {"lr_img": "3"})
    with pytest.raises(CondenseError, match="expects an integer"):
        config_from(Random, {"ipc": "ten"})
