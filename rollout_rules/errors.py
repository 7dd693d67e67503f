"""The one exception tree of embedshift, and who raises each branch.

    EmbedshiftError        base: every error we raise on purpose
    ├── RuleError          a rule document, request field, setting or filter a caller gave is
    │                      invalid; names the field. The core (rule model, transitions), settings,
    │                      request parsing and the vector stores' filter checks raise it.
    ├── TransitionError    an operator action does not apply in the rollout's state (the core)
    ├── ConflictError      compare-and-set lost: the rule moved since it was read (rule stores)
    │   └── AlreadyDeclared   init without --force on a declared alias (the operator)
    ├── NotFoundError      no rule for that alias (rule stores, the search path)
    │   └── DocumentNotFound  no version of the alias holds that document id (deletes)
    ├── StoreUnavailable   the rule store cannot be reached (the Redis client, converting redis-py
    │                      and socket errors; the embedded redis-server when it cannot start)
    ├── ModelError         a model cannot be built or loaded: a missing file, a wrong hash, parts
    │                      that disagree (the model catalogue and encoders; the search path when a
    │                      version has no encoder)
    ├── EncoderInputError  a text no encoder takes: empty, too long, not UTF-8 (``clean_text``)
    ├── AccessError        a request lacks the token a route or feature needs (the HTTP edge):
    │   └── FeatureOff     the feature is switched off on this proxy, so no token would do
    └── BackendError       a vector store failed a request: unreachable, missing collection,
                           engine error (the vector store adapters; the HTTP edge at a deadline)

Adapters convert third-party errors into these with ``raise ... from exc``, so callers (CLI, admin
API) map each branch to one exit code or HTTP status in one place.
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


class AlreadyDeclared(ConflictError):
    """``init`` without ``--force`` for an alias that is declared."""

    def __init__(self, alias: str, revision: int) -> None:
        EmbedshiftError.__init__(
            self, f"{alias} is declared already (revision {revision}): `embedshift diff {alias} "
                  f"--file FILE` shows what a file would change, `init {alias} --file FILE "
                  "--force` applies it")
        self.alias, self.expected, self.actual = alias, 0, revision


class NotFoundError(EmbedshiftError):
    """No rule document exists for the alias."""

    def __init__(self, alias: str, hint: str = "declare it with 'init'") -> None:
        super().__init__(f"no rollout declared for alias {alias!r} ({hint})")
        self.alias = alias


class DocumentNotFound(NotFoundError):
    """No version of the alias holds a document with that id."""

    def __init__(self, alias: str, doc_id: int | str) -> None:
        EmbedshiftError.__init__(self, f"no document with id {doc_id!r} in any version of "
                                       f"{alias!r} (ids are matched with their kind: 7 and "
                                       f"\"7\" are different documents)")
        self.alias = alias
        self.doc_id = doc_id


class StoreUnavailable(EmbedshiftError):
    """The rule store could not be reached."""


class ModelError(EmbedshiftError):
    """A model cannot be built or loaded as it stands."""


class EncoderInputError(EmbedshiftError):
    """A text the encoder refuses; the message says what is wrong with it."""


class AccessError(EmbedshiftError):
    """A request without the token the route or feature requires (never echoes the token)."""


class FeatureOff(AccessError):
    """A feature switched off in this proxy's settings; the message says which setting."""


class RateLimited(EmbedshiftError):
    """A caller asked for more than its share; the message says how long to wait."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendError(EmbedshiftError):
    """A vector store failed a request; the search path falls back or answers 503. ``public``
    is what a caller is told (the engine's own words, paths and internals stay in the logs)."""

    def __init__(self, message: str, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public or message
