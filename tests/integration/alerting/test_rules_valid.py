"""deploy/alerting passes promtool and amtool, and its rules read metrics the proxy exports."""

from __future__ import annotations

import re
import subprocess

from prometheus_client import generate_latest

from proxy.telemetry import Metrics
from tests.paths import REPO

ALERTING = REPO / "deploy" / "alerting"


def test_the_alert_rules_pass_promtool(tools: dict[str, str]) -> None:
    done = subprocess.run([tools["promtool"], "check", "rules",
                           str(ALERTING / "embedshift-rules.yml")], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alertmanager_route_passes_amtool(tools: dict[str, str]) -> None:
    done = subprocess.run([tools["amtool"], "check-config", str(ALERTING / "alertmanager.yml")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_the_rules_read_is_one_the_proxy_exports() -> None:
    metrics = Metrics()
    for metric in (metrics.requests, metrics.fallbacks):
        metrics.child(metric, "a", "v", *(["r"] if metric is metrics.requests else [])).inc()
    metrics.child(metrics.search_latency, "a", "v").observe(0.1)
    metrics.child(metrics.shadow_overlap, "a", "v").observe(0.5)
    exported = set(re.findall(r"^(\w+)", generate_latest(metrics.registry).decode(), re.M))
    rules = (ALERTING / "embedshift-rules.yml").read_text()
    read = set(re.findall(r"\b(embedshift_\w+?(?:_total|_bucket|_count|_sum))\b", rules))
    assert read and read <= exported, read - exported
