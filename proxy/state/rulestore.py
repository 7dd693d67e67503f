"""The rule store in Redis: one document per alias, compare-and-set writes, audit, notifications.

Keys (``P`` is the prefix; ``{alias}`` is a hash tag so one alias's keys share a cluster slot):

    P:{alias}:rules        hash  revision, doc (the rule document as JSON), deleted (tombstone)
    P:{alias}:audit        stream of changes: revision, actor, reason, at, before, after
    P:{alias}:coverage     hash  "<version>:covered", ":total", ":popular_ppm" (backfill progress)
    P:{alias}:popularity   sorted set of document ids by query hits (backfill priority)
    P:{alias}:verify       hash  version -> its last ``verify`` report (JSON)
    P:{alias}:guard        hash  instance -> its cohort counts; ``verdict`` -> the last verdict
    P:{alias}:lease:NAME   string: who holds a lease (the guarded ramp's leader), with a TTL
    P:{alias}:ramp         string: the guarded ramp plan (JSON)
    P:{alias}:backfill:*   the backfill's work queue (``proxy.state.jobs``)
    P:aliases              set of declared aliases
    P:changes              pub/sub channel, "<alias> <revision>" or "<alias> coverage"

Atomic: one Lua script checks the revision, stores the document (or, deleting, leaves a
tombstone), updates ``P:aliases``, appends the audit entry and publishes the change, so none of
them can disagree. The set lives in no alias's slot, so the script spans two slots: a single
Redis (or a Sentinel-managed primary), not a Redis Cluster. Redis errors become StoreUnavailable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

import msgspec
import redis.asyncio as aioredis

from proxy.config import Settings
from proxy.state.base import (
    COVERAGE_MESSAGE,
    AuditEntry,
    CoverageBasis,
    OnSubscribed,
    ReportKind,
    SharedWrites,
    coverage_fields,
    coverage_fractions,
    lenient,
    now,
    parse_stored,
    report_field,
    stamp,
)
from proxy.state.client import (
    close,
    connect,
    is_replicated,
    redis_url,
    unavailable_on_error,
)
from proxy.state.jobs import BackfillQueue
from rollout_rules.errors import ConflictError, NotFoundError
from rollout_rules.model import Rollout, dump_rollout, parse_rollout

_AUDIT_MAXLEN = 10_000
_GUARD_TTL_S = 86_400

# KEYS: the lease. ARGV: holder, ttl ms. Take a free lease, or extend one the holder has.
_LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: rules, audit, aliases. ARGV: expected revision, document ('' deletes), channel, actor,
# reason, at, audit length, alias, floor. Returns {1, revision}, {0, current} on a lost
# compare-and-set, or {-1, current} when there is nothing to delete.
_CAS_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
local before = redis.call('HGET', KEYS[1], 'doc') or ''
local revision = math.max(current, tonumber(ARGV[9])) + 1
local after = ARGV[2]
if after == '' then
  if before == '' then return {-1, current} end
  redis.call('HSET', KEYS[1], 'revision', revision, 'deleted', '1')
  redis.call('HDEL', KEYS[1], 'doc')
  redis.call('SREM', KEYS[3], ARGV[8])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'revision', revision, 'actor',
             ARGV[4], 'reason', ARGV[5], 'at', ARGV[6], 'before', before, 'after', before,
             'deleted', '1')
else
  redis.call('HSET', KEYS[1], 'revision', revision, 'doc', after)
  redis.call('HDEL', KEYS[1], 'deleted')
  redis.call('SADD', KEYS[3], ARGV[8])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'revision', revision, 'actor',
             ARGV[4], 'reason', ARGV[5], 'at', ARGV[6], 'before', before, 'after', after)
end
redis.call('PUBLISH', ARGV[3], ARGV[8] .. ' ' .. revision)
return {1, revision}
"""


class Stamp(NamedTuple):
    actor: str
    reason: str
    at: str
    floor: int = 0


def open_store(settings: Settings, environ: Mapping[str, str], start: bool = True
               ) -> RedisRuleStore:
    """The rule store on the configured Redis, or on the embedded one (started if need be and
    ``start``)."""
    return RedisRuleStore(connect(settings, redis_url(settings, environ, start)),
                          settings.redis_prefix)


REPLICA_WAIT_MS = 1000  # how long a rule write waits for a replica to hold it


class RedisRuleStore(SharedWrites):
    def __init__(self, client: aioredis.Redis, prefix: str = "embedshift") -> None:
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}:changes"
        self._cas = client.register_script(_CAS_SCRIPT)
        self.replicated = is_replicated(client)  # a sentinel-managed primary: writes wait
        self.unconfirmed: list[str] = []  # rule writes no replica confirmed in time (newest last)

    def _key(self, alias: str, kind: str) -> str:
        return f"{self.prefix}:{{{alias}}}:{kind}"

    async def aclose(self) -> None:
        await close(self.client)

    # -- reading ------------------------------------------------------------------------------

    async def aliases(self) -> list[str]:
        async with unavailable_on_error(self.client):
            members = await self.client.smembers(f"{self.prefix}:aliases")
        return sorted(_text(m) for m in members)

    async def get(self, alias: str) -> Rollout:
        async with unavailable_on_error(self.client):
            raw = await self.client.hget(self._key(alias, "rules"), "doc")
        if raw is None:
            raise NotFoundError(alias)
        return parse_stored(alias, raw)

    async def revision(self, alias: str) -> int:
        async with unavailable_on_error(self.client):
            current = await self.client.hget(self._key(alias, "rules"), "revision")
        return int(current or 0)

    async def history(self, alias: str, limit: int = 20) -> list[AuditEntry]:
        """Newest first."""
        async with unavailable_on_error(self.client):
            rows = await self.client.xrevrange(self._key(alias, "audit"), count=limit)
        return [_audit_entry(entry_id, fields or {}) for entry_id, fields in rows or []]

    # -- writing ------------------------------------------------------------------------------

    async def deleted(self, alias: str) -> bool:
        async with unavailable_on_error(self.client):
            return bool(await self.client.hexists(self._key(alias, "rules"), "deleted"))

    async def write(self, rollout: Rollout, expected_revision: int, actor: str,
                    reason: str, *, floor: int = 0) -> Rollout:
        """Store ``rollout`` if the stored revision is still ``expected_revision``."""
        stamped = stamp(rollout, expected_revision, actor, reason, floor)
        await self._run(rollout.alias, expected_revision, dump_rollout(stamped),
                        Stamp(actor, reason, stamped.updated_at, floor))
        return stamped

    async def delete(self, alias: str, expected_revision: int, actor: str,
                     reason: str) -> AuditEntry:
        removed = await self.get(alias)
        at = now()
        revision = await self._run(alias, expected_revision, b"", Stamp(actor, reason, at))
        return AuditEntry(id="", revision=revision, actor=actor, reason=reason, at=at,
                          before=removed, after=removed, deleted=True)

    async def _run(self, alias: str, expected_revision: int, document: bytes,
                   by: Stamp) -> int:
        """The write script; an empty ``document`` deletes."""
        keys = [self._key(alias, "rules"), self._key(alias, "audit"), f"{self.prefix}:aliases"]
        argv: list[str | int | bytes] = [expected_revision, document, self.channel,
                                         by.actor, by.reason, by.at, _AUDIT_MAXLEN, alias,
                                         by.floor]
        async with unavailable_on_error(self.client):
            ok, revision = await self._cas(keys=keys, args=argv)
        if ok == 0:
            raise ConflictError(alias, expected_revision, int(revision))
        if ok == -1:
            raise NotFoundError(alias)
        if self.replicated:
            await self._confirm(alias, int(revision))
        return int(revision)

    def write_warning(self, alias: str, revision: int) -> str:
        if f"{alias} revision {revision}" not in self.unconfirmed:
            return ""
        return (f"written to the primary, but no replica confirmed revision {revision} within "
                f"{REPLICA_WAIT_MS} ms: a failover now would lose it (check `embedshift status "
                f"{alias}` after one)")

    async def _confirm(self, alias: str, revision: int) -> None:
        """Wait until a replica holds the write (``WAIT``), so that a failover cannot lose a
        change an operator was told is done; when none confirms in time, say so (a log line,
        ``/readyz``): the change is on the primary, but a failover now would lose it."""
        async with unavailable_on_error(self.client):
            confirmed = int(await self.client.wait(1, REPLICA_WAIT_MS))
        if confirmed < 1:
            said = f"{alias} revision {revision}"
            self.unconfirmed = [*self.unconfirmed[-9:], said]
            import structlog  # here: a rule command's start need not load the logging library

            log = structlog.get_logger("embedshift.rules")
            log.warning("rule_write_not_replicated", alias=alias, revision=revision,
                        waited_ms=REPLICA_WAIT_MS,
                        risk="on the primary only: a failover now would lose it")

    # -- coverage and popularity ---------------------------------------------------------------

    async def set_coverage(self, alias: str, version: str, covered: int, total: int,
                           popular: float | None = None) -> None:
        fields = coverage_fields(version, covered, total, popular)
        async with unavailable_on_error(self.client):
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self._key(alias, "coverage"), mapping=fields)  # type: ignore[arg-type]
            pipe.publish(self.channel, f"{alias} {COVERAGE_MESSAGE}")
            await pipe.execute()

    async def coverage(self, alias: str, basis: CoverageBasis = "documents"
                       ) -> dict[str, float]:
        async with unavailable_on_error(self.client):
            raw = await self.client.hgetall(self._key(alias, "coverage"))
        return coverage_fractions({_text(k): int(v) for k, v in raw.items()}, basis)

    async def record_hits(self, alias: str, counts: Mapping[str, float]) -> None:
        async with unavailable_on_error(self.client):
            pipe = self.client.pipeline(transaction=False)
            for point, count in counts.items():
                pipe.zincrby(self._key(alias, "popularity"), count, point)
            await pipe.execute()

    async def most_popular(self, alias: str, count: int) -> list[tuple[str, float]]:
        async with unavailable_on_error(self.client):
            rows = await self.client.zrevrange(self._key(alias, "popularity"), 0, count - 1,
                                               withscores=True)
        return [(_text(row[0]), float(row[1])) for row in rows]

    async def put_report(self, alias: str, version: str, kind: ReportKind,
                         report: Mapping[str, object]) -> None:
        async with unavailable_on_error(self.client):
            await self.client.hset(self._key(alias, "verify"), report_field(version, kind),
                                   msgspec.json.encode(report))

    async def report(self, alias: str, version: str, kind: ReportKind
                     ) -> dict[str, object] | None:
        async with unavailable_on_error(self.client):
            raw = await self.client.hget(self._key(alias, "verify"), report_field(version, kind))
        return None if raw is None else msgspec.json.decode(raw, type=dict[str, object])

    # -- the guard and the ramp --------------------------------------------------------------

    async def put_guard(self, alias: str, field: str, value: bytes) -> None:
        key = self._key(alias, "guard")
        async with unavailable_on_error(self.client):
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(key, field, value)
            pipe.expire(key, _GUARD_TTL_S)  # an alias no proxy serves any more is forgotten
            await pipe.execute()

    async def guard_records(self, alias: str) -> dict[str, bytes]:
        async with unavailable_on_error(self.client):
            raw = await self.client.hgetall(self._key(alias, "guard"))
        return {_text(k): _bytes(v) for k, v in raw.items()}

    async def drop_guard(self, alias: str, field: str) -> None:
        async with unavailable_on_error(self.client):
            await self.client.hdel(self._key(alias, "guard"), field)

    async def take_lease(self, alias: str, name: str, holder: str, ttl_s: float) -> bool:
        async with unavailable_on_error(self.client):
            taken = await self.client.eval(_LEASE_SCRIPT, 1, self._key(alias, f"lease:{name}"),
                                           holder, max(1, round(ttl_s * 1000)))
        return bool(taken)

    async def put_ramp(self, alias: str, plan: bytes | None) -> None:
        async with unavailable_on_error(self.client):
            if plan is None:
                await self.client.delete(self._key(alias, "ramp"))
            else:
                await self.client.set(self._key(alias, "ramp"), plan)

    async def ramp(self, alias: str) -> bytes | None:
        async with unavailable_on_error(self.client):
            raw = await self.client.get(self._key(alias, "ramp"))
        return None if raw is None else _bytes(raw)

    def backfill_queue(self, alias: str, version: str) -> BackfillQueue:
        """The work queue of the backfill of ``alias`` into ``version``."""
        return BackfillQueue(self.client, self.prefix, alias, version)

    # -- notifications -------------------------------------------------------------------------

    async def changes(self, on_subscribed: OnSubscribed = None
                      ) -> AsyncIterator[tuple[str, int | None]]:
        """Yield (alias, revision) as changes are published; raises StoreUnavailable on loss."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            async with unavailable_on_error(self.client):
                await pubsub.subscribe(self.channel)
                if on_subscribed is not None:
                    await on_subscribed()
                async for message in pubsub.listen():
                    parsed = _parse_change(message.get("data"))
                    if parsed is not None:
                        yield parsed
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py


def _parse_change(data: object) -> tuple[str, int | None] | None:
    if not isinstance(data, bytes):
        return None
    alias, _, revision = data.decode().partition(" ")
    if revision == COVERAGE_MESSAGE:
        return alias, None
    return (alias, int(revision)) if revision.isdigit() else None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _audit_entry(entry_id: object, fields: Mapping[Any, Any]) -> AuditEntry:
    text = {_text(k): _text(v) for k, v in fields.items()}
    return AuditEntry(id=_text(entry_id), revision=int(text["revision"]), actor=text["actor"],
                      reason=text["reason"], at=text["at"],
                      before=lenient(text.get("before", "")), after=parse_rollout(text["after"]),
                      deleted=text.get("deleted") == "1")
