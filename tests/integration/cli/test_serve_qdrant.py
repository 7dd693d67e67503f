"""`embedshift serve` with Qdrant's ports runs the guide's Qdrant programs, REST and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import warnings

import pytest

from loadtest.ports import free_port
from proxy.cli.main import main
from proxy.models.builtin import L3_ID, L6_ID
from tests.integration.cli.conftest import StartServing, wait_ready
from tests.integration.qdrant_api.clients import version_checked
from tests.readme import DOCS

pytestmark = pytest.mark.integration


def _shown(name: str) -> tuple[str, list[str]]:
    """The README's program marked ``# name`` and the output it shows, scores left out."""
    program, output = re.search(rf"```python\n# {name}\n(.*?)```\n\n```\n(.*?)```", DOCS,
                                re.DOTALL).groups()  # type: ignore[union-attr]
    return program, _unscored(output)


def _unscored(output: str) -> list[str]:
    return [re.sub(r" \d\.\d+ ", " ", line) for line in output.splitlines()]


@pytest.mark.parametrize("name", ["qdrant-app", "langchain-app", "adopt-app", "hybrid-app",
                                  "grpc-app"])
async def test_the_readmes_programs_run_as_shown(start_serving: StartServing, name: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    qdrant_port, grpc_port = free_port(), free_port()
    serving = start_serving(EMBEDSHIFT_QDRANT_PORT=str(qdrant_port),
                            EMBEDSHIFT_QDRANT_GRPC_PORT=str(grpc_port),
                            EMBEDSHIFT_QDRANT_WRITE_KEY="write-secret",
                            EMBEDSHIFT_ADMIN_TOKEN="admin-secret")
    port = serving.port
    await wait_ready(serving, timeout_s=240)
    program, shown = _shown(name)
    assert "127.0.0.1:16333" in program

    def run() -> list[str]:
        printed = io.StringIO()
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(printed):
            warnings.simplefilter("always")
            exec(program.replace("16333", str(qdrant_port)).replace("16334", str(grpc_port))
                 .replace("8080", str(port)), {})
            version_checked()
        assert [str(w.message) for w in caught if "compatib" in str(w.message)] == []
        return _unscored(printed.getvalue())

    assert await asyncio.to_thread(run) == shown
    assert '"api":"qdrant"' in serving.log.read_text()
    assert '"api":"qdrant-grpc"' in serving.log.read_text()
    if name == "adopt-app":  # and the README's adopt, refused then done, as it shows
        env = {"EMBEDSHIFT_ADMIN_TOKEN": "admin-secret"}
        for model, code in ((L6_ID, 3), (L3_ID, 0)):
            args = ["adopt", "kb-docs", "--collection", "kb", "--model", model,
                    "--url", serving.base]
            assert await asyncio.to_thread(main, args, env) == code
        said = capsys.readouterr()
        assert "median cosine of 0.2" in said.err and "adopted kb as kb-docs v1" in said.out
