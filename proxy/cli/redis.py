"""``embedshift redis start|stop|status``: the embedded redis-server under the data folder."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from proxy.cli.common import AddCommand, Result
from proxy.config import Settings
from proxy.state.redis_server import EmbeddedRedis


def run(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> Result:
    server = EmbeddedRedis(settings.data_path, environ)
    if args.action == "start":
        url = server.ensure_running()
        return {"running": True, "url": url}, f"redis-server running at {url}"
    if args.action == "stop":
        server.stop()
        return {"running": False}, "redis-server stopped"
    running = server.is_running()
    state = "running" if running else "not running"
    return ({"running": running, "url": server.url, "binary": server.binary},
            f"redis-server {state} at {server.url} (binary {server.binary})")


def add_parsers(add: AddCommand) -> None:
    p = add("redis", run, "start, stop or check the embedded redis-server")
    p.add_argument("action", choices=["start", "stop", "status"])
