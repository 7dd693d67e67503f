"""``embedshift serve``: run on embedded defaults.

It starts (or finds) the embedded redis-server, declares the demo alias if it is missing, builds
its versions' models if they are not built yet (from PyPI packages, see ``proxy.models``), and keeps
a live rules snapshot exactly as every proxy instance will, logging each change as it arrives.
The HTTP search path is built on top of this (see the proxy issue); until then this is what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import structlog

from proxy.cli import actor_of, open_store, render_status
from proxy.config import Settings
from proxy.defaults import default_rollout
from proxy.models import resolve
from proxy.operator import Operator, status_of
from proxy.rules import RuleWatcher
from rollout_rules.errors import NotFoundError
from rollout_rules.model import Rollout
from rollout_rules.ops import summarize_change

DEMO_ALIAS = "products"
log = structlog.get_logger("embedshift.serve")


async def serve(settings: Settings, environ: Mapping[str, str]) -> None:
    store = open_store(settings, environ)
    operator = Operator(store, actor_of(settings, environ))
    try:
        await operator.status(DEMO_ALIAS)
    except NotFoundError:
        await operator.declare(default_rollout(DEMO_ALIAS), "demo alias declared by serve")

    def on_change(alias: str, before: Rollout | None, after: Rollout | None) -> None:
        if before is not None and after is not None:
            log.info("rule_changed", alias=alias, revision=after.revision,
                     change=summarize_change(before, after), by=after.updated_by,
                     reason=after.reason)

    rollout = await operator.store.get(DEMO_ALIAS)
    for version in rollout.versions:
        folder = await asyncio.to_thread(resolve, version, settings.models_path)
        print(f"model {version.name}: {version.model} ready in {folder}")
    watcher = RuleWatcher(store, settings.refresh_interval_s, on_change=on_change)
    await watcher.start()
    print(render_status(status_of(watcher.rollouts[DEMO_ALIAS],
                                  watcher.coverage.get(DEMO_ALIAS, {}))))
    print(_HINT)
    try:
        await asyncio.Event().wait()
    finally:
        await watcher.stop()
        await store.aclose()


def run(settings: Settings, environ: Mapping[str, str]) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, environ))


_HINT = """
watching rule changes (Ctrl-C to stop). In another terminal, try:
  uv run embedshift coverage products v2 600 1000
  uv run embedshift set products 10 --reason "first ramp"
  uv run embedshift explain products --user alice
  uv run embedshift rollback products --reason "p99 regression"
  uv run embedshift history products
"""
