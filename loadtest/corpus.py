"""A synthetic corpus of short distinct documents, for tests, examples and load.

    uv run python -m loadtest.corpus articles.jsonl 2000

writes JSON lines ``{"id": ..., "text": ..., "payload": {...}}``, the format ``embedshift
ingest`` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec

from proxy.ingest.documents import Document

_ADJECTIVES = ["quiet", "rapid", "ancient", "bright", "hidden", "frozen", "gentle", "bitter",
               "golden", "hollow"]
_NOUNS = ["river", "engine", "library", "forest", "protein", "market", "glacier", "theorem",
          "harbor", "enzyme", "comet", "village"]
_VERBS = ["changes", "protects", "measures", "feeds", "explains", "slows", "lights", "shapes"]


def corpus(n: int, start: int = 0) -> list[Document]:
    """``n`` short distinct documents, ids ``start`` .. ``start + n - 1``."""
    documents = []
    for i in range(start, start + n):
        a, b, c = _ADJECTIVES[i % 10], _NOUNS[(i // 10) % 12], _VERBS[(i // 120) % 8]
        d = _NOUNS[(i * 7) % 12]
        documents.append(Document(id=i, text=f"The {a} {b} {c} the {d} (note {i}).",
                                  payload={"n": i, "group": i % 5}))
    return documents


def main() -> None:
    parser = argparse.ArgumentParser(description="write a synthetic JSONL corpus")
    parser.add_argument("file")
    parser.add_argument("count", type=int)
    args = parser.parse_args()
    lines = [msgspec.json.encode(d).decode() for d in corpus(args.count)]
    Path(args.file).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.count} documents to {args.file}")


if __name__ == "__main__":
    main()
