"""Simulated users: does interleaving tell the better model from the worse, and with how many
queries fewer than an A/B test of click-through?

    uv run python -m loadtest.simulated_users [--seeds 100] [--aa-runs 1000] [--plot FILE]

Rankings are real: SciFact's 300 judged test queries (BEIR, read from ``../shared/data``), each
ranked over the 5,183 abstracts by the built ONNX models, paraphrase-MiniLM-L3 as v1 and
all-MiniLM-L6 as v2 (nDCG@10 0.513 and 0.645). Clicks are simulated:

- **A cascade with position bias** (``ClickModel``): a user looks at nothing (abandons) with a
  fixed chance, else reads from the top; a result is clicked with a chance set by its relevance
  grade; after a click the user stops with a chance set by the grade, after no click reads on
  with a fixed chance (patience), so low positions are seen less.
- **Sticky users who differ**: each user has a click propensity ``m``, lognormal with median 1
  and spread ``sigma``, and issues ``per_user`` queries drawn from the set. A result of click
  chance ``p`` is clicked with chance ``1 - (1 - p) ** m``: ``m`` = 2 clicks as if given two
  looks, ``m`` = 0.5 half a look.

Compared, each by the user, as a test on users must:

- **Interleaving**: one team-draft list per query (``rollout_rules.online.team_draft``, the
  proxy's own), credit per query; a user's score is their mean credit (+1 a win of v2, -1 a
  loss, 0 a tie).
- **A/B**: users split between the versions; a user's score is their click-through (the share
  of their queries with a click).

The queries each needs for 80% power at one-sided alpha 0.05 are ``users x per_user``, with
users from the normal sample-size formula on per-user means and variances measured over
``--population`` simulated users per arm. The sequential runs use the guard's own test
(``rollout_rules.online.preference``), looked at after every decisive answer, as the proxy
does.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rollout_rules.online import Finding, Preference, credit, preference, team_draft

Ranked = Mapping[str, Sequence[str]]
Qrels = Mapping[str, Mapping[str, int]]
SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


@dataclass(frozen=True)
class ClickModel:
    """A cascade with position bias, abandonment and per-grade click and stop chances."""

    click: tuple[float, float] = (0.05, 0.6)  # clicked, once seen: a non-relevant, a relevant
    stop: tuple[float, float] = (0.2, 0.7)  # stops after a click on it
    patience: float = 0.8  # reads on after a result not clicked
    abandon: float = 0.2  # looks at nothing

    def clicks(self, grades: Sequence[int], propensity: float, rng: random.Random
               ) -> list[int]:
        """The positions (0-based) a user of ``propensity`` clicks in a list of ``grades``."""
        if rng.random() < self.abandon:
            return []
        clicked: list[int] = []
        for position, grade in enumerate(grades):
            relevant = 1 if grade > 0 else 0
            chance = 1 - (1 - self.click[relevant]) ** propensity
            if rng.random() < chance:
                clicked.append(position)
                if rng.random() < self.stop[relevant]:
                    break
            elif rng.random() >= self.patience:
                break
        return clicked


@dataclass(frozen=True)
class World:
    """Two versions' rankings of the same queries, their qrels, and how users behave."""

    baseline: Ranked
    test: Ranked
    qrels: Qrels
    model: ClickModel = ClickModel()
    spread: float = 0.8  # sigma of the users' lognormal click propensity
    per_user: int = 20  # queries each user issues over the comparison
    k: int = 10

    @property
    def queries(self) -> list[str]:
        return sorted(self.baseline)

    def grades(self, docs: Sequence[str], query: str) -> list[int]:
        relevance = self.qrels.get(query, {})
        return [relevance.get(doc, 0) for doc in docs]

    def users(self, rng: random.Random) -> tuple[float, list[str]]:
        """One user: their propensity and their queries."""
        queries = self.queries
        propensity = rng.lognormvariate(0.0, self.spread) if self.spread > 0 else 1.0
        return propensity, [rng.choice(queries) for _ in range(self.per_user)]

    def interleaved(self, query: str, propensity: float, rng: random.Random, seed: str
                    ) -> Preference:
        merged = team_draft(self.baseline[query][:self.k], self.test[query][:self.k], self.k,
                            seed)
        grades = self.grades([doc for doc, _ in merged], query)
        return credit([team for _, team in merged], self.model.clicks(grades, propensity, rng))

    def clicked(self, ranking: Ranked, query: str, propensity: float, rng: random.Random
                ) -> bool:
        grades = self.grades(ranking[query][:self.k], query)
        return bool(self.model.clicks(grades, propensity, rng))


@dataclass(frozen=True)
class SequentialRun:
    finding: Finding
    queries: int  # interleaved answers seen when it was reached (or the cap)


def sequential(world: World, seed: int, *, alpha: float, min_answers: int,
               max_queries: int) -> SequentialRun:
    """Users arrive one after the other until the guard's test decides or the cap is reached;
    the test is asked after every decisive answer (continuous monitoring)."""
    rng = random.Random(seed)
    wins = losses = seen = 0
    while seen < max_queries:
        propensity, queries = world.users(rng)
        for query in queries:
            seen += 1
            found = world.interleaved(query, propensity, rng, f"{seed}:{seen}")
            if found is Preference.TIE:
                continue
            wins, losses = wins + (found is Preference.TEST), losses + (found is
                                                                        Preference.BASELINE)
            finding = preference(wins, losses, alpha=alpha, min_answers=min_answers)
            if finding is not Finding.UNDECIDED:
                return SequentialRun(finding, seen)
            if seen >= max_queries:
                break
    return SequentialRun(Finding.UNDECIDED, seen)


@dataclass(frozen=True)
class SampleSizes:
    spread: float
    interleaving: float  # queries for the power asked
    ab: float
    interleave_effect: float  # mean credit per query (v2 wins minus losses, per query)
    ctr: tuple[float, float]  # click-through of v1 and v2 (share of queries with a click)

    @property
    def ratio(self) -> float:
        return self.ab / self.interleaving


def sample_sizes(world: World, *, population: int, seed: int, alpha: float = 0.05,
                 power: float = 0.8) -> SampleSizes:
    """Queries each comparison needs for ``power`` at one-sided ``alpha``, from per-user means
    and variances over ``population`` simulated users per arm (the user is the unit)."""
    rng = random.Random(seed)
    z = statistics.NormalDist().inv_cdf(1 - alpha) + statistics.NormalDist().inv_cdf(power)
    scores: list[float] = []
    for user in range(population):
        propensity, queries = world.users(rng)
        credits = [world.interleaved(q, propensity, rng, f"{seed}:{user}:{n}")
                   for n, q in enumerate(queries)]
        scores.append(sum((c is Preference.TEST) - (c is Preference.BASELINE)
                          for c in credits) / len(queries))
    effect, spread = statistics.fmean(scores), statistics.pvariance(scores)
    interleaving = z * z * spread / (effect * effect) * world.per_user
    arms = []
    for ranking in (world.baseline, world.test):
        rates = []
        for _ in range(population):
            propensity, queries = world.users(rng)
            rates.append(sum(world.clicked(ranking, q, propensity, rng) for q in queries)
                         / len(queries))
        arms.append((statistics.fmean(rates), statistics.pvariance(rates)))
    (ctr1, var1), (ctr2, var2) = arms
    ab_users_per_arm = z * z * (var1 + var2) / ((ctr2 - ctr1) ** 2)
    return SampleSizes(spread=world.spread, interleaving=interleaving,
                       ab=2 * ab_users_per_arm * world.per_user, interleave_effect=effect,
                       ctr=(ctr1, ctr2))


def scifact_rankings(models_dir: Path | None = None) -> tuple[Ranked, Ranked, Qrels]:
    """The demo rule's stable (L3) and candidate (L6) top 10 for SciFact's judged test queries
    (encodes the corpus with each: minutes on a laptop's CPU)."""
    from proxy.config import Settings
    from proxy.models.catalog import default_rollout, resolve
    from proxy.models.encoders import OnnxModel, default_threads
    from proxy.models.evaluation import load_beir, rank

    folder = models_dir if models_dir is not None else Settings().models_path
    dataset = load_beir(SCIFACT)
    ranked = [rank(OnnxModel(resolve(version, folder), threads=default_threads()), dataset,
                   k=10) for version in default_rollout("scifact").versions]
    return ranked[0], ranked[1], dataset.qrels


def report(baseline: Ranked, test: Ranked, qrels: Qrels, *, seeds: int, aa_runs: int,
           population: int, alpha: float, min_answers: int, max_queries: int,
           spreads: Sequence[float] = (0.0, 0.4, 0.8, 1.2),
           per_users: Sequence[int] = (5, 20)) -> list[str]:
    lines = []
    world = World(baseline, test, qrels)
    runs = [sequential(world, seed, alpha=alpha, min_answers=min_answers,
                       max_queries=max_queries) for seed in range(seeds)]
    decided = sum(run.finding is Finding.BETTER for run in runs)
    wrong = sum(run.finding is Finding.WORSE for run in runs)
    used = sorted(run.queries for run in runs if run.finding is Finding.BETTER)
    lines.append(f"v2 (L6) against v1 (L3), interleaved, {seeds} seeds, alpha {alpha}, "
                 f"at most {max_queries} queries each: 'v2 better' in {decided} "
                 f"({decided / seeds:.0%}), 'worse' in {wrong}; queries to the verdict: "
                 f"median {_median(used)}, 90th percentile {_percentile(used, 0.9)}")
    same = World(baseline, baseline, qrels)
    aa = [sequential(same, 10_000 + seed, alpha=alpha, min_answers=min_answers,
                     max_queries=max_queries) for seed in range(aa_runs)]
    false_worse = sum(run.finding is Finding.WORSE for run in aa)
    false_better = sum(run.finding is Finding.BETTER for run in aa)
    lines.append(f"v1 against itself, {aa_runs} runs, monitored after every decisive answer "
                 f"up to {max_queries} queries: false 'worse' {false_worse} "
                 f"({false_worse / aa_runs:.1%}), false 'better' {false_better} "
                 f"({false_better / aa_runs:.1%}); alpha {alpha:.0%}")
    lines.append("queries per user  spread  CTR v1  CTR v2  interleaving  A/B (by user)  ratio")
    for per_user in per_users:
        for spread in spreads:
            found = sample_sizes(World(baseline, test, qrels, spread=spread,
                                       per_user=per_user),
                                 population=population, seed=20_000)
            lines.append(f"{per_user:16d}  {spread:6.1f}  {found.ctr[0]:6.3f}  "
                         f"{found.ctr[1]:6.3f}  {found.interleaving:12,.0f}  "
                         f"{found.ab:13,.0f}  {found.ratio:5.1f}x")
    return lines


def _median(values: Sequence[int]) -> int | None:
    return int(statistics.median(values)) if values else None


def _percentile(values: Sequence[int], q: float) -> int | None:
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)] if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--aa-runs", type=int, default=1000)
    parser.add_argument("--population", type=int, default=20_000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--min-answers", type=int, default=50)
    parser.add_argument("--max-queries", type=int, default=3000)
    args = parser.parse_args()
    baseline, test, qrels = scifact_rankings()
    for line in report(baseline, test, qrels, seeds=args.seeds, aa_runs=args.aa_runs,
                       population=args.population, alpha=args.alpha,
                       min_answers=args.min_answers, max_queries=args.max_queries):
        print(line, flush=True)


if __name__ == "__main__":
    main()
