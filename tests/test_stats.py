"""The statistics behind the verdicts: intervals from scipy, pairing by seed, Holm's correction, TOST."""

import pytest
from scipy.stats import ttest_ind, ttest_rel

from sharebench.report.stats import Comparison, compare, mean_ci, minimal_detectable_effect, verdicts


def by_seed(*values: float) -> dict[int, float]:
    return dict(enumerate(values))


def test_mean_and_confidence_interval_follow_students_t():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    assert mean_ci([5.0]) == (5.0, None) and mean_ci([]) == (None, None)
    assert mean_ci([2.0, 2.0]) == (2.0, 0.0)


def test_unpaired_difference_has_welchs_confidence_interval():
    values, reference = [1.0, 2.0, 3.5], [2.0, 4.0, 6.0, 7.0]
    comparison = compare(by_seed(*values), by_seed(*reference), paired=False)
    low, high = ttest_ind(values, reference, equal_var=False).confidence_interval(0.95)
    assert comparison.difference == pytest.approx((low + high) / 2)
    assert comparison.half_width == pytest.approx((high - low) / 2)
    assert comparison.test_name() == "Welch"
    assert compare(by_seed(1.0), by_seed(*reference), paired=False).half_width is None
    assert compare({}, by_seed(*reference), paired=False) is None


def test_paired_difference_is_taken_seed_by_seed_and_is_tighter_when_seeds_agree():
    # Seeds move both configurations together (data order, evaluation batches): pairing removes that spread.
    values, reference = [1.70, 1.62, 1.66], [1.68, 1.60, 1.65]
    paired = compare(by_seed(*values), by_seed(*reference), paired=True)
    low, high = ttest_rel(values, reference).confidence_interval(0.95)
    assert paired.difference == pytest.approx((low + high) / 2) and paired.half_width == pytest.approx((high - low) / 2)
    assert paired.test_name() == "paired, 3 seeds"
    unpaired = compare(by_seed(*values), by_seed(*reference), paired=False)
    assert paired.half_width < unpaired.half_width / 3
    # Only the seeds both have are paired.
    partial = compare({0: 1.70, 1: 1.62, 2: 1.66, 3: 9.0}, by_seed(*reference), paired=True)
    assert partial.seeds == 3 and partial.difference == pytest.approx(paired.difference)


def test_holms_correction_takes_back_a_verdict_that_one_test_alone_would_give():
    significant_alone = Comparison(0.05, 0.04, (0.01, 0.09), p_value=0.03)
    clear = Comparison(0.2, 0.05, (0.16, 0.24), p_value=0.001)
    assert verdicts([significant_alone], True, None) == ["worse"]
    unclear = Comparison(0.01, 0.05, (-0.03, 0.05), p_value=0.5)
    # Holm: 0.001 ≤ 0.05 / 3, then 0.03 > 0.05 / 2 stops the rejections.
    assert verdicts([significant_alone, clear, unclear], True, None) == ["inconclusive", "worse", "inconclusive"]
    assert verdicts([clear], False, None) == ["better"]  # higher is better


def test_equivalence_needs_the_90_percent_interval_inside_the_margin():
    inside = Comparison(0.004, 0.012, (-0.006, 0.014), p_value=0.5)
    wide = Comparison(0.004, 0.05, (-0.03, 0.04), p_value=0.8)
    assert verdicts([inside, wide], True, 0.02) == ["equivalent within ±0.02", "inconclusive"]
    assert verdicts([inside], True, None) == ["inconclusive"]  # no margin, no equivalence
    assert verdicts([None, Comparison(0.1)], True, 0.02) == ["—", "—"]  # no runs, or one seed: no interval


def test_minimal_detectable_effect_grows_with_the_standard_error():
    comparison = compare(by_seed(1.70, 1.62, 1.66), by_seed(1.68, 1.60, 1.65), paired=True)
    effect = comparison.minimal_detectable_effect()
    assert effect > comparison.half_width  # 80 % power needs more than the interval's half-width
    wider = compare(by_seed(1.70, 1.62, 1.66), by_seed(1.60, 1.65, 1.68), paired=True)
    assert wider.minimal_detectable_effect() > effect
    median, smallest, largest = minimal_detectable_effect([comparison, wider, None])
    assert smallest == pytest.approx(effect) and largest == pytest.approx(wider.minimal_detectable_effect())


def test_the_detectable_effect_after_correction_uses_holms_strictest_step():
    from scipy import stats

    comparison = compare(by_seed(1.70, 1.62, 1.66, 1.64), by_seed(1.68, 1.60, 1.65, 1.61), paired=True)
    t = stats.t(comparison.degrees_of_freedom)
    expected = (t.ppf(1 - 0.05 / 2 / 45) + t.ppf(0.8)) * comparison.standard_error  # a family of 45 tests
    assert comparison.minimal_detectable_effect(45) == pytest.approx(expected)
    assert comparison.minimal_detectable_effect(45) > comparison.minimal_detectable_effect() * 1.5


def test_every_verdict_shows_its_detectable_effect_after_the_tables_correction():
    from sharebench.report.collect import Verdicts

    judged = Verdicts()
    rows = [judged.add(compare(by_seed(1.70 + d, 1.62 + d, 1.66 + d), by_seed(1.68, 1.60, 1.65), paired=True), [])
            for d in (0.0, 0.3)]  # fmt: skip
    judged.judge(True, 0.02)
    for row, comparison in zip(rows, judged.comparisons, strict=True):
        assert row[-1].endswith(f" (MDE {comparison.minimal_detectable_effect(2):.4f})")
    notes = " ".join(judged.notes("val_loss_full", 0.02))
    assert "family of 2 tested comparisons" in notes and "intersection-union" in notes and "after Holm" in notes
