"""The rule store in Redis: one document per alias, compare-and-set writes, audit, notifications.

Keys (``P`` is the prefix; ``{alias}`` is a hash tag so one alias's keys share a cluster slot):

    P:{alias}:rules        hash  revision, doc (the rule document as JSON)
    P:{alias}:audit        stream of changes: revision, actor, reason, at, before, after
    P:{alias}:coverage     hash  "<version>:covered", "<version>:total" (backfill progress)
    P:{alias}:popularity   sorted set of document ids by query hits (backfill priority)
    P:aliases              set of declared aliases
    P:changes              pub/sub channel, message "<alias> <revision>"

A write runs one Lua script that checks the revision, stores the document, appends the audit entry
and publishes the change, so the three can never disagree. Redis errors become StoreUnavailable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from msgspec.structs import replace
from redis.exceptions import RedisError

from proxy.config import Settings, redact_url
from proxy.redis_server import EmbeddedRedis
from rollout_rules.errors import ConflictError, NotFoundError, RuleError, StoreUnavailable
from rollout_rules.model import Rollout, dump_rollout, parse_rollout

_AUDIT_MAXLEN = 10_000

_CAS_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
local before = redis.call('HGET', KEYS[1], 'doc') or ''
local revision = current + 1
redis.call('HSET', KEYS[1], 'revision', revision, 'doc', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'revision', revision,
           'actor', ARGV[4], 'reason', ARGV[5], 'at', ARGV[6], 'before', before, 'after', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[8] .. ' ' .. revision)
return {1, revision}
"""


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    revision: int
    actor: str
    reason: str
    at: str
    before: Rollout | None
    after: Rollout


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """What a write did: the rule before and after; ``changed`` is False for a no-op."""

    before: Rollout
    after: Rollout
    changed: bool


def open_store(settings: Settings, environ: Mapping[str, str]) -> RedisRuleStore:
    """The configured Redis, or the embedded one, started if it is not running yet."""
    url = settings.redis_url or EmbeddedRedis(settings.data_path, environ).ensure_running()
    return RedisRuleStore(connect(settings, url), settings.redis_prefix)


def connect(settings: Settings, url: str) -> aioredis.Redis:
    """An asyncio client for ``url`` (redis://, rediss:// with TLS files, unix://)."""
    options: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0,
                               "health_check_interval": 10}
    if url.startswith("rediss://"):
        options.update(ssl_ca_certs=settings.redis_tls_ca_file,
                       ssl_certfile=settings.redis_tls_cert_file,
                       ssl_keyfile=settings.redis_tls_key_file)
    client: aioredis.Redis = aioredis.Redis.from_url(url, **options)
    return client


@asynccontextmanager
async def _unavailable_on_error(client: aioredis.Redis) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        where = redact_url(_describe(client))
        raise StoreUnavailable(f"Redis at {where} is unreachable: {exc}") from exc


def _describe(client: aioredis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


class RedisRuleStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "embedshift") -> None:
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}:changes"
        self._cas = client.register_script(_CAS_SCRIPT)

    def _key(self, alias: str, kind: str) -> str:
        return f"{self.prefix}:{{{alias}}}:{kind}"

    async def aclose(self) -> None:
        await self.client.aclose()

    async def ping(self) -> None:
        async with _unavailable_on_error(self.client):
            await self.client.ping()

    # -- reading ------------------------------------------------------------------------------

    async def aliases(self) -> list[str]:
        async with _unavailable_on_error(self.client):
            members = await self.client.smembers(f"{self.prefix}:aliases")
        return sorted(_text(m) for m in members)

    async def get(self, alias: str) -> Rollout:
        """The stored rule; NotFoundError if none, RuleError if what is stored is not valid."""
        async with _unavailable_on_error(self.client):
            raw = await self.client.hget(self._key(alias, "rules"), "doc")
        if raw is None:
            raise NotFoundError(alias)
        try:
            return parse_rollout(raw)
        except RuleError as exc:
            raise RuleError(exc.field, f"stored rule for {alias!r} is invalid: {exc.message}") \
                from exc

    async def history(self, alias: str, limit: int = 20) -> list[AuditEntry]:
        """Newest first."""
        async with _unavailable_on_error(self.client):
            rows = await self.client.xrevrange(self._key(alias, "audit"), count=limit)
        return [_audit_entry(entry_id, fields or {}) for entry_id, fields in rows or []]

    # -- writing ------------------------------------------------------------------------------

    async def write(self, rollout: Rollout, expected_revision: int, actor: str,
                    reason: str) -> Rollout:
        """Store ``rollout`` if the stored revision is still ``expected_revision``."""
        stamped = replace(rollout, revision=expected_revision + 1, updated_by=actor,
                          updated_at=_now(), reason=reason)
        document = dump_rollout(stamped)
        keys = [self._key(rollout.alias, "rules"), self._key(rollout.alias, "audit")]
        argv: list[str | int | bytes] = [expected_revision, document, self.channel, actor,
                                         reason, stamped.updated_at, _AUDIT_MAXLEN, rollout.alias]
        async with _unavailable_on_error(self.client):
            ok, revision = await self._cas(keys=keys, args=argv)
            if ok:
                await self.client.sadd(f"{self.prefix}:aliases", rollout.alias)
        if not ok:
            raise ConflictError(rollout.alias, expected_revision, int(revision))
        return stamped

    async def create(self, rollout: Rollout, actor: str, reason: str,
                     replace_existing: bool = False) -> Rollout:
        """Declare an alias; refuses to overwrite one unless ``replace_existing``."""
        expected = 0
        if replace_existing:
            async with _unavailable_on_error(self.client):
                current = await self.client.hget(self._key(rollout.alias, "rules"), "revision")
            expected = int(current or 0)
        return await self.write(rollout, expected, actor, reason)

    async def apply(self, alias: str, action: Callable[[Rollout], Rollout], actor: str,
                    reason: str, expected_revision: int | None = None) -> Change:
        """Read, transform with a pure action, write back by compare-and-set.

        With ``expected_revision`` the caller asserts what it last saw; otherwise the revision
        just read is expected. Either way a concurrent writer makes this raise ConflictError
        rather than silently overwrite.
        """
        before = await self.get(alias)
        if expected_revision is not None and expected_revision != before.revision:
            raise ConflictError(alias, expected_revision, before.revision)
        after = action(before)
        if after == before:
            return Change(before=before, after=before, changed=False)
        stored = await self.write(after, before.revision, actor, reason)
        return Change(before=before, after=stored, changed=True)

    async def apply_with_retry(self, alias: str, action: Callable[[Rollout], Rollout],
                               actor: str, reason: str, attempts: int = 5) -> Change:
        """As ``apply``, re-reading on conflict: for automation whose intent is absolute
        (a rollback stays right whatever changed in between)."""
        for _ in range(attempts - 1):
            try:
                return await self.apply(alias, action, actor, reason)
            except ConflictError:
                continue
        return await self.apply(alias, action, actor, reason)

    # -- coverage and popularity ---------------------------------------------------------------

    async def set_coverage(self, alias: str, version: str, covered: int, total: int) -> None:
        async with _unavailable_on_error(self.client):
            await self.client.hset(self._key(alias, "coverage"),
                                   mapping={f"{version}:covered": covered,
                                            f"{version}:total": total})

    async def add_covered(self, alias: str, version: str, count: int) -> None:
        """Many backfill workers add what they finished; Redis keeps the sum."""
        async with _unavailable_on_error(self.client):
            await self.client.hincrby(self._key(alias, "coverage"), f"{version}:covered", count)

    async def coverage(self, alias: str) -> dict[str, float]:
        """Coverage fraction per version that has reported a total."""
        async with _unavailable_on_error(self.client):
            raw = await self.client.hgetall(self._key(alias, "coverage"))
        fields = {_text(k): int(v) for k, v in raw.items()}
        return coverage_fractions(fields)

    async def record_hits(self, alias: str, doc_ids: Sequence[str], weight: float = 1.0) -> None:
        async with _unavailable_on_error(self.client):
            pipe = self.client.pipeline(transaction=False)
            for doc_id in doc_ids:
                pipe.zincrby(self._key(alias, "popularity"), weight, doc_id)
            await pipe.execute()

    async def most_popular(self, alias: str, count: int) -> list[tuple[str, float]]:
        async with _unavailable_on_error(self.client):
            rows = await self.client.zrevrange(self._key(alias, "popularity"), 0, count - 1,
                                               withscores=True)
        return [(_text(row[0]), float(row[1])) for row in rows]

    # -- notifications -------------------------------------------------------------------------

    async def changes(self, on_subscribed: Callable[[], Awaitable[None]] | None = None
                      ) -> AsyncIterator[tuple[str, int]]:
        """Yield (alias, revision) as changes are published; raises StoreUnavailable on loss."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            async with _unavailable_on_error(self.client):
                await pubsub.subscribe(self.channel)
                if on_subscribed is not None:
                    await on_subscribed()
                async for message in pubsub.listen():
                    parsed = _parse_change(message.get("data"))
                    if parsed is not None:
                        yield parsed
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py


def coverage_fractions(fields: dict[str, int]) -> dict[str, float]:
    totals = {k.rsplit(":", 1)[0]: v for k, v in fields.items() if k.endswith(":total")}
    return {version: min(1.0, fields.get(f"{version}:covered", 0) / total) if total else 0.0
            for version, total in totals.items()}


def _parse_change(data: object) -> tuple[str, int] | None:
    if not isinstance(data, bytes):
        return None
    alias, _, revision = data.decode().partition(" ")
    return (alias, int(revision)) if revision.isdigit() else None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _audit_entry(entry_id: object, fields: Mapping[Any, Any]) -> AuditEntry:
    text = {_text(k): _text(v) for k, v in fields.items()}
    return AuditEntry(id=_text(entry_id), revision=int(text["revision"]), actor=text["actor"],
                      reason=text["reason"], at=text["at"],
                      before=_lenient(text.get("before", "")), after=parse_rollout(text["after"]))


def _lenient(document: str) -> Rollout | None:
    """A stored 'before' that no longer parses (written by hand) shows as absent, not a crash."""
    try:
        return parse_rollout(document) if document else None
    except RuleError:
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
