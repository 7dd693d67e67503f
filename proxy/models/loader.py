"""Encoders for the versions a proxy serves: each model loaded once, off the event loop.

``ModelCache`` holds one loaded model per model id and quantisation, whoever asked first (the
demo at start-up, the request path, later ingestion); every version is checked against it, cached
or not: a version that declares other dimensions than its model produces is a ModelError.
``Encoders`` wraps those models into one ``QueryEncoder`` per model, quantisation and query prefix
(so versions naming the same three share one vector cache) and loads versions declared later in
the background, as their rule arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import structlog

from proxy.models.calling import SharedLimits
from proxy.models.catalog import open_model
from proxy.models.encoders import Encoder, QueryEncoder, RemoteModel, TextModel
from proxy.tasks import cancel_and_wait
from rollout_rules.errors import ModelError
from rollout_rules.model import Rollout, Version

log = structlog.get_logger("embedshift.models")
EncoderKey = tuple[str, str, str]


def encoder_key(version: Version) -> EncoderKey:
    """Versions that share a model, quantisation and prefix share one encoder (and cache)."""
    return version.model, version.quantization, version.query_prefix


class ModelCache:
    def __init__(self, models_dir: Path, load: Callable[[Version], TextModel] | None = None,
                 threads: int = 1, limits: SharedLimits | None = None) -> None:
        """``load`` reads a version's model (default: its ONNX folder, built if need be, with
        ``threads`` intra-op threads; the request path runs several such models in parallel;
        a served model's calls share ``limits`` with other processes)."""
        self.models_dir = models_dir
        self._load = load or (lambda v: open_model(v, models_dir, threads, limits=limits))
        self._models: dict[tuple[str, str], TextModel] = {}
        self._lock = asyncio.Lock()

    async def get(self, version: Version) -> TextModel:
        key = (version.model, version.quantization)
        async with self._lock:
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = await asyncio.to_thread(self._load, version)
                log.info("model_loaded", model=version.model,
                         quantization=version.quantization)
        if model.dimensions != version.dimensions:
            raise ModelError(f"version {version.name} declares {version.dimensions} dimensions,"
                             f" its model {version.model} produces {model.dimensions}")
        return model

    def served(self) -> dict[str, RemoteModel]:
        """The served models loaded, by the name rules give them."""
        return {name: model for (name, _), model in self._models.items()
                if isinstance(model, RemoteModel)}

    async def aclose(self) -> None:
        """Close the served models' connections (local models hold none)."""
        for model in self.served().values():
            await model.aclose()


class Encoders:
    def __init__(self, models: ModelCache, executor: Executor, cache_size: int) -> None:
        self.models, self.executor, self.cache_size = models, executor, cache_size
        self.by_key: dict[EncoderKey, Encoder] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self, rollout: Rollout) -> dict[str, str]:
        """An encoder for every version of the rollout that can have one; returns why each
        other version cannot (a missing folder, wrong dimensions), by version name."""
        failed = {}
        for version in rollout.versions:
            try:
                model = await self.models.get(version)
            except ModelError as exc:
                failed[version.name] = str(exc)
                continue
            if encoder_key(version) not in self.by_key:
                self.by_key[encoder_key(version)] = self._encoder(model, version)
        return failed

    def _encoder(self, model: TextModel, version: Version) -> QueryEncoder:
        if isinstance(model, RemoteModel):  # batches and calls at once as the service allows
            return QueryEncoder(model, self.executor, query_prefix=version.query_prefix,
                                cache_size=self.cache_size, max_batch=model.max_batch,
                                max_inflight=model.max_concurrency, max_wait_ms=2.0)
        return QueryEncoder(model, self.executor, query_prefix=version.query_prefix,
                            cache_size=self.cache_size)

    def schedule(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (preparing a rule that arrived while serving)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
