"""Text to vectors with ONNX Runtime on the CPU, never blocking the event loop.

``OnnxModel`` is one model folder loaded: the fast tokenizer (truncating at the model's max length,
padding to the longest text in the batch) and an ONNX Runtime session with explicit thread counts.
It is synchronous and thread-safe.

``QueryEncoder`` is what the request path awaits, over any ``TextModel`` (an ``OnnxModel``, or the
deterministic fake in ``proxy.models.fake``). It takes text already checked and normalised by
``clean_text`` (the request path cleans once, before its result cache), answers repeats from an
LRU cache keyed by that text (one cache per encoder: model, quantisation and query prefix, shared
by every version that names them), shares one computation between identical texts in flight, and
coalesces concurrent requests into one model run: a batch leaves when it is full, when
``max_wait_ms`` has passed since its first text, or, while every worker is busy, as soon as one
frees up, so batches grow exactly when load does.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import msgspec
import numpy as np
import onnxruntime as ort
from cachetools import LRUCache
from numpy.typing import NDArray
from tokenizers import Encoding, Tokenizer

from proxy.models.manifest import Manifest, read_manifest
from rollout_rules.errors import EncoderInputError, ModelError

Vector = NDArray[np.float32]
MAX_CHARS = 8192


class TextModel(Protocol):
    """A model that turns texts into vectors, synchronously (run it off the event loop)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vector:
        """(len(texts), dimensions) float32; a text's vector does not depend on its batch."""
        ...

    def embed_many(self, texts: Sequence[str], batch_size: int = 32) -> Vector:
        """As ``embed``, for a corpus: in batches of ``batch_size``."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """The tokens the model reads of each text (after truncation at its max length)."""
        ...


@runtime_checkable
class RemoteModel(TextModel, Protocol):
    """A model whose work is a call to a service (``proxy.models.served``): awaited on the
    event loop, no thread; ``live`` calls (queries) go first and give up quickly."""

    @property
    def max_batch(self) -> int: ...

    @property
    def max_concurrency(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    async def aembed(self, texts: Sequence[str], *, live: bool) -> Vector: ...

    async def drift(self) -> float:
        """The least cosine of its probe texts' vectors now against when it was catalogued."""
        ...

    def figures(self) -> dict[str, float]:
        """Its calls so far: ok, retried, failed, rate_limited, texts, tokens, circuit_open."""
        ...

    def bulk_capacity(self, tokens_per_text: float) -> tuple[int, float | None]:
        """Bulk calls it may take at once, and the texts per second its rate limits leave
        bulk work (None: no limit known)."""
        ...

    async def aclose(self) -> None: ...


async def embed_off_loop(model: TextModel, texts: Sequence[str], *, live: bool,
                         executor: Executor | None = None) -> Vector:
    """A model's vectors without blocking the event loop: a served model's call awaited, a
    local model run in ``executor`` (default: a thread of asyncio's)."""
    if isinstance(model, RemoteModel):
        return await model.aembed(texts, live=live)
    run = model.embed if live else model.embed_many
    return await asyncio.get_running_loop().run_in_executor(executor, run, list(texts))


class Encoder(Protocol):
    """What the search path needs of an encoder: QueryEncoder over a real or a fake model."""

    dimensions: int

    async def encode(self, text: str) -> tuple[Vector, bool]:
        """The vector of a text from ``clean_text``, and whether it came from the cache."""
        ...


def clean_text(text: object) -> str:
    """The text with whitespace normalised, or EncoderInputError saying what is wrong with it."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EncoderInputError(f"text is not valid UTF-8 (byte {exc.start})") from exc
    if not isinstance(text, str):
        raise EncoderInputError(f"text must be a string, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncoderInputError(f"text is not valid UTF-8 (a lone surrogate at character "
                                f"{exc.start})") from exc
    if len(text) > MAX_CHARS:
        raise EncoderInputError(f"text is {len(text)} characters; the limit is {MAX_CHARS} "
                                "(the model reads only its first few hundred tokens anyway)")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise EncoderInputError("text is empty")
    return cleaned


class OnnxModel:
    def __init__(self, folder: Path, threads: int = 1, manifest: Manifest | None = None) -> None:
        """A catalogued folder (its manifest) or, with ``manifest``, a folder being read for the
        first time; a manifest with 0 dimensions takes what the graph produces."""
        self.folder = folder
        self.manifest: Manifest = manifest or read_manifest(folder)
        self.tokenizer = _tokenizer(folder / "tokenizer.json", self.manifest.max_length)
        self.session = _session(folder / "model.onnx", threads)
        self._inputs = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._inputs
        if missing:
            raise ModelError(f"{folder / 'model.onnx'} lacks inputs {sorted(missing)}")
        self.output = self.manifest.output or self._default_output()
        self._rank = 2 if self.manifest.pooling == "none" else 3
        self._check_rank()
        probe = self.tokenizer.encode("dimension check")
        produced = self.pooled(np.array([probe.ids], dtype=np.int64),
                               np.array([probe.attention_mask], dtype=np.int64)).shape[1]
        if self.manifest.dimensions == 0:
            self.manifest = msgspec.structs.replace(self.manifest, dimensions=produced)
        if produced != self.dimensions:
            raise ModelError(f"{folder}: model.onnx produces {produced} dimensions, the "
                             f"manifest says {self.dimensions}")

    def _check_rank(self) -> None:
        """The output's rank must fit the pooling: pooling an already-pooled output broadcasts
        into wrong vectors (or crashes only for some batch sizes)."""
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        if self.output not in shapes:
            raise ModelError(f"{self.folder / 'model.onnx'} has no output {self.output!r} "
                             f"(it has {', '.join(shapes)})")
        rank = len(shapes[self.output] or ())
        if rank == self._rank:
            return
        if rank == 2:
            raise ModelError(f"{self.folder.name}: output {self.output!r} is already one vector"
                             f" per text (batch, dims), so pooling {self.manifest.pooling!r} "
                             "over it would be wrong: use pooling none (--pooling none)")
        raise ModelError(f"{self.folder.name}: output {self.output!r} has rank {rank}, not "
                         "(batch, dims): give one vector per text or pool the token vectors "
                         "(--pooling mean|cls|max|lasttoken)")

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def dimensions(self) -> int:
        return self.manifest.dimensions

    def embed(self, texts: Sequence[str]) -> Vector:
        """(len(texts), dimensions) float32, in as few ONNX runs as keep padding small.

        The model is compute-bound, so padding is pure waste: texts are ordered by length and cut
        into runs whose padded size stays within ``PADDING_BUDGET`` of their real tokens.
        """
        return self._embed_encodings(self.tokenizer.encode_batch(list(texts)))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Real tokens by the attention mask: the tokenizer pads every encoding of a batch
        (to the longest, or to the max length), and padding is neither read nor billed."""
        return [sum(e.attention_mask) for e in self.tokenizer.encode_batch(list(texts))]

    def _embed_encodings(self, encodings: Sequence[Encoding]) -> Vector:
        lengths = [sum(e.attention_mask) for e in encodings]
        result = np.empty((len(encodings), self.dimensions), dtype=np.float32)
        for group in padding_groups(lengths):
            longest = lengths[group[-1]]
            ids = np.array([encodings[i].ids[:longest] for i in group], dtype=np.int64)
            mask = np.array([encodings[i].attention_mask[:longest] for i in group],
                            dtype=np.int64)
            result[group] = self._run(ids, mask)
        return result

    def _run(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> Vector:
        out = self.pooled(ids, mask)
        if self.manifest.normalize:
            out = out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(out, dtype=np.float32)

    def pooled(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> Vector:
        """One vector per row, pooled but not normalised (what the model itself gives)."""
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        try:
            (out,) = self.session.run([self.output], feeds)
        except Exception as exc:
            raise ModelError(f"{self.folder.name}: inference failed: {exc}") from exc
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != self._rank or out.shape[0] != ids.shape[0]:
            raise ModelError(f"{self.folder.name}: output {self.output!r} came back with shape "
                             f"{out.shape} for a batch of {ids.shape[0]}: not what pooling "
                             f"{self.manifest.pooling!r} reads")
        return pool(out, mask, self.manifest.pooling)

    def embed_many(self, texts: Sequence[str], batch_size: int = 32) -> Vector:
        """Many texts (a corpus), ``batch_size`` at a time in order of real length (the tokenizer
        pads every encoding to the longest, so the attention mask tells the real length), each
        text tokenized once."""
        encodings = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([sum(e.attention_mask) for e in encodings], kind="stable")
        result = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = order[start : start + batch_size]
            result[chunk] = self._embed_encodings([encodings[i] for i in chunk])
        return result

    def _default_output(self) -> str:
        """The output a manifest leaves open: with pooling "none" the first (batch, dims)
        output (a graph that pools itself), else the first (batch, tokens, dims) one."""
        wanted = 2 if self.manifest.pooling == "none" else 3
        outputs = self.session.get_outputs()
        for output in outputs:
            if len(output.shape or ()) == wanted:
                return str(output.name)
        if wanted == 2 and outputs:  # _check_rank explains what to do instead
            return str(outputs[0].name)
        raise ModelError(f"{self.folder / 'model.onnx'} has no (batch, tokens, dims) output "
                         "to pool (a graph that pools itself: --pooling none; or name the "
                         "output: --output NAME)")


def pool(out: NDArray[np.float32], mask: NDArray[np.int64], pooling: str) -> Vector:
    """Token vectors (batch, tokens, dims) to one per text, over the tokens the mask keeps, as
    sentence-transformers pools; "none": ``out`` already is one per text."""
    if pooling == "none":
        return out
    keep = mask[..., None].astype(np.float32)
    pooled: Vector
    if pooling == "mean":
        pooled = (out * keep).sum(axis=1) / np.clip(keep.sum(axis=1), 1e-9, None)
    elif pooling == "cls":
        pooled = out[:, 0]
    elif pooling == "max":
        pooled = np.where(keep > 0, out, np.float32(-1e9)).max(axis=1)
    else:  # lasttoken, with right padding: the last token the mask keeps
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        pooled = out[np.arange(out.shape[0]), last]
    return pooled


PADDING_BUDGET = 0.15


def padding_groups(lengths: Sequence[int], budget: float = PADDING_BUDGET) -> list[list[int]]:
    """Indices grouped in length order so that each group's padded tokens (members x longest)
    exceed its real tokens by at most ``budget``."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    real = 0
    for index in order:
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * lengths[index] <= \
                (real + lengths[index]) * (1 + budget):
            group.append(index)
            real += lengths[index]
        else:
            groups.append([index])
            real = lengths[index]
    return groups


class QueryEncoder:
    """Async, cached, micro-batched queries for one model, quantisation and query prefix."""

    def __init__(self, model: TextModel, executor: Executor, *, query_prefix: str = "",
                 cache_size: int = 10_000, max_batch: int = 32, max_wait_ms: float = 1.0,
                 max_inflight: int = 2) -> None:
        self.model = model
        self.dimensions = model.dimensions
        self.executor = executor
        self.query_prefix = query_prefix
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self.max_inflight = max_inflight
        self.cache: LRUCache[str, Vector] | None = LRUCache(cache_size) if cache_size else None
        self.hits = self.misses = self.batches = self.batched_texts = 0
        self._waiting: dict[str, asyncio.Future[Vector]] = {}
        self._queue: list[str] = []
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[Vector]] = set()  # referenced until they finish
        self._remote = model if isinstance(model, RemoteModel) else None  # asked once

    async def encode(self, text: str) -> tuple[Vector, bool]:
        if not isinstance(text, str):  # a batch of it would fail in a timer callback, unseen
            raise EncoderInputError(f"text must be a string, not {type(text).__name__}")
        key = text  # cleaned by the caller: see clean_text
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            self.hits += 1
            return cached, True
        self.misses += 1
        future = self._waiting.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[key] = future
            self._queue.append(key)
            self._schedule()
        return await asyncio.shield(future), False

    def _schedule(self) -> None:
        if len(self._queue) >= self.max_batch or self.max_wait_s <= 0:
            self._dispatch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._dispatch)

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self._queue and self._inflight < self.max_inflight:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            self._inflight += 1
            self.batches += 1
            self.batched_texts += len(batch)
            texts = [self.query_prefix + key for key in batch]
            run: asyncio.Future[Vector]
            if self._remote is not None:
                run = loop.create_task(self._remote.aembed(texts, live=True))
                self._running.add(run)
                run.add_done_callback(self._running.discard)
            else:
                run = loop.run_in_executor(self.executor, self.model.embed, texts)
            run.add_done_callback(functools.partial(self._finished, batch))

    def _finished(self, keys: list[str], done: asyncio.Future[Vector]) -> None:
        self._inflight -= 1
        error = (ModelError("the encoding was cancelled (the proxy is stopping)")
                 if done.cancelled() else done.exception())
        vectors: Any = None if error is not None else done.result()
        for i, key in enumerate(keys):
            future = self._waiting.pop(key)
            if error is not None:
                future.set_exception(error)
                continue
            vector = vectors[i]
            vector.flags.writeable = False  # shared with the cache and every waiter
            if self.cache is not None:
                self.cache[key] = vector
            future.set_result(vector)
        if self._queue:
            self._dispatch()  # what arrived while every worker was busy leaves now, as a batch


def _tokenizer(path: Path, max_length: int) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelError(f"{path} is not a valid tokenizer.json: {exc}") from exc
    pad = tokenizer.padding or {}
    # Shipped tokenizer.json files pad every text to a fixed 128 and truncate at 128: undo both.
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    tokenizer.enable_padding(pad_id=int(pad.get("pad_id", 0)),
                             pad_token=str(pad.get("pad_token", "[PAD]")))
    return tokenizer


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # shape-merge warnings from exported graphs are noise
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path} cannot be loaded by onnxruntime: {exc}") from exc


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))
