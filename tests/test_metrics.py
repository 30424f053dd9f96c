"""DD-Ranking scores against values computed by hand."""
import math

import pytest

from condense.errors import CondenseError
from evaluators.metrics import ars, hlr, ior, lrs, squash


def test_squash_maps_the_interval_onto_zero_one():
    assert squash(-1) == pytest.approx(0.0)
    assert squash(1) == pytest.approx(1.0)
    assert squash(0) == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))  # 0.2689...


def test_scores_by_hand():
    # full data 93.5%, synthetic 84.0% (hard), random 74.0%
    assert hlr(0.935, 0.84) == pytest.approx(0.095)
    assert ior(0.84, 0.74) == pytest.approx(0.10)
    alpha = 0.5 * 0.10 - 0.5 * 0.095  # 0.0025
    expected = (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))
    assert lrs(0.10, 0.095) == pytest.approx(expected)
    assert lrs(0.10, 0.095) == pytest.approx(0.27001, abs=1e-4)  # (e^0.0025 - e^-1) / (e - e^-1)
    assert ars(0.08, 0.12, gamma=0.5) == pytest.approx(squash(0.10))


def test_percentages_are_refused_instead_of_saturating():
    with pytest.raises(CondenseError, match="fractions"):
        hlr(93.5, 84.0)
    with pytest.raises(CondenseError):
        lrs(10.0, 9.5)
