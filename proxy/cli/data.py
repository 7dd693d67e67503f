"""The data commands: ``ingest`` a JSONL file, ``adopt`` a collection the application wrote,
``plan`` the backfill, ``backfill`` the candidate (start or resume, watch, ``--status``,
``--stop``), ``verify`` it against stable, judge it on a golden set (``eval --alias``),
``archive`` and ``unarchive`` a version. On embedded defaults the engine lives inside the proxy
process, so they talk to the running proxy's API (the address ``serve`` recorded, or ``--url``;
with the admin token); progress is a bar on a terminal and a JSON line every few seconds
otherwise, with rate and time left, on stderr."""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from tqdm import tqdm

from proxy.cli.common import AddCommand, Result
from proxy.config import Settings
from proxy.ingest.documents import Document, read_lines
from proxy.models.evaluation import load_golden
from rollout_rules.errors import (
    AccessError,
    NotFoundError,
    RuleError,
    StoreUnavailable,
    TransitionError,
)

JSON_EVERY_S = 5.0


class ProxyUnreachable(StoreUnavailable):
    """The proxy's API did not answer."""


class Api:
    """The proxy's HTTP API, its errors raised as the CLI's own."""

    def __init__(self, url: str, token: str | None) -> None:
        if not token:
            raise AccessError("set EMBEDSHIFT_ADMIN_TOKEN to the proxy's admin token (ingestion "
                              "and the backfill go through its API)")
        self.url = url.rstrip("/")
        self.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                             timeout=aiohttp.ClientTimeout(total=300))

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        # a stream: aiohttp warns that large raw bytes would hold its event loop
        data = None if body is None else io.BytesIO(msgspec.json.encode(body))
        try:
            async with self.session.request(method, self.url + path, data=data, headers={
                    "Content-Type": "application/json"}) as response:
                raw = await response.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise ProxyUnreachable(f"cannot reach the proxy at {self.url} ({exc}); is "
                                   "`embedshift serve` running there?") from None
        answer = msgspec.json.decode(raw) if raw else None
        if response.status >= 400:
            error = (answer or {}).get("error", {}) if isinstance(answer, dict) else {}
            message = error.get("message", f"HTTP {response.status}")
            if response.status in (401, 403):
                raise AccessError(message)
            if response.status == 404:
                raise NotFoundError(message)
            if response.status >= 500:
                raise StoreUnavailable(f"the proxy could not do it: {message}")
            field = error.get("field") or "request"
            raise RuleError(field, message.removeprefix(f"{field}: "))
        return response.status, answer

    async def close(self) -> None:
        await self.session.close()


def _url(args: argparse.Namespace, settings: Settings) -> str:
    return args.url or f"http://{settings.host}:{settings.port}"


class Reporter:
    """A bar on a terminal; a JSON line every few seconds otherwise (both on stderr)."""

    def __init__(self, what: str, total: int, unit: str) -> None:
        self.what, self.tty = what, sys.stderr.isatty()
        self.bar = tqdm(total=total, unit=unit, desc=what, file=sys.stderr) if self.tty else None
        self.last = 0.0
        self.started = time.monotonic()
        self.first: int | None = None  # done when first reported

    def update(self, done: int, total: int, **extra: Any) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.set_postfix({k: v for k, v in extra.items() if v is not None},
                                 refresh=False)
            self.bar.refresh()
        elif time.monotonic() - self.last >= JSON_EVERY_S or done >= total:
            self.last = time.monotonic()
            line = {"progress": self.what, "done": done, "total": total,
                    **self._pace(done, total),
                    **{k: v for k, v in extra.items() if v is not None}}
            print(msgspec.json.encode(line).decode(), file=sys.stderr, flush=True)

    def _pace(self, done: int, total: int) -> dict[str, float]:
        """Items per second since the first report, and the seconds left at that rate (the
        bar shows its own; a caller's figures replace these)."""
        if self.first is None:
            self.first = done
            return {}
        elapsed = time.monotonic() - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        if rate <= 0:
            return {}
        pace = {"rate": round(rate, 1)}
        return {**pace, "eta_s": round((total - done) / rate, 1)} if done < total else pace

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- ingest ------------------------------------------------------------------------------------

def _batches(path: Path, size: int, invalid: list[str]
             ) -> Iterator[list[tuple[int, Document]]]:
    batch: list[tuple[int, Document]] = []
    seen: dict[object, int] = {}
    with path.open("rb") as lines:
        for number, parsed in read_lines(lines):
            if isinstance(parsed, RuleError):
                invalid.append(f"{path}:{number}: {parsed.field}: {parsed.message}")
                continue
            if parsed.id in seen:
                invalid.append(f"{path}:{number}: id: {parsed.id!r} already on line "
                               f"{seen[parsed.id]}")
                continue
            seen[parsed.id] = number
            batch.append((number, parsed))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def cmd_ingest(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]
               ) -> Result:
    path = Path(args.file)
    if not path.is_file():
        raise RuleError("FILE", f"{path} is not a file")
    if not 1 <= args.batch <= 1000:
        raise RuleError("--batch", "from 1 to 1000 documents")
    invalid: list[str] = []
    batches = list(_batches(path, args.batch, invalid))  # a bad line is named before any write
    return asyncio.run(ingest(args, settings, path, batches, invalid))


async def ingest(args: argparse.Namespace, settings: Settings, path: Path,
                 batches: list[list[tuple[int, Document]]], invalid: list[str]) -> Result:
    total = sum(map(len, batches)) + len(invalid)
    api = Api(_url(args, settings), settings.admin_token)
    failures: list[str] = []
    written = 0
    report = Reporter(f"ingest {args.alias}", total, "doc")
    try:
        for batch in batches:
            for number, result in await _write(api, args.alias, batch):
                if isinstance(result, RuleError):  # the proxy refused this document alone
                    invalid.append(f"{path}:{number}: {result.field}: {result.message}")
                elif result["failed"]:
                    failures += [f"{path}:{number}: id {result['id']!r}: version {v}: {why}"
                                 for v, why in result["failed"].items()]
                else:
                    written += 1
            report.update(written + len(failures) + len(invalid), total,
                          failed=len(failures) or None, invalid=len(invalid) or None)
    finally:
        report.close()
        await api.close()
    for line in invalid + failures:
        print(line, file=sys.stderr)
    summary = {"file": str(path), "documents": total, "written": written,
               "failed": len(failures), "invalid": len(invalid)}
    if invalid or failures:
        print(msgspec.json.encode(summary).decode() if args.json else _ingest_text(summary))
        raise RuleError(str(path), f"{len(invalid)} invalid lines and {len(failures)} failed "
                                   "writes (listed above; fix and run again: writing a "
                                   "document again replaces it)")
    return summary, _ingest_text(summary)


async def _write(api: Api, alias: str, batch: list[tuple[int, Document]]
                 ) -> list[tuple[int, dict[str, Any] | RuleError]]:
    """Each line's result; a batch the proxy refuses (too large, too deep) is split in halves
    until the refused document stands alone, named by its line, and the rest is written."""
    body = {"documents": [msgspec.to_builtins(d) for _, d in batch]}
    try:
        _, answer = await api.call("POST", f"/v1/aliases/{alias}/documents", body)
    except RuleError as exc:
        if len(batch) == 1:
            return [(batch[0][0], exc)]
        half = len(batch) // 2
        return [*await _write(api, alias, batch[:half]), *await _write(api, alias, batch[half:])]
    return [(number, result) for (number, _), result in
            zip(batch, answer["results"], strict=True)]


def _ingest_text(s: dict[str, Any]) -> str:
    return (f"{s['file']}: {s['written']} of {s['documents']} documents written to every "
            f"active version ({s['failed']} failed, {s['invalid']} invalid)")


# -- backfill ----------------------------------------------------------------------------------

async def backfill(args: argparse.Namespace, settings: Settings) -> Result:
    api = Api(_url(args, settings), settings.admin_token)
    path = f"/admin/aliases/{args.alias}/backfill"
    try:
        if args.status:
            _, progress = await api.call("GET", path)
            return progress, render_progress(progress)
        if args.stop:
            _, progress = await api.call("POST", path + "/stop")
            return progress, render_progress(progress)
        options: dict[str, Any] = {"workers": args.workers, "batch_size": args.batch}
        if args.rate is not None:
            options["rate"] = args.rate
        _, progress = await api.call("POST", path, options)
        if args.detach:
            return progress, render_progress(progress)
        progress, text = await _watch(api, path, progress)
    finally:
        await api.close()
    if progress["state"] != "done":  # failed, or stopped by someone: not what was asked
        print(msgspec.json.encode(progress).decode() if args.json else text)
        raise TransitionError(f"{args.alias}: the backfill {progress['state']} before it was "
                              "done" + _why(progress) + f" (`embedshift backfill {args.alias}` "
                              "resumes it)")
    return progress, text


def _why(progress: dict[str, Any]) -> str:
    failed = (progress.get("job") or {}).get("failed")
    return f": {failed}" if failed else ""


async def _watch(api: Api, path: str, progress: dict[str, Any]) -> Result:
    job = progress.get("job") or {}
    report = Reporter(f"backfill {progress['alias']} -> {progress['version']}",
                      job.get("total_docs", 0), "doc")
    try:
        while True:
            job = progress.get("job") or {}
            report.update(job.get("done_docs", 0), job.get("total_docs", 0),
                          coverage=_coverage(progress), rate=_round(progress["rate_docs_s"]),
                          eta_s=_round(progress["eta_s"]))
            if progress["state"] != "running":
                break
            await asyncio.sleep(0.5)
            _, progress = await api.call("GET", path)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("stopped watching; the backfill goes on in the proxy (`embedshift backfill "
              f"{progress['alias']} --stop` stops it)", file=sys.stderr)
        raise
    finally:
        report.close()
    return progress, render_progress(progress)


def _coverage(progress: dict[str, Any]) -> str | None:
    for figure in progress.get("coverage", []):
        if figure["version"] == progress.get("version") and figure["total"]:
            return f"{figure['covered'] / figure['total']:.1%}"
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def render_progress(p: dict[str, Any]) -> str:
    job = p.get("job") or {}
    lines = [f"backfill {p['alias']} -> {p['version']}: {p['state']}{_why(p)}"
             + (f", {job.get('done_docs', 0)} of {job.get('total_docs', 0)} documents "
                f"re-encoded" if job.get("exists") else "")
             + (f", {p['rate_docs_s']:.0f} docs/s" if p.get("rate_docs_s") else "")
             + (f", about {p['eta_s']:.0f} s left" if p.get("eta_s") else "")]
    for c in p.get("coverage", []):
        popular = "" if c["popular"] is None else f", {c['popular']:.1%} of popular answers"
        share = c["covered"] / c["total"] if c["total"] else 0.0
        lines.append(f"  {c['version']}: {c['covered']} of {c['total']} documents "
                     f"({share:.1%}){popular}")
    if p.get("skipped"):
        lines.append(f"  {p['skipped']} stable points have no source text and were skipped")
    if p.get("took_s") is not None:
        predicted = (f"`plan` predicted {p['predicted_s']:.0f} s, " if p.get("predicted_s")
                     is not None else "no `plan` was made, ")
        workers = (p.get("job") or {}).get("workers") or 1
        lines.append(f"  time        {predicted}it took {p['took_s']:.0f} s "
                     f"({workers} worker{'s' if workers > 1 else ''})")
    if p.get("tokens_spent") is not None:
        cost = f", {p['cost']:,.4f} at the plan's price" if p.get("cost") is not None else ""
        lines.append(f"  tokens      {p['tokens_spent']:,} counted by the service{cost}")
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]
               ) -> Result:
    report = asyncio.run(_verify(args, settings))
    text = render_report(report)
    if not report["passed"]:
        print(msgspec.json.encode(report).decode() if args.json else text)
        raise TransitionError(f"{args.alias}: {report['candidate']} failed verification")
    return report, text


async def _verify(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    api = Api(_url(args, settings), settings.admin_token)
    try:
        _, report = await api.call("POST", f"/admin/aliases/{args.alias}/verify",
                                   {"sample": args.sample})
    finally:
        await api.close()
    return dict(report)


def render_report(r: dict[str, Any]) -> str:
    verdict = "PASSED" if r["passed"] else "FAILED"
    lines = [f"verify {r['alias']}: {r['candidate']} against {r['stable']} {verdict}",
             f"  documents   {r['stable_documents']} in {r['stable']}, "
             f"{r['candidate_documents']} in {r['candidate']}",
             f"  missing     {r['missing']} in {r['stable']} but not {r['candidate']}"
             + (f": {r['missing_ids']}" if r["missing"] else ""),
             f"  extra       {r['extra']} in {r['candidate']} but not {r['stable']}"
             + (f": {r['extra_ids']}" if r["extra"] else ""),
             f"  envelopes   {r['envelope_mismatches']} not {r['candidate']}'s own"]
    lines += [f"    {example}" for example in r["envelope_examples"]]
    cosine = "-" if r["min_cosine"] is None else f"{r['min_cosine']:.6f}"
    lines.append(f"  vectors     {r['sampled']} re-encoded, lowest cosine {cosine} "
                 f"(needs >= 0.999)" + (f", off: {r['vector_mismatch_ids']}"
                                        if r["vector_mismatch_ids"] else ""))
    return "\n".join(lines)


def cmd_adopt(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]
              ) -> Result:
    body = {"collection": args.collection, "model": args.model, "vector": args.vector or "",
            "text_field": args.text_field or "", "sample": args.sample}
    a = asyncio.run(_post(args, settings, f"/admin/aliases/{args.alias}/adopt", body))
    vector = f", vector {a['vector']!r}" if a["vector"] else ""
    lines = [f"adopted {a['collection']} as {a['alias']} v1 (revision {a['revision']})",
             f"  collection  {a['points']:,} points, {a['dimensions']} dimensions, "
             f"{a['metric']}{vector}",
             f"  payload     {', '.join(a['payload_keys'])}; text read from "
             f"{a['text_field']!r}",
             f"  model       {a['model']}: {a['sampled']} stored texts re-encoded, median "
             f"cosine {a['median_cosine']:.4f} (lowest {a['min_cosine']:.4f})",
             *([f"  carried     {', '.join(a['carried'])}: written into every version as "
                "given, copied by the backfill"] if a.get("carried") else []),
             f"next: embedshift export {a['alias']} > rules.toml, add a candidate, embedshift "
             f"init {a['alias']} --file rules.toml --force, then embedshift backfill "
             f"{a['alias']}; ids stay yours, no point of {a['collection']} is rewritten"]
    return a, "\n".join(lines)


def cmd_plan(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]
             ) -> Result:
    body: dict[str, Any] = {"sample": args.sample, "max_workers": args.workers}
    if args.price_per_1k is not None:
        body["price_per_1k"] = args.price_per_1k
    if args.corpus is not None:
        body["corpus"] = args.corpus
    p = asyncio.run(_post(args, settings, f"/admin/aliases/{args.alias}/plan", body))
    where = (f"{p['cores']} cores here" if p["tokens_counted_by"] == "tokenizer" else
             f"through the service, which counted the tokens; {p['parallel']} calls at once")
    lines = [f"plan {p['alias']}: re-encode {p['to_encode']} of {p['documents']} documents "
             f"into {p['candidate']} ({p['model']})",
             f"  measured    {p['docs_per_s']} docs/s per worker on {p['sampled']} of your "
             f"documents, {p['tokens_per_doc']} tokens each ({where})",
             f"  tokens      {p['tokens']:,}",
             f"  storage     {p['storage_bytes'] / 1e6:,.1f} MB for {p['candidate']}'s "
             "collection (vectors, payload, index)"]
    if p.get("together_docs_per_s") is not None:
        lines.append(f"  together    {p['together_docs_per_s']} docs/s with {p['parallel']} calls "
                     "at once (the service's own limit: no more workers go faster)")
    if p["rate_limit_docs_per_s"] is not None:
        lines.append(f"  rate limit  {p['rate_limit_docs_per_s']} docs/s for the backfill (the "
                     "service's rpm/tpm, a quarter kept for live queries)")
    lines += [f"  {w['workers']} worker{'s' if w['workers'] > 1 else ' '}   "
              f"{_duration(w['seconds'])}" for w in p["wall_time"]]
    if p["cost"] is not None:
        lines.append(f"  cost        {p['cost']:,.2f} at {p['price_per_1k_tokens']} per 1k "
                     "tokens")
    if p.get("creates"):
        request = msgspec.json.encode(p["creates"]).decode()
        lines.append(f"  creates     {p['candidate']}'s collection as: {request}")
    return p, "\n".join(lines)


def _duration(seconds: float) -> str:
    return (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
            if seconds < 7200 else f"{seconds / 3600:.1f} h")


def cmd_quality(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]
                ) -> Result:
    """``eval --alias``: the golden set searched through the alias's real collections, by the
    proxy that holds them; kept for ``promote``."""
    queries, qrels = load_golden(Path(args.dataset))
    j = asyncio.run(_post(args, settings, f"/admin/aliases/{args.alias}/quality",
                          {"queries": queries, "qrels": qrels}))
    verdict = "PASSED" if j["passed"] else "FAILED"
    text = (f"{j['alias']} on {Path(args.dataset).name} ({j['queries']} queries, through the "
            f"collections): nDCG@10 {j['stable']} {j['stable_ndcg_at_10']:.4f}, "
            f"{j['candidate']} {j['candidate_ndcg_at_10']:.4f} "
            f"({j['candidate_ndcg_at_10'] - j['stable_ndcg_at_10']:+.4f}; allowed drop "
            f"{j['max_ndcg_drop']}) {verdict}")
    if not j["passed"]:
        print(msgspec.json.encode(j).decode() if args.json else text)
        raise TransitionError(f"{args.alias}: {j['candidate']} is worse than {j['stable']} on "
                              "the golden set; promote will refuse it")
    return j, text


def cmd_archive(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]
                ) -> Result:
    action = "unarchive" if args.command == "unarchive" else "archive"
    info = asyncio.run(_post(args, settings,
                             f"/admin/aliases/{args.alias}/versions/{args.version}/{action}"))
    verb = "written back from" if action == "unarchive" else "archived to"
    text = (f"{info['alias']}/{info['version']}: {info['points']} points of "
            f"{info['collection']} {verb} {info['file']}")
    if info.get("removed"):
        text += f"\n  older archives removed: {', '.join(info['removed'])}"
    return info, text


async def _post(args: argparse.Namespace, settings: Settings, path: str,
                body: Any = None) -> dict[str, Any]:
    api = Api(_url(args, settings), settings.admin_token)
    try:
        _, answer = await api.call("POST", path, body)
    finally:
        await api.close()
    return dict(answer)


def cmd_backfill(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]
                 ) -> Result:
    return asyncio.run(backfill(args, settings))


def add_parsers(add: AddCommand) -> None:
    def with_url(p: argparse.ArgumentParser) -> None:
        p.add_argument("alias")
        p.add_argument("--url", help="the proxy's address (default: http://EMBEDSHIFT_HOST:"
                                     "EMBEDSHIFT_PORT, else http://127.0.0.1:8080)")

    p = add("ingest", cmd_ingest, "write a JSONL file of documents (id, text, optional "
                                       "payload) into every active version, via the proxy")
    with_url(p)
    p.add_argument("file", help="JSON lines: {\"id\": ..., \"text\": ..., \"payload\": {...}}")
    p.add_argument("--batch", type=int, default=64, help="documents per request (64)")
    p = add("backfill", cmd_backfill, "re-encode into the candidate what stable holds and "
                                           "it lacks, most-queried first (in the proxy)")
    with_url(p)
    p.add_argument("--workers", type=int, default=1, help="workers in the proxy (1)")
    p.add_argument("--rate", type=float, help="documents per second at most (default: no limit)")
    p.add_argument("--batch", type=int, default=64, help="documents per claimed batch (64)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--status", action="store_true", help="show progress and exit")
    group.add_argument("--stop", action="store_true", help="stop the proxy's workers (the "
                                                           "plan stays; run again to resume)")
    group.add_argument("--detach", action="store_true", help="start and exit without watching")
    p = add("verify", cmd_verify, "check the candidate holds exactly stable's documents, each "
                                  "encoded by its model (promote asks for a pass)")
    with_url(p)
    p.add_argument("--sample", type=int, default=50, help="points re-encoded to check their "
                                                         "vectors (50)")
    p = add("adopt", cmd_adopt, "declare an alias whose v1 is a collection your application "
                                "wrote (checked: its vectors must be the model's)")
    with_url(p)
    p.add_argument("--collection", required=True, help="the collection to adopt")
    p.add_argument("--model", required=True, help="the model that made its vectors (a "
                                                  "catalogue name or model id)")
    p.add_argument("--vector", help="its named vector (default: the unnamed one)")
    p.add_argument("--text-field", help="the payload key holding each point's text (default: "
                                        "found among text, page_content, content, "
                                        "_node_content)")
    p.add_argument("--sample", type=int, default=64, help="stored texts re-encoded to check "
                                                         "the model (64)")
    p = add("plan", cmd_plan, "measure the candidate's encoder on your documents and say what "
                              "the backfill will take (time, tokens, storage, cost)")
    with_url(p)
    p.add_argument("--sample", type=int, default=200, help="documents encoded to measure (200)")
    p.add_argument("--workers", type=int, default=4, help="estimate for 1..N workers (4)")
    p.add_argument("--price-per-1k", type=float, help="a price per 1,000 tokens, for the cost")
    p.add_argument("--corpus", type=int, help="price and time N documents like the sample "
                   "(default: what stable holds)")
    p = add("archive", cmd_archive, "export a version no rule names to a file under the data "
                                    "folder, then delete its points")
    with_url(p)
    p.add_argument("version")
    p = add("unarchive", cmd_archive, "write a version's newest archive back, searchable")
    with_url(p)
    p.add_argument("version")
