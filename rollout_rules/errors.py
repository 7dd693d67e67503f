"""The one exception tree of embedshift.

    EmbedshiftError                 base: every error we raise on purpose
    ├── RuleError                   a rule document, request field or other value a caller gave
    │                               is invalid; names the field
    ├── TransitionError             an operator action does not apply in the rollout's state
    ├── ConflictError               compare-and-set lost: the rule moved since it was read
    ├── NotFoundError               no rule document for that alias
    ├── StoreUnavailable            the rule store (Redis) cannot be reached; raised by adapters
    │                               in ``proxy`` with ``raise ... from exc``
    ├── ModelError                  a model folder is missing a file, has a wrong hash, or its
    │                               parts disagree (dimensions, outputs)
    ├── EncoderInputError           a text an encoder cannot take: empty, too long, not UTF-8
    └── BackendError                a vector store failed a request (unreachable, missing
                                    collection, engine error)

The pure core raises the first four; I/O adapters convert third-party errors into these so
callers (CLI, admin API) map each to one exit code or HTTP status in one place.
"""

from __future__ import annotations


class EmbedshiftError(Exception):
    """Base of every error embedshift raises on purpose."""


class RuleError(EmbedshiftError):
    """A rule document or value is invalid."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TransitionError(EmbedshiftError):
    """An operator action does not apply to the rollout as it stands."""


class ConflictError(EmbedshiftError):
    """A compare-and-set write lost: someone else changed the rule first."""

    def __init__(self, alias: str, expected: int, actual: int) -> None:
        super().__init__(
            f"rule for {alias!r} is at revision {actual}, not {expected}: "
            "someone changed it since you read it; read it again and retry"
        )
        self.alias = alias
        self.expected = expected
        self.actual = actual


class NotFoundError(EmbedshiftError):
    """No rule document exists for the alias."""

    def __init__(self, alias: str) -> None:
        super().__init__(f"no rollout declared for alias {alias!r} (declare it with 'init')")
        self.alias = alias


class StoreUnavailable(EmbedshiftError):
    """The rule store could not be reached."""


class ModelError(EmbedshiftError):
    """A model cannot be built or loaded as it stands."""


class EncoderInputError(EmbedshiftError):
    """A text the encoder refuses; the message says what is wrong with it."""


class BackendError(EmbedshiftError):
    """A vector store failed a request; the search path falls back or answers 503."""
