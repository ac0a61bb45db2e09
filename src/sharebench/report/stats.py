"""The statistics behind every comparison a results table makes, from scipy and statsmodels.

A comparison is the difference of a configuration's mean metric and another's. Where the runs of both share the
data order and the evaluation batches seed by seed (the suite's seeds fix both, so two configurations trained on
the same data and batch shape do), the difference is taken per seed and tested paired; otherwise Welch's t.

A table's comparisons get one verdict each (`verdicts`):
- `better` / `worse`: the two-sided test rejects "no difference" at 5 % after Holm's correction over all the
  table's comparisons;
- `equivalent within ±m`: otherwise, when the 90 % confidence interval of the difference lies inside ±m, the
  recipe's equivalence margin (two one-sided tests at 5 %, TOST). These are not corrected: by the
  intersection-union principle, the table's claim that every comparison it calls equivalent is so holds at 5 %;
  one such verdict read alone, picked from many, is held to less;
- `inconclusive`: neither; `—` where an interval needs more seeds than there are.
Each verdict carries its own minimal detectable effect after the correction (80 % power at Holm's strictest step):
a difference smaller than that could not have been called better or worse.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05
POWER = 0.8  # of the minimal detectable effect


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The mean and the half-width of its confidence interval (Student's t; None with fewer than 2 values)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    if len(set(values)) == 1:
        return mean, 0.0
    low, high = stats.ttest_1samp(values, 0).confidence_interval(confidence)
    return mean, float(high - low) / 2


@dataclass(frozen=True)
class Comparison:
    """`difference` (mean of the values minus mean of the reference) with its 95 % half-width and 90 % interval,
    the two-sided p-value, and the test's standard error and degrees of freedom (None without an interval)."""

    difference: float
    half_width: float | None = None
    interval_90: tuple[float, float] | None = None
    p_value: float | None = None
    standard_error: float | None = None
    degrees_of_freedom: float | None = None
    paired: bool = False
    seeds: int = 0

    def minimal_detectable_effect(self, family: int = 1) -> float | None:
        """The smallest true difference this test finds with 80 % power at 5 % two-sided, corrected for a family of
        `family` tests at Holm's strictest step (5 %/family: what every comparison of the table is sure to be
        held to; 1: before correction)."""
        if self.standard_error is None or self.degrees_of_freedom is None:
            return None
        t = stats.t(self.degrees_of_freedom)
        return float((t.ppf(1 - ALPHA / 2 / family) + t.ppf(POWER)) * self.standard_error)

    def test_name(self) -> str:
        """How the interval was computed (— without one)."""
        if self.half_width is None:
            return "—"
        return f"paired, {self.seeds} seeds" if self.paired else "Welch"


def compare(values: Mapping[object, float], reference: Mapping[object, float], paired: bool) -> Comparison | None:
    """Compare two configurations' metric, given per seed; `paired`: their runs share data order and evaluation
    batches seed by seed, so the seeds both have are compared pairwise."""
    if not values or not reference:
        return None
    difference = statistics.fmean(values.values()) - statistics.fmean(reference.values())
    common = [seed for seed in values if seed in reference]
    if paired and len(common) >= 2:
        differences = [values[s] - reference[s] for s in common]
        difference = statistics.fmean(differences)
        if len(set(differences)) == 1:  # identical runs: nothing varies, the difference is exact
            return Comparison(difference, 0.0, (difference, difference), 1.0 if difference == 0 else 0.0,
                              paired=True, seeds=len(common))  # fmt: skip
        result = stats.ttest_1samp(differences, 0)
    elif len(values) >= 2 and len(reference) >= 2:
        if len(set(values.values()) | set(reference.values())) == 1:
            return Comparison(0.0, 0.0, (0.0, 0.0), 1.0)
        result = stats.ttest_ind(list(values.values()), list(reference.values()), equal_var=False)
    else:
        return Comparison(difference)
    low, high = result.confidence_interval(1 - ALPHA)
    low_90, high_90 = result.confidence_interval(1 - 2 * ALPHA)
    error = (high - low) / 2 / stats.t(result.df).ppf(1 - ALPHA / 2)
    return Comparison(
        difference, float(high - low) / 2, (float(low_90), float(high_90)), float(result.pvalue), float(error),
        float(result.df), paired=paired and len(common) >= 2, seeds=len(common),
    )  # fmt: skip


def verdicts(comparisons: Sequence[Comparison | None], lower_is_better: bool, margin: float | None) -> list[str]:
    """One verdict per comparison (see the module's docstring), Holm's correction taken over all of them."""
    tested = [i for i, c in enumerate(comparisons) if c is not None and c.p_value is not None]
    rejected: dict[int, bool] = {}
    if tested:
        reject, *_ = multipletests([comparisons[i].p_value for i in tested], alpha=ALPHA, method="holm")
        rejected = dict(zip(tested, map(bool, reject), strict=True))
    said = []
    for i, comparison in enumerate(comparisons):
        if comparison is None or comparison.interval_90 is None:
            said.append("—")
        elif rejected.get(i):
            said.append("better" if (comparison.difference < 0) == lower_is_better else "worse")
        elif margin is not None and -margin <= comparison.interval_90[0] and comparison.interval_90[1] <= margin:
            said.append(f"equivalent within ±{margin:g}")
        else:
            said.append("inconclusive")
    return said


def minimal_detectable_effect(comparisons: Sequence[Comparison | None], family: int = 1
                              ) -> tuple[float, float, float] | None:  # fmt: skip
    """The median, smallest and largest minimal detectable effect of a table's comparisons (`family`: corrected
    for that many tests, as `Comparison.minimal_detectable_effect`)."""
    effects = sorted(e for c in comparisons if c is not None and (e := c.minimal_detectable_effect(family)) is not None)
    return (statistics.median(effects), effects[0], effects[-1]) if effects else None
