"""Progress written for scripts (stderr not a terminal) says the rate and the time left."""

from __future__ import annotations

import json

import pytest

from proxy.cli.data import Reporter


def test_json_progress_carries_rate_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = Reporter("ingest docs", 100, "doc")
    reporter.update(0, 100)
    reporter.started -= 2.0  # two seconds ago, without sleeping
    reporter.last = 0.0  # past the interval between lines
    reporter.update(40, 100)
    reporter.update(100, 100)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0] == {"progress": "ingest docs", "done": 0, "total": 100}
    assert lines[1]["rate"] == pytest.approx(20.0, rel=0.05)
    assert lines[1]["eta_s"] == pytest.approx(3.0, rel=0.05)
    assert "eta_s" not in lines[2] and lines[2]["done"] == 100
