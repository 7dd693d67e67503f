"""The operator CLI runs a whole rollout against a real redis-server, with clear errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from proxy.cli.main import main
from proxy.config import Settings
from proxy.models.catalog import default_rollout
from proxy.state.client import connect
from proxy.state.redis_server import EmbeddedRedis
from proxy.state.rulestore import RedisRuleStore
from rollout_rules.model import Target
from tests.integration.conftest import ADMIN_TOKEN, ProxyFactory
from tests.paths import REPO

pytestmark = pytest.mark.integration


class Cli:
    def __init__(self, url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.environ = {"REDIS_URL": url, "EMBEDSHIFT_REDIS_PREFIX": prefix,
                        "EMBEDSHIFT_ACTOR": "tester"}
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main(list(argv), self.environ)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli(redis_server: EmbeddedRedis, prefix: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(redis_server.url, prefix, capsys)


def test_a_rollout_from_declaration_to_promotion(cli: Cli) -> None:
    code, out, _ = cli("init", "products")
    assert code == 0 and "declared products at revision 1" in out
    assert cli.json("set", "products", "10", "--reason", "first ramp")["after"]["percent"] == 10
    status = cli.json("status", "products")[0]
    assert status["effective_percent"] == 0  # no coverage reported yet: the gate holds at 0
    cli("coverage", "products", "v2", "97", "100")
    status = cli.json("status", "products")[0]  # the default gate: nobody below 99%
    assert (status["candidate_coverage"], status["effective_percent"]) == (0.97, 0)
    cli("coverage", "products", "v2", "99", "100")
    status = cli.json("status", "products")[0]
    assert (status["candidate_coverage"], status["effective_percent"]) == (0.99, 10)
    explained = cli.json("explain", "products", "--user", "alice")
    assert explained["decision"]["reason"] in {"bucket_in", "bucket_out"}
    assert cli.json("pause", "products")["after"]["state"] == "paused"
    assert cli.json("explain", "products", "--user", "alice")["decision"]["reason"] == "paused"
    assert cli.json("resume", "products")["after"]["state"] == "ramping"
    code, out, _ = cli("rollback", "products", "--reason", "p99 regression")
    assert code == 0 and "state ramping -> rolled_back, percent 10 -> 0" in out
    cli("set", "products", "100")
    code, _, err = cli("promote", "products")  # coverage suffices (99%); never verified
    assert code == 3 and "never verified" in err and "embedshift verify products" in err
    promoted = cli.json("promote", "products", "--force", "--reason", "checked by hand")["after"]
    assert [promoted[k] for k in ("stable", "candidate", "state")] == ["v2", None, "promoted"]
    history = cli.json("history", "products")
    assert [e["reason"] for e in history][:3] == ["forced: checked by hand", "ramp to 100%",
                                                  "p99 regression"]
    assert {e["actor"] for e in history} == {"tester"}
    code, out, _ = cli("history", "products")
    assert "stable v1 -> v2" in out.splitlines()[0]
    with pytest.raises(SystemExit) as usage:  # a deletion needs a reason
        cli("delete", "products")
    assert usage.value.code == 2
    code, out, _ = cli("delete", "products", "--reason", "retired")
    assert code == 0 and "deleted products" in out
    assert cli("status", "products")[0] == 5
    code, out, _ = cli("history", "products", "--limit", "1")
    assert "deleted  (retired)" in out  # the audit trail outlives the alias


def test_errors_exit_non_zero_with_one_clear_line(cli: Cli, tmp_path: Path) -> None:
    assert cli("status", "ghost")[0] == 5
    cli("init", "products")
    code, _, err = cli("init", "products")
    assert code == 4 and "products is declared already (revision 1)" in err
    assert "embedshift diff products --file FILE" in err
    code, _, err = cli("set", "products", "101")
    assert code == 3 and err.startswith("error: percent:")
    code, _, err = cli("set", "products", "5", "--if-revision", "7")
    assert code == 4 and "revision 1, not 7" in err
    code, _, err = cli("promote", "products")
    assert code == 3 and "coverage" in err
    code, _, err = cli("coverage", "products", "v9", "1", "2")
    assert code == 3 and "v9" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"versions": [{"name": "v1", "model": "m", "dimensions": -1,
                                             "target": {"collection": "c"}}], "stable": "v1"}))
    code, _, err = cli("init", "products", "--file", str(bad), "--force")
    assert code == 3 and "versions[0].dimensions" in err
    assert cli.json("status", "products")[0]["rollout"]["revision"] == 1  # last good intact
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as usage:
        cli("set", "products", "x")
    assert usage.value.code == 2 and "invalid float value: 'x'" in cli.capsys.readouterr().err


def test_an_unreachable_redis_is_reported_without_secrets(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    code = main(["status"], {"REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"})
    err = capsys.readouterr().err
    assert code == 6 and "unreachable" in err and "hunter2" not in err


def test_a_rule_document_from_a_toml_file(cli: Cli, tmp_path: Path) -> None:
    doc = tmp_path / "docs.toml"
    doc.write_text("""
stable = "v1"
candidate = "v2"
stickiness = "session_id"
[[versions]]
name = "v1"
model = "sentence-transformers/paraphrase-MiniLM-L3-v2"
dimensions = 384
target = { collection = "docs_a" }
[[versions]]
name = "v2"
model = "sentence-transformers/all-MiniLM-L6-v2"
dimensions = 384
metric = "dot"
target = { collection = "docs_b", vector_name = "dense" }
[overrides.tenants]
acme = "v2"
""")
    declared = cli.json("init", "docs", "--file", str(doc))["rollout"]
    assert declared["versions"][1]["target"]["vector_name"] == "dense"
    explained = cli.json("explain", "docs", "--tenant", "acme")
    assert explained["decision"]["version"] == "v2"


RULES = """
alias = "articles"
stable = "v1"
candidate = "v2"

[[versions]]
name = "v1"
model = "sentence-transformers/paraphrase-MiniLM-L3-v2"
dimensions = 384
target = { collection = "articles_v1" }

[[versions]]
name = "v2"
model = "sentence-transformers/all-MiniLM-L6-v2"
dimensions = 384
target = { collection = "articles_v2" }
"""


def test_rules_as_code_reapplying_a_file_never_reverts_what_operations_did(
        cli: Cli, tmp_path: Path) -> None:
    """The file used to add the candidate, applied again after a promote, changes nothing and
    writes no audit entry; a changed file shows its diff and keeps the promote; export, diff
    and undo round-trip."""
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    assert cli("init", "articles", "--file", str(rules))[0] == 0
    cli("coverage", "articles", "v2", "100", "100")
    cli("guard", "articles", "--set", "min_requests=20", "--reason", "by hand")
    cli("set", "articles", "100")
    cli("promote", "articles", "--force", "--reason", "checked by hand")
    revision = cli.json("status", "articles")[0]["rollout"]["revision"]
    code, out, _ = cli("init", "articles", "--file", str(rules), "--force")
    assert code == 0 and out.startswith(
        f"articles: the file matches the rule at revision {revision}: nothing written")
    assert "kept: stable: the file says v1, the rule's stable is v2" in out
    after = cli.json("status", "articles")[0]["rollout"]
    assert (after["revision"], after["stable"], after["guard"]["min_requests"]) == \
        (revision, "v2", 20)
    assert len(cli.json("history", "articles", "--limit", "100")) == revision
    rules.write_text(RULES.replace('target = { collection = "articles_v2" }',
                                   'target = { collection = "articles_v2" }\nquery_prefix = '
                                   '"query: "'))
    code, out, _ = cli("diff", "articles", "--file", str(rules))
    assert code == 0 and "  versions.v2.query_prefix:  -> query: " in out.splitlines()
    code, out, _ = cli("init", "articles", "--file", str(rules), "--force")
    assert code == 0 and out.startswith(f"applied to articles at revision {revision + 1}:")
    applied = cli.json("status", "articles")[0]["rollout"]
    assert (applied["stable"], applied["state"], applied["versions"][1]["query_prefix"]) == \
        ("v2", "promoted", "query: ")
    exported = tmp_path / "exported.toml"
    code, out, _ = cli("export", "articles")
    exported.write_text(out)
    code, out, _ = cli("init", "articles", "--file", str(exported), "--force")
    assert code == 0 and "nothing written" in out
    undone = cli.json("undo", "articles", "--to-revision", "2", "--reason", "back")["after"]
    assert (undone["stable"], undone["candidate"], undone["revision"]) == ("v1", "v2",
                                                                           revision + 2)
    assert cli.json("history", "articles", "--limit", "1")[0]["reason"] == \
        "undo to revision 2: back"
    code, _, err = cli("undo", "articles", "--to-revision", "99")
    assert code == 3 and "no revision 99" in err
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    code, _, err = cli("init", "other", "--file", str(listed))
    assert code == 3 and "a rules document is a JSON object, not a list" in err
    assert "Traceback" not in err


def test_the_console_script_runs_on_the_embedded_redis(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "embedshift"
    env = {"EMBEDSHIFT_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin",
           "EMBEDSHIFT_ACTOR": "script"}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=60, check=False)

    nothing = run("status")  # a CLI finding no embedshift says so and starts nothing
    assert nothing.returncode == 6 and "no embedshift found" in nothing.stderr
    assert "not running" in run("redis", "status").stdout
    try:
        assert run("redis", "start").returncode == 0  # the rule store alone, on purpose
        assert run("init", "products").returncode == 0
        assert run("set", "products", "2.5").returncode == 0
        status = run("status", "--json")
        assert json.loads(status.stdout)[0]["rollout"]["percent"] == 2.5
        assert "running" in run("redis", "status").stdout
    finally:
        assert run("redis", "stop").returncode == 0
    assert "not running" in run("redis", "status").stdout


def test_eval_compares_versions_side_by_side(models_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "tiny"
    (data / "qrels").mkdir(parents=True)
    docs = {"d1": "Cats are small domesticated felines.", "d2": "The stock market fell today.",
            "d3": "Photosynthesis turns light into chemical energy in plants.",
            "d4": "Volcanoes erupt molten rock."}
    (data / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items()))
    (data / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "how do plants make "
                                                    "energy from sunlight"}) + "\n")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\n")
    environ = {"EMBEDSHIFT_DATA_DIR": str(models_dir.parent)}
    assert main(["eval", "--dataset", str(data), "--json"], environ) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results["v2"]["ndcg_at_10"] == 1.0 and results["v1"]["documents"] == 4
    assert main(["eval", "--dataset", str(data)], environ) == 0
    table = capsys.readouterr().out
    assert "v1 paraphrase-MiniLM-L3-v2" in table and "delta" in table
    assert main(["eval", "--dataset", str(tmp_path)], environ) == 3


def test_a_guarded_ramp_is_planned_shown_paused_and_refused_with_the_flag_named(cli: Cli
                                                                                 ) -> None:
    cli("init", "products")
    code, out, _ = cli("ramp", "products", "--steps", "5,25,100", "--every", "10m")
    assert code == 0 and "guarded ramp running (steps 5,25,100% every 600 s)" in out
    code, out, _ = cli("status", "products")
    assert "  ramp       running (steps 5,25,100% every 600 s): starting" in out
    assert cli.json("ramp", "products", "--pause")["state"] == "paused"
    code, _, err = cli("ramp", "products", "--steps", "5,x", "--every", "10m")
    assert code != 0 and "--steps" in err and "'5,x'" in err
    code, _, err = cli("ramp", "products", "--steps", "5", "--every", "ten")
    assert code != 0 and "--every" in err
    code, _, err = cli("ramp", "products", "--steps", "50,10", "--every", "1m")
    assert code != 0 and "steps: need rising percentages" in err


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"model": "org/typo"}, "versions[1].model", "not in the catalogue"),
    ({"dimensions": 768}, "versions[1].dimensions", "produces 384"),
    ({"normalized": False}, "versions[1].normalized", "gives normalised vectors"),
])
def test_init_refuses_a_version_its_model_contradicts(cli: Cli, tmp_path: Path,
                                                      change: dict[str, object], field: str,
                                                      says: str) -> None:
    versions = [{"name": name, "model": model, "dimensions": 384,
                 "target": {"collection": f"docs_{name}"}}
                for name, model in (("v1", "sentence-transformers/paraphrase-MiniLM-L3-v2"),
                                    ("v2", "sentence-transformers/all-MiniLM-L6-v2"))]
    versions[1] |= change
    doc = tmp_path / "docs.json"
    doc.write_text(json.dumps({"versions": versions, "stable": "v1", "candidate": "v2"}))
    code, _, err = cli("init", "docs", "--file", str(doc))
    assert code == 3 and f"error: {field}: " in err and says in err, err
    assert cli("status", "docs")[0] == 5  # nothing declared


async def test_the_cli_ingests_as_the_api_does_naming_every_line_it_could_not_write(
        proxies: ProxyFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A line that is not UTF-8 and a document the proxy refuses (nested too deep) are named
    by their line; 25 large documents the proxy refuses as one batch (8 MiB) are written by
    splitting it; every other line is written."""
    rules = RedisRuleStore(connect(Settings(), proxies.redis_url), proxies.prefix)
    alias = f"ingested{proxies.prefix[2:8]}"
    rollout = default_rollout(alias)
    rollout = replace(rollout, candidate=None, versions=(replace(
        rollout.versions[0], target=Target(collection=f"{alias}_v1")),))
    await rules.create(rollout, "tests", "declare")
    await rules.aclose()
    proxy = await proxies.start()
    deep: dict[str, object] = {}
    for _ in range(40):
        deep = {"d": deep}
    lines = [json.dumps({"id": f"doc-{i}", "text": f"a short note {i}"}).encode()
             for i in range(5)]
    lines.insert(2, b'{"id": "latin-1", "text": "caf\\xe9"}'.replace(b"\\xe9", b"\xe9"))
    lines.insert(4, json.dumps({"id": "deep", "text": "nested", "payload": deep}).encode())
    lines += [json.dumps({"id": f"big-{i}", "text": f"a big note {i}",
                         "payload": {"blob": "x" * 400_000}}).encode() for i in range(25)]
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    env = {"REDIS_URL": proxies.redis_url, "EMBEDSHIFT_REDIS_PREFIX": proxies.prefix,
           "EMBEDSHIFT_ADMIN_TOKEN": ADMIN_TOKEN}
    url = str(proxy.client.make_url("")).rstrip("/")
    code = await asyncio.to_thread(main, ["ingest", alias, str(path), "--url", url], env)
    err = capsys.readouterr().err
    assert code == 3, err
    assert f"{path}:3: line: not UTF-8" in err
    assert f"{path}:5: body: nests deeper than 32 levels" in err
    assert "Traceback" not in err
    stored = proxy.store.inner
    assert await stored.count(Target(collection=f"{alias}_v1")) == 5 + 25
