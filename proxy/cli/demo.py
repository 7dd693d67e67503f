"""The demo: a small outdoor-gear catalogue of the project's own words, loaded for ``serve``.

300 documents are generated deterministically (kinds x variants) and written through ingestion:
all of them into v1's collection and the first 60% into v2's, so the coverage gate has something
to do (the candidate starts capped at 25%) and ``embedshift backfill products`` has the rest to
re-encode.
"""

from __future__ import annotations

from typing import Any

import structlog

from proxy.ingest.documents import DOC_ID_FIELD, TEXT_FIELD, Document, document_of
from proxy.ingest.writer import Ingestor
from proxy.vectors.base import VectorStore
from rollout_rules.model import Rollout, Version

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


async def load_demo(rollout: Rollout, ingestor: Ingestor) -> None:
    """Write the catalogue through ingestion into each version (v2 in part), once, and count
    its coverage then (a restart counts nothing): a version that already holds its share,
    with the source text, is left as it is."""
    documents = [Document(id=d["id"], text=f"{d['title']}. {d['text']}",
                          payload={k: d[k] for k in ("title", "text", "category", "price")})
                 for d in demo_documents()]
    loaded = False
    for version in rollout.versions:
        share = 1.0 if version.name == rollout.stable else V2_SHARE
        chosen = documents[: round(len(documents) * share)]
        if await _holds(ingestor.store, version, len(chosen)):
            continue
        await ingestor.write_version(version, chosen, rollout.versions)
        await ingestor.store.optimize(version.target)
        loaded = True
        log.info("demo_loaded", version=version.name, collection=version.target.collection,
                 documents=len(chosen))
    if loaded:  # a restart counts nothing over what the backfill or an operator recorded
        await ingestor.accounting.update(rollout)


async def _holds(store: VectorStore, version: Version, count: int) -> bool:
    if await store.describe(version.target) is None or await store.count(version.target) < count:
        return False
    first, _ = await store.scroll(version.target, None, 1, [TEXT_FIELD, DOC_ID_FIELD])
    return bool(first) and document_of(first[0].payload) is not None  # written with its text
