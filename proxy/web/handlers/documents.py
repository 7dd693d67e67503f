"""The corpus over HTTP, for the engine that may live in this process (embedded defaults): the
application's documents (``POST /v1/aliases/{alias}/documents`` writes a batch into every
active version, ``DELETE .../documents/{id}`` removes one from every version, 404 when none
holds it), and under ``/admin/aliases/{alias}/`` the work a migration does on them: ``adopt`` a
collection the application wrote, ``plan`` and run the ``backfill`` (start or resume, progress,
stop), ``verify`` the candidate, judge its ``quality`` on a golden set, ``archive`` and
``unarchive`` a version. Every route needs the admin token; the verify and quality reports and
the plan are kept in the rule store, where ``promote`` and the backfill read them."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from proxy.ingest.adopt import AdoptRequest, adopt
from proxy.ingest.archive import archive, unarchive
from proxy.ingest.backfill import Options
from proxy.ingest.documents import Document, checked, parse_doc_id
from proxy.ingest.plan import plan
from proxy.ingest.quality import judge
from proxy.ingest.verify import verify
from proxy.ingest.writer import DocumentResult
from proxy.web.bodies import MAX_DOCUMENTS_BYTES, read_json
from proxy.web.errors import json_response
from proxy.web.handlers.admin import operator_of
from proxy.web.keys import BACKFILL, INGESTOR, SETTINGS, WATCHER
from rollout_rules.errors import NotFoundError, RuleError
from rollout_rules.model import Rollout

MAX_DOCUMENTS = 1000


class DocumentBatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    documents: Annotated[list[Document], msgspec.Meta(min_length=1, max_length=MAX_DOCUMENTS)]


class IngestAnswer(msgspec.Struct, frozen=True, kw_only=True):
    written: int  # documents every active version holds now
    failed: int  # documents some version could not take (retry them: writing again replaces)
    results: list[DocumentResult]


def _rollout(request: web.Request) -> Rollout:
    alias = request.match_info["alias"]
    rollout = request.app[WATCHER].rollouts.get(alias)
    if rollout is None:
        raise NotFoundError(alias)
    return rollout


async def ingest(request: web.Request) -> web.Response:
    rollout = _rollout(request)
    batch = await read_json(request, DocumentBatch, MAX_DOCUMENTS_BYTES)
    documents, seen = [], set()
    for i, document in enumerate(batch.documents):
        try:
            documents.append(checked(document))
        except RuleError as exc:
            raise RuleError(f"documents[{i}].{exc.field}", exc.message) from None
        if document.id in seen:
            raise RuleError(f"documents[{i}].id", f"{document.id!r} appears twice in the batch")
        seen.add(document.id)
    results = await request.app[INGESTOR].write(rollout, documents, live=True)
    failed = sum(1 for r in results if r.failed)
    answer = IngestAnswer(written=len(results) - failed, failed=failed, results=list(results))
    await request.app[WATCHER].follow(rollout.alias)  # this proxy's gate sees the new coverage
    return json_response(answer, status=207 if failed else 200)


async def delete_document(request: web.Request) -> web.Response:
    rollout = _rollout(request)
    doc_id = parse_doc_id(request.match_info["doc_id"])
    removed = await request.app[INGESTOR].delete(rollout, doc_id)
    await request.app[WATCHER].follow(rollout.alias)
    return json_response({"id": doc_id, "removed_from": removed})


async def start_backfill(request: web.Request) -> web.Response:
    rollout = _rollout(request)
    options = await read_json(request, Options) if request.can_read_body else Options()
    return json_response(await request.app[BACKFILL].start(rollout, options.check()))


async def backfill_status(request: web.Request) -> web.Response:
    return json_response(await request.app[BACKFILL].progress(_rollout(request)))


async def stop_backfill(request: web.Request) -> web.Response:
    return json_response(await request.app[BACKFILL].stop(_rollout(request)))


class VerifyOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sample: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 50


async def run_verify(request: web.Request) -> web.Response:
    """Compare the candidate with stable here (the engine is in this process), keep the report
    where ``promote`` looks for it, and answer it."""
    rollout = _rollout(request)
    options = await read_json(request, VerifyOptions) if request.can_read_body else \
        VerifyOptions()
    report = await verify(request.app[INGESTOR], rollout, options.sample)
    await request.app[INGESTOR].rules.put_report(
        rollout.alias, report.candidate, "verify", msgspec.to_builtins(report))
    return json_response(report)


async def archive_version(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    info = await archive(request.app[INGESTOR], _rollout(request), request.match_info["version"],
                         settings.archives_path, settings.archive_keep)
    return json_response(info)


async def unarchive_version(request: web.Request) -> web.Response:
    info = await unarchive(request.app[INGESTOR], _rollout(request),
                           request.match_info["version"], request.app[SETTINGS].archives_path)
    return json_response(info)


class PlanOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sample: int = 200
    max_workers: int = 4
    price_per_1k: Annotated[float, msgspec.Meta(ge=0)] | None = None
    corpus: Annotated[int, msgspec.Meta(ge=1, le=10**12)] | None = None  # as if stable held N


async def run_plan(request: web.Request) -> web.Response:
    """Measure the candidate's encoder on stable's texts here and say what a backfill takes."""
    rollout = _rollout(request)
    options = await read_json(request, PlanOptions) if request.can_read_body else PlanOptions()
    found = await plan(request.app[INGESTOR], rollout, options.sample, options.max_workers,
                       options.price_per_1k, corpus=options.corpus)
    await request.app[INGESTOR].rules.put_report(  # the backfill's end compares
        rollout.alias, found.candidate, "plan", msgspec.to_builtins(found))
    return json_response(found)


class GoldenSet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    queries: Annotated[dict[str, str], msgspec.Meta(min_length=1, max_length=10_000)]
    qrels: dict[str, dict[str, int]]


async def run_quality(request: web.Request) -> web.Response:
    """Judge stable and candidate on the golden set through their collections; keep it where
    ``promote`` looks."""
    rollout = _rollout(request)
    golden = await read_json(request, GoldenSet, MAX_DOCUMENTS_BYTES)
    judgement = await judge(request.app[INGESTOR], rollout, golden.queries, golden.qrels)
    await request.app[INGESTOR].rules.put_report(
        rollout.alias, judgement.candidate, "quality", msgspec.to_builtins(judgement))
    return json_response(judgement)


async def adopt_collection(request: web.Request) -> web.Response:
    """Declare the alias with a collection the application wrote as its v1 (see
    ``proxy.ingest.adopt``)."""
    body = await read_json(request, AdoptRequest)
    adoption = await adopt(request.app[INGESTOR], request.match_info["alias"], body,
                           operator_of(request).actor)
    await request.app[WATCHER].follow(request.match_info["alias"])  # searchable when answered
    return json_response(adoption)
