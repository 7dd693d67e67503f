"""What every command group shares: the shape of a command, and running one against the store."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from proxy.config import Settings, actor_of

if TYPE_CHECKING:
    from proxy.control.operator import Operator

Result = tuple[Any, str]  # (what --json prints, what a human reads)
# A command runs with its parsed arguments, the settings and the environment; None: it printed
# what it had to say itself (serve).
Runner = Callable[[argparse.Namespace, Settings, Mapping[str, str]], Result | None]
AddCommand = Callable[[str, Runner, str], argparse.ArgumentParser]
OperatorCommand = Callable[["Operator", argparse.Namespace], Awaitable[Result]]


def with_operator(handler: OperatorCommand) -> Runner:
    """A runner that opens the rule store, hands the handler an Operator, and closes it."""

    def run(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> Result:
        from proxy.control.operator import Operator  # imported when a command runs, not
        from proxy.state.answers import RedisAnswerLog  # when the parser is built
        from proxy.state.rulestore import open_store

        async def go() -> Result:
            store = open_store(settings, environ, start=False)
            try:
                return await handler(Operator(
                    store, actor_of(settings, environ), settings.models_path,
                    answers=RedisAnswerLog(store.client, settings.redis_prefix)), args)
            finally:
                await store.aclose()

        return asyncio.run(go())

    return run
