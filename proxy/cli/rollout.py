"""The rollout commands: declare (and apply a rules file), diff, export, undo, status, set,
ramp, pause, resume, rollback, promote, delete, history, explain, coverage; each a thin call on
the operator in ``proxy.control``, rendered for people."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from proxy.cli.common import AddCommand, OperatorCommand, Result, with_operator
from rollout_rules.decide import Context
from rollout_rules.errors import NotFoundError, RuleError
from rollout_rules.model import Rollout, parse_rollout
from rollout_rules.online import QualityTable
from rollout_rules.ops import summarize_change
from rollout_rules.ramp import RampAction, RampPlan
from rollout_rules.spec import document as full_document
from rollout_rules.spec import spec_document
from rollout_rules.text import one_line

if TYPE_CHECKING:  # what a command needs is imported when it runs: `status` starts fast
    from proxy.control.operator import Explanation, Operator, Status
    from proxy.control.verdicts import GuardStatus
    from proxy.state.base import AuditEntry, Change

# -- commands ----------------------------------------------------------------------------------

async def cmd_init(operator: Operator, args: argparse.Namespace) -> Result:
    from proxy.models.catalog import default_rollout

    rollout = _read_rollout(args.file, args.alias) if args.file else default_rollout(args.alias)
    declared = await operator.declare(rollout, args.reason, replace_existing=args.force,
                                      take_status=args.take_status)
    stored = declared.rollout
    if not declared.changed:
        head = f"{stored.alias}: the file matches the rule at revision {stored.revision}: " \
               "nothing written"
    elif declared.differences:
        head = f"applied to {stored.alias} at revision {stored.revision}:\n" + \
            "\n".join(f"  {line}" for line in declared.differences)
    else:
        head = f"declared {stored.alias} at revision {stored.revision}"
    kept = "".join(f"\n  kept: {line}" for line in declared.kept)
    return declared, f"{head}{kept}\n" + render_status(await operator.status(stored.alias))


async def cmd_diff(operator: Operator, args: argparse.Namespace) -> Result:
    found = await operator.diff(_read_rollout(args.file, args.alias), args.take_status)
    lines = [f"  {line}" for line in found.differences] or ["  no differences"]
    lines += [f"  kept: {line}" for line in found.kept]
    return found, f"{args.alias} against {args.file}:\n" + "\n".join(lines)


async def cmd_export(operator: Operator, args: argparse.Namespace) -> Result:
    rollout = await operator.store.get(args.alias)
    import tomli_w

    data = full_document(rollout) if args.full else spec_document(rollout)
    header = (f"# {rollout.alias} at revision {rollout.revision}, exported from the live rule "
              f"(changed last by {rollout.updated_by or 'someone'} at {rollout.updated_at})\n")
    return data, header + tomli_w.dumps(_toml_ready(data)).rstrip("\n")


async def cmd_undo(operator: Operator, args: argparse.Namespace) -> Result:
    return _changed(await operator.undo(args.alias, args.to_revision, args.reason,
                                        args.if_revision), operator)


async def cmd_status(operator: Operator, args: argparse.Namespace) -> Result:
    statuses = [await operator.status(args.alias)] if args.alias else await operator.statuses()
    text = "\n\n".join(render_status(s) for s in statuses) or \
        "no aliases declared yet (try: embedshift init products)"
    return statuses, text


async def cmd_quality(operator: Operator, args: argparse.Namespace) -> Result:
    table = await operator.quality(args.alias)
    return table, render_quality(table, online=args.online)


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


async def cmd_retire(operator: Operator, args: argparse.Namespace) -> Result:
    return _changed(await operator.retire(args.alias, args.reason, args.if_revision,
                                          args.force), operator)


async def cmd_delete(operator: Operator, args: argparse.Namespace) -> Result:
    try:
        entry = await operator.delete(args.alias, args.reason, args.if_revision)
    except NotFoundError:
        raise NotFoundError(args.alias, hint=(
            "if a proxy still serves it from memory (`vanished` in its /readyz), delete it "
            f"through that proxy: DELETE /admin/aliases/{args.alias} with a reason")) from None
    return entry, (f"deleted {args.alias} at revision {entry.revision} (by {entry.actor}); "
                   "every proxy stops serving it")


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


async def cmd_ramp(operator: Operator, args: argparse.Namespace) -> Result:
    from proxy.control import ramp

    action = next((a for a in ("pause", "resume", "abort") if getattr(args, a)), None)
    if action is not None:
        plan = await ramp.control_ramp(operator.store, args.alias, RampAction(action))
    elif args.steps is None or args.every is None:
        raise RuleError("--steps", "give --steps and --every to plan a ramp, or one of "
                                   "--pause, --resume, --abort")
    else:
        plan = await ramp.start_ramp(operator.store, args.alias, parse_steps(args.steps),
                                     parse_duration(args.every), operator.actor,
                                     promote=not args.no_promote)
    return plan, f"{args.alias}: guarded ramp {render_ramp(plan)}"


async def cmd_guard(operator: Operator, args: argparse.Namespace) -> Result:
    changes: dict[str, object] = dict(_key_value(pair) for pair in args.set)
    if not changes:
        status = await operator.status(args.alias)
        return status.rollout.guard, "\n".join(
            f"{name:<18} {value}" for name, value in msgspec.to_builtins(
                status.rollout.guard).items())
    return _changed(await operator.set_guard(args.alias, changes, args.reason,
                                             args.if_revision), operator)


def parse_steps(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise RuleError("--steps", f"{text!r}: percentages separated by commas, e.g. "
                                   "5,10,25,50,100") from exc


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        return float(number) * units[unit]
    except ValueError as exc:
        raise RuleError("--every", f"{text!r}: a duration like 90s, 10m or 1h") from exc


def _changed(change: Change, operator: Operator) -> Result:
    after = change.after
    if not change.changed:
        return change, f"{after.alias}: nothing to change (revision {after.revision}, " \
            f"{after.state})"
    summary = summarize_change(change.before, after)
    warning = f"\nwarning: {change.warning}" if change.warning else ""
    return change, (f"{after.alias}: {summary} (revision {change.before.revision} -> "
                    f"{after.revision}, by {operator.actor}){warning}")


# -- rendering ---------------------------------------------------------------------------------

_MEASURE = {"completeness": "completeness", "documents": "coverage",
            "popularity": "popular coverage"}


def render_status(status: Status) -> str:
    r = status.rollout
    candidate = r.candidate or "-"
    covered = status.candidate_coverage
    coverage = "unknown" if covered is None else f"{covered:.1%}"
    state = r.state if r.candidate or r.state != "ramping" else "stable only, no candidate"
    lines = [
        f"{r.alias}  (revision {r.revision}, {state})",
        f"  stable     {r.stable:<6} {r.version(r.stable).model}",
        f"  candidate  {candidate:<6} {r.version(r.candidate).model if r.candidate else ''}"
        .rstrip(),
        f"  percent    {r.percent:g}% set, {status.effective_percent:g}% effective"
        + (f" (candidate {_MEASURE[r.coverage_gate.basis]} {coverage} allows at most "
           f"{status.coverage_cap_percent:g}%)" if r.candidate and r.coverage_gate.enabled
           else ""),
    ]
    if status.guard is not None:
        lines.append(f"  guard      {render_guard(status.guard)}")
    if status.ramp is not None:
        lines.append(f"  ramp       {render_ramp(status.ramp)}")
    pair = status.online.get(f"{r.candidate}~{r.stable}") if r.candidate else None
    if pair is not None:
        lines.append(f"  online     {r.candidate} preferred in {pair['wins'] or 0:g} interleaved "
                     f"answers, {r.stable} in {pair['losses'] or 0:g} ({pair['ties'] or 0:g} "
                     f"ties, {pair['answers'] or 0:g} shown)")
    if status.online_missing is not None:
        lines.append(f"  promotion  waits: {status.online_missing}")
    if r.updated_by:
        lines.append(f"  last change {r.updated_at} by {r.updated_by}: {r.reason}")
    return "\n".join(one_line(line) for line in lines)  # reasons and notes are callers' text


def render_guard(guard: GuardStatus) -> str:
    f = guard.figures
    what = "the promoted " if guard.watching else ""
    parts = [f"{guard.outcome}: {guard.reason}",
             f"{what}{guard.test} against {guard.baseline} over {guard.instances} instance(s)",
             f"searches {f.get('test_requests') or 0:g}/{f.get('baseline_requests') or 0:g}"]
    if f.get("test_p99_ms") is not None:
        parts.append(f"p99 {f.get('test_p99_ms'):g}/{f.get('baseline_p99_ms') or 0:g} ms")
    if f.get("overlap_at_10") is not None:
        parts.append(f"shadow overlap@10 {f.get('overlap_at_10'):.2f} over "
                     f"{f.get('overlap_n'):g} queries")
    return "; ".join(parts)


_FIGURES = {"click_through": "click-through", "requery": "re-query"}


def render_quality(table: QualityTable, *, online: bool) -> str:
    """The per-version table; ``online``: users' figures and the deltas too."""
    def cell(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    head = f"{'version':<9}{'role':<17}{'nDCG@10':>8}{'P@5':>7}"
    if online:
        head += (f"{'answers':>9}{'clicked':>9}{'MRR':>7}{'thumbs+':>9}{'re-query':>9}"
                 f"{'no hit':>8}{'low top':>8}{'p50 ms':>8}{'cached':>8}")
    lines = [f"{table.alias}: golden set and users, per version", head]
    for row in table.rows:
        line = (f"{row.version:<9}{row.role:<17}{cell(row.ndcg_at_10, '.4f'):>8}"
                f"{cell(row.precision_at_5, '.3f'):>7}")
        if online:
            line += (f"{row.answers:>9,}{cell(row.click_through, '.1%'):>9}"
                     f"{cell(row.mrr, '.3f'):>7}{cell(row.thumbs_up, '.1%'):>9}"
                     f"{cell(row.requery, '.1%'):>9}{cell(row.zero_hits, '.1%'):>8}"
                     f"{cell(row.low_top, '.1%'):>8}"
                     f"{cell(row.p50_ms, 'g'):>8}{cell(row.cache_hit, '.0%'):>8}")
        lines.append(line)
    if not online:
        return "\n".join(lines)
    for delta in table.deltas:
        lines.append(f"{_FIGURES.get(delta.figure, delta.figure)} candidate - stable: "
                     f"{delta.value * 100:+.1f} points (95% interval {delta.low * 100:+.1f} "
                     f"to {delta.high * 100:+.1f})")
    pair = table.interleaving
    if pair is not None:
        share = pair.get("win_share")
        interval = "" if share is None else (
            f", win share {share:.2f} (95% interval {pair['low']:.2f} to {pair['high']:.2f})")
        lines.append(f"interleaved: {pair['answers']:g} answers; the candidate preferred in "
                     f"{pair['wins']:g}, stable in {pair['losses']:g}, {pair['ties']:g} "
                     f"ties{interval}: {table.finding}")
    if table.missing is not None:
        lines.append(f"promotion waits: {table.missing}")
    return "\n".join(one_line(line) for line in lines)


def render_ramp(plan: RampPlan) -> str:
    steps = ",".join(f"{s:g}" for s in plan.steps)
    return f"{plan.state} (steps {steps}% every {plan.every_s:g} s): {plan.note or 'starting'}"


def render_entry(entry: AuditEntry) -> str:
    what = "deleted" if entry.deleted else summarize_change(entry.before, entry.after)
    return (f"rev {entry.revision:<4} {entry.at}  {one_line(entry.actor):<24} {what}  "
            f"({one_line(entry.reason)})")


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


# -- parsing -----------------------------------------------------------------------------------

def _read_rollout(path: str, alias: str) -> Rollout:
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise RuleError("file", f"cannot read {path}: {exc}") from exc
    kind = "TOML" if path.endswith(".toml") else "JSON"
    try:
        data: Any = (msgspec.toml.decode(text) if kind == "TOML" else
                     msgspec.json.decode(text) if text.strip() else {})
    except msgspec.DecodeError as exc:
        raise RuleError("document", f"{path}: not valid {kind} ({exc})") from exc
    if not isinstance(data, dict):
        raise RuleError("document", f"{path}: a rules document is a {kind} "
                                    f"{'table' if kind == 'TOML' else 'object'}, not a "
                                    f"{type(data).__name__}")
    data.setdefault("alias", alias)
    if data["alias"] != alias:
        raise RuleError("alias", f"the file declares {data['alias']!r}, the command {alias!r}")
    return parse_rollout(data)


def _toml_ready(value: Any) -> Any:
    """TOML has no null: a value that is None is left out (each such field's default)."""
    if isinstance(value, dict):
        return {k: _toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_toml_ready(v) for v in value]
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise RuleError("property", f"expected KEY=VALUE, got {text!r}")
    return key, value




def add_parsers(add: AddCommand) -> None:
    def command(name: str, handler: OperatorCommand, help_text: str) -> argparse.ArgumentParser:
        return add(name, with_operator(handler), help_text)

    def writer(name: str, handler: OperatorCommand, help_text: str, reason_required: bool = False
               ) -> argparse.ArgumentParser:
        p = command(name, handler, help_text)
        p.add_argument("alias")
        p.add_argument("--reason", required=reason_required, default="",
                       help="why, recorded in the audit stream")
        p.add_argument("--if-revision", type=int, help="refuse unless the rule is at this revision")
        return p

    _add_rules_file_parsers(command, writer)
    p = command("status", cmd_status, "show every alias, or one")
    p.add_argument("alias", nargs="?")
    p = command("quality", cmd_quality, "per version: the golden-set judgement and, with "
                                        "--online, what users' answers and feedback say")
    p.add_argument("alias")
    p.add_argument("--online", action="store_true",
                   help="add users' figures (click-through, MRR, thumbs up, re-queries, "
                        "answers with no hit), latency, cache hits, the candidate's deltas and "
                        "the interleaving score")
    p = writer("set", cmd_set, "ramp the candidate to PERCENT of users (0-100, 0.01 steps)")
    p.add_argument("percent", type=float)
    writer("pause", cmd_pause, "send everyone to stable, keeping the percent for resume")
    writer("resume", cmd_resume, "bring the paused candidate back to its percent")
    writer("rollback", cmd_rollback, "send everyone to stable and zero the candidate's percent",
           reason_required=True)
    p = writer("promote", cmd_promote, "make the candidate stable for everyone")
    p.add_argument("--force", action="store_true", help="promote below full coverage or without "
                                                        "a passed verify (needs --reason)")
    p = writer("retire", cmd_retire, "let go of the previous stable version (no rollback to "
                                     "it; it may then be archived)", reason_required=True)
    p.add_argument("--force", action="store_true", help="retire it while the promote is still "
                                                        "watched (guard.watch_s)")
    writer("delete", cmd_delete, "delete an alias on purpose: every proxy stops serving it",
           reason_required=True)
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
    p = writer("guard", cmd_guard, "show the guard policy, or change fields of it: "
                                   "thresholds, shadow_share, watch_s")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p = command("ramp", cmd_ramp, "ramp the candidate step by step from its current share, "
                                  "each step taken only while the guard finds it healthy, "
                                  "and promote it once a last step of 100%% is")
    p.add_argument("alias")
    p.add_argument("--steps", help="percentages, e.g. 5,10,25,50,100")
    p.add_argument("--every", help="how long each step lasts at least, e.g. 10m")
    p.add_argument("--no-promote", action="store_true",
                   help="stay at a last step of 100%% instead of promoting once it is healthy")
    for action in ("pause", "resume", "abort"):
        p.add_argument(f"--{action}", action="store_true", help=f"{action} the planned ramp")
    p = command("coverage", cmd_coverage, "show, or set by hand, a version's backfill coverage")
    p.add_argument("alias")
    p.add_argument("version", nargs="?")
    p.add_argument("covered", nargs="?", type=int)
    p.add_argument("total", nargs="?", type=int)


Command = Callable[[str, OperatorCommand, str], argparse.ArgumentParser]
Writer = Callable[..., argparse.ArgumentParser]


def _add_rules_file_parsers(command: Command, writer: Writer) -> None:
    """Rules as code: declare or apply a file, see what it would change, export, undo."""
    p = command("init", cmd_init, "declare an alias with its stable and candidate versions, or "
                                  "apply a changed rules file to it (--force)")
    p.add_argument("alias")
    p.add_argument("--file", help="rule document (JSON or TOML); default: the v1/v2 MiniLM pair")
    p.add_argument("--force", action="store_true",
                   help="apply the file to a declared alias: its settings merged in, the live "
                        "status (stable after a promote, percent, state) kept")
    p.add_argument("--take-status", action="store_true",
                   help="with --force: apply the file's stable, candidate and percent as "
                        "written, even over a promote or a rollback")
    p.add_argument("--reason", default="", help="why, recorded in the audit stream")
    p = command("diff", cmd_diff, "what applying a rules file would change, written nowhere")
    p.add_argument("alias")
    p.add_argument("--file", required=True, help="rule document (JSON or TOML)")
    p.add_argument("--take-status", action="store_true", help="as init --take-status would")
    p = command("export", cmd_export, "the live rule's spec as a TOML rules file to keep in "
                                      "git, defaults left out (--json: JSON)")
    p.add_argument("alias")
    p.add_argument("--full", action="store_true",
                   help="every setting, defaults and status (share, state) included")
    p = writer("undo", cmd_undo, "write the rule back as it was at an earlier revision (from "
                                 "the audit trail), as a new revision")
    p.add_argument("--to-revision", type=int, required=True, metavar="N")
