"""The operator CLI: a leaf over ``proxy.operator`` (the same functions the admin API calls).

Output is for humans by default and JSON with ``--json``. Every failure prints one line on stderr
and exits non-zero, with a code per kind of failure (see ``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from proxy import cli_models, serve
from proxy.config import Settings, actor_of, load_settings
from proxy.defaults import default_rollout
from proxy.operator import Explanation, Operator, Status
from proxy.redis_server import EmbeddedRedis
from proxy.rulestore import AuditEntry, Change, open_store
from rollout_rules.decide import Context
from rollout_rules.errors import (
    ConflictError,
    EmbedshiftError,
    NotFoundError,
    RuleError,
    StoreUnavailable,
    TransitionError,
)
from rollout_rules.model import Rollout, Version, parse_rollout
from rollout_rules.ops import summarize_change

# argparse itself exits 2 on bad usage.
EXIT_CODES: dict[type[EmbedshiftError], int] = {
    RuleError: 3,
    TransitionError: 3,
    ConflictError: 4,
    NotFoundError: 5,
    StoreUnavailable: 6,
}

Result = tuple[Any, str]  # (what --json prints, what a human reads)
Command = Callable[[Operator, argparse.Namespace], Awaitable[Result]]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(environ, {"redis_url": args.redis_url,
                                           "data_dir": args.data_dir, "actor": args.actor})
        if args.command == "redis":
            return _redis_command(args, settings, environ)
        if args.command == "serve":
            return _serve(settings, environ)
        if args.handler is None:
            payload, text = _model_command(args, settings, environ)
        else:
            payload, text = asyncio.run(_run(args.handler, args, settings, environ))
    except EmbedshiftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CODES.get(type(exc), 1)
    except KeyboardInterrupt:
        return 130
    print(msgspec.json.encode(payload).decode() if args.json else text)
    return 0


async def _run(handler: Command, args: argparse.Namespace, settings: Settings,
               environ: Mapping[str, str]) -> Result:
    store = open_store(settings, environ)
    try:
        return await handler(Operator(store, actor_of(settings, environ)), args)
    finally:
        await store.aclose()


# -- commands ----------------------------------------------------------------------------------

async def cmd_init(operator: Operator, args: argparse.Namespace) -> Result:
    rollout = _read_rollout(args.file, args.alias) if args.file else default_rollout(args.alias)
    stored = await operator.declare(rollout, args.reason, replace_existing=args.force)
    return stored, f"declared {stored.alias} at revision {stored.revision}\n" + \
        render_status(await operator.status(stored.alias))


async def cmd_status(operator: Operator, args: argparse.Namespace) -> Result:
    statuses = [await operator.status(args.alias)] if args.alias else await operator.statuses()
    text = "\n\n".join(render_status(s) for s in statuses) or \
        "no aliases declared yet (try: embedshift init products)"
    return statuses, text


async def cmd_set(operator: Operator, args: argparse.Namespace) -> Result:
    return _changed(await operator.set_percent(args.alias, args.percent, args.reason,
                                               args.if_revision), operator)


async def cmd_pause(operator: Operator, args: argparse.Namespace) -> Result:
    return _changed(await operator.pause(args.alias, args.reason, args.if_revision), operator)


async def cmd_resume(operator: Operator, args: argparse.Namespace) -> Result:
    return _changed(await operator.resume(args.alias, args.reason, args.if_revision), operator)


async def cmd_rollback(operator: Operator, args: argparse.Namespace) -> Result:
    return _changed(await operator.rollback(args.alias, args.reason, args.if_revision), operator)


async def cmd_promote(operator: Operator, args: argparse.Namespace) -> Result:
    change = await operator.promote(args.alias, args.reason, args.force, args.if_revision)
    return _changed(change, operator)


async def cmd_history(operator: Operator, args: argparse.Namespace) -> Result:
    entries = await operator.history(args.alias, args.limit)
    return entries, "\n".join(render_entry(e) for e in entries) or "no changes recorded"


async def cmd_explain(operator: Operator, args: argparse.Namespace) -> Result:
    properties = dict(_key_value(p) for p in args.property)
    context = Context(user_id=args.user, session_id=args.session, tenant=args.tenant,
                      properties=properties, random_key="explain")
    explanation = await operator.explain(args.alias, context, args.version)
    return explanation, render_explanation(explanation)


async def cmd_coverage(operator: Operator, args: argparse.Namespace) -> Result:
    if args.covered is None:
        status = await operator.status(args.alias)
    elif args.total is None or args.version is None:
        raise RuleError("coverage", "to set coverage give VERSION COVERED TOTAL")
    else:
        status = await operator.set_coverage(args.alias, args.version, args.covered, args.total)
    return status, render_status(status)


def _changed(change: Change, operator: Operator) -> Result:
    after = change.after
    if not change.changed:
        return change, f"{after.alias}: nothing to change (revision {after.revision}, " \
            f"{after.state})"
    summary = summarize_change(change.before, after)
    return change, (f"{after.alias}: {summary} (revision {change.before.revision} -> "
                    f"{after.revision}, by {operator.actor})")


# -- rendering ---------------------------------------------------------------------------------

def render_status(status: Status) -> str:
    r = status.rollout
    candidate = r.candidate or "-"
    covered = status.candidate_coverage
    coverage = "unknown" if covered is None else f"{covered:.1%}"
    lines = [
        f"{r.alias}  (revision {r.revision}, {r.state})",
        f"  stable     {r.stable:<6} {r.version(r.stable).model}",
        f"  candidate  {candidate:<6} {r.version(r.candidate).model if r.candidate else ''}",
        f"  percent    {r.percent:g}% set, {status.effective_percent:g}% effective"
        + (f" (candidate coverage {coverage} allows at most {status.coverage_cap_percent:g}%)"
           if r.candidate and r.coverage_gate.enabled else ""),
    ]
    if r.updated_by:
        lines.append(f"  last change {r.updated_at} by {r.updated_by}: {r.reason}")
    return "\n".join(lines)


def render_entry(entry: AuditEntry) -> str:
    return (f"rev {entry.revision:<4} {entry.at}  {entry.actor:<24} "
            f"{summarize_change(entry.before, entry.after)}  ({entry.reason})")


def render_explanation(explanation: Explanation) -> str:
    d, status = explanation.decision, explanation.status
    bucket = "-" if d.bucket is None else f"{d.bucket} of 10000"
    return "\n".join([
        f"version    {d.version} ({status.rollout.version(d.version).model})",
        f"reason     {d.reason}",
        f"bucket     {bucket}  (in the candidate when bucket <= {d.effective_percent * 100:g})",
        f"effective  {d.effective_percent:g}% of users on the candidate",
        f"revision   {d.revision}",
    ])


# -- long-running and server commands ---------------------------------------------------------

def _model_command(args: argparse.Namespace, settings: Settings,
                   environ: Mapping[str, str]) -> Result:
    if args.command == "models" and args.action == "build":
        return cli_models.build_models(settings.models_path, args.int8)
    if args.command == "models":
        return cli_models.list_models(settings.models_path)
    versions = cli_models.default_versions()
    if args.alias:
        versions = asyncio.run(_alias_versions(args.alias, settings, environ))
    return cli_models.run_eval(args, settings.models_path, versions)


async def _alias_versions(alias: str, settings: Settings, environ: Mapping[str, str]
                          ) -> list[Version]:
    store = open_store(settings, environ)
    try:
        rollout = await store.get(alias)
    finally:
        await store.aclose()
    names = [rollout.stable] + ([rollout.candidate] if rollout.candidate else [])
    return [rollout.version(name) for name in names]


def _serve(settings: Settings, environ: Mapping[str, str]) -> int:
    serve.run(settings, environ)
    return 0


def _redis_command(args: argparse.Namespace, settings: Settings,
                   environ: Mapping[str, str]) -> int:
    server = EmbeddedRedis(settings.data_path, environ)
    if args.action == "start":
        print(f"redis-server running at {server.ensure_running()}")
    elif args.action == "stop":
        server.stop()
        print("redis-server stopped")
    else:
        state = "running" if server.is_running() else "not running"
        print(f"redis-server {state} at {server.url} (binary {server.binary})")
    return 0


# -- parsing -----------------------------------------------------------------------------------

def _read_rollout(path: str, alias: str) -> Rollout:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise RuleError("file", f"cannot read {path}: {exc}") from exc
    if path.endswith(".toml"):
        try:
            data: dict[str, Any] = msgspec.toml.decode(text)
        except msgspec.DecodeError as exc:
            raise RuleError("document", f"not valid TOML ({exc})") from exc
    else:
        data = msgspec.json.decode(text) if text.strip() else {}
    data.setdefault("alias", alias)
    if data["alias"] != alias:
        raise RuleError("alias", f"the file declares {data['alias']!r}, the command {alias!r}")
    return parse_rollout(data)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise RuleError("property", f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--redis-url", help="Redis to use (default: REDIS_URL, else embedded)")
    common.add_argument("--data-dir", help="data folder for the embedded Redis (.embedshift)")
    common.add_argument("--actor", help="who this change is recorded as (default user@host)")
    parser = argparse.ArgumentParser(
        prog="embedshift", description="Move search traffic between embedding models safely.",
        epilog="exit codes: 0 ok, 2 usage, 3 invalid rule or action, 4 conflict (someone else "
               "changed the rule first), 5 unknown alias, 6 Redis unreachable")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Command | None, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def writer(name: str, handler: Command, help_text: str, reason_required: bool = False
               ) -> argparse.ArgumentParser:
        p = command(name, handler, help_text)
        p.add_argument("alias")
        p.add_argument("--reason", required=reason_required, default="",
                       help="why, recorded in the audit stream")
        p.add_argument("--if-revision", type=int, help="refuse unless the rule is at this revision")
        return p

    p = command("init", cmd_init, "declare an alias with its stable and candidate versions")
    p.add_argument("alias")
    p.add_argument("--file", help="rule document (JSON or TOML); default: the v1/v2 MiniLM pair")
    p.add_argument("--force", action="store_true", help="replace an existing declaration")
    p.add_argument("--reason", default="", help="why, recorded in the audit stream")
    p = command("status", cmd_status, "show every alias, or one")
    p.add_argument("alias", nargs="?")
    p = writer("set", cmd_set, "ramp the candidate to PERCENT of users (0-100, 0.01 steps)")
    p.add_argument("percent", type=float)
    writer("pause", cmd_pause, "send everyone to stable, keeping the percent for resume")
    writer("resume", cmd_resume, "bring the paused candidate back to its percent")
    writer("rollback", cmd_rollback, "send everyone to stable and zero the candidate's percent",
           reason_required=True)
    p = writer("promote", cmd_promote, "make the candidate stable for everyone")
    p.add_argument("--force", action="store_true", help="promote below full backfill coverage")
    p = command("history", cmd_history, "the audit trail of an alias, newest first")
    p.add_argument("alias")
    p.add_argument("--limit", type=int, default=20)
    p = command("explain", cmd_explain, "which version a user gets, and why")
    p.add_argument("alias")
    p.add_argument("--user")
    p.add_argument("--session")
    p.add_argument("--tenant")
    p.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--version", help="a requested version override, as a request would send")
    p = command("coverage", cmd_coverage, "show, or set by hand, a version's backfill coverage")
    p.add_argument("alias")
    p.add_argument("version", nargs="?")
    p.add_argument("covered", nargs="?", type=int)
    p.add_argument("total", nargs="?", type=int)
    command("serve", None, "run the search proxy (embedded Redis, Qdrant and a demo by default)")
    cli_models.add_parsers(command)
    p = command("redis", None, "start, stop or check the embedded redis-server")
    p.add_argument("action", choices=["start", "stop", "status"])
    return parser


if __name__ == "__main__":
    sys.exit(main())
