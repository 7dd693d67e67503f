"""Every HTTP route in one table: the app registers it, the OpenAPI document is derived from it."""

from __future__ import annotations

import re

from aiohttp import web

from proxy.control.alerts import Answer, Notification
from proxy.ingest.adopt import Adoption, AdoptRequest
from proxy.ingest.archive import ArchiveInfo
from proxy.ingest.backfill import Options, Progress
from proxy.ingest.plan import Plan
from proxy.ingest.quality import Judgement
from proxy.ingest.verify import Report
from proxy.online.feedback import FeedbackAnswer, FeedbackBatch
from proxy.serving.query import SearchRequest, SearchResponse
from proxy.web.auth import OVERRIDE_TOKEN_HEADER
from proxy.web.handlers import admin, alerts, documents, embeddings, feedback, health, search, ui
from proxy.web.openapi import serve_document
from proxy.web.route import Route
from rollout_rules.online import QualityTable
from rollout_rules.ramp import RampPlan

_LIMIT = {"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
_VERSION = {"name": search.VERSION_HEADER, "in": "header", "required": False,
            "schema": {"type": "string"},
            "description": f"force a declared version; needs {OVERRIDE_TOKEN_HEADER}"}
_OVERRIDE_TOKEN = {"name": OVERRIDE_TOKEN_HEADER, "in": "header", "required": False,
                   "schema": {"type": "string"},
                   "description": "the proxy's override token (EMBEDSHIFT_OVERRIDE_TOKEN)"}

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/aliases/{alias}/search", search.search, "Search an alias with text",
          body=SearchRequest, answer=SearchResponse, parameters=(_VERSION, _OVERRIDE_TOKEN)),
    Route("POST", "/v1/aliases/{alias}/documents", documents.ingest,
          "Write documents into every active version (admin token)",
          body=documents.DocumentBatch, answer=documents.IngestAnswer, admin=True),
    Route("DELETE", "/v1/aliases/{alias}/documents/{doc_id}", documents.delete_document,
          "Remove a document from every version (admin token)", admin=True,
          body_required=False),
    Route("POST", "/v1/embeddings", embeddings.embeddings,
          "OpenAI's embeddings API where model names an alias: each input embedded by the "
          "model of the caller's version (user, or x-qdrant-route-affinity, is the sticky key)",
          body=embeddings.EmbeddingsRequest, answer=embeddings.EmbeddingsAnswer),
    Route("POST", "/v1/feedback", feedback.feedback,
          "What users did with answers (click, convert, thumbs_up, thumbs_down, or a declared "
          "event), joined to each answer by its trace id (feedback key)",
          body=FeedbackBatch, answer=FeedbackAnswer),
    Route("GET", "/healthz", health.healthz, "Alive"),
    Route("GET", "/readyz", health.readyz, "Ready, with detail (503 when not)"),
    Route("GET", "/metrics", health.metrics, "Prometheus metrics"),
    Route("GET", "/openapi.json", serve_document, "This document"),
    Route("GET", "/ui", ui.page, "The status page (HTML; read-only)"),
    Route("GET", "/ui/status.json", ui.status, "What the status page shows (EMBEDSHIFT_UI_TOKEN "
          "when set)", answer=ui.Page),
    Route("GET", "/ui/{asset}", ui.asset, "The status page's script and style"),
    Route("GET", "/admin/aliases", admin.list_aliases, "Every alias's rollout", admin=True),
    Route("GET", "/admin/aliases/{alias}", admin.get_alias, "One alias's rollout", admin=True),
    Route("GET", "/admin/aliases/{alias}/quality", admin.quality,
          "Per version: golden-set nDCG@10 and precision@5, users' online figures, p50 search "
          "latency and cache hits; the candidate's deltas and interleaving score",
          answer=QualityTable, admin=True),
    Route("GET", "/admin/aliases/{alias}/history", admin.history, "Audit trail, newest first",
          admin=True, parameters=(_LIMIT,)),
    Route("POST", "/admin/aliases/{alias}/percent", admin.set_percent, "Ramp the candidate",
          body=admin.PercentAction, admin=True),
    Route("DELETE", "/admin/aliases/{alias}", admin.delete,
          "Delete the alias on purpose (a reason is required); every proxy stops serving it",
          body=admin.Action, admin=True),
    Route("POST", "/admin/aliases/{alias}/restore", admin.restore,
          "Write this proxy's last good rule back to a rule store that lost it",
          body=admin.Action, admin=True, body_required=False),
    Route("POST", "/admin/aliases/{alias}/adopt", documents.adopt_collection,
          "Declare the alias with a collection the application wrote as its v1, once a sample "
          "of its stored texts re-encoded by the model named agrees with its vectors",
          body=AdoptRequest, answer=Adoption, admin=True),
    Route("POST", "/admin/aliases/{alias}/backfill", documents.start_backfill,
          "Start or resume the candidate's backfill in this proxy", body=Options,
          answer=Progress, admin=True, body_required=False),
    Route("GET", "/admin/aliases/{alias}/backfill", documents.backfill_status,
          "The backfill's progress and coverage", answer=Progress, admin=True),
    Route("POST", "/admin/aliases/{alias}/backfill/stop", documents.stop_backfill,
          "Stop this proxy's backfill workers (the plan stays; start resumes it)",
          answer=Progress, admin=True, body_required=False),
    Route("POST", "/admin/aliases/{alias}/plan", documents.run_plan,
          "Measure the candidate's encoder here and estimate the backfill: time, storage, cost",
          body=documents.PlanOptions, answer=Plan, admin=True, body_required=False),
    Route("POST", "/admin/aliases/{alias}/quality", documents.run_quality,
          "Judge stable and candidate on a golden set through their collections (nDCG@10)",
          body=documents.GoldenSet, answer=Judgement, admin=True),
    Route("POST", "/admin/aliases/{alias}/verify", documents.run_verify,
          "Check the candidate holds exactly stable's documents, each from its model; "
          "promote asks for a pass", body=documents.VerifyOptions, answer=Report, admin=True,
          body_required=False),
    Route("POST", "/admin/aliases/{alias}/versions/{version}/archive",
          documents.archive_version, "Export a version no rule names to a file, then delete "
          "its points", answer=ArchiveInfo, admin=True, body_required=False),
    Route("POST", "/admin/aliases/{alias}/versions/{version}/unarchive",
          documents.unarchive_version, "Write a version's newest archive back",
          answer=ArchiveInfo, admin=True, body_required=False),
    Route("POST", "/admin/aliases/{alias}/ramp", admin.start_ramp,
          "Plan a guarded ramp: each step taken only while the guard finds the candidate "
          "healthy", body=admin.RampRequest, answer=RampPlan, admin=True),
    Route("POST", "/admin/aliases/{alias}/ramp/{action}", admin.control_ramp,
          "Pause, resume or abort the guarded ramp (action: pause, resume, abort)",
          answer=RampPlan, admin=True, body_required=False),
    Route("POST", "/alerts/alertmanager", alerts.alertmanager,
          "Alertmanager's webhook (version 4): a firing alert naming an alias rolls it back "
          "(admin token)", body=Notification, answer=Answer, admin=True),
    *(Route("POST", f"/admin/aliases/{{alias}}/{name}", handler, summary, body=admin.Action,
            admin=True, body_required=False)
      for name, handler, summary in (
          ("pause", admin.pause, "Send everyone to stable, keeping the percent"),
          ("resume", admin.resume, "Bring the paused candidate back to its percent"),
          ("rollback", admin.rollback, "Send everyone to stable and zero the percent"),
          ("promote", admin.promote, "Make the candidate stable"),
          ("retire", admin.retire, "Let go of the previous stable (then it may be archived)"))),
)


UNMATCHED_PATH = "/{path:.*}"
"""The last route (named ``errors.UNMATCHED``): every path no route matches lands here, inside the
middlewares, so a 404, a 405 or a bad ``Expect`` on an unknown path is JSON and counted like every
other answer."""
_TEMPLATES = [(re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(route.path)) + "$"),
               route.method) for route in ROUTES]


async def no_route(request: web.Request) -> web.StreamResponse:
    allowed = {method for pattern, method in _TEMPLATES if pattern.match(request.path)}
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound(text=f"no route {request.path[:100]!r}: see /openapi.json")
