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
