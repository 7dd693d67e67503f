"""A model behind an OpenAI-compatible embeddings API as a version's model.

Any service that answers ``POST {url}/embeddings`` as OpenAI does (OpenAI, Azure OpenAI behind
such a URL, Hugging Face TEI, Ollama, vLLM, Infinity, LiteLLM) can be catalogued with
``embedshift models add NAME --openai-url URL --model-id ID``. The catalogue keeps a
``ServedSpec`` in ``<models dir>/NAME/embedshift-served.json``: where and how to call it, and its
**fingerprint**, the vectors it gave for the probe texts when it was added. A provider may change a
model's weights under the same name; re-embedding the probes and comparing (``drift``) tells.

``ServedModel`` is a ``TextModel`` whose work is a call, so the request path awaits ``aembed``
directly (no thread): calls are cut at ``max_batch`` texts, at most ``max_concurrency`` at once,
each timed out; retryable failures (429, 5xx, timeouts, broken answers) are retried with jittered
backoff honouring ``Retry-After``; a circuit opens after failures in a row. Live queries
(``live=True``) give up quickly, so a candidate falls back to stable within the query's
budget; bulk work (ingestion, the backfill) waits as long as it must and keeps a slot and a
quarter of each rate limit free for live queries. The key comes from the environment or a file
when the model is loaded; it is never in the spec, a log, an error or a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
import numpy as np

from proxy.models.calling import (
    RETRYABLE,
    Bucket,
    Circuit,
    SharedLimits,
    error_code,
    parse_embeddings,
    parse_retry_after,
    retry_delay,
)
from proxy.models.checks import PROBES, Reference, row_cosines
from proxy.models.encoders import Vector
from rollout_rules.errors import ModelError, StoreUnavailable
from rollout_rules.text import one_line

SPEC_FILE = "embedshift-served.json"
LIVE_PATIENCE = 1.5  # a live query's call, retries included, ends within this many timeouts
BULK_PATIENCE_S = 600.0  # bulk work waits this long through 429s and outages, then fails
BULK_KEEP = 0.25  # the share of each rate limit bulk work leaves to live queries
DRIFT_MIN_COSINE = 0.999  # a probe's vector further than this from its catalogued one: drift
BATCH_MIN_COSINE = 0.999  # a text in a batch against alone (services batch on GPUs, in fp16)
REFERENCE_MIN_COSINE = 0.999
CHECK_PATIENCE_S = 30.0
LONG_TEXT = " ".join(["embedding"] * 3000)  # past the input limit of most models


class ServedSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where and how to call a served model, and what it answered when it was catalogued."""

    kind: str = "served"
    url: str  # the API's base: embeddings are POSTed to {url}/embeddings
    model_id: str
    dimensions: int
    ask_dimensions: bool = False  # send "dimensions" (models that shorten vectors on request)
    normalize: bool = True
    api_key_env: str = ""  # the environment variable holding the key (never the key)
    api_key_file: str = ""  # or a file holding it
    max_batch: int = 32
    max_concurrency: int = 4
    rpm: int = 0  # requests per minute the service allows (0: no limit known)
    tpm: int = 0  # tokens per minute
    timeout_s: float = 2.0  # one live call
    bulk_timeout_s: float = 60.0  # one bulk call (a batch of documents)
    probes: tuple[tuple[float, ...], ...] = ()  # the probe texts' vectors when catalogued
    fingerprint: str = ""
    identity: str = ""
    checks: tuple[str, ...] = ()


def fingerprint_of(vectors: Vector) -> str:
    """A short digest of the probe vectors (rounded: a display and a quick equality, not the
    drift test, which compares cosines)."""
    rounded = np.round(np.asarray(vectors, dtype=np.float64), 3) + 0.0  # no "-0.0"
    return "fp:" + hashlib.sha256(rounded.tobytes()).hexdigest()[:16]


def identity_of(spec: ServedSpec) -> str:
    parts = (spec.kind, spec.url.rstrip("/"), spec.model_id, str(spec.dimensions),
             spec.fingerprint)
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def drift(spec: ServedSpec, fresh: Vector) -> float:
    """The least cosine between the probes' vectors now and when catalogued (1.0: the same)."""
    stored = np.asarray(spec.probes, dtype=np.float32)
    return _least(stored, fresh) if stored.shape == fresh.shape else 0.0


def read_spec(folder: Path) -> ServedSpec:
    try:
        return msgspec.json.decode((folder / SPEC_FILE).read_bytes(), type=ServedSpec)
    except (OSError, msgspec.MsgspecError) as exc:
        raise ModelError(f"{folder / SPEC_FILE} is invalid: {exc}") from exc


def write_spec(folder: Path, spec: ServedSpec) -> None:
    (folder / SPEC_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(spec)))


def read_key(spec: ServedSpec, environ: Mapping[str, str], name: str) -> str:
    """The API key named by the spec ("" when it names none); ModelError when it names one that
    is not there (the error names the variable or file, never a value)."""
    if spec.api_key_env:
        key = environ.get(spec.api_key_env, "").strip()
        if not key:
            raise ModelError(f"model {name}: its key is read from ${spec.api_key_env}, "
                             "which is not set")
        return key
    if spec.api_key_file:
        try:
            key = Path(spec.api_key_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ModelError(f"model {name}: cannot read its key file {spec.api_key_file} "
                             f"({exc.strerror})") from exc
        if not key:
            raise ModelError(f"model {name}: its key file {spec.api_key_file} is empty")
        return key
    return ""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after_s: float | None = None,
                 counts: bool = True) -> None:
        super().__init__(message)
        self.retry_after_s, self.counts = retry_after_s, counts


@dataclass
class Spent:
    """What calling the service cost so far (figures for metrics, plan and the backfill)."""

    requests: int = 0
    texts: int = 0
    tokens: int = 0
    retries: int = 0
    failures: int = 0
    rate_limited: int = 0


class ServedModel:
    """A catalogued served model, called over HTTP."""

    def __init__(self, spec: ServedSpec, name: str, *, api_key: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 draw: Callable[[], float] = random.random,
                 bulk_patience_s: float = BULK_PATIENCE_S, echo_errors: bool = False,
                 limits: SharedLimits | None = None) -> None:
        """``limits``: the rate limits and circuit shared with every other process calling
        the service (none: this process's own)."""
        self.spec, self.name = spec, name
        self.limits = limits
        # A service's error text may repeat the input: it is shown only where the texts are
        # the catalogue's checks, printed to the operator who runs them, never in a log.
        self.echo_errors = echo_errors
        self.bulk_patience_s = bulk_patience_s
        self._key = api_key
        self._clock, self._draw = clock, draw
        self._endpoint = spec.url.rstrip("/") + "/embeddings"
        self.circuit = Circuit()
        self._requests, self._tokens = Bucket(spec.rpm), Bucket(spec.tpm)
        self._cool_until = 0.0  # a Retry-After applies to every caller
        self.spent = Spent()
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._all: asyncio.Semaphore | None = None
        self._bulk: asyncio.Semaphore | None = None

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def dimensions(self) -> int:
        return self.spec.dimensions

    @property
    def max_batch(self) -> int:
        return self.spec.max_batch

    @property
    def max_concurrency(self) -> int:
        return self.spec.max_concurrency

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    def figures(self) -> dict[str, float]:
        spent = self.spent
        return {"ok": spent.requests, "retried": spent.retries, "failed": spent.failures,
                "rate_limited": spent.rate_limited, "texts": spent.texts, "tokens": spent.tokens,
                "circuit_open": 1 if self.circuit.state(self._clock()) == "open" else 0}

    def bulk_capacity(self, tokens_per_text: float) -> tuple[int, float | None]:
        spec, share = self.spec, (1 - BULK_KEEP) / 60
        limits = [spec.rpm * share * spec.max_batch] if spec.rpm else []
        if spec.tpm and tokens_per_text > 0:
            limits.append(spec.tpm * share / tokens_per_text)
        return max(1, spec.max_concurrency - 1), min(limits) if limits else None

    async def drift(self) -> float:
        """The least cosine of the probes' vectors now against the catalogued ones (1.0: the
        same); ModelError when the service cannot be asked. One call, past the circuit and any
        Retry-After: it is the health check, and an answer closes the circuit at once."""
        try:
            async with self._slot(live=True):
                fresh, _tokens = await self._post(list(PROBES), live=False, echo=True)
        except _Retryable as exc:
            raise ModelError(str(exc)) from None
        self.circuit.succeeded()
        self._cool_until = 0.0
        return drift(self.spec, fresh)

    # -- the TextModel protocol, for callers without an event loop (the CLI) ------------------

    def embed(self, texts: Sequence[str]) -> Vector:
        async def once() -> Vector:
            try:
                return await self.aembed(texts, live=False)
            finally:
                await self.aclose()
        return asyncio.run(once())

    def embed_many(self, texts: Sequence[str], batch_size: int = 32) -> Vector:
        return self.embed(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        raise ModelError(f"model {self.name} is served: its tokens are what the service "
                         "counts when it embeds (see Spent.tokens)")

    # -- calling --------------------------------------------------------------------------------

    async def aembed(self, texts: Sequence[str], *, live: bool) -> Vector:
        """(len(texts), dimensions) float32, in calls of at most ``max_batch`` texts."""
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        step = self.spec.max_batch
        parts = await asyncio.gather(*(self._call(texts[i:i + step], live)
                                       for i in range(0, len(texts), step)))
        result: Vector = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if self.spec.normalize:
            result /= np.clip(np.linalg.norm(result, axis=1, keepdims=True), 1e-12, None)
        return result

    async def _call(self, texts: list[str], live: bool) -> Vector:
        patience = self.spec.timeout_s * LIVE_PATIENCE if live else self.bulk_patience_s
        deadline = self._clock() + patience
        attempt, last = 0, "no answer yet"
        while True:
            wait = await self._admitted(texts, live)
            if wait > 0:
                if live and self.circuit.state(self._clock()) == "open":
                    raise ModelError(f"model {self.name}: not called, its circuit is open after "
                                     f"{self.circuit.failures} failures in a row ({last})")
                if self._clock() + wait > deadline:
                    raise ModelError(f"model {self.name}: gave up after {patience:g} s "
                                     f"({last})")
                await asyncio.sleep(wait)
                continue
            try:
                async with self._slot(live):
                    vectors, tokens = await self._post(texts, live,
                                                       deadline - self._clock() if live else None)
            except _Retryable as exc:
                now = self._clock()
                if exc.counts:
                    opened = self.circuit.opened
                    self.circuit.failed(now)
                    self.spent.failures += 1
                    if self.limits is not None and self.circuit.opened > opened:
                        with contextlib.suppress(StoreUnavailable):  # the others learn alone
                            await self.limits.trip(self.name, self.circuit.cooldown_s)
                else:
                    self.spent.rate_limited += 1
                if exc.retry_after_s is not None:
                    self._cool_until = max(self._cool_until, now + exc.retry_after_s)
                attempt, last = attempt + 1, str(exc)
                delay = retry_delay(attempt, exc.retry_after_s, self._draw())
                if now + delay > deadline:
                    raise ModelError(f"model {self.name}: gave up after {attempt} tries in "
                                     f"{patience:g} s ({last})") from None
                self.spent.retries += 1
                await asyncio.sleep(delay)
                continue
            self.circuit.succeeded()
            self.spent.requests += 1
            self.spent.texts += len(texts)
            self.spent.tokens += tokens
            if tokens:
                self._tokens.spend(tokens - _guess_tokens(texts), self._clock())
            return vectors

    async def _admitted(self, texts: list[str], live: bool) -> float:
        """0 when a call may go now (its share of the rate limits taken), else seconds to
        wait: for a Retry-After, an open circuit (here, or opened by another process) or the
        rate limits (shared with every process when ``limits`` is set)."""
        now = self._clock()
        keep = 0.0 if live else BULK_KEEP
        wait = self._held_back(now)
        if not wait and self.limits is not None:
            try:
                wait = await self.limits.tripped(self.name) or \
                    await self.limits.take(self.name, "requests", 1, self.spec.rpm, keep) or \
                    await self.limits.take(self.name, "tokens", _guess_tokens(texts),
                                           self.spec.tpm, keep)
            except StoreUnavailable:  # the shared budget out of reach: this process's own
                wait = self._own_budget(texts, now, keep)
        elif not wait:
            wait = self._own_budget(texts, now, keep)
        if wait:
            return wait
        return 0.0 if self.circuit.allow(now) else 0.05

    def _held_back(self, now: float) -> float:
        """Seconds a Retry-After or this process's open circuit still holds calls back."""
        if now < self._cool_until:
            return self._cool_until - now
        return self.circuit.wait_s(now)

    def _own_budget(self, texts: list[str], now: float, keep: float) -> float:
        return self._requests.take(1, now, keep) or self._tokens.take(
            _guess_tokens(texts), now, keep)

    @asynccontextmanager
    async def _slot(self, live: bool) -> AsyncIterator[None]:
        """At most ``max_concurrency`` calls at once; bulk work holds one fewer (so a live
        query never waits behind it, unless there is only one)."""
        self._session_now()
        assert self._all is not None and self._bulk is not None
        if live:
            async with self._all:
                yield
            return
        async with self._bulk, self._all:
            yield

    async def _post(self, texts: list[str], live: bool, left_s: float | None = None,
                    echo: bool = False) -> tuple[Vector, int]:
        """One call; ``left_s``: what is left of a query's patience (a retry never outlasts
        it); ``echo``: the texts are the probes, so the service's error text may be told."""
        body: dict[str, object] = {"model": self.spec.model_id, "input": texts,
                                   "encoding_format": "float"}
        if self.spec.ask_dimensions:
            body["dimensions"] = self.spec.dimensions
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        seconds = self.spec.timeout_s if live else self.spec.bulk_timeout_s
        timeout = aiohttp.ClientTimeout(total=max(0.05, min(seconds, left_s or seconds)))
        source = f"model {self.name}"
        try:
            async with self._session_now().post(self._endpoint, data=msgspec.json.encode(body),
                                                headers=headers, timeout=timeout) as response:
                raw = await response.read()
                if response.status != 200:
                    said = f"{source}: the service answered {response.status}" \
                           f"{self._excerpt(raw, echo or self.echo_errors)}"
                    if response.status in RETRYABLE:
                        raise _Retryable(said, parse_retry_after(
                            response.headers.get("Retry-After"), time.time()),
                            counts=response.status != 429)
                    raise ModelError(said)
        except (aiohttp.ClientError, OSError) as exc:
            raise _Retryable(f"{source}: {type(exc).__name__} calling {self._endpoint}"
                             ) from None
        except TimeoutError:
            raise _Retryable(f"{source}: no answer within {timeout.total:g} s") from None
        try:
            return parse_embeddings(raw, len(texts), self.dimensions, source)
        except ModelError as exc:  # a broken answer is the service's fault: try again
            raise _Retryable(str(exc)) from None

    def _excerpt(self, raw: bytes, echo: bool) -> str:
        """What the error says: its code (``error.code`` or ``.type``) only, since a message
        may repeat the texts (a query, a document) into a log line; with ``echo``, a short,
        one-line piece of the body, with the key blanked out."""
        if not echo:
            code = error_code(raw)
            return f" ({code})" if code else ""
        text = raw[:200].decode("utf-8", "replace")
        if self._key:
            text = text.replace(self._key, "[key]")
        return f": {one_line(text)}" if text.strip() else ""

    def _session_now(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.spec.max_concurrency + 2))
            self._loop = loop
            self._all = asyncio.Semaphore(self.spec.max_concurrency)
            self._bulk = asyncio.Semaphore(max(1, self.spec.max_concurrency - 1))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed \
                and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None


def _guess_tokens(texts: Sequence[str]) -> int:
    """Tokens a call will be billed, guessed before it is made (about 4 characters a token);
    corrected by the service's own ``usage`` after."""
    return sum(len(text) // 4 + 1 for text in texts)


# -- catalogue checks ------------------------------------------------------------------------------

async def examine(draft: ServedSpec, name: str, api_key: str,
                  references: Sequence[Reference] = ()) -> ServedSpec:
    """Call the service as the catalogue checks a local model: the size of its vectors, a
    batch against each text alone, its norms, a text past its input limit, the references;
    the spec with what was measured, its fingerprint and identity. ModelError names what is
    wrong and what to change."""
    raw = msgspec.structs.replace(draft, normalize=False, dimensions=draft.dimensions)
    model = ServedModel(raw, name, api_key=api_key, bulk_patience_s=CHECK_PATIENCE_S,
                        echo_errors=True)
    try:
        first = await model.aembed([PROBES[1]], live=False)
        size = first.shape[1]
        if draft.dimensions and size != draft.dimensions:
            raise ModelError(f"model {name}: the service gives vectors of {size} numbers, not "
                             f"--dimensions {draft.dimensions}")
        model.spec = raw = msgspec.structs.replace(raw, dimensions=size)
        together = await model.aembed(list(PROBES) * 2, live=False)
        alone = np.concatenate([await model.aembed([text], live=False) for text in PROBES])
        worst = min(_least(together[:len(PROBES)], alone), _least(together[len(PROBES):], alone))
        if worst < BATCH_MIN_COSINE:
            raise ModelError(f"model {name}: a text embedded in a batch differs from the same "
                             f"text alone (cosine {worst:.4f}): the service mixes a batch's "
                             "texts; embedshift batches queries, so it cannot be served")
        norms = np.linalg.norm(alone, axis=1)
        normalize = bool(np.all(np.abs(norms - 1.0) < 1e-3))
        try:
            await model.aembed([LONG_TEXT], live=False)
        except ModelError as exc:
            raise ModelError(f"model {name}: the service refuses a text past its input limit "
                             f"({exc}); documents longer than that would fail to ingest: have "
                             "the service truncate (TEI: --auto-truncate)") from exc
        lines = [f"size: {size} numbers a vector",
                 f"batch vs single: min cosine {worst:.6f} over {len(PROBES)} texts",
                 f"service's own norms: {norms.min():.3f}-{norms.max():.3f} "
                 f"({'normalised' if normalize else 'not normalised'})",
                 f"a text of {len(LONG_TEXT)} characters: answered (cut by the service)"]
        if references:
            lines.append(await _check_references(model, references, name))
    finally:
        await model.aclose()
    vectors = alone / np.clip(norms[:, None], 1e-12, None)
    checked = msgspec.structs.replace(
        raw, normalize=normalize, checks=tuple(lines),
        probes=tuple(tuple(round(float(x), 6) for x in row) for row in vectors),
        fingerprint=fingerprint_of(vectors))
    return msgspec.structs.replace(checked, identity=identity_of(checked))


async def _check_references(model: ServedModel, references: Sequence[Reference],
                            name: str) -> str:
    got = await model.aembed([r.text for r in references], live=False)
    expected = np.array([r.vector for r in references], dtype=np.float32)
    if expected.shape != got.shape:
        raise ModelError(f"model {name}: the reference vectors have {expected.shape[1]} "
                         f"numbers, the service gives {got.shape[1]}")
    cosines = row_cosines(got, expected)
    worst = int(np.argmin(cosines))
    if cosines[worst] < REFERENCE_MIN_COSINE:
        raise ModelError(f"model {name}: {int((cosines < REFERENCE_MIN_COSINE).sum())} of "
                         f"{len(references)} reference texts do not match; worst: text "
                         f"{worst + 1} {references[worst].text[:50]!r} at cosine "
                         f"{cosines[worst]:.4f} (needs {REFERENCE_MIN_COSINE}): the service "
                         "does not serve the model the references came from")
    return f"reference vectors: {len(references)} texts, min cosine {cosines[worst]:.6f}"


def _least(a: Vector, b: Vector) -> float:
    return float(row_cosines(a, b).min())
