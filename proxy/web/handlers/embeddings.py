"""``POST /v1/embeddings``: OpenAI's embeddings API, where ``model`` names an alias.

Each input is embedded by the model of the version the caller is routed to: the ``user`` field
(OpenAI's own) or the ``x-qdrant-route-affinity`` header is the sticky key, as ``user_id`` is for
a search. The answer names the model that made the vectors (``model``) and the version
(``X-Embedshift-Model-Version``); ``encoding_format`` may be ``float`` or ``base64`` (little-endian
float32, what the openai client asks for by default).
"""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from proxy.http import random_key
from proxy.serving.embed import Embedded
from proxy.web.auth import bearer, check_token
from proxy.web.bodies import read_json
from proxy.web.errors import json_response
from proxy.web.keys import EMBEDDER, SETTINGS
from rollout_rules.errors import RuleError

VERSION_HEADER = "X-Embedshift-Model-Version"
AFFINITY_HEADER = "x-qdrant-route-affinity"


class EmbeddingsRequest(msgspec.Struct, frozen=True, kw_only=True):
    """OpenAI's embeddings request (other fields its clients send are ignored)."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class Embedding(msgspec.Struct, frozen=True, kw_only=True):
    object: str
    index: int
    embedding: list[float] | str


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsAnswer(msgspec.Struct, frozen=True, kw_only=True):
    object: str
    data: list[Embedding]
    model: str
    usage: Usage


async def embeddings(request: web.Request) -> web.Response:
    """With ``embeddings_key`` set, callers need it (as OpenAI's clients send their key); each
    client address embeds at most ``embeddings_per_minute`` texts a minute on this proxy."""
    key = request.app[SETTINGS].embeddings_key
    if key:
        check_token(bearer(request), key, off="EMBEDSHIFT_EMBEDDINGS_KEY",
                    scheme="'Authorization: Bearer <key>' header")
    body = await read_json(request, EmbeddingsRequest)
    texts = [body.input] if isinstance(body.input, str) else body.input
    request.app[EMBEDDER].admit(request.remote or "local", len(texts))
    user = body.user or request.headers.get(AFFINITY_HEADER)
    embedded = await request.app[EMBEDDER].embed(body.model, texts, user, random_key())
    if body.dimensions is not None and body.dimensions != embedded.version.dimensions:
        raise RuleError("dimensions", f"{embedded.version.model} makes "
                                      f"{embedded.version.dimensions}; it cannot be changed")
    response = json_response(_answer(embedded, texts, body.encoding_format))
    response.headers[VERSION_HEADER] = embedded.version.name
    return response


def _answer(embedded: Embedded, texts: list[str], encoding: str) -> EmbeddingsAnswer:
    words = sum(len(text.split()) for text in texts)  # a rough count: nothing is billed here
    return EmbeddingsAnswer(
        object="list", model=embedded.version.model, usage=Usage(prompt_tokens=words,
                                                                 total_tokens=words),
        data=[Embedding(object="embedding", index=n, embedding=_encoded(vector, encoding))
              for n, vector in enumerate(embedded.vectors)])


def _encoded(vector: list[float], encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
