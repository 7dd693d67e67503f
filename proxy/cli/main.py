"""``embedshift``: parse, run one command, print its answer for people or (``--json``) scripts.

Every failure prints one line on stderr and exits non-zero, with a code per kind of failure (see
``EXIT_CODES``). The commands live one group a module: ``rollout`` (the operator's actions),
``data`` (ingest, backfill), ``models`` (build, list, eval), ``serve`` and ``redis``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from proxy.cli import data, found, models, redis, rollout, serve
from proxy.cli.common import Runner
from proxy.config import load_settings
from rollout_rules.errors import (
    ConflictError,
    EmbedshiftError,
    NotFoundError,
    RuleError,
    StoreUnavailable,
    TransitionError,
)

# argparse itself exits 2 on bad usage.
EXIT_CODES: dict[type[EmbedshiftError], int] = {
    RuleError: 3,
    TransitionError: 3,
    ConflictError: 4,
    NotFoundError: 5,
    StoreUnavailable: 6,
}
_SETTINGS_FLAGS = ("redis_url", "data_dir", "actor", "host", "port")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
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
    return 0


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

    def add(name: str, run: Runner, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(run=run)
        return p

    for group in (rollout, data, serve, models, redis):
        group.add_parsers(add)
    return parser


if __name__ == "__main__":
    sys.exit(main())
