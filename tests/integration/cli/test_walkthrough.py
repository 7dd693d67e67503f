"""The README's five minutes run as shown: each command prints what the README shows.

The commands run against `embedshift serve` started as the README starts it. What may differ
from run to run is left out of the comparison: trace ids, times, rates, who ran a command, how
many searches and instances the guard's window holds (it slides), whether a share of answers
was sampled for popularity, and the quality table's search time and cache hits."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import pytest

from tests.integration.cli.conftest import StartServing, wait_ready
from tests.readme import README

pytestmark = pytest.mark.integration
SECTION = README.split("\n## Five minutes with it\n", 1)[1].split("\n## ", 1)[0]
VARIES = [(r'"trace_id":"[0-9a-f]{32}"', '"trace_id":"T"'),
          (r"\d{4}-\d\d-\d\dT[\d:.]+Z", "TIME"), (r'"rate":[\d.]+', '"rate":R'),
          (r'"eta_s":[\d.]+', '"eta_s":E'), (r", \d+(\.\d+)? docs/s", ""),
          (r", [\d.]+% of popular answers", ""),
          (r"by [^ ]+@[^ )]+\)", "by WHO)"), (r"searches \d+/\d+", "searches N/M"),
          (r"over \d+ instance", "over N instance"), (r"it took \d+ s", "it took N s"),
          (r"^(v\d +(?:stable|candidate) .*?) +\S+ +\S+$", r"\1 P50 CACHED")]


def steps() -> list[tuple[str, list[str]]]:
    """Each ``$ command`` of the section (continuation lines joined) and what it prints."""
    found: list[tuple[str, list[str]]] = []
    for lines in _console_blocks():
        while lines:
            command = lines.pop(0)
            assert command.startswith("$ "), command
            command = command[2:]
            while command.endswith("\\"):
                command = command[:-1] + lines.pop(0)
            printed = []
            while lines and not lines[0].startswith("$ "):
                printed.append(lines.pop(0))
            found.append((command, printed))
    return found


def _console_blocks() -> list[list[str]]:
    """The section's unlabelled code blocks (commands and what they print), line by line."""
    blocks: list[list[str]] = []
    fence: str | None = None
    for line in SECTION.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence = line[3:]
                blocks.append([])
            else:
                if fence:  # a labelled block (sh): what to type, nothing shown
                    blocks.pop()
                fence = None
        elif fence is not None:
            blocks[-1].append(line)
    return blocks


def _same(lines: list[str]) -> list[str]:
    for pattern, instead in VARIES:
        lines = [re.sub(pattern, instead, line) for line in lines]
    return lines


async def test_the_readmes_five_minutes_print_what_it_shows(start_serving: StartServing
                                                            ) -> None:
    serving = start_serving(EMBEDSHIFT_ADMIN_TOKEN="s3cret", EMBEDSHIFT_FEEDBACK_KEY="clicks")
    await wait_ready(serving, timeout_s=240)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EMBEDSHIFT_") and k not in ("REDIS_URL", "QDRANT_URL")}
    env["EMBEDSHIFT_ADMIN_TOKEN"], env["EMBEDSHIFT_FEEDBACK_KEY"] = "s3cret", "clicks"
    shown = steps()
    assert len(shown) >= 7
    for command, printed in shown:
        local = command.replace("localhost:8080", f"localhost:{serving.port}").replace(
            "uv run --locked --no-dev embedshift", f"{sys.executable} -m proxy.cli.main")
        # `status` reads what the guard loop records each second, as a person typing it would
        for _ in range(60 if " status " in command else 1):
            done = await asyncio.to_thread(
                subprocess.run, ["bash", "-c", local], cwd=serving.here, env=env,
                capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, (command, done.stderr[-2000:])
            if _same(done.stdout.splitlines()) == _same(printed):
                break
            await asyncio.sleep(0.5)
        assert _same(done.stdout.splitlines()) == _same(printed), (command, done.stdout)
