"""A synthetic corpus of short distinct documents, for tests, examples and load.

    uv run python -m loadtest.corpus articles.jsonl 2000 [--golden golden/] [--string-ids]

writes JSON lines ``{"id": ..., "text": ..., "payload": {...}}``, the format ``embedshift
ingest`` reads; with ``--golden``, a BEIR-layout golden set over it (every tenth document asked
for in other words: ``queries.jsonl`` and ``qrels/test.tsv``) for ``embedshift eval --alias``.
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


def corpus(n: int, start: int = 0, string_ids: bool = False) -> list[Document]:
    """``n`` short distinct documents, ids ``start`` .. ``start + n - 1`` (or, with
    ``string_ids``, ``"note-00042"`` and so on, as most applications' ids are)."""
    documents = []
    for i in range(start, start + n):
        a, b, c = _ADJECTIVES[i % 10], _NOUNS[(i // 10) % 12], _VERBS[(i // 120) % 8]
        d = _NOUNS[(i * 7) % 12]
        documents.append(Document(id=f"note-{i:05d}" if string_ids else i,
                                  text=f"The {a} {b} {c} the {d} (note {i}).",
                                  payload={"n": i, "group": i % 5}))
    return documents


def golden(documents: list[Document]) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Every tenth document asked for in other words, and the document that answers it."""
    chosen = documents[::10]
    queries = {f"q{d.id}": d.text.replace("The ", "").replace("(note", "number").rstrip(").")
               for d in chosen}
    return queries, {f"q{d.id}": {str(d.id): 1} for d in chosen}


def write_golden(folder: Path, documents: list[Document]) -> None:
    queries, qrels = golden(documents)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "queries.jsonl").write_text("".join(
        msgspec.json.encode({"_id": q, "text": t}).decode() + "\n" for q, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{score}\n" for q, rel in qrels.items() for d, score in rel.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description="write a synthetic JSONL corpus")
    parser.add_argument("file")
    parser.add_argument("count", type=int)
    parser.add_argument("--golden", help="also write a golden set (BEIR layout) to this folder")
    parser.add_argument("--string-ids", action="store_true",
                        help='ids like "note-00042" instead of integers')
    args = parser.parse_args()
    documents = corpus(args.count, string_ids=args.string_ids)
    lines = [msgspec.json.encode(d).decode() for d in documents]
    Path(args.file).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.count} documents to {args.file}")
    if args.golden:
        write_golden(Path(args.golden), documents)
        print(f"wrote {len(documents[::10])} judged queries to {args.golden}")


if __name__ == "__main__":
    main()
