"""The command line parses into settings: flags win over the environment, and bad values exit 3."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from proxy.cli import serve
from proxy.cli.main import main
from proxy.config import Settings


def test_serve_listens_where_its_flags_say(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def run(settings: Settings, environ: Mapping[str, str], demo: bool = True) -> None:
        seen.update(host=settings.host, port=settings.port, demo=demo)

    monkeypatch.setattr(serve, "run", run)
    environ = {"EMBEDSHIFT_HOST": "127.0.0.9", "EMBEDSHIFT_PORT": "8000"}
    assert main(["serve", "--host", "127.0.0.2", "--port", "9001"], environ) == 0
    assert seen == {"host": "127.0.0.2", "port": 9001, "demo": True}
    assert main(["serve", "--no-demo"], environ) == 0
    assert seen == {"host": "127.0.0.9", "port": 8000, "demo": False}


def test_a_port_out_of_range_is_an_error_naming_the_setting(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "70000"], {}) == 3
    assert "port" in capsys.readouterr().err


def test_each_command_is_found_in_the_group_that_defines_it() -> None:
    """GROUPS lets a command import its own group only; it must name every command."""
    import argparse

    from proxy.cli.main import GROUPS, _parser

    for group, names in GROUPS.items():
        parser = _parser([group])
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert sorted(actions[0].choices) == sorted(names), group


def test_status_imports_neither_the_vector_stores_nor_the_models() -> None:
    """`embedshift status` starts fast: what serving needs (qdrant_client, onnxruntime, numpy),
    the logging library and the metrics API and SDK redis-py would instrument itself with are not
    imported to read a rule, in a process of its own (``main()`` reading ``sys.argv``)."""
    import subprocess
    import sys

    heavy = ("qdrant_client", "onnxruntime", "numpy", "aiohttp", "structlog",
             "opentelemetry.metrics", "opentelemetry.sdk.metrics")
    code = ("import sys\nfrom proxy.cli.main import main\n"
            "sys.argv = ['embedshift', 'status', '--redis-url', 'redis://127.0.0.1:1/0']\n"
            "main(environ={})\n"
            f"print(sorted(m for m in {heavy!r} if sys.modules.get(m) is not None))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_every_commands_help_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` of the CLI and of each command prints (a stray `%` in a help text once made
    argparse fail with a TypeError instead)."""
    from proxy.cli.main import GROUPS

    for command in [None, *(name for names in GROUPS.values() for name in names)]:
        with pytest.raises(SystemExit) as done:
            main([*([command] if command else []), "--help"], {})
        assert done.value.code == 0, command
    assert "ramp" in capsys.readouterr().out


def test_a_reader_that_closes_the_pipe_ends_the_cli_quietly() -> None:
    """`embedshift ... | head -1`: no BrokenPipeError traceback, SIGPIPE's exit status."""
    import subprocess
    import sys

    code = ("import sys\nfrom proxy.cli import main\n"
            "main._main = lambda argv, environ: print('rev 1\\n' * 100_000) or 0\n"
            "sys.exit(main.main())\n")  # more than a pipe holds: the write itself fails
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # closed before the child writes a byte: its first write fails
    error = child.stderr.read().decode()
    child.stderr.close()
    assert child.wait(timeout=60) == 141, error
    assert "Traceback" not in error and "BrokenPipe" not in error, error
