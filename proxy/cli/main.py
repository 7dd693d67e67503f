"""``embedshift``: parse, run one command, print its answer for people or (``--json``) scripts.

Every failure prints one line on stderr and exits non-zero, with a code per kind of failure (see
``EXIT_CODES``). The commands live one group a module: ``rollout`` (the operator's actions),
``data`` (ingest, backfill), ``models`` (build, list, eval), ``serve`` and ``redis``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from proxy.cli import found
from proxy.cli.common import Runner
from proxy.config import load_settings
from rollout_rules.errors import (
    ConflictError,
    EmbedshiftError,
    ModelError,
    NotFoundError,
    RuleError,
    StoreUnavailable,
    TransitionError,
)

# argparse itself exits 2 on bad usage.
EXIT_CODES: dict[type[EmbedshiftError], int] = {
    RuleError: 3,
    TransitionError: 3,
    ModelError: 3,  # a model refused or not found: the input, not the machine
    ConflictError: 4,
    NotFoundError: 5,
    StoreUnavailable: 6,
}
_SETTINGS_FLAGS = ("redis_url", "data_dir", "actor", "host", "port", "qdrant_port",
                   "qdrant_grpc_port")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; a reader that closes the pipe early (``| head -1``) ends it quietly,
    with the status a shell gives a command stopped by SIGPIPE."""
    try:
        return _main(argv, environ)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # nothing more reaches the closed pipe,
        os.dup2(devnull, sys.stdout.fileno())  # not even the interpreter's flush at exit
        return 141


def _main(argv: Sequence[str] | None, environ: Mapping[str, str] | None) -> int:
    environ = os.environ if environ is None else environ
    if argv is None and (sys.argv[1:2] and sys.argv[1] in GROUPS["rollout"]):
        _without_redis_telemetry()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        given = {k: getattr(args, k, None) for k in _SETTINGS_FLAGS}
        if args.command != "serve":  # the other commands find the proxy serve runs here
            given.update(found.overrides(Path.cwd(), environ, given))
        settings = load_settings(environ, given)
        result = args.run(args, settings, environ)
    except EmbedshiftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return next((code for kind, code in EXIT_CODES.items() if isinstance(exc, kind)), 1)
    except KeyboardInterrupt:
        return 130
    if result is not None:
        payload, text = result
        print(msgspec.json.encode(payload).decode() if args.json else text)
        sys.stdout.flush()  # a closed pipe fails here, inside main, not at the exit's flush
    return 0


GROUPS = {
    "rollout": ("init", "diff", "export", "undo", "status", "set", "pause", "resume",
                "rollback", "promote", "retire", "delete", "history", "explain", "guard", "ramp",
                "coverage", "quality"),
    "data": ("ingest", "adopt", "backfill", "plan", "verify", "archive", "unarchive"),
    "serve": ("serve",),
    "models": ("models", "eval"),
    "redis": ("redis",),
}
"""Which module of ``proxy.cli`` defines each command: a command imports its own group only
(`status` needs neither the vector stores nor the models); a test holds this to the parsers."""


def _without_redis_telemetry() -> None:
    """A rule command exports no metrics, so its process keeps redis-py from loading the
    OpenTelemetry metrics API and SDK for its optional instrumentation: a quarter of `status`'s
    start. Only a process of its own does this (``main()`` with no ``argv``): an import marked
    absent in ``sys.modules`` fails for the rest of the process, which a test's process must not
    inherit."""
    for module in ("opentelemetry.metrics", "opentelemetry.sdk.metrics"):
        sys.modules.setdefault(module, None)  # type: ignore[arg-type]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every group's commands, or only ``command``'s group when it names one
    (``--help`` and anything unknown get them all)."""
    owner = next((g for g, names in GROUPS.items() if command in names), None)
    return _parser([owner] if owner else list(GROUPS))


def _parser(groups: list[str]) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--redis-url", help="Redis to use (default: REDIS_URL, else embedded)")
    common.add_argument("--data-dir", help="data folder for the embedded Redis (.embedshift)")
    common.add_argument("--actor", help="who this change is recorded as (default user@host)")
    parser = argparse.ArgumentParser(
        prog="embedshift", description="Move search traffic between embedding models safely.",
        epilog="exit codes: 0 ok, 2 usage, 3 invalid rule, action or model, 4 conflict "
               "(someone else changed the rule first), 5 unknown alias, 6 Redis unreachable")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, run: Runner, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(run=run)
        return p

    for group in groups:
        importlib.import_module(f"proxy.cli.{group}").add_parsers(add)
    return parser


if __name__ == "__main__":
    sys.exit(main())
