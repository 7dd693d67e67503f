"""Redis connections and their errors: every Redis or socket error becomes StoreUnavailable, with
the server's address (never its password) in the message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
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
async def unavailable_on_error(client: aioredis.Redis) -> AsyncIterator[None]:
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
