"""The /ui status page, in headless Chromium, shows what the API says and follows a rule change."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace
from playwright.async_api import Page, async_playwright

from proxy.cli.demo import demo_documents
from proxy.config import Settings
from proxy.models.catalog import default_rollout
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from rollout_rules import ops
from rollout_rules.model import STEPPED, CoverageGate, Experiment, Target
from rollout_rules.ramp import new_plan
from tests.integration.conftest import ADMIN_TOKEN, Proxy, ProxyFactory
from tests.paths import REPO

pytestmark = pytest.mark.integration
ARTIFACTS = Path(os.environ.get("EMBEDSHIFT_TEST_ARTIFACTS", REPO / ".artifacts"))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed here when absent (Playwright's own download is not
    reachable, and not needed: it drives any Chromium by its path)."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False,
                       capture_output=True, timeout=1200,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is missing and could not be installed: apt-get install chromium")
    return found


@pytest.fixture
def artifacts() -> Path:
    """Where the screenshot is kept after the run (EMBEDSHIFT_TEST_ARTIFACTS, else .artifacts)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


async def _two_aliases(proxies: ProxyFactory) -> None:
    await proxies.declare(percent=30)
    rules = RedisRuleStore(connect(Settings(), proxies.redis_url), proxies.prefix)
    docs = default_rollout("docs")
    docs = replace(docs, versions=tuple(  # the demo's collections, under a second alias
        replace(v, target=Target(collection=f"products_{v.name}")) for v in docs.versions))
    created = await rules.create(replace(docs, coverage_gate=CoverageGate(steps=STEPPED)),
                                 "tests", "declare")  # the stepped gate: a capped share
    await rules.set_coverage("docs", "v1", 100, 100)
    await rules.set_coverage("docs", "v2", 60, 100)  # the gate allows 25% at 60%
    await rules.write(replace(created, percent=80), created.revision, "tests", "ramp to 80")
    await rules.put_ramp("docs", msgspec.json.encode(replace(
        new_plan(created, (10, 50, 100), 60, "tests"), index=1, note="step 2/3 at 50%")))
    mixed = default_rollout("mixed")  # its v2 points at v1's collection: L3 vectors, not L6
    await rules.create(replace(mixed, versions=(mixed.versions[0], replace(
        mixed.versions[1], target=Target(collection="products_v1")))), "tests", "declare")
    await rules.aclose()


async def _api(proxy: Proxy) -> dict[str, Any]:
    response = await proxy.client.get("/admin/aliases",
                                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    return {status["rollout"]["alias"]: status for status in await response.json()}


async def _field(page: Page, alias: str, field: str, version: str | None = None) -> str:
    where = f'section[data-alias="{alias}"]'
    if version is not None:
        where += f' tr[data-version="{version}"]'
    return (await page.locator(f'{where} [data-field="{field}"]').inner_text()).strip()


async def test_the_status_page_matches_the_api_and_follows_a_change(
        proxies: ProxyFactory, chromium: str, artifacts: Path) -> None:
    await _two_aliases(proxies)
    proxy = await proxies.start(ui_step_s=0.5)
    for i in range(30):  # traffic across several chart steps
        await proxy.search(query=f"tent for two {i}", user_id=f"user-{i}")
        await asyncio.sleep(0.05)
    api = await _api(proxy)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True,
                                                   args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(str(proxy.client.make_url("/ui")))
        await page.wait_for_selector('section[data-alias="docs"]', timeout=10_000)
        for alias, status in api.items():
            rollout = status["rollout"]
            assert await _field(page, alias, "state") == rollout["state"]
            assert await _field(page, alias, "percent") == f"{rollout['percent']:g}%"
            assert await _field(page, alias, "effective") == f"{status['effective_percent']:g}%"
            for version, fraction in status["coverage"].items():
                assert await _field(page, alias, "coverage", version) == f"{100 * fraction:.1f}%"
        assert await _field(page, "docs", "effective") == "25%"  # capped by 60% coverage
        steps = page.locator('section[data-alias="docs"] ol.ramp li')
        assert await steps.all_inner_texts() == ["10%", "50%", "100%"]
        assert await page.locator('section[data-alias="docs"] ol.ramp li.current'
                                  ).inner_text() == "50%"
        unavailable = await _field(page, "mixed", "unavailable", "v2")
        assert unavailable.startswith("candidate, unavailable: does not match its collection")
        assert "collection products_v1 was encoded with" in unavailable
        points = await page.locator('section[data-alias="products"] tr[data-version="v1"] '
                                    'svg.spark').first.get_attribute("data-points")
        assert points is not None and int(points) >= 2, "no chart drawn from the traffic"

        await proxy.rules.apply("docs", ops.pause, "tests", "pause from the test")
        changed = time.monotonic()
        await page.wait_for_function(
            """() => document.querySelector('section[data-alias="docs"] [data-field="state"]')
                     .textContent === 'paused'""", timeout=10_000)
        followed_s = time.monotonic() - changed  # measured and printed, not bound: see below
        assert "pause from the test" in await page.locator(
            'section[data-alias="docs"] ol.audit').inner_text()
        shot = artifacts / "status-page.png"
        await page.screenshot(path=str(shot), full_page=True)
        await browser.close()
    assert shot.stat().st_size > 10_000
    print(f"status page followed a pause in {followed_s:.2f} s; screenshot: {shot}")


async def test_the_status_data_asks_for_the_ui_token_when_one_is_set(
        proxies: ProxyFactory) -> None:
    await proxies.declare()
    proxy = await proxies.start(ui_token="look-but-do-not-touch")
    page = await proxy.client.get("/ui")
    assert page.status == 200 and "embedshift" in await page.text()
    refused = await proxy.client.get("/ui/status.json")
    body = await refused.json()
    assert refused.status == 401 and "Bearer" in body["error"]["message"]
    assert "look-but-do-not-touch" not in await refused.text()
    allowed = await proxy.client.get(
        "/ui/status.json", headers={"Authorization": "Bearer look-but-do-not-touch"})
    assert allowed.status == 200
    assert [a["status"]["rollout"]["alias"] for a in (await allowed.json())["aliases"]] == \
        ["products"]
    assert (await proxy.client.get("/ui/nope.js")).status == 404


async def test_the_status_page_outlives_the_rule_store(
        own_redis: tuple[EmbeddedRedis, ProxyFactory]) -> None:
    server, proxies = own_redis
    await proxies.declare(percent=40)
    proxy = await proxies.start()
    server.kill()
    answer = await proxy.client.get("/ui/status.json")
    (view,) = (await answer.json())["aliases"]
    assert answer.status == 200 and "the rule store did not answer" in view["problem"]
    assert (view["status"]["rollout"]["percent"], view["status"]["effective_percent"]) == \
        (40, 40)  # from this proxy's memory, as it keeps serving


async def test_the_status_page_shows_golden_and_online_quality_per_version(
        proxies: ProxyFactory, chromium: str, artifacts: Path) -> None:
    """The seeds' dashboard with real numbers: the golden-set judgement of both versions,
    users' figures from real answers and feedback, the deltas and the interleaving score."""
    await proxies.declare(percent=50, experiment=Experiment(share=0.3))
    proxy = await proxies.start(ui_step_s=0.5, feedback_key="ui-feedback-key")
    documents = demo_documents()
    kinds = sorted({d["title"].split(" ", 1)[1] for d in documents})
    golden = {"queries": {f"q{n}": f"I need {kind}" for n, kind in enumerate(kinds)},
              "qrels": {f"q{n}": {str(d["id"]): 1 for d in documents
                                  if d["title"].endswith(kind)} for n, kind in enumerate(kinds)}}
    judged = await proxy.client.post("/admin/aliases/products/quality", json=golden,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert judged.status == 200, await judged.text()
    events = []
    for i in range(120):
        found = await proxy.search(query=f"{kinds[i % len(kinds)]} for a trip {i}",
                                   user_id=f"user-{i}")
        if i % 3:  # two users in three click a hit, the second one when there is one
            hit = found["hits"][min(1, len(found["hits"]) - 1)]
            events.append({"trace_id": found["trace_id"], "event": "click",
                           "doc_id": hit["id"]})
    await asyncio.sleep(0.5)  # the answers reach the log
    counted = await proxy.client.post("/v1/feedback", json={"events": events},
                                      headers={"Authorization": "Bearer ui-feedback-key"})
    assert (await counted.json())["totals"] == {"counted": len(events)}
    table = await (await proxy.client.get(
        "/admin/aliases/products/quality",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).json()
    rows = {row["version"]: row for row in table["rows"]}
    assert rows["v1"]["ndcg_at_10"] is not None and rows["v2"]["ndcg_at_10"] is not None
    assert rows["v1"]["answers"] + rows["v2"]["answers"] + table["interleaving"]["answers"] \
        == 120
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True,
                                                   args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        await page.goto(str(proxy.client.make_url("/ui")))
        await page.wait_for_selector('section[data-alias="products"] table.quality',
                                     timeout=10_000)
        for version, row in rows.items():
            assert await _field(page, "products", "ndcg", version) == \
                f"{row['ndcg_at_10']:.3f}"
            assert await _field(page, "products", "click_through", version) == \
                f"{100 * row['click_through']:.1f}%"
        interleaved = await page.locator('section[data-alias="products"] '
                                         '[data-field="interleaving"]').inner_text()
        assert interleaved.startswith(f"interleaved: {table['interleaving']['answers']} answers")
        assert await page.locator('section[data-alias="products"] '
                                  '[data-field="delta-click_through"]').count() == 1
        shot = artifacts / "status-quality.png"
        await page.locator('section[data-alias="products"]').screenshot(path=str(shot))
        await browser.close()
    assert shot.stat().st_size > 10_000
    print(f"quality table: {rows}; screenshot: {shot}")
