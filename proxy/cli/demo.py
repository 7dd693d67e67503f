"""The demo: a small outdoor-gear catalogue of the project's own words, loaded for ``serve``.

300 documents are generated deterministically (kinds x variants). All of them go into v1's
collection and the first 60% into v2's, so the coverage gate has something to do: the candidate
starts capped at 25% until the rest is backfilled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog

from proxy.models.encoders import TextModel
from proxy.vectors.base import PointIn, VectorStore
from rollout_rules.model import Rollout

log = structlog.get_logger("embedshift.demo")
V2_SHARE = 0.6

_KINDS = [
    ("hiking boots", "footwear", "for long days on rocky trails"),
    ("trail running shoes", "footwear", "for fast runs on muddy paths"),
    ("rain jacket", "clothing", "that keeps you dry in a downpour"),
    ("down parka", "clothing", "for bitter cold winter mornings"),
    ("fleece pullover", "clothing", "as a warm middle layer"),
    ("merino base layer", "clothing", "that stays fresh for days"),
    ("backpacking tent", "shelter", "for two people and their gear"),
    ("ultralight tarp", "shelter", "for minimalist overnight trips"),
    ("sleeping bag", "sleep", "rated for nights below freezing"),
    ("sleeping pad", "sleep", "that insulates you from cold ground"),
    ("camp stove", "cooking", "that boils water in three minutes"),
    ("cook pot set", "cooking", "that nests into a compact bundle"),
    ("water filter", "water", "that removes bacteria from stream water"),
    ("insulated bottle", "water", "that keeps coffee hot all day"),
    ("headlamp", "lighting", "for night hikes and early starts"),
    ("camp lantern", "lighting", "that lights up the whole campsite"),
    ("daypack", "packs", "for short hikes with snacks and a layer"),
    ("expedition backpack", "packs", "that carries a week of supplies"),
    ("trekking poles", "accessories", "that save your knees on descents"),
    ("GPS watch", "electronics", "that tracks routes and heart rate"),
    ("solar charger", "electronics", "that keeps a phone charged off grid"),
    ("climbing harness", "climbing", "for sport routes at the crag"),
    ("dynamic rope", "climbing", "that absorbs the force of a fall"),
    ("bike helmet", "cycling", "with ventilation for hot climbs"),
    ("kayak paddle", "paddling", "that is light enough for all-day trips"),
    ("life jacket", "paddling", "that does not restrict your stroke"),
    ("ski goggles", "snow", "that stay clear in flat light"),
    ("snowshoes", "snow", "for deep powder and steep slopes"),
    ("first aid kit", "safety", "for blisters, cuts and sprains"),
    ("emergency bivy", "safety", "that reflects body heat in an emergency"),
]
_VARIANTS = [
    ("budget", "an affordable", "basic materials that still hold up", 39),
    ("pro", "a professional-grade", "reinforced seams and a lifetime warranty", 249),
    ("ultralight", "a featherweight", "thin fabrics that shave every gram", 179),
    ("rugged", "a heavy-duty", "abrasion-resistant panels for rough use", 149),
    ("women's", "a women's-fit", "a shape designed around a narrower frame", 129),
    ("kids'", "a children's", "bright colours and adjustable sizing", 49),
    ("eco", "a recycled", "materials made from reclaimed plastic bottles", 119),
    ("winter", "a cold-weather", "extra insulation for sub-zero conditions", 199),
    ("compact", "a packable", "a design that folds down to pocket size", 89),
    ("classic", "a timeless", "a proven design unchanged for decades", 99),
]


def demo_documents() -> list[dict[str, Any]]:
    documents = []
    for k, (kind, category, purpose) in enumerate(_KINDS):
        for v, (label, article, feature, price) in enumerate(_VARIANTS):
            documents.append({
                "id": k * len(_VARIANTS) + v + 1,
                "title": f"{label.capitalize()} {kind}",
                "text": f"{article.capitalize()} {kind} {purpose}, with {feature}.",
                "category": category,
                "price": price + 7 * k,
            })
    return documents


async def load_demo(rollout: Rollout, models: Mapping[str, TextModel], store: VectorStore
                    ) -> dict[str, tuple[int, int]]:
    """Encode the catalogue into each version's collection (v2 partly); idempotent.
    Returns each version's (covered, total) for the coverage gate."""
    documents = demo_documents()
    coverage = {}
    for version in rollout.versions:
        share = 1.0 if version.name == rollout.stable else V2_SHARE
        chosen = documents[: round(len(documents) * share)]
        info = await store.describe(version.target)
        if info is None or info.points < len(chosen):
            await store.ensure_collection(version.target, version)
            model = models[version.name]
            texts = [f"{d['title']} {d['text']}" for d in chosen]
            vectors = await asyncio.to_thread(model.embed_many, texts)
            points = [PointIn(d["id"], vector.tolist(), {k: d[k] for k in
                                                         ("title", "text", "category", "price")})
                      for d, vector in zip(chosen, vectors, strict=True)]
            await store.upsert(version.target, points)
            await store.optimize(version.target)
            log.info("demo_loaded", version=version.name, collection=version.target.collection,
                     documents=len(points))
        coverage[version.name] = (len(chosen), len(documents))
    return coverage
