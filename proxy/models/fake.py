"""A deterministic encoder for fast unit tests: no ONNX, no weights, the same contract.

``HashModel`` is a ``TextModel``: each lower-cased word and each of its character trigrams is
hashed (murmur3, as buckets are) to a signed position, the counts are summed and the vector is
normalised. It is deterministic across processes, a text's vector never depends on its batch,
texts sharing words land close together and texts sharing none are near-orthogonal: enough for
the search path and the control logic to be tested for what they do with vectors, not for
retrieval quality. The contract suite in ``tests/contract`` runs it beside the real models.

``FakeEmbeddingsService`` serves a model over the OpenAI embeddings API, with faults on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import mmh3
import numpy as np
from aiohttp import web

from proxy.models.encoders import TextModel, Vector


class HashModel:
    def __init__(self, model_id: str = "embedshift/fake-hash", dimensions: int = 384) -> None:
        self._model_id = model_id
        self._dimensions = dimensions

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed(self, texts: Sequence[str]) -> Vector:
        result = np.zeros((len(texts), self._dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in _features(text):
                code = mmh3.hash(f"{self._model_id}:{feature}", 0, False)
                result[row, code % self._dimensions] += 1.0 if code & (1 << 31) else -1.0
        norms = np.linalg.norm(result, axis=1, keepdims=True)
        normalised: Vector = result / np.clip(norms, 1e-12, None)
        return normalised

    def embed_many(self, texts: Sequence[str], batch_size: int = 32) -> Vector:
        return self.embed(texts)  # no batches to plan: a text's vector is computed alone

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(text.split()) for text in texts]


def _features(text: str) -> list[str]:
    words = text.lower().split()
    return words + [f"#{w[i:i + 3]}" for w in words for i in range(max(1, len(w) - 2))]


class FakeEmbeddingsService:
    """An OpenAI-compatible embeddings API over a ``TextModel`` (default ``HashModel``), with
    faults on demand, for fast tests of served models; the contract suite runs it beside a real
    server (Infinity).

    ``storm(kind, count)`` gives the next ``count`` calls a fault; ``mode`` gives every call
    one until it is set back to None. Kinds: ``"429"`` (with ``Retry-After: retry_after_s``),
    ``"500"``, ``"hang"`` (answers after ``hang_s``), ``"wrong_size"`` (a vector one number
    short), ``"wrong_count"`` (one vector fewer), ``"422"`` (a refusal whose message repeats
    the input, as some servers' validation errors do). ``model`` may be swapped while it serves (a
    provider changing the weights under the same name). With ``key`` set, a call without
    ``Authorization: Bearer KEY`` gets a 401.
    """

    def __init__(self, served_name: str = "fake-embedder", model: TextModel | None = None,
                 key: str = "") -> None:
        self.served_name, self.key = served_name, key
        self.model: TextModel = model or HashModel()
        self.planned: list[str] = []
        self.mode: str | None = None
        self.retry_after_s, self.hang_s = 1.0, 30.0
        self.calls: list[int] = []  # texts per call that was answered (200)
        self.faults: dict[str, int] = {}  # faults given, by kind

    def storm(self, kind: str, count: int) -> None:
        self.planned += [kind] * count

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/embeddings", self._embeddings)
        app.router.add_post("/v1/embeddings", self._embeddings)
        return app

    async def _embeddings(self, request: web.Request) -> web.Response:
        if self.key and request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        body = await request.json()
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if body.get("model") != self.served_name or not isinstance(texts, list) or not texts:
            return web.json_response({"error": {"message": "model not found or no input"}},
                                     status=400)
        fault = self.planned.pop(0) if self.planned else self.mode
        if fault is not None:
            self.faults[fault] = self.faults.get(fault, 0) + 1
        if fault == "429":
            return web.json_response({"error": {"message": "rate limited"}}, status=429,
                                     headers={"Retry-After": f"{self.retry_after_s:g}"})
        if fault == "500":
            return web.json_response({"error": {"message": "internal error"}}, status=500)
        if fault == "422":
            return web.json_response({"error": {
                "message": f"input not valid: {texts[0]!r}", "type": "invalid_request_error",
                "code": 422}}, status=422)
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
        vectors = self.model.embed(texts)
        data = [{"object": "embedding", "index": i,
                 "embedding": vector[:-1].tolist() if fault == "wrong_size" else vector.tolist()}
                for i, vector in enumerate(vectors)]
        if fault == "wrong_count":
            data = data[:-1]
        self.calls.append(len(texts))
        tokens = sum(self.model.count_tokens(texts))
        return web.json_response({"object": "list", "data": data, "model": self.served_name,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
