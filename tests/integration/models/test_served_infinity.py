"""A real embeddings server nobody here wrote serves an alias's v2 through a whole migration.

Infinity, serving all-MiniLM-L6-v2 offline: catalogued by the CLI, its vectors those of the same
model run locally, and the whole migration through it (ingest, backfill, verify, ramp, search),
on the real Redis, Qdrant's engine and the stable ONNX model; then the server's model changes
under the same name and the drift watch rolls the candidate back."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from loadtest.corpus import corpus
from proxy.cli.main import main
from proxy.models.builtin import L3_ID
from proxy.models.catalog import add_served, open_model
from proxy.models.encoders import OnnxModel
from proxy.models.loader import ModelCache
from proxy.models.served import ServedModel, ServedSpec
from proxy.vectors.edge import EdgeStore
from proxy.web.keys import DRIFT, WATCHER
from rollout_rules.model import Rollout, Target, Version
from tests.eventually import eventually_async
from tests.integration.conftest import ADMIN_TOKEN, Engine, Proxy, ProxyFactory
from tests.readme import DOCS
from tests.servers import KEY, SERVED_NAME, Infinity, cls_pooled_copy

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ENV = {"INFINITY_KEY": KEY}


@pytest.fixture(scope="module")
def l6(models_dir: Path) -> OnnxModel:
    return OnnxModel(models_dir / "all-MiniLM-L6-v2", threads=2)


def test_the_cli_catalogues_it_against_reference_vectors_of_the_local_model(
        infinity: Infinity, l6: OnnxModel, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    texts = [d.text for d in corpus(20)]
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(msgspec.json.encode({"text": t, "vector": v.tolist()}).decode()
                            + "\n" for t, v in zip(texts, l6.embed(texts), strict=True)))
    environ = {**ENV, "EMBEDSHIFT_DATA_DIR": str(tmp_path / "data")}
    argv = ["models", "add", "l6-api", "--openai-url", infinity.url, "--model-id", SERVED_NAME,
            "--api-key-env", "INFINITY_KEY", "--expect", str(refs)]
    assert main(argv, environ) == 0
    said = capsys.readouterr().out
    assert f"added l6-api: {SERVED_NAME} served at {infinity.url}" in said
    assert re.search(r"reference vectors: 20 texts, min cosine (0\.999|1\.000)", said), said
    assert "key          $INFINITY_KEY" in said and KEY not in said
    stored = (tmp_path / "data" / "models" / "l6-api" / "embedshift-served.json").read_text()
    assert KEY not in stored and '"api_key_env": "INFINITY_KEY"' in stored
    assert main(["models", "list"], environ) == 0
    assert "l6-api" in capsys.readouterr().out
    assert main([*argv[:2], "other", "--openai-url", infinity.url, "--model-id", SERVED_NAME],
                environ) != 0  # without the key
    assert "model other: the service answered 401" in capsys.readouterr().err


async def test_its_vectors_are_the_local_models(infinity: Infinity, l6: OnnxModel) -> None:
    texts = [d.text for d in corpus(300)]
    model = ServedModel(ServedSpec(url=infinity.url, model_id=SERVED_NAME, dimensions=384),
                        "l6-api", api_key=KEY)
    try:
        served = await model.aembed(texts, live=False)
    finally:
        await model.aclose()
    local = l6.embed_many(texts)
    assert float((served * local).sum(axis=1).min()) >= 0.999


@pytest.fixture
def catalogue(infinity: Infinity, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    add_served("l6-api", ServedSpec(url=infinity.url, model_id=SERVED_NAME, dimensions=0,
                                    api_key_env="INFINITY_KEY"), folder, environ=ENV)
    return folder


def _models(catalogue: Path, engine: Engine) -> ModelCache:
    return ModelCache(catalogue, load=lambda v: (
        engine.models[(v.model, v.quantization)] if v.model == L3_ID
        else open_model(v, catalogue, 1, environ=ENV)))


def _rollout(candidate: bool) -> Rollout:
    v1 = Version(name="v1", model=L3_ID, dimensions=384, target=Target(collection="kb_v1"))
    v2 = Version(name="v2", model="l6-api", dimensions=384, target=Target(collection="kb_v2"))
    return Rollout(alias="kb", versions=(v1, v2) if candidate else (v1,), stable="v1",
                   candidate="v2" if candidate else None)


async def _admin(proxy: Proxy, path: str, body: dict[str, Any] | None = None) -> Any:
    response = await proxy.client.post(f"/admin/aliases/kb/{path}", headers=ADMIN,
                                       json=body or {})
    assert response.status == 200, await response.text()
    return await response.json()


async def test_a_migration_to_the_served_model_from_ingest_to_search(
        proxies: ProxyFactory, demo_engine: Engine, catalogue: Path, l6: OnnxModel,
        tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "qdrant")
    rules = proxies.app()[2]
    await rules.create(_rollout(candidate=False), "tests", "declare v1")
    proxy = await proxies.start(engine=store, models=_models(catalogue, demo_engine),
                                drift_check_s=0)
    documents = [{"id": d.id, "text": d.text} for d in corpus(400)]
    response = await proxy.client.post("/v1/aliases/kb/documents", headers=ADMIN,
                                       json={"documents": documents[:300]})
    assert response.status == 200, await response.text()
    current = await rules.get("kb")
    await rules.write(_rollout(candidate=True), current.revision, "tests", "add v2")
    await rules.aclose()
    await eventually_async(lambda: _has_candidate(proxy), timeout_s=10)
    plan = await _admin(proxy, "plan", {"sample": 50, "price_per_1k": 0.02})
    assert plan["tokens_counted_by"] == "service" and plan["parallel"] == 3, plan
    # what the service bills: Infinity's usage counts characters (the titles are 43-49), where
    # the model's tokenizer would count about 12: the plan prices the service's own figure
    assert 43 <= plan["tokens_per_doc"] <= 49, plan
    assert plan["cost"] == round(plan["tokens"] / 1000 * 0.02, 2) > 0, plan
    million = await _admin(proxy, "plan", {"sample": 50, "price_per_1k": 0.02,
                                           "corpus": 1_000_000})
    assert million["documents"] == million["to_encode"] == 1_000_000, million
    # tokens_per_doc is shown to 0.1: the tokens it prices are within 0.05 a document of it
    assert abs(million["tokens"] - 1_000_000 * million["tokens_per_doc"]) <= 50_000, million
    await _admin(proxy, "backfill", {"workers": 2, "rate": None})

    async def done() -> bool:
        progress = await (await proxy.client.get("/admin/aliases/kb/backfill",
                                                 headers=ADMIN)).json()
        return bool(progress["state"] == "done")
    await eventually_async(done, timeout_s=180, every_s=0.5)
    progress = await (await proxy.client.get("/admin/aliases/kb/backfill", headers=ADMIN)).json()
    assert progress["tokens_spent"] >= 300 * 43, progress  # Infinity counts characters
    assert progress["cost"] == round(progress["tokens_spent"] / 1000 * 0.02, 4), progress
    response = await proxy.client.post("/v1/aliases/kb/documents", headers=ADMIN,
                                       json={"documents": documents[300:]})  # dual-write
    assert response.status == 200 and all(r["written"] == ["v1", "v2"]
                                          for r in (await response.json())["results"])
    report = await _admin(proxy, "verify", {"sample": 50})
    assert report["passed"] and report["candidate_documents"] == 400, report
    assert report["min_cosine"] >= 0.999, report
    ramped = await _admin(proxy, "percent", {"percent": 100, "reason": "served v2 verified"})
    assert ramped["after"]["percent"] == 100  # and this proxy serves it: read-your-writes
    texts = [str(documents[i]["text"]) for i in (3, 77, 250, 390)]
    local = np.asarray(l6.embed(texts)) @ np.asarray(l6.embed_many(
        [str(d["text"]) for d in documents])).T
    for text, scores in zip(texts, local, strict=True):
        response = await proxy.client.post("/v1/aliases/kb/search", json={
            "query": text, "user_id": "someone", "limit": 5})
        found = await response.json()
        assert response.status == 200 and found["model_version"] == "v2", found
        assert [hit["id"] for hit in found["hits"]] == [
            documents[i]["id"] for i in np.argsort(-scores)[:5]]
    metrics = await (await proxy.client.get("/metrics")).text()
    assert 'embedshift_served_calls{model="l6-api",outcome="ok"}' in metrics
    assert KEY not in metrics
    await store.close()


async def _has_candidate(proxy: Proxy) -> bool:
    rule = proxy.app[WATCHER].rollouts.get("kb")
    return rule is not None and rule.candidate == "v2"


@pytest.fixture
def own_infinity(tmp_path: Path) -> Iterator[Infinity]:
    server = Infinity(tmp_path).start()
    yield server
    server.stop()


async def test_the_server_changing_its_model_under_the_same_name_rolls_the_candidate_back(
        proxies: ProxyFactory, demo_engine: Engine, own_infinity: Infinity,
        tmp_path: Path) -> None:
    catalogue = tmp_path / "models"
    await asyncio.to_thread(add_served, "l6-api", ServedSpec(
        url=own_infinity.url, model_id=SERVED_NAME, dimensions=0, api_key_env="INFINITY_KEY"),
        catalogue, environ=ENV)
    rules = proxies.app()[2]
    rollout = await rules.create(_rollout(candidate=True), "tests", "declare")
    await rules.write(msgspec.structs.replace(rollout, percent=25), rollout.revision, "tests",
                      "ramp")
    await rules.aclose()
    proxy = await proxies.start(engine=EdgeStore(tmp_path / "qdrant"),
                                models=_models(catalogue, demo_engine), drift_check_s=1.0)
    drift = proxy.app[DRIFT]

    async def probed() -> bool:
        finding = drift.findings.get("l6-api")
        return finding is not None and finding.cosine is not None and not finding.drifted
    await eventually_async(probed, timeout_s=30)
    changed = cls_pooled_copy(tmp_path / "l6-cls")
    await asyncio.to_thread(own_infinity.start, changed)  # same port, same served name
    began = asyncio.get_running_loop().time()

    async def rolled_back() -> bool:
        rule = await proxy.rules.get("kb")
        return rule.state.value == "rolled_back" and rule.percent == 0
    await eventually_async(rolled_back, timeout_s=30, every_s=0.2)
    took = asyncio.get_running_loop().time() - began
    finding = drift.findings["l6-api"]
    assert finding.drifted and finding.cosine is not None and finding.cosine < 0.999
    print(f"drift seen and rolled back {took:.1f} s after the server came back "
          f"(interval 1 s; probe cosine {finding.cosine})")
    history = await (await proxy.client.get("/admin/aliases/kb/history", headers=ADMIN)).json()
    assert history[0]["actor"] == "drift-watch", history[0]
    assert history[0]["reason"].startswith("drift: model l6-api"), history[0]


def test_the_readmes_models_add_runs_as_shown(infinity: Infinity, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The README's served `models add`, against this run's Infinity (its address put in
    place of the README's): the same lines but the ones naming this run's folder, identity
    (which holds the address) and fingerprint (the probe vectors, rounded: compared by cosine
    in the contract tests)."""
    shown = DOCS.split("## Models you call over HTTP", 1)[1]
    command, output = re.search(r"\$ (embedshift models add .*?)\n(.*?)```", shown,
                                re.DOTALL).groups()  # type: ignore[union-attr]
    readme_url = re.search(r"--openai-url (\S+)", command).group(1)  # type: ignore[union-attr]
    argv = command.replace(readme_url, infinity.url).split()[1:]
    assert main(argv, {**ENV, "EMBEDSHIFT_DATA_DIR": str(tmp_path)}) == 0
    varying = ("  folder", "  identity", "  fingerprint")
    got = [line for line in capsys.readouterr().out.replace(infinity.url, readme_url)
           .splitlines() if not line.startswith(varying)]
    assert got == [line for line in output.splitlines() if not line.startswith(varying)]
