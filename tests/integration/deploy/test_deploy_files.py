"""Every file in deploy/ passes its validator; the dashboard asks for metrics the proxy exports."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.state.client import parse_sentinel_url
from proxy.web.routes import ROUTES
from tests.integration.conftest import ProxyFactory
from tests.paths import REPO

pytestmark = pytest.mark.integration
DEPLOY = REPO / "deploy"
KUBERNETES = "1.33.0"
DASHBOARD = DEPLOY / "grafana" / "embedshift.json"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_each_kubernetes_manifest_is_valid_for_its_schema(path: Path) -> None:
    for document in _documents(path):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)  # raises when invalid


def test_a_broken_manifest_is_caught() -> None:
    deployment = _documents(DEPLOY / "k8s" / "deployment.yaml")[0]
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    deployment["spec"]["replicas"] = 2
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
        "pth"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_probes_and_kinds_are_the_ones_a_deployment_needs() -> None:
    kinds = {doc["kind"] for path in (DEPLOY / "k8s").glob("*.yaml") for doc in _documents(path)}
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                     "ConfigMap", "Secret", "Job", "StatefulSet"}
    config = _documents(DEPLOY / "k8s" / "configmap.yaml")[0]["data"]
    address = parse_sentinel_url(config["REDIS_URL"])  # the sentinels' Service, their primary
    found = {(doc["kind"], doc["metadata"]["name"]): doc for doc in
             _documents(DEPLOY / "k8s" / "redis-sentinel.yaml")}
    assert address.sentinels == (("redis-sentinel", 26379),)
    assert ("Service", "redis-sentinel") in found
    sentinel = found[("Deployment", "redis-sentinel")]["spec"]["template"]["spec"]
    script = sentinel["containers"][0]["command"][-1]
    assert f"sentinel monitor {address.master} redis-0.redis 6379 2" in script
    container = _documents(DEPLOY / "k8s" / "deployment.yaml")[0]["spec"]["template"]["spec"][
        "containers"][0]
    paths = {route.path for route in ROUTES}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in paths
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in paths


def test_the_qdrant_ports_are_served_exposed_and_routed_alike() -> None:
    """What the proxy is told to serve Qdrant's APIs on is what the image exposes, the pod
    names and the Service routes (6333 REST, 6334 gRPC, as Qdrant's own)."""
    config = _documents(DEPLOY / "k8s" / "configmap.yaml")[0]["data"]
    served = {int(config["EMBEDSHIFT_QDRANT_PORT"]), int(config["EMBEDSHIFT_QDRANT_GRPC_PORT"])}
    assert served == {6333, 6334}
    container = _documents(DEPLOY / "k8s" / "deployment.yaml")[0]["spec"]["template"]["spec"][
        "containers"][0]
    named = {port["name"]: port["containerPort"] for port in container["ports"]}
    service = _documents(DEPLOY / "k8s" / "service.yaml")[0]["spec"]["ports"]
    assert {named[port["targetPort"]] for port in service} == {8080, *served}
    exposed = re.search(r"^EXPOSE (.+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert exposed is not None and set(map(int, exposed[1].split())) == {8080, *served}
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())["services"][
        "embedshift"]
    assert {int(compose["environment"]["EMBEDSHIFT_QDRANT_PORT"]),
            int(compose["environment"]["EMBEDSHIFT_QDRANT_GRPC_PORT"])} == served
    assert set(map(int, compose["ports"])) == {8080, *served}


def _check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(tool), *args], capture_output=True, text=True, check=False,
                          timeout=120)


def test_the_compose_file_is_valid_for_the_compose_spec(tmp_path: Path) -> None:
    compose = DEPLOY / "compose" / "compose.yaml"
    done = _check_jsonschema("--builtin-schema", "vendor.compose-spec", str(compose))
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(compose.read_text().replace("stop_grace_period", "stop_grace_periode"))
    assert _check_jsonschema("--builtin-schema", "vendor.compose-spec",
                             str(broken)).returncode != 0
    services = yaml.safe_load(compose.read_text())["services"]
    assert services["embedshift"]["deploy"]["replicas"] == 3
    assert {"qdrant", "redis-primary", "redis-replica", "sentinel-1", "sentinel-2",
            "sentinel-3", "prometheus", "alertmanager", "grafana",
            "otel-collector"} <= set(services)
    address = parse_sentinel_url(services["embedshift"]["environment"]["REDIS_URL"])
    assert address.sentinels == tuple((f"sentinel-{n}", 26379) for n in (1, 2, 3))
    for n in (1, 2, 3):  # every sentinel watches the primary the proxies ask for
        script = services[f"sentinel-{n}"]["command"][-1]
        assert f"sentinel monitor {address.master} redis-primary 6379 2" in script
    for service in services.values():  # every file it mounts is in the repository
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (compose.parent / source).exists(), source
    build = services["embedshift"]["build"]
    assert (compose.parent / build["context"] / build["dockerfile"]).is_file()


def test_the_dockerfile_copies_what_exists() -> None:
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
    return found


def test_the_compose_prometheus_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path)
    shutil.copy(DEPLOY / "alerting" / "embedshift-rules.yml", tmp_path)
    done = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedshift-rules.yml" in done.stdout and "SUCCESS" in done.stdout


def test_the_collector_and_grafana_provisioning_hold_together() -> None:
    collector = yaml.safe_load((DEPLOY / "compose" / "otel-collector.yaml").read_text())
    for pipeline in collector["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(kind, [])) <= set(collector[kind]), kind
    datasources = yaml.safe_load((DEPLOY / "compose" / "grafana-datasources.yaml").read_text())
    uids = {source["uid"] for source in datasources["datasources"]}
    dashboard = yaml.safe_load(DASHBOARD.read_text())
    used = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    assert used == uids == {"prometheus"}


def _queries() -> list[str]:
    dashboard = yaml.safe_load(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    return [e.replace("$alias", ".*") for e in exprs]


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(_queries())]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_the_dashboard_asks_only_for_metrics_a_running_proxy_exports(
        proxies: ProxyFactory) -> None:
    await proxies.declare(percent=50)
    proxy = await proxies.start()
    for i in range(20):  # both versions answer, so every labelled series exists
        await proxy.search(query=f"warm jacket {i}", user_id=f"user-{i}")
    exposition = await (await proxy.client.get("/metrics")).text()
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    exported = {name.removesuffix("_total") + suffix  # every metric registered, with samples
                for name, kind in re.findall(r"^# TYPE (embedshift_\w+) (\w+)$", exposition,
                                             re.MULTILINE)  # or not yet
                for suffix in suffixes[kind]}
    wanted = {name for query in _queries() for name in re.findall(r"\bembedshift_\w+", query)}
    assert wanted - exported == set(), f"the proxy exports no {sorted(wanted - exported)}"
    panels = {p["title"] for p in yaml.safe_load(DASHBOARD.read_text())["panels"]}
    for topic in ("Traffic share", "Latency", "Errors", "Cache", "coverage", "Guard",
                  "Shadow", "Rollout state"):
        assert any(topic.lower() in title.lower() for title in panels), topic
