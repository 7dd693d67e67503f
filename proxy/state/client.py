"""Redis connections and their errors: every Redis or socket error becomes StoreUnavailable, with
the server's address (never its password) in the message.

``REDIS_URL`` may name a Sentinel-managed primary:
``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]`` (``rediss+sentinel``
for TLS to the Redis nodes; ``?sentinel_password=...`` when the sentinels ask for one). The
client asks the sentinels where the primary is on every new connection, so after a failover
its next connection finds the new one; the rule store's scripts reload themselves on NOSCRIPT
and the rule watcher subscribes again (``proxy.state.watcher``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

from proxy.config import Settings, redact_url
from proxy.state.redis_server import EmbeddedRedis
from rollout_rules.errors import StoreUnavailable


def redis_url(settings: Settings, environ: Mapping[str, str], start: bool = True) -> str:
    """The configured Redis, or the embedded one: started if it is not running yet, or (not
    ``start``: the CLI) StoreUnavailable saying nothing runs there."""
    if settings.redis_url:
        return settings.redis_url
    embedded = EmbeddedRedis(settings.data_path, environ)
    if start:
        return embedded.ensure_running()
    if not embedded.is_running():
        raise StoreUnavailable(
            f"no embedshift found: no REDIS_URL is set and no redis-server runs under "
            f"{settings.data_path} (start the proxy with `embedshift serve` in this folder, "
            "or give --data-dir / REDIS_URL; `embedshift redis start` starts the rule store "
            "alone); nothing was started")
    return embedded.url


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


class Sentinels(Sentinel):
    """redis-py's ``Sentinel``, asking where the primary is one discovery at a time. Its
    ``discover_master`` moves the sentinel that answered to the front of its list with a swap
    that spans an await: two discoveries at once (every connection reconnecting after a
    failover, while the first sentinel asked does not name a primary yet) could write one
    sentinel twice and drop another from the list for good: never asked again, and its
    connections never closed (redis-py 8.1; they leaked after the failover test)."""

    def __init__(self, sentinels: list[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(sentinels, **kwargs)  # type: ignore[no-untyped-call]
        self._discovering = asyncio.Lock()

    async def discover_master(self, service_name: str) -> Any:
        async with self._discovering:
            return await super().discover_master(service_name)


@dataclass(frozen=True)
class SentinelAddress:
    """Where the sentinels are and which primary they watch (from a ``redis+sentinel`` URL)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None
    username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


def parse_sentinel_url(url: str) -> SentinelAddress:
    """A ``redis+sentinel://`` URL read, or StoreUnavailable naming what is wrong (never the
    password)."""
    scheme, _, rest = url.partition("://")
    if scheme not in SENTINEL_SCHEMES:
        raise StoreUnavailable(f"REDIS_URL: {scheme}:// is not a sentinel URL")
    where, _, query = rest.partition("?")
    auth, _, hosts = where.rpartition("@")
    hosts, _, path = hosts.partition("/")
    username, _, password = auth.partition(":") if auth else ("", "", "")
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise StoreUnavailable(f"REDIS_URL: sentinel {host!r} is not HOST:PORT")
        sentinels.append((name.strip("[]"), int(port)))
    master, _, db = path.partition("/")
    if not sentinels or not master:
        raise StoreUnavailable("REDIS_URL: a sentinel URL names sentinels and a primary: "
                               "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME")
    if db and not db.isdigit():
        raise StoreUnavailable(f"REDIS_URL: database {db!r} is not a number")
    options = dict(parse_qsl(query))
    return SentinelAddress(sentinels=tuple(sentinels), master=unquote(master),
                           db=int(db or 0), password=unquote(password) or None,
                           username=unquote(username) or None,
                           sentinel_password=options.get("sentinel_password"),
                           tls=scheme.startswith("rediss"))


def connect(settings: Settings, url: str) -> aioredis.Redis:
    """An asyncio client for ``url`` (redis://, rediss:// with TLS files, unix://, or a
    sentinel-managed primary: ``redis+sentinel://``)."""
    options: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0,
                               "health_check_interval": 10}
    if url.startswith(("rediss://", "rediss+sentinel://")):
        options.update(ssl=True, ssl_ca_certs=settings.redis_tls_ca_file,
                       ssl_certfile=settings.redis_tls_cert_file,
                       ssl_keyfile=settings.redis_tls_key_file)
    if url.startswith(SENTINEL_SCHEMES):
        address = parse_sentinel_url(url)
        sentinel = Sentinels(list(address.sentinels), sentinel_kwargs={
            "socket_timeout": 1.0, "socket_connect_timeout": 1.0,
            "password": address.sentinel_password})
        primary: aioredis.Redis = sentinel.master_for(
            address.master, db=address.db, password=address.password,
            username=address.username, **options)
        return primary
    options.pop("ssl", None)  # from_url reads it from the scheme
    client: aioredis.Redis = aioredis.Redis.from_url(url, **options)
    return client


async def close(client: aioredis.Redis) -> None:
    """Close a client and, for a sentinel-managed primary, its connections to the sentinels."""
    await client.aclose()
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def is_replicated(client: aioredis.Redis) -> bool:
    """Whether ``client`` talks to a sentinel-managed primary (whose replicas a write waits
    for)."""
    return isinstance(client.connection_pool, SentinelConnectionPool)


@asynccontextmanager
async def unavailable_on_error(client: aioredis.Redis) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        where = redact_url(_describe(client))
        raise StoreUnavailable(f"Redis at {where} is unreachable: {exc}") from exc


def _describe(client: aioredis.Redis) -> str:
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return f"the primary {pool.service_name!r} of sentinels " + ",".join(
            f"{host}:{port}" for host, port in _sentinel_hosts(pool))
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def _sentinel_hosts(pool: SentinelConnectionPool) -> list[tuple[str, int]]:
    found = []
    for sentinel in pool.sentinel_manager.sentinels:
        kwargs = sentinel.connection_pool.connection_kwargs
        found.append((str(kwargs.get("host", "?")), int(kwargs.get("port", 0))))
    return found
