"""Served models watched for drift: a provider may change a model's weights under its name.

At start and every ``EMBEDSHIFT_DRIFT_CHECK_S`` seconds, each served model this proxy has loaded
re-embeds the probe texts it was catalogued with (``ServedModel.drift``). If a probe's
vector moved further than cosine 0.999 from the catalogued one, the model drifted: the vectors
it gives queries no longer match the ones it wrote, and every answer it serves is quietly worse.
That is loud: an error log line, ``embedshift_model_drifted{model}`` (1) for an alert rule to
fire on, ``/readyz`` detail; and, under the ``rollback`` policy (the default), every alias whose
candidate the model serves is rolled back by compare-and-set on the revision seen (every proxy
sees the same drift; one write wins). A drifted stable model cannot be rolled away from: it is
reported, and the operator decides (re-catalogue it and backfill, or promote another).

A probe that fails (the service is down) is reported as such, never as drift, and never as the
end of a drift seen before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping

import msgspec
import structlog

from proxy.control.operator import Operator
from proxy.models.encoders import RemoteModel
from proxy.models.served import DRIFT_MIN_COSINE
from proxy.state.base import RuleStore
from proxy.tasks import cancel_and_wait
from proxy.telemetry import Metrics
from rollout_rules.errors import ConflictError, EmbedshiftError
from rollout_rules.model import Rollout, State

log = structlog.get_logger("embedshift.drift")
DRIFT_ACTOR = "drift-watch"
PROBE_TIMEOUT_S = 30.0


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """The last probe of one served model."""

    model: str
    fingerprint: str
    cosine: float | None  # None when the probe failed
    drifted: bool
    checked_at: float  # epoch seconds
    error: str = ""


def to_roll_back(rollouts: Iterable[Rollout], drifted: set[str]) -> list[Rollout]:
    """The rules whose candidate is served by a drifted model and still gets traffic."""
    found = []
    for rollout in rollouts:
        if rollout.candidate is None or rollout.state is State.ROLLED_BACK:
            continue
        if rollout.version(rollout.candidate).model in drifted and rollout.percent > 0:
            found.append(rollout)
    return found


class DriftWatch:
    def __init__(self, served: Callable[[], Mapping[str, RemoteModel]],
                 rollouts: Callable[[], Mapping[str, Rollout]], store: RuleStore,
                 metrics: Metrics, *, interval_s: float, policy: str = "rollback") -> None:
        self.served, self.rollouts = served, rollouts
        self.operator = Operator(store, DRIFT_ACTOR)  # the audit names who rolled back
        self.metrics, self.interval_s, self.policy = metrics, interval_s, policy
        self.findings: dict[str, Finding] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Probe now, then every ``interval_s`` (0: only now)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait({self._task})
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except EmbedshiftError as exc:  # never let one bad tick end the watch
                log.error("drift_check_failed", error=str(exc))
            if self.interval_s <= 0:
                return
            await asyncio.sleep(self.interval_s)

    async def check(self) -> dict[str, Finding]:
        """Probe every served model loaded now; act on drift as the policy says."""
        for name, model in list(self.served().items()):
            self.findings[name] = finding = await self._probe(name, model)
            self.metrics.child(self.metrics.model_drifted, name).set(1 if finding.drifted else 0)
            if finding.cosine is not None:
                self.metrics.child(self.metrics.model_probe_cosine, name).set(finding.cosine)
        drifted = {name for name, f in self.findings.items() if f.drifted}
        if drifted and self.policy == "rollback":
            for rollout in to_roll_back(self.rollouts().values(), drifted):
                await self._roll_back(rollout, self.findings[
                    rollout.version(rollout.candidate or "").model])
        return self.findings

    def export(self) -> None:
        """The served models' call figures into the metrics (at a scrape)."""
        for name, model in self.served().items():
            figures = model.figures()
            for outcome in ("ok", "retried", "failed", "rate_limited"):
                self.metrics.child(self.metrics.served_calls, name, outcome).set(
                    figures[outcome])
            self.metrics.child(self.metrics.served_tokens, name).set(figures["tokens"])
            self.metrics.child(self.metrics.served_circuit, name).set(figures["circuit_open"])

    def detail(self) -> dict[str, object]:
        """What /readyz says of each served model: its last probe and its calls."""
        detail: dict[str, object] = {}
        for name, model in self.served().items():
            found = self.findings.get(name)
            last = msgspec.to_builtins(found) if found else {"model": name, "checked_at": None}
            detail[name] = {**last, "calls": model.figures()}
        return detail

    async def _probe(self, name: str, model: RemoteModel) -> Finding:
        fingerprint = model.fingerprint
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                cosine = await model.drift()
        except (EmbedshiftError, TimeoutError) as exc:
            error = str(exc) or f"no answer within {PROBE_TIMEOUT_S:g} s"
            log.warning("drift_probe_failed", model=name, error=error)
            before = self.findings.get(name)  # a drift seen stays seen while it cannot be asked
            return Finding(model=name, fingerprint=fingerprint, cosine=None,
                           drifted=before is not None and before.drifted,
                           checked_at=time.time(), error=error)
        drifted = cosine < DRIFT_MIN_COSINE
        if drifted:
            log.error("model_drifted", model=name, fingerprint=fingerprint,
                      least_cosine=round(cosine, 6), threshold=DRIFT_MIN_COSINE,
                      policy=self.policy)
        return Finding(model=name, fingerprint=fingerprint, cosine=round(cosine, 6),
                       drifted=drifted, checked_at=time.time())

    async def _roll_back(self, rollout: Rollout, finding: Finding) -> None:
        reason = (f"drift: model {finding.model} no longer gives its catalogued vectors "
                  f"(probe cosine {finding.cosine} < {DRIFT_MIN_COSINE})")
        try:
            change = await self.operator.rollback(rollout.alias, reason,
                                                  expected_revision=rollout.revision)
        except ConflictError:
            return  # another proxy (or an operator) changed the rule first
        except EmbedshiftError as exc:
            log.error("drift_rollback_failed", alias=rollout.alias, error=str(exc))
            return
        if change.changed:
            self.metrics.child(self.metrics.guard_rollbacks, rollout.alias, DRIFT_ACTOR).inc()
            log.warning("drift_rolled_back", alias=rollout.alias, model=finding.model,
                        revision=change.after.revision)
