"""What a shared parameter is worth, read off a scaling ladder (experiments/scaling.yaml).

The unshared models of the ladder are fitted with a saturating power law, loss = E + A·(x/x₀)^(−α), once over
unique parameters N and once over training FLOPs C (x₀, the geometric mean of the rungs, only conditions the fit),
each rung's mean weighted by its standard error (its own seeds' spread; the pooled spread where it has one seed).
A floor E at a bound of its range (0, or the lowest loss) is not identified by the rungs, and the table says so.
A shared configuration's **effective parameters** N_eff are the unshared size with its loss on the fit, and its
multiplier N_eff / N_unique says what each of its parameters is worth in unshared ones (above 1: more); over FLOPs,
C_eff / C is the compute a plain model would need for its loss over the compute it spent.

The 95 % intervals come from a bootstrap over seeds within rungs: each replicate keeps every rung, draws its
seeds' runs with replacement, and each shared configuration's seeds with replacement, refits the law and reads
every multiplier again. A configuration run with one seed has no seeds to draw from, so its loss is drawn with the
seed-to-seed spread pooled over the configurations run with several (normal, with their pooled standard
deviation). Each multiplier stands beside the paired comparison with its own rung's unshared model. How a scheme's
multiplier changes with size is the slope of log multiplier over log rung size, with its bootstrap interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

from sharebench.report.results import Configuration
from sharebench.report.stats import Comparison, compare

MIN_RUNGS = 4  # a three-parameter law through fewer sizes fits any three points exactly
BOUND_TOLERANCE = 1e-3  # a floor within this share of the lowest loss from 0 or from that loss is at its bound
BOOTSTRAP = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PowerLaw:
    """loss = floor + scale · (x / x0)^(−exponent); `floor_at_bound`: the fit pushed the floor to a bound of its
    range, so the points do not identify it."""

    floor: float
    scale: float
    exponent: float
    x0: float
    floor_at_bound: bool = False

    def loss(self, x: float) -> float:
        return self.floor + self.scale * (x / self.x0) ** -self.exponent

    def inverse(self, loss: float) -> float:
        """The x whose loss on the law is `loss`: infinite at or below the floor."""
        if loss <= self.floor:
            return math.inf
        return self.x0 * (self.scale / (loss - self.floor)) ** (1 / self.exponent)


def fit(xs: Sequence[float], losses: Sequence[float], errors: Sequence[float] | None = None) -> PowerLaw | None:
    """Least squares in the loss, each point weighted by its standard error where `errors` gives them, the floor
    kept between 0 and the lowest loss; None where it does not converge."""
    x0 = math.exp(statistics.fmean(math.log(x) for x in xs))
    lowest = min(losses)

    def law(x: np.ndarray, floor: float, log_scale: float, exponent: float) -> np.ndarray:
        return floor + np.exp(log_scale) * (x / x0) ** -exponent

    start = (lowest * 0.5, math.log(max(statistics.fmean(losses) - lowest * 0.5, 1e-6)), 0.3)
    try:
        (floor, log_scale, exponent), _ = curve_fit(law, np.asarray(xs, float), np.asarray(losses, float), p0=start,
                                                    sigma=errors, bounds=([0, -20, 1e-3], [lowest, 20, 5]),
                                                    maxfev=20000)  # fmt: skip
    except (RuntimeError, ValueError):
        return None
    at_bound = floor <= BOUND_TOLERANCE * lowest or floor >= (1 - BOUND_TOLERANCE) * lowest
    return PowerLaw(float(floor), float(math.exp(log_scale)), float(exponent), x0, bool(at_bound))


@dataclass(frozen=True)
class Rung:
    """The unshared model at one size of the ladder: its size name, unique parameters, its runs' losses (of the
    seeds `seeds`) and their mean training FLOPs."""

    size: str
    unique: float
    losses: tuple[float, ...]
    flops: float
    seeds: tuple = ()


@dataclass(frozen=True)
class Worth:
    """A shared configuration's effective size on the law over `axis` (unique parameters or training FLOPs): the
    point estimate from all runs and its bootstrap interval, as multipliers of what the configuration has."""

    multiplier: float
    low: float
    high: float
    extrapolated: bool  # the effective size lies outside the rungs the law was fitted on

    def verdict(self, explained: bool = True) -> str:
        """The verdict; with `explained`, also why, where the word alone does not say it."""
        if math.isnan(self.low):
            word, why = "no interval", "one seed, and no configuration with several to take the seed spread from"
        elif self.low > 1 or self.high < 1:
            word, why = "worth more" if self.low > 1 else "worth less", None
        else:
            word, why = "as much", "interval includes 1"
        return f"{word} ({why})" if explained and why else word


@dataclass(frozen=True)
class Shared:
    configuration: Configuration
    rung: Rung  # the unshared model of the same shape
    unique: float
    flops: float
    losses: tuple[float, ...]
    seeds: tuple = ()

    def against_rung(self) -> Comparison | None:
        """The paired comparison with its own rung's unshared model, seed by seed."""
        mine, its = zip(self.seeds, self.losses, strict=True), zip(self.rung.seeds, self.rung.losses, strict=True)
        return compare(dict(mine), dict(its), True)


@dataclass(frozen=True)
class Ladder:
    rungs: list[Rung]
    shared: list[Shared]
    metric: str

    def by_scheme(self) -> dict[str, list[Shared]]:
        """The shared configurations of each scheme (`scheme_of`), by scheme name and then by size."""
        found: dict[str, list[Shared]] = {}
        for shared in sorted(self.shared, key=lambda s: s.rung.unique):
            found.setdefault(scheme_of(shared.configuration), []).append(shared)
        return dict(sorted(found.items()))


def ladder(configurations: Sequence[Configuration], metric: str) -> Ladder | None:
    """The ladder in one architecture's configurations: its unshared rungs (separate Q/K/V, no cross-layer
    sharing, no twin) and the shared configurations at those sizes; None with fewer than MIN_RUNGS rungs."""
    rungs: dict[str, Rung] = {}
    for c in configurations:
        by_seed = c.metric_by_seed(metric)
        if c.sharing == "none" and not c.iso_baseline and by_seed and c.unique_parameters():
            size = str(c.description.get("size.name"))
            rungs[size] = Rung(size, float(c.unique_parameters()), tuple(by_seed.values()),
                               c.compute("training_flops") or math.nan, tuple(by_seed))  # fmt: skip
    if len({r.unique for r in rungs.values()}) < MIN_RUNGS:
        return None
    shared = [
        Shared(c, rungs[str(c.description.get("size.name"))], float(c.unique_parameters()),
               c.compute("training_flops") or math.nan, tuple(by_seed.values()), tuple(by_seed))
        for c in configurations
        if not c.unshared and (by_seed := c.metric_by_seed(metric)) and str(c.description.get("size.name")) in rungs
    ]  # fmt: skip
    return Ladder(sorted(rungs.values(), key=lambda r: r.unique), shared, metric)


def law_of(rungs: Sequence[Rung], losses: Sequence[Sequence[float]], axis: str,
           errors: Sequence[float] | None) -> PowerLaw | None:  # fmt: skip
    xs = [r.unique if axis == "params" else r.flops for r in rungs]
    return fit(xs, [statistics.fmean(values) for values in losses], errors)


def standard_errors(rungs: Sequence[Rung], spread: float | None) -> list[float] | None:
    """Each rung's standard error of its mean loss: its own seeds' spread, or the pooled `spread` where it has one
    seed (or seeds that agree exactly); None (an unweighted fit) where some rung has neither."""
    errors = []
    for rung in rungs:
        own = statistics.stdev(rung.losses) if len(rung.losses) > 1 else 0.0
        deviation = own if own > 0 else spread
        if not deviation:
            return None
        errors.append(deviation / math.sqrt(len(rung.losses)))
    return errors


@dataclass(frozen=True)
class Draw:
    """One bootstrap replicate: the laws refitted over parameters and FLOPs, each shared configuration's mean loss."""

    laws: tuple[PowerLaw, PowerLaw | None]
    means: dict[str, float]

    def multiplier(self, shared: Shared, axis: int) -> float:
        law = self.laws[axis]
        has = shared.unique if axis == 0 else shared.flops
        return law.inverse(self.means[shared.configuration.label]) / has if law else math.nan


@dataclass(frozen=True)
class Result:
    """The fits over parameters and FLOPs, every shared configuration's worth on both (by its label), the
    bootstrap's draws, and each scheme's trend with size (slope of log multiplier over log rung size, interval)."""

    laws: tuple[PowerLaw, PowerLaw | None]
    worth: dict[str, tuple[Worth | None, Worth | None]]
    draws: list[Draw]
    trend: dict[str, tuple[float, float, float]]
    seed_spread: float | None  # the pooled seed-to-seed standard deviation single-seed losses are drawn with


def scheme_of(c: Configuration) -> str:
    """A scheme at the ratio it was given, the same at every rung. A ratio the scheme derives from the shape (mqa's
    1 − 1/heads) differs from rung to rung, so it does not name the scheme."""
    given = (c.first.get("config") or {}).get("ratio")
    return f"{c.sharing} {given:g}" if given is not None and c.sharing.split("+")[0] != "none" else c.sharing


def analyse(found: Ladder, replicates: int = BOOTSTRAP, seed: int = 0) -> Result | None:
    spread = pooled_spread([r.losses for r in found.rungs] + [s.losses for s in found.shared])
    errors = standard_errors(found.rungs, spread)
    laws = (
        law_of(found.rungs, [r.losses for r in found.rungs], "params", errors),
        law_of(found.rungs, [r.losses for r in found.rungs], "flops", errors),
    )
    if laws[0] is None:
        return None
    everything = Draw(laws, {s.configuration.label: statistics.fmean(s.losses) for s in found.shared})
    rng = np.random.default_rng(seed)

    def resample(losses: Sequence[float]) -> np.ndarray:
        if len(losses) > 1 or spread is None:
            return rng.choice(losses, size=len(losses))
        return losses[0] + rng.normal(0.0, spread, size=1)

    draws: list[Draw] = []
    for _ in range(replicates * 3):  # a fit that fails is drawn again
        if len(draws) == replicates:
            break
        resampled = [resample(r.losses) for r in found.rungs]
        refitted = law_of(found.rungs, resampled, "params", errors), law_of(found.rungs, resampled, "flops", errors)
        if refitted[0] is not None:
            means = {s.configuration.label: float(resample(s.losses).mean()) for s in found.shared}
            draws.append(Draw(refitted, means))

    def worth(shared: Shared, axis: int) -> Worth | None:
        point = everything.multiplier(shared, axis)
        if math.isnan(point):
            return None
        if spread is None and len(shared.losses) < 2:  # its loss is never redrawn: an interval would say too much
            low = high = math.nan
        else:
            low, high = interval([draw.multiplier(shared, axis) for draw in draws])
        xs = [r.unique if axis == 0 else r.flops for r in found.rungs]
        has = shared.unique if axis == 0 else shared.flops
        return Worth(point, low, high, not min(xs) <= point * has <= max(xs))

    trend = {}
    for scheme, members in found.by_scheme().items():
        if len({s.rung.unique for s in members}) >= 2:
            slopes = [slope(members, [draw.multiplier(s, 0) for s in members]) for draw in draws]
            trend[scheme] = (slope(members, [everything.multiplier(s, 0) for s in members]), *interval(slopes))
    worths = {s.configuration.label: (worth(s, 0), worth(s, 1)) for s in found.shared}
    return Result(laws, worths, draws, trend, spread)


def pooled_spread(groups: Sequence[Sequence[float]]) -> float | None:
    """The seed-to-seed standard deviation pooled over the groups of two or more seeds; None where there are none."""
    several = [g for g in groups if len(g) > 1]
    if not several:
        return None
    freedom = sum(len(g) - 1 for g in several)
    return math.sqrt(sum(statistics.variance(g) * (len(g) - 1) for g in several) / freedom)


def slope(members: Sequence[Shared], multipliers: Sequence[float]) -> float:
    """Least-squares slope of log multiplier over log rung size (nan where a multiplier is not finite)."""
    if not all(math.isfinite(m) and m > 0 for m in multipliers):
        return math.nan
    return float(np.polyfit([math.log(s.rung.unique) for s in members], np.log(multipliers), 1)[0])


def interval(samples: Sequence[float]) -> tuple[float, float]:
    """The bootstrap's percentile interval (sample values only, so an infinite multiplier stays infinite)."""
    values = np.asarray([s for s in samples if not math.isnan(s)], float)
    if not len(values):
        return math.nan, math.nan
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(values, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)
