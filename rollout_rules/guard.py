"""The guard's verdict: is the version under test worse than its baseline, beyond doubt?

The proxy counts, per version and per second, what its searches did (``Window``); the guard loop
sums the last ``window_s`` seconds of every instance and asks ``verdict`` about two cohorts:

    during a ramp      test = candidate (its real traffic)   baseline = stable
    after a promote    test = the new stable                 baseline = previous stable (shadow)

Each condition is a one-sided comparison of the test cohort with its baseline that is only a
breach when two things hold: the test cohort is past the policy's absolute bound (an error ratio
above ``max_error_rate``, more than 1% of searches slower than ``max_p99_ms`` -- that is, a p99
above it -- , mean shadow overlap@10 below ``min_overlap``), and a sequential test says the
difference is real. The test is a mixture sequential probability ratio test (mSPRT, Johari et
al., "Always Valid Inference", 2017) on the normal approximation: its false-alarm rate stays
below ``alpha`` however often it is looked at, so the loop may ask every second. Below
``min_requests`` in either cohort there is **no verdict**: thin traffic never rolls back and a
ramp waits.

Pure: windows and a policy in, a ``Verdict`` out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, NamedTuple

import msgspec

from rollout_rules.model import GuardPolicy, Rollout, State

# The upper bounds (ms) of the latency buckets every instance counts in; the last is +inf.
LATENCY_BOUNDS_MS = (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, math.inf)
SLOW_SHARE = 0.01  # p99 above a bound <=> more than 1% of searches above it
# The mixture's spread: the size of difference the test is tuned to find. A rollback is for a
# difference of several points (a version failing, or slow, for one user in ten), not a tenth.
TAU = 0.1
Count = Annotated[int, msgspec.Meta(ge=0)]


class Window(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one version's searches did over a window (summed over seconds and instances)."""

    requests: Count = 0  # searches attempted: answered, failed or fallen back
    errors: Count = 0  # the encoder or the store failed (timeouts included)
    fallbacks: Count = 0  # answered by stable instead
    searches: Count = 0  # store searches timed (a cached answer is none: it cannot flatter)
    slow: Count = 0  # the store's search took longer than the policy's max_p99_ms
    latency: tuple[int, ...] = ()  # searches per LATENCY_BOUNDS_MS bucket (store time)
    overlap_n: Count = 0  # shadow comparisons of stable's answers with this version's
    overlap_sum: float = 0.0  # of overlap@10
    overlap_sq: float = 0.0  # of its square

    def __add__(self, other: Window) -> Window:
        width = max(len(self.latency), len(other.latency))
        mine, theirs = _pad(self.latency, width), _pad(other.latency, width)
        latency = tuple(a + b for a, b in zip(mine, theirs, strict=True))
        return Window(requests=self.requests + other.requests, errors=self.errors + other.errors,
                      fallbacks=self.fallbacks + other.fallbacks,
                      searches=self.searches + other.searches, slow=self.slow + other.slow,
                      latency=latency, overlap_n=self.overlap_n + other.overlap_n,
                      overlap_sum=self.overlap_sum + other.overlap_sum,
                      overlap_sq=self.overlap_sq + other.overlap_sq)

    @property
    def p99_ms(self) -> float | None:
        """The 99th percentile of store search time, as the bucket bound it falls under."""
        return quantile_ms(self.latency, 0.99)

    @property
    def overlap(self) -> float | None:
        return self.overlap_sum / self.overlap_n if self.overlap_n else None


class Cohorts(NamedTuple):
    test: str
    baseline: str
    watching: bool  # a promote is being watched (the baseline is the previous stable)
    dark: bool = False  # a dark launch: the test version takes shadow traffic only


def cohorts(rollout: Rollout, now: datetime) -> Cohorts | None:
    """Which versions the guard compares now, or None when nothing is under test: the
    candidate against stable while users are ramped to it, the new stable against the previous
    one for ``watch_s`` after a promote."""
    if not rollout.guard.enabled:
        return None
    interleaving = rollout.experiment is not None and rollout.experiment.share > 0
    if rollout.candidate is not None and rollout.state is State.RAMPING and (
            rollout.percent > 0 or interleaving):  # interleaved users see the candidate too
        return Cohorts(rollout.candidate, rollout.stable, watching=False)
    if watching(rollout, now) and rollout.previous_stable is not None:
        return Cohorts(rollout.stable, rollout.previous_stable, watching=True)
    return None


def watching(rollout: Rollout, now: datetime) -> bool:
    """Whether a promote is within its watch window, counted from the promote itself (a
    guard edit after it must not reopen the watch); a rule promoted before ``promoted_at``
    was kept counts from its last change."""
    return watch_left_s(rollout, now) is not None


def watch_left_s(rollout: Rollout, now: datetime) -> float | None:
    """Seconds the promote's watch still runs; None when no promote is watched."""
    if rollout.state is not State.PROMOTED or rollout.previous_stable is None:
        return None
    try:
        promoted = datetime.fromisoformat(rollout.promoted_at or rollout.updated_at)
    except ValueError:
        return None
    since = (now - promoted).total_seconds()
    return rollout.guard.watch_s - since if 0 <= since <= rollout.guard.watch_s else None


def shadow_target(rollout: Rollout, now: datetime) -> str | None:
    """The version that stable's queries are also sent to, off the response path: the
    candidate while it ramps (from 0%: a dark launch), the previous stable while a promote is
    watched."""
    if rollout.guard.shadow_share <= 0:
        return None
    if rollout.candidate is not None and rollout.state is State.RAMPING:
        return rollout.candidate
    return rollout.previous_stable if watching(rollout, now) else None


def watched(rollout: Rollout, now: datetime) -> Cohorts | None:
    """What the guard looks at now: the cohorts it judges, else, in a dark launch (a candidate
    at 0% with shadow traffic), the shadowed version against stable, marked ``dark``; None when
    there is nothing to look at."""
    pair = cohorts(rollout, now)
    if pair is not None:
        return pair
    shadowed = shadow_target(rollout, now)
    return None if shadowed is None else Cohorts(shadowed, rollout.stable, watching=False,
                                                  dark=True)


def shadow_of(rollout: Rollout, served: str, now: datetime) -> tuple[str, float] | None:
    """Where a query answered by ``served`` is also searched, off the response path, and with
    what probability: stable's queries go to ``shadow_target`` (``shadow_share``); while the
    candidate ramps under a guard, its own queries go to stable (``baseline_share``), so the
    guard has a baseline at every step, the last one at 100% included; and while a promote is
    watched, the new stable's go to the previous one (at ``baseline_share``, unless
    ``shadow_share`` is set), so the watch judges by default."""
    guarded = rollout.guard.enabled and rollout.guard.baseline_share > 0
    if served == rollout.stable:
        target = shadow_target(rollout, now)
        if target is not None:
            return target, rollout.guard.shadow_share
        if guarded and rollout.previous_stable is not None and watching(rollout, now):
            return rollout.previous_stable, rollout.guard.baseline_share
        return None
    if served == rollout.candidate and rollout.state is State.RAMPING and guarded:
        return rollout.stable, rollout.guard.baseline_share
    return None


def total(windows: list[Window]) -> Window:
    merged = Window()
    for window in windows:
        merged = merged + window
    return merged


class Outcome(StrEnum):
    HEALTHY = "healthy"
    BREACH = "breach"
    NO_VERDICT = "no_verdict"


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The guard's answer with the figures it read; ``reason`` is one line for the audit."""

    outcome: Outcome
    reason: str
    figures: dict[str, float | None] = msgspec.field(default_factory=dict)

    @property
    def breach(self) -> bool:
        return self.outcome is Outcome.BREACH


def verdict(test: Window, baseline: Window, policy: GuardPolicy) -> Verdict:
    """Healthy, breach (the first condition breached, with its figures) or no verdict."""
    figures = _figures(test, baseline)
    if test.requests < policy.min_requests:
        return Verdict(outcome=Outcome.NO_VERDICT, figures=figures, reason=(
            f"too little traffic to judge: {test.requests} searches of the version under "
            f"test in the window, at least {policy.min_requests} needed"))
    if baseline.requests < policy.min_requests:
        return Verdict(outcome=Outcome.NO_VERDICT, figures=figures, reason=(
            f"too thin a baseline: {baseline.requests} searches of the baseline version in "
            f"the window (its users' and shadowed ones), at least {policy.min_requests} "
            "needed; raise guard.baseline_share (or shadow_share after a promote)"))
    breached = _proportion_breach(test, baseline, policy)
    if breached is not None:
        return Verdict(outcome=Outcome.BREACH, figures=figures, reason=breached)
    overlap = _overlap_breach(test, baseline, policy)
    if overlap is not None:
        return Verdict(outcome=Outcome.BREACH, figures=figures, reason=overlap)
    return Verdict(outcome=Outcome.HEALTHY, figures=figures, reason="within every bound")


def judge(pair: Cohorts, windows: Mapping[str, Window], policy: GuardPolicy) -> Verdict:
    """The verdict on ``pair`` from the merged windows per version. A dark launch gets none: its
    figures are shown, but nobody is there to protect."""
    found = verdict(windows.get(pair.test, Window()), windows.get(pair.baseline, Window()),
                    policy)
    if pair.dark:
        return msgspec.structs.replace(
            found, outcome=Outcome.NO_VERDICT,
            reason=f"nothing to judge: {pair.test} takes no users yet (shadow traffic only)")
    return found


def _proportion_breach(test: Window, baseline: Window, policy: GuardPolicy) -> str | None:
    """Errors and slow searches against the baseline's; fallbacks against the bound alone
    (stable never falls back, so its ratio is no baseline)."""
    n, m, alpha = test.requests, baseline.requests, policy.alpha
    if test.errors / n > policy.max_error_rate and proportions_differ(
            test.errors, n, baseline.errors, m, tau=TAU, alpha=alpha):
        return (f"error ratio {test.errors / n:.2%} ({test.errors}/{n}) against baseline "
                f"{baseline.errors / m:.2%} ({baseline.errors}/{m}), bound "
                f"{policy.max_error_rate:.2%}")
    if test.fallbacks / n > policy.max_fallback_rate and proportion_exceeds(
            test.fallbacks, n, policy.max_fallback_rate, alpha=alpha):
        return (f"fallback ratio {test.fallbacks / n:.2%} ({test.fallbacks}/{n}), bound "
                f"{policy.max_fallback_rate:.2%}")
    s, r = test.searches, baseline.searches
    if min(s, r) >= policy.min_requests and test.slow / s > SLOW_SHARE and proportions_differ(
            test.slow, s, baseline.slow, r, tau=TAU, alpha=alpha):
        return (f"search p99 {_ms(test.p99_ms)}, over {policy.max_p99_ms:g} ms (baseline "
                f"{_ms(baseline.p99_ms)}): {test.slow / s:.2%} of {s} searches over it, "
                f"baseline {baseline.slow / r:.2%} of {r}")
    return None


def _overlap_breach(test: Window, baseline: Window, policy: GuardPolicy) -> str | None:
    """Shadow comparisons are kept on the version shadowed (the candidate during a ramp, the
    previous stable while a promote is watched): either side's count."""
    n = test.overlap_n + baseline.overlap_n
    if policy.min_overlap <= 0 or n < policy.min_requests:
        return None
    mean = (test.overlap_sum + baseline.overlap_sum) / n
    if mean >= policy.min_overlap:
        return None
    square = (test.overlap_sq + baseline.overlap_sq) / n
    variance = max(square - mean * mean, 0.01)  # a floor: overlap@10 moves in steps of 0.1
    if not msprt_rejects(policy.min_overlap - mean, variance / n, tau=TAU, alpha=policy.alpha):
        return None
    return (f"shadow overlap@10 {mean:.2f} over {n} queries, below {policy.min_overlap:.2f}")


def proportions_differ(x: int, n: int, y: int, m: int, *, tau: float, alpha: float) -> bool:
    """Whether x/n exceeds y/m beyond what chance allows (one-sided two-sample mSPRT). The
    variance uses (x + 0.5)/(n + 1), so a cohort with no events still has some."""
    p, q = (x + 0.5) / (n + 1), (y + 0.5) / (m + 1)
    variance = p * (1 - p) / n + q * (1 - q) / m
    return msprt_rejects(x / n - y / m, variance, tau=tau, alpha=alpha)


def proportion_exceeds(x: int, n: int, bound: float, *, alpha: float) -> bool:
    """Whether x/n exceeds ``bound`` beyond what chance allows (one-sided one-sample mSPRT)."""
    p = (x + 0.5) / (n + 1)
    return msprt_rejects(x / n - bound, p * (1 - p) / n, tau=TAU,
                         alpha=alpha)


def msprt_rejects(difference: float, variance: float, *, tau: float, alpha: float) -> bool:
    """The normal mSPRT with a N(0, tau^2) mixture: reject 'no difference' for a positive
    difference when the mixture likelihood ratio reaches 1/alpha."""
    if difference <= 0 or variance <= 0:
        return False
    t2 = tau * tau
    log_ratio = 0.5 * math.log(variance / (variance + t2)) + \
        t2 * difference * difference / (2 * variance * (variance + t2))
    return log_ratio >= math.log(1 / alpha)


def quantile_ms(latency: tuple[int, ...], q: float) -> float | None:
    """The bucket bound under which a ``q`` share of the counted searches fall."""
    count = sum(latency)
    if count == 0:
        return None
    rank, seen = q * count, 0
    for bound, n in zip(LATENCY_BOUNDS_MS, latency, strict=False):
        seen += n
        if seen >= rank:
            return bound
    return math.inf


def bucket_of(ms: float) -> int:
    """The index of the latency bucket a search of ``ms`` falls in."""
    for index, bound in enumerate(LATENCY_BOUNDS_MS):
        if ms <= bound:
            return index
    return len(LATENCY_BOUNDS_MS) - 1


def _figures(test: Window, baseline: Window) -> dict[str, float | None]:
    def ratio(x: int, n: int) -> float | None:
        return x / n if n else None

    return {"test_requests": test.requests, "baseline_requests": baseline.requests,
            "test_error_ratio": ratio(test.errors, test.requests),
            "baseline_error_ratio": ratio(baseline.errors, baseline.requests),
            "test_fallback_ratio": ratio(test.fallbacks, test.requests),
            "test_p99_ms": _finite(test.p99_ms), "baseline_p99_ms": _finite(baseline.p99_ms),
            "overlap_at_10": (test + baseline).overlap,
            "overlap_n": test.overlap_n + baseline.overlap_n}


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _ms(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"over {LATENCY_BOUNDS_MS[-2]:g} ms" if math.isinf(value) else f"<= {value:g} ms"


def _pad(values: tuple[int, ...], width: int) -> tuple[int, ...]:
    return values + (0,) * (width - len(values))
