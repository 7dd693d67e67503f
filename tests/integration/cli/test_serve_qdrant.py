"""`embedshift serve --qdrant-port` runs the README's qdrant-client program as the README shows."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import warnings

import pytest

from loadtest.bench_proxy import free_port
from tests.integration.cli.conftest import StartServing, wait_ready
from tests.integration.qdrant_api.clients import version_checked
from tests.readme import README

pytestmark = pytest.mark.integration


def _shown() -> tuple[str, list[str]]:
    """The README's program (``# qdrant-app``) and the output it shows, scores left out."""
    program, output = re.search(r"```python\n# qdrant-app\n(.*?)```\n\n```\n(.*?)```", README,
                                re.DOTALL).groups()  # type: ignore[union-attr]
    return program, [re.sub(r" \d\.\d+ ", " ", line) for line in output.splitlines()]


async def test_the_readmes_qdrant_client_program_runs_as_shown(
        start_serving: StartServing) -> None:
    port = free_port()
    serving = start_serving(EMBEDSHIFT_QDRANT_PORT=str(port))
    await wait_ready(serving, timeout_s=240)
    program, shown = _shown()
    assert "127.0.0.1:16333" in program

    def run() -> list[str]:
        printed = io.StringIO()
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(printed):
            warnings.simplefilter("always")
            exec(program.replace("16333", str(port)), {})
            version_checked()
        assert [str(w.message) for w in caught if "compatib" in str(w.message)] == []
        return [re.sub(r" \d\.\d+ ", " ", line) for line in printed.getvalue().splitlines()]

    assert await asyncio.to_thread(run) == shown
    assert '"api":"qdrant"' in serving.log.read_text()
