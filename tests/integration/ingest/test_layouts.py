"""The README's migration, through the proxy's HTTP API, keeps the user's ids in every layout.

Separate collections, one collection with a named vector per version, and one collection told
apart by payload alone: ingest (string and integer ids, ``"9010"`` beside ``9010``), backfill,
verify, search on each version, delete, promote, retire, archive and unarchive, each speaking
the id the document was written with; an unknown id is a 404 naming it. On the real
redis-server, Qdrant's engine (a fresh one per test) and the ONNX models.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from proxy.config import Settings
from proxy.state.client import connect
from proxy.state.rulestore import RedisRuleStore
from proxy.vectors.edge import EdgeStore
from proxy.vectors.memory import MemoryStore
from proxy.web.keys import WATCHER
from rollout_rules.model import Rollout, parse_rollout
from tests.eventually import eventually, eventually_async
from tests.integration.conftest import ADMIN_TOKEN, Proxy, ProxyFactory
from tests.readme import layouts

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WORDS = ["glacier", "harbour", "lantern", "meadow", "orchard", "quarry", "river", "summit",
         "thicket", "valley"]
LAYOUTS = layouts()  # the README's own blocks: the README cannot drift from what works


def _documents() -> list[dict[str, Any]]:
    """Package-like string ids, plus an integer id and a string id of the same digits."""
    documents: list[dict[str, Any]] = [
        {"id": f"pkg-{WORDS[i % 10]}-{i}", "text": f"A {WORDS[i % 10]} tool, release {i}: it "
         f"maps the {WORDS[(i * 3) % 10]} near the {WORDS[(i * 7) % 10]}.",
         "payload": {"section": WORDS[i % 10]}} for i in range(60)]
    documents.append({"id": 9010, "text": "an integer id about a frozen glacier lake"})
    documents.append({"id": "9010", "text": "a string id of digits about a harbour crane"})
    return documents


def _rule(layout: str) -> Rollout:
    """Both versions declared from the start (v2 not yet the candidate)."""
    return parse_rollout({"alias": "docs", "stable": "v1", **LAYOUTS[layout]})


async def _call(proxy: Proxy, method: str, path: str, body: Any = None,
                status: int = 200) -> Any:
    response = await proxy.client.request(method, path, json=body, headers=ADMIN)
    answer = await response.json()
    assert response.status == status, (method, path, answer)
    return answer


async def _search(proxy: Proxy, query: str, **body: Any) -> Any:
    return await _call(proxy, "POST", "/v1/aliases/docs/search",
                       {"query": query, "user_id": "alice", "limit": 5, **body})


@pytest.mark.parametrize("layout", list(LAYOUTS))  # the README's three
async def test_the_migration_keeps_the_users_ids_in_every_layout(
        proxies: ProxyFactory, tmp_path: Path, layout: str) -> None:
    rules = RedisRuleStore(connect(Settings(), proxies.redis_url), proxies.prefix)
    declared = await rules.create(_rule(layout), "tests", "declare v1")
    engine = EdgeStore(tmp_path / "qdrant")
    proxy = await proxies.start(engine=engine, refresh_interval_s=0.2,
                                data_dir=str(tmp_path / "data"))
    documents = _documents()
    written = await _call(proxy, "POST", "/v1/aliases/docs/documents", {"documents": documents})
    assert written["written"] == 62 and [r["id"] for r in written["results"]][-2:] == [9010,
                                                                                        "9010"]
    answer = await _search(proxy, "a frozen glacier lake")
    assert answer["model_version"] == "v1" and answer["hits"][0]["id"] == 9010
    assert all(isinstance(h["id"], (int, str)) for h in answer["hits"])

    await rules.write(replace(declared, candidate="v2"), declared.revision, "tests", "add v2")
    await eventually(lambda: _rule_here(proxy).candidate == "v2")
    started = await _call(proxy, "POST", "/admin/aliases/docs/backfill", {"batch_size": 16})
    assert started["job"]["total_docs"] == 62
    await eventually_async(lambda: _backfill_done(proxy), timeout_s=120)
    report = await _call(proxy, "POST", "/admin/aliases/docs/verify")
    assert report["passed"] and report["missing"] == 0 and report["extra"] == 0, report

    await _call(proxy, "POST", "/admin/aliases/docs/percent", {"percent": 100, "reason": "all"})
    assert await _serves(proxy, "v2")  # the proxy written through serves the ramp at once
    for query, expected in (("a string id of digits about a harbour crane", "9010"),
                            ("an integer id about a frozen glacier lake", 9010),
                            (documents[7]["text"], "pkg-summit-7")):
        for with_payload in (True, False):
            hits = (await _search(proxy, query, with_payload=with_payload))["hits"]
            assert hits[0]["id"] == expected, (layout, query, hits[:2])
            assert all("_embedshift" not in (h.get("payload") or {}) for h in hits)

    missing = await _call(proxy, "DELETE", "/v1/aliases/docs/documents/no-such-id", status=404)
    assert "'no-such-id'" in missing["error"]["message"]
    removed = await _call(proxy, "DELETE", '/v1/aliases/docs/documents/"9010"')
    assert removed == {"id": "9010", "removed_from": ["v1", "v2"]}
    await _call(proxy, "DELETE", '/v1/aliases/docs/documents/"9010"', status=404)
    assert (await _call(proxy, "DELETE", "/v1/aliases/docs/documents/9010"))["id"] == 9010
    removed = await _call(proxy, "DELETE", "/v1/aliases/docs/documents/pkg-river-6")
    assert removed["removed_from"] == ["v1", "v2"]

    await _call(proxy, "POST", "/admin/aliases/docs/promote", {"reason": "verified"})
    watched = await _call(proxy, "POST", "/admin/aliases/docs/retire", {"reason": "v2 held"},
                          status=409)
    assert "is watched for" in watched["error"]["message"]
    await _call(proxy, "POST", "/admin/aliases/docs/retire", {"reason": "v2 held", "force": True})
    assert _rule_here(proxy).previous_stable is None
    archived = await _call(proxy, "POST", "/admin/aliases/docs/versions/v1/archive")
    assert archived["points"] == 59
    with gzip.open(archived["file"], "rb") as lines:
        rows = [json.loads(line) for line in lines][1:]
    assert sorted(r["doc_id"] for r in rows) == sorted(
        d["id"] for d in documents if d["id"] not in (9010, "9010", "pkg-river-6"))
    assert os.stat(archived["file"]).st_mode & 0o777 == 0o600
    back = await _call(proxy, "POST", "/admin/aliases/docs/versions/v1/unarchive")
    assert back["points"] == 59
    await rules.aclose()
    await proxy.client.close()
    await engine.close()


def _rule_here(proxy: Proxy) -> Rollout:
    """The rule as this proxy serves it."""
    rollout: Rollout = proxy.app[WATCHER].rollouts["docs"]
    return rollout


async def _backfill_done(proxy: Proxy) -> bool:
    progress = await _call(proxy, "GET", "/admin/aliases/docs/backfill")
    assert progress["state"] != "failed", progress
    return bool(progress["state"] == "done")


async def _serves(proxy: Proxy, version: str) -> bool:
    return bool((await _search(proxy, "anything"))["model_version"] == version)


@pytest.mark.parametrize("engine_kind", ["embedded", "server"])
async def test_versions_declared_later_add_their_vector_in_place_and_retiring_removes_it(
        proxies: ProxyFactory, tmp_path: Path, engine_kind: str) -> None:
    """The order migrations happen in: v1 alone writes the shared collection; v2 is declared
    later, backfilled (its named vector added in place), verified and promoted; v1 retired and
    archived takes its vector with it; then a v3 after v2, the same way. On the embedded engine
    and on a server (qdrant-client's local mode stands in for one)."""
    rules = RedisRuleStore(connect(Settings(), proxies.redis_url), proxies.prefix)
    layout = _rule("one collection, a named vector each")
    v1 = layout.versions[0]
    alone = await rules.create(replace(layout, versions=(v1,)), "tests", "v1")
    engine = EdgeStore(tmp_path / "qdrant") if engine_kind == "embedded" else MemoryStore()
    proxy = await proxies.start(engine=engine, refresh_interval_s=0.2,
                                data_dir=str(tmp_path / "data"))
    await _call(proxy, "POST", "/v1/aliases/docs/documents", {"documents": _documents()[:20]})
    shared = v1.target.collection

    async def vectors() -> set[str]:
        info = await engine.describe(v1.target)
        assert info is not None and info.config is not None
        return set(info.config.dense)

    assert await vectors() == {"l3"}
    declared = await rules.write(replace(layout, candidate="v2"), alone.revision, "tests", "v2")
    await eventually(lambda: _rule_here(proxy).candidate == "v2")
    await _migrate(proxy, 20, "v2")
    assert await vectors() == {"l3", "l6"}
    await _call(proxy, "POST", "/admin/aliases/docs/retire", {"reason": "v2 held", "force": True})
    await _call(proxy, "POST", "/admin/aliases/docs/versions/v1/archive")
    assert await vectors() == {"l6"}  # v1's vector left with it; v2's points are all there
    assert await engine.count(_rule_here(proxy).version("v2").target) == 20

    v3 = replace(v1, name="v3", target=replace(v1.target, vector_name="l3b",
                                               payload_match={"model_version": "v3"}))
    now = _rule_here(proxy)
    await rules.write(replace(now, versions=(*now.versions, v3), candidate="v3"),
                      now.revision, "tests", "v3")
    await eventually(lambda: _rule_here(proxy).candidate == "v3")
    await _migrate(proxy, 20, "v3")
    assert await vectors() == {"l6", "l3b"} and shared == v3.target.collection
    assert declared.revision < _rule_here(proxy).revision
    await rules.aclose()
    await proxy.client.close()
    await engine.close()


async def _migrate(proxy: Proxy, documents: int, candidate: str) -> None:
    """Backfill, verify, ramp to all and promote the candidate."""
    started = await _call(proxy, "POST", "/admin/aliases/docs/backfill", {"batch_size": 8})
    assert started["job"]["total_docs"] == documents
    await eventually_async(lambda: _backfill_done(proxy), timeout_s=120)
    report = await _call(proxy, "POST", "/admin/aliases/docs/verify")
    assert report["passed"] and report["missing"] == 0, report
    await _call(proxy, "POST", "/admin/aliases/docs/percent", {"percent": 100, "reason": "all"})
    assert await _serves(proxy, candidate)
    await _call(proxy, "POST", "/admin/aliases/docs/promote", {"reason": "verified"})


async def _backfill_state(proxy: Proxy, state: str) -> bool:
    return bool((await _call(proxy, "GET", "/admin/aliases/docs/backfill"))["state"] == state)
