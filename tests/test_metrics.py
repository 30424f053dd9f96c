"""DD-Ranking scores against values computed by hand."""
import pytest

from condense.errors import CondenseError
from evaluators.metrics import ars, hlr, ior, lrs, squash


def test_squash_maps_the_interval_onto_zero_one():
    assert squash(-1) == pytest.approx(0.0)
    assert squash(1) == pytest.approx(1.0)
    assert squash(0) == pytest.approx(0.268941, abs=1e-6)


def test_scores_by_hand():
    # full data 93.5%, synthetic 84.0% (hard), random 74.0%
    assert hlr(0.935, 0.84) == pytest.approx(0.095)
    assert ior(0.84, 0.74) == pytest.approx(0.10)
    assert lrs(0.10, 0.095) == pytest.approx(0.270006, abs=1e-6)  # (e^0.0025 - e^-1) / (e - e^-1)
    assert ars(0.08, 0.12, gamma=0.5) == pytest.approx(0.313687, abs=1e-6)  # squash(0.10)


def test_percentages_are_refused_instead_of_saturating():
    with pytest.raises(CondenseError, match="fractions"):
        hlr(93.5, 84.0)
    with pytest.raises(CondenseError):
        lrs(10.0, 9.5)


def _report(rows, labels="hard"):
    """A report with (method, source, mean accuracy) rows on one architecture at IPC 10."""
    from evaluators.protocols import get_protocol
    from evaluators.report import Report, Row
    from evaluators.retrain import ArchResult

    proto = get_protocol("dsa" if labels == "hard" else "kd-static")
    return Report(proto, "fashion-mnist", 0, [Row(m, 10, src, [ArchResult("convnet", [acc])]) for m, src, acc in rows])


def test_report_scores_take_each_row_against_the_random_row_of_its_ipc():
    from evaluators.metrics import add_ars, add_scores

    report = _report([("dm", "dm.h5", 0.84), ("random (real subset)", "baseline", 0.74)])
    add_scores(report, 0.935)
    s = report.rows[0].extra["scores"]["convnet"]
    assert s["HLR"] == pytest.approx(0.095) and s["IOR"] == pytest.approx(0.10)
    assert s["LRS"] == pytest.approx(0.270006, abs=1e-6)
    plain = _report([("dm", "dm.h5", 0.70), ("random (real subset)", "baseline", 0.58)])  # without augmentation
    add_ars(report, plain)
    s = report.rows[0].extra["scores"]["convnet"]
    assert s["ARS"] == pytest.approx(0.318413, abs=1e-6)  # gaps 0.10 (with) and 0.12 (without): squash(0.11)
    assert s["acc_without_augmentation"] == 0.70
    with pytest.raises(CondenseError, match="baseline random"):
        add_scores(_report([("dm", "dm.h5", 0.84)]), 0.935)
    with pytest.raises(CondenseError, match="hard-label"):
        add_scores(_report([("dm", "x", 0.8), ("random (real subset)", "baseline", 0.7)], labels="static"), 0.9)
