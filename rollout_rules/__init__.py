"""The pure rollout core: rule documents, bucketing, decisions, operator transitions.

No I/O lives here (a test enforces it): the proxy feeds it snapshots and acts on its answers.
"""

from rollout_rules.bucket import bucket
from rollout_rules.decide import Context, Decision, Reason, decide
from rollout_rules.errors import (
    ConflictError,
    EmbedshiftError,
    NotFoundError,
    RuleError,
    StoreUnavailable,
    TransitionError,
)
from rollout_rules.model import Rollout, State, Version, dump_rollout, parse_rollout

__all__ = [
    "ConflictError",
    "Context",
    "Decision",
    "EmbedshiftError",
    "NotFoundError",
    "Reason",
    "Rollout",
    "RuleError",
    "State",
    "StoreUnavailable",
    "TransitionError",
    "Version",
    "bucket",
    "decide",
    "dump_rollout",
    "parse_rollout",
]
