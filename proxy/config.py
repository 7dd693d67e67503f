"""Settings: frozen, built from an optional TOML file and an environment mapping passed in.

No module reads ``os.environ`` itself; the entry point hands its environment here, tests hand a
dict. The environment wins over the file. Names, file key on the left, variable on the right:

    data_dir            EMBEDSHIFT_DATA_DIR        embedded Redis and models (.embedshift)
    redis_url           REDIS_URL                  unset: start the embedded redis-server
    redis_prefix        EMBEDSHIFT_REDIS_PREFIX    key namespace, so proxies can share one Redis
    redis_tls_ca_file   REDIS_TLS_CA_FILE          CA bundle for rediss:// URLs
    redis_tls_cert_file REDIS_TLS_CERT_FILE        client certificate for mutual TLS
    redis_tls_key_file  REDIS_TLS_KEY_FILE         its key
    admin_token         EMBEDSHIFT_ADMIN_TOKEN     required by the admin API and alert webhook
    override_token      EMBEDSHIFT_OVERRIDE_TOKEN  lets a request choose its version (off)
    ui_token            EMBEDSHIFT_UI_TOKEN        asked by the /ui status page (unset: open)
    ui_step_s           EMBEDSHIFT_UI_STEP_S       the status page's charts: one point per (5)
    refresh_interval_s  EMBEDSHIFT_REFRESH_S       periodic re-read of rules (covers lost messages)
    actor               EMBEDSHIFT_ACTOR           who operator commands are recorded as
    host, port          EMBEDSHIFT_HOST/_PORT      where ``serve`` listens (127.0.0.1:8080)
    qdrant_url          QDRANT_URL                 unset: the embedded Qdrant engine
    qdrant_api_key      QDRANT_API_KEY             for a Qdrant server
    qdrant_read_consistency  EMBEDSHIFT_QDRANT_READ_CONSISTENCY  replicas a search asks on a
                                                   Qdrant server: a number, all, majority,
                                                   quorum (unset: the server's default)
    cache_size          EMBEDSHIFT_CACHE_SIZE      query vectors cached per model (10000)
    result_cache_size   EMBEDSHIFT_RESULT_CACHE_SIZE  recent answers kept (10000)
    result_cache_ttl_s  EMBEDSHIFT_RESULT_CACHE_TTL_S how long an answer is reused (2; 0: off)
    edge_search_threads EMBEDSHIFT_EDGE_SEARCH_THREADS  embedded engine: search threads per
                                                   shard (1)
    log_queries         EMBEDSHIFT_LOG_QUERIES     put query text in logs (off)
    archive_keep        EMBEDSHIFT_ARCHIVE_KEEP    archives kept per alias, newest first (3)
    popularity_sample   EMBEDSHIFT_POPULARITY_SAMPLE  share of answers whose hits are counted
                                                   for the backfill's order (0.2; 0: off)
    request_timeout_s   EMBEDSHIFT_TIMEOUT_S       a search answers 503 past this (10)
    guard_tick_s        EMBEDSHIFT_GUARD_TICK_S    how often the guard judges and a guarded ramp
                                                   looks at its step (1; 0: no guard loop)
    shadow_concurrency  EMBEDSHIFT_SHADOW_CONCURRENCY  shadow searches at once; more are
                                                   dropped (4)
    alert_alias_label   EMBEDSHIFT_ALERT_ALIAS_LABEL  the alert label naming the alias to roll
                                                   back (embedshift_alias)
    header_timeout_s    EMBEDSHIFT_HEADER_TIMEOUT_S  a request's head must arrive within (10)
    body_timeout_s      EMBEDSHIFT_BODY_TIMEOUT_S  its body within, else 408 (10)
    keepalive_s         EMBEDSHIFT_KEEPALIVE_S     an idle connection is closed after (15)
    max_connections     EMBEDSHIFT_MAX_CONNECTIONS open connections (1000; fewer when the
                                                   descriptor limit cannot honour it)
    max_connections_per_client  EMBEDSHIFT_MAX_CONNECTIONS_PER_CLIENT  from one address (0: half
                                                   the cap); past either, idle ones are shed,
                                                   then a JSON 503
    backlog             EMBEDSHIFT_BACKLOG         the listen queue (1024)
    max_batch_searches  EMBEDSHIFT_MAX_BATCH_SEARCHES  searches in one Qdrant batch request (100)
    max_limit           EMBEDSHIFT_MAX_LIMIT       a search's limit + offset at the most, on both
                                                   APIs, prefetches too (1000)
    max_answer_bytes    EMBEDSHIFT_MAX_ANSWER_BYTES  an answer's size at the most, else a 400
                                                   naming it (32 MiB)
    drain_s             EMBEDSHIFT_DRAIN_S         on SIGTERM, /readyz is 503 this long first (5)
    shutdown_timeout_s  EMBEDSHIFT_SHUTDOWN_TIMEOUT_S  then in-flight requests get this long (10)
    qdrant_port         EMBEDSHIFT_QDRANT_PORT     serve Qdrant's REST API here too (unset: off)
    qdrant_grpc_port    EMBEDSHIFT_QDRANT_GRPC_PORT  and its gRPC API here (unset: off)
    qdrant_read_key     EMBEDSHIFT_QDRANT_READ_KEY  asked by that API as `api-key` (unset: open)
    qdrant_write_key    EMBEDSHIFT_QDRANT_WRITE_KEY  its writes (upserts, deletes; unset: off)
    qdrant_affinity_header  EMBEDSHIFT_QDRANT_AFFINITY_HEADER  a header holding the caller's
                                                   sticky key there, before Qdrant's own
                                                   x-qdrant-route-affinity
    qdrant_affinity_from_key  EMBEDSHIFT_QDRANT_AFFINITY_FROM_KEY  without one, the caller's
                                                   api-key (hashed) is its sticky key (off)
    handed_out_ttl_s    EMBEDSHIFT_HANDED_OUT_TTL_S  how long a vector from /v1/embeddings is
                                                   known as its version's (3600)
    handed_out_max      EMBEDSHIFT_HANDED_OUT_MAX  vectors remembered per alias, the oldest
                                                   dropped first (100000: about 24 MB of Redis)
    embeddings_key      EMBEDSHIFT_EMBEDDINGS_KEY  /v1/embeddings asks for it as a Bearer token
                                                   (unset: open)
    embeddings_per_minute  EMBEDSHIFT_EMBEDDINGS_PER_MINUTE  texts one client address may embed
                                                   a minute, per proxy (6000; 0: no limit)
    drift_check_s       EMBEDSHIFT_DRIFT_CHECK_S   how often served models re-embed their probe
                                                   texts to catch drift (300; 0: only at start)
    drift_policy        EMBEDSHIFT_DRIFT_POLICY    on drift: rollback (a candidate served by the
                                                   model) or report (rollback)
    feedback_ttl_s      EMBEDSHIFT_FEEDBACK_TTL_S  how long answers are remembered for their
                                                   feedback, shared by every proxy (3600; 0: off)
    feedback_answers_max  EMBEDSHIFT_FEEDBACK_ANSWERS_MAX  answers remembered at most, the oldest
                                                   dropped first (250000: about 53 MB of Redis)
    feedback_per_user   EMBEDSHIFT_FEEDBACK_PER_USER  feedback events one user key may have
                                                   counted while answers are remembered (20)
    feedback_events     EMBEDSHIFT_FEEDBACK_EVENTS  event names counted beyond click, convert,
                                                   thumbs_up and thumbs_down (comma-separated)
    feedback_key        EMBEDSHIFT_FEEDBACK_KEY    /v1/feedback asks for it as a Bearer token
                                                   (unset: the Qdrant read key; neither: off)
    requery_s           EMBEDSHIFT_REQUERY_S       another search by the same user within this,
                                                   other text, is a re-query of the first (60)
    config file:        EMBEDSHIFT_CONFIG
"""

from __future__ import annotations

import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from rollout_rules.errors import RuleError

MAX_LIMIT = 100_000
"""The deepest search any setting allows (``max_limit`` picks the bound, 1,000 by default)."""

_ENV = {
    "data_dir": "EMBEDSHIFT_DATA_DIR",
    "redis_url": "REDIS_URL",
    "redis_prefix": "EMBEDSHIFT_REDIS_PREFIX",
    "redis_tls_ca_file": "REDIS_TLS_CA_FILE",
    "redis_tls_cert_file": "REDIS_TLS_CERT_FILE",
    "redis_tls_key_file": "REDIS_TLS_KEY_FILE",
    "admin_token": "EMBEDSHIFT_ADMIN_TOKEN",
    "override_token": "EMBEDSHIFT_OVERRIDE_TOKEN",
    "ui_token": "EMBEDSHIFT_UI_TOKEN",
    "ui_step_s": "EMBEDSHIFT_UI_STEP_S",
    "refresh_interval_s": "EMBEDSHIFT_REFRESH_S",
    "actor": "EMBEDSHIFT_ACTOR",
    "host": "EMBEDSHIFT_HOST",
    "port": "EMBEDSHIFT_PORT",
    "qdrant_url": "QDRANT_URL",
    "qdrant_api_key": "QDRANT_API_KEY",
    "qdrant_read_consistency": "EMBEDSHIFT_QDRANT_READ_CONSISTENCY",
    "cache_size": "EMBEDSHIFT_CACHE_SIZE",
    "result_cache_size": "EMBEDSHIFT_RESULT_CACHE_SIZE",
    "result_cache_ttl_s": "EMBEDSHIFT_RESULT_CACHE_TTL_S",
    "edge_search_threads": "EMBEDSHIFT_EDGE_SEARCH_THREADS",
    "log_queries": "EMBEDSHIFT_LOG_QUERIES",
    "popularity_sample": "EMBEDSHIFT_POPULARITY_SAMPLE",
    "archive_keep": "EMBEDSHIFT_ARCHIVE_KEEP",
    "request_timeout_s": "EMBEDSHIFT_TIMEOUT_S",
    "guard_tick_s": "EMBEDSHIFT_GUARD_TICK_S",
    "shadow_concurrency": "EMBEDSHIFT_SHADOW_CONCURRENCY",
    "alert_alias_label": "EMBEDSHIFT_ALERT_ALIAS_LABEL",
    "header_timeout_s": "EMBEDSHIFT_HEADER_TIMEOUT_S",
    "body_timeout_s": "EMBEDSHIFT_BODY_TIMEOUT_S",
    "keepalive_s": "EMBEDSHIFT_KEEPALIVE_S",
    "max_connections": "EMBEDSHIFT_MAX_CONNECTIONS",
    "max_connections_per_client": "EMBEDSHIFT_MAX_CONNECTIONS_PER_CLIENT",
    "qdrant_port": "EMBEDSHIFT_QDRANT_PORT",
    "qdrant_grpc_port": "EMBEDSHIFT_QDRANT_GRPC_PORT",
    "handed_out_ttl_s": "EMBEDSHIFT_HANDED_OUT_TTL_S",
    "handed_out_max": "EMBEDSHIFT_HANDED_OUT_MAX",
    "embeddings_key": "EMBEDSHIFT_EMBEDDINGS_KEY",
    "embeddings_per_minute": "EMBEDSHIFT_EMBEDDINGS_PER_MINUTE",
    "qdrant_read_key": "EMBEDSHIFT_QDRANT_READ_KEY",
    "qdrant_write_key": "EMBEDSHIFT_QDRANT_WRITE_KEY",
    "qdrant_affinity_header": "EMBEDSHIFT_QDRANT_AFFINITY_HEADER",
    "qdrant_affinity_from_key": "EMBEDSHIFT_QDRANT_AFFINITY_FROM_KEY",
    "backlog": "EMBEDSHIFT_BACKLOG",
    "drain_s": "EMBEDSHIFT_DRAIN_S",
    "shutdown_timeout_s": "EMBEDSHIFT_SHUTDOWN_TIMEOUT_S",
    "max_batch_searches": "EMBEDSHIFT_MAX_BATCH_SEARCHES",
    "max_answer_bytes": "EMBEDSHIFT_MAX_ANSWER_BYTES",
    "max_limit": "EMBEDSHIFT_MAX_LIMIT",
    "drift_check_s": "EMBEDSHIFT_DRIFT_CHECK_S",
    "drift_policy": "EMBEDSHIFT_DRIFT_POLICY",
    "feedback_ttl_s": "EMBEDSHIFT_FEEDBACK_TTL_S",
    "feedback_answers_max": "EMBEDSHIFT_FEEDBACK_ANSWERS_MAX",
    "feedback_per_user": "EMBEDSHIFT_FEEDBACK_PER_USER",
    "feedback_events": "EMBEDSHIFT_FEEDBACK_EVENTS",
    "feedback_key": "EMBEDSHIFT_FEEDBACK_KEY",
    "requery_s": "EMBEDSHIFT_REQUERY_S",
}


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = ".embedshift"
    redis_url: str | None = None
    redis_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")] = "embedshift"
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    admin_token: str | None = None
    override_token: str | None = None
    ui_token: str | None = None
    ui_step_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    refresh_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    actor: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_read_consistency: Annotated[str, msgspec.Meta(
        pattern=r"^([1-9][0-9]{0,2}|all|majority|quorum)$")] | None = None
    cache_size: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    result_cache_size: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    result_cache_ttl_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 2.0
    edge_search_threads: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    log_queries: bool = False
    popularity_sample: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.2
    guard_tick_s: Annotated[float, msgspec.Meta(ge=0.0, le=60.0)] = 1.0
    shadow_concurrency: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 4
    alert_alias_label: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = \
        "embedshift_alias"
    archive_keep: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    request_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    keepalive_s: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1000
    max_connections_per_client: Annotated[int, msgspec.Meta(ge=0)] = 0
    qdrant_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    qdrant_grpc_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    handed_out_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 24 * 3600)] = 3600.0
    handed_out_max: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    embeddings_key: str | None = None
    embeddings_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 6000
    qdrant_read_key: str | None = None
    qdrant_write_key: str | None = None
    qdrant_affinity_from_key: bool = False
    qdrant_affinity_header: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9-]{1,64}$")] = \
        "x-qdrant-route-affinity"
    backlog: Annotated[int, msgspec.Meta(ge=1)] = 1024
    drain_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    shutdown_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    max_batch_searches: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    max_answer_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024 * 1024
    max_limit: Annotated[int, msgspec.Meta(ge=10, le=MAX_LIMIT)] = 1000
    drift_check_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    drift_policy: Literal["rollback", "report"] = "rollback"
    feedback_ttl_s: Annotated[float, msgspec.Meta(ge=0, le=30 * 24 * 3600)] = 3600.0
    feedback_answers_max: Annotated[int, msgspec.Meta(ge=1)] = 250_000
    feedback_per_user: Annotated[int, msgspec.Meta(ge=1)] = 20
    feedback_events: Annotated[str, msgspec.Meta(
        pattern=r"^([a-z][a-z0-9_]{0,63}(,[a-z][a-z0-9_]{0,63})*)?$")] = ""
    feedback_key: str | None = None
    requery_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 60.0

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def archives_path(self) -> Path:
        return self.data_path / "archives"

    @property
    def models_path(self) -> Path:
        return self.data_path / "models"

    def __repr__(self) -> str:
        def hidden(secret: str | None) -> str | None:  # secrets never reach a log line
            return "***" if secret else None

        return (f"Settings(data_dir={self.data_dir!r}, redis_url={redact_url(self.redis_url)!r}, "
                f"redis_prefix={self.redis_prefix!r}, admin_token={hidden(self.admin_token)!r}, "
                f"override_token={hidden(self.override_token)!r}, "
                f"ui_token={hidden(self.ui_token)!r}, "
                f"qdrant_read_key={hidden(self.qdrant_read_key)!r}, "
                f"qdrant_write_key={hidden(self.qdrant_write_key)!r}, "
                f"embeddings_key={hidden(self.embeddings_key)!r}, "
                f"feedback_key={hidden(self.feedback_key)!r})")


def load_settings(environ: Mapping[str, str],
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """File (``EMBEDSHIFT_CONFIG``), then environment, then explicit overrides (CLI flags)."""
    values: dict[str, Any] = {}
    config_file = environ.get("EMBEDSHIFT_CONFIG")
    if config_file:
        values.update(_read_file(Path(config_file)))
    values.update({key: environ[var] for key, var in _ENV.items() if environ.get(var)})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return msgspec.convert(values, type=Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise RuleError("settings", str(exc)) from exc


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RuleError("settings", f"cannot read config file {path}: {exc}") from exc


_PASSWORD = re.compile(r"(://[^:/@?#]*):[^@/?#]*@")
_SECRET_OPTION = re.compile(r"((?:^|[?&])[^=&]*password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """The URL with any password replaced (the user's, and a ``...password=`` option such as
    a sentinel URL's), fit for logs and error messages."""
    if url is None:
        return None
    url = _PASSWORD.sub(r"\1:***@", url, count=1)
    base, mark, query = url.partition("?")
    return base + mark + _SECRET_OPTION.sub(r"\1***", query)


def actor_of(settings: Settings, environ: Mapping[str, str]) -> str:
    """Who a change is recorded as: the configured actor, else user@host."""
    return settings.actor or f"{environ.get('USER', 'operator')}@{socket.gethostname()}"
