"""A deterministic encoder for fast unit tests: no ONNX, no weights, the same contract.

``HashModel`` is a ``TextModel``: each lower-cased word and each of its character trigrams is
hashed (murmur3, as buckets are) to a signed position, the counts are summed and the vector is
normalised. It is deterministic across processes, a text's vector never depends on its batch,
texts sharing words land close together and texts sharing none are near-orthogonal: enough for
the search path and the control logic to be tested for what they do with vectors, not for
retrieval quality. The contract suite in ``tests/contract`` runs it beside the real models.
"""

from __future__ import annotations

from collections.abc import Sequence

import mmh3
import numpy as np

from proxy.models.encoders import Vector


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
