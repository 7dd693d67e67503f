"""Behaviour checks a model passes before it is catalogued: read by what it does, not its shape.

Each check runs the loaded model and either returns what it measured or raises a ModelError
naming what is wrong and the setting that fixes it:

- batch: texts of very different lengths encoded together give, text by text, the vectors each
  gives alone (catches pooling over padding, broadcast mistakes, a graph that mixes rows);
- norms: the model's own vector norms, against what its config says about normalisation;
- max length: a text longer than the max length is cut to it, and the graph runs at that length
  (catches a max length past the model's positions);
- reference: with ``--expect``, each given text matches its given vector to cosine >= 0.9999.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from proxy.models.encoders import OnnxModel, Vector
from rollout_rules.errors import ModelError

MIN_COSINE = 0.9999
PROBES = (
    "ok",
    "A short query about hiking boots",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch, "
    "wondering whether the weather will hold long enough to bring the hay in before dark.",
    "Vector search answers with the nearest neighbours of a query's embedding; an embedding "
    "means something only inside the model that made it, so upgrading the model means "
    "re-encoding every document into a new collection and moving traffic over with care, "
    "step by step, ready to roll back at the first sign that answers got worse.",
    "données, naïve café — 東京 😀",
)


class Reference(msgspec.Struct, frozen=True):
    text: str
    vector: list[float]


@dataclass(frozen=True)
class Measured:
    """What the checks saw, for the user to read and the manifest to keep."""

    batch_min_cosine: float
    raw_norms: tuple[float, float]
    max_length_tokens: int
    reference_min_cosine: float | None = None
    references: int = 0

    def lines(self) -> list[str]:
        lines = [f"batch vs single: min cosine {self.batch_min_cosine:.6f} over "
                 f"{len(PROBES)} texts of different lengths",
                 f"model's own norms: {self.raw_norms[0]:.3f}-{self.raw_norms[1]:.3f}",
                 f"max length: a longer text is cut to {self.max_length_tokens} tokens"]
        if self.reference_min_cosine is not None:
            lines.append(f"reference vectors: {self.references} texts, min cosine "
                         f"{self.reference_min_cosine:.6f}")
        return lines


def run_checks(model: OnnxModel, expect: Path | None = None) -> Measured:
    batch = check_batch(model, PROBES)
    norms = measure_norms(model)
    longest = check_max_length(model)
    if expect is None:
        return Measured(batch, norms, longest)
    references = read_references(expect, model.dimensions)
    worst = check_references(model, references, expect)
    return Measured(batch, norms, longest, worst, len(references))


def check_batch(model: OnnxModel, texts: Sequence[str]) -> float:
    """The least cosine between a text's vector in a mixed batch and alone."""
    try:
        together = model.embed(list(texts) * 2)[: len(texts)]
        # embed() groups by length; run the whole batch as one padded run as well
        padded = _one_run(model, texts)
    except ModelError as exc:
        raise ModelError(f"{model.folder.name}: a batch of texts of different lengths fails "
                         f"({exc}); check pooling (--pooling) and the graph's output") from exc
    alone = np.stack([model.embed([text])[0] for text in texts])
    cosines = np.minimum(row_cosines(together, alone), row_cosines(padded, alone))
    worst = int(np.argmin(cosines))
    if cosines[worst] < MIN_COSINE:
        raise ModelError(f"{model.folder.name}: a text encoded in a batch differs from the same"
                         f" text alone (cosine {cosines[worst]:.4f} for {texts[worst][:40]!r}):"
                         " padding leaks into its vector; check pooling (--pooling) and that "
                         "the graph takes attention_mask")
    return float(cosines.min())


def _one_run(model: OnnxModel, texts: Sequence[str]) -> Vector:
    encodings = model.tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    out = model.pooled(ids, mask)
    if model.manifest.normalize:
        out = out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out


def measure_norms(model: OnnxModel) -> tuple[float, float]:
    """The range of the model's own vector norms (before embedshift normalises any)."""
    encodings = [model.tokenizer.encode(text) for text in PROBES]
    norms = [float(np.linalg.norm(model.pooled(np.array([e.ids], dtype=np.int64),
                                                np.array([e.attention_mask], dtype=np.int64))))
             for e in encodings]
    return min(norms), max(norms)


def check_max_length(model: OnnxModel) -> int:
    """A text far longer than the max length is cut to it, and the graph runs at that length."""
    limit = model.manifest.max_length
    long_text = " ".join(["embedding"] * (limit * 2 + 16))
    tokens = len(model.tokenizer.encode(long_text).ids)
    if tokens != limit:
        raise ModelError(f"{model.folder.name}: a text of {limit * 2 + 16} words came out as "
                         f"{tokens} tokens, not the max length {limit}: the tokenizer does not "
                         "truncate as configured; pass --max-length N")
    try:
        model.embed([long_text])
    except ModelError as exc:
        raise ModelError(f"{model.folder.name}: the graph fails at the max length {limit} "
                         f"({exc}); pass a smaller --max-length") from exc
    return tokens


def read_references(path: Path, dimensions: int) -> list[Reference]:
    """``--expect`` lines: {"text": ..., "vector": [...]}; errors name the line. Every vector
    has ``dimensions`` numbers (0: as many as the first line's)."""
    references: list[Reference] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ModelError(f"--expect {path}: cannot read it: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            reference = msgspec.json.decode(line, type=Reference)
        except msgspec.DecodeError as exc:
            raise ModelError(f"{path}:{number}: {exc} (each line is "
                             '{"text": "...", "vector": [...]})') from exc
        size = dimensions or (len(references[0].vector) if references else
                              len(reference.vector))
        if len(reference.vector) != size:
            other = "the model produces" if dimensions else "the first line's has"
            raise ModelError(f"{path}:{number}: the vector has {len(reference.vector)} "
                             f"dimensions, {other} {size}")
        references.append(reference)
    if not references:
        raise ModelError(f"--expect {path}: no reference lines")
    return references


def check_references(model: OnnxModel, references: Sequence[Reference], path: Path) -> float:
    vectors = model.embed([r.text for r in references])
    expected = np.array([r.vector for r in references], dtype=np.float32)
    cosines = row_cosines(vectors, expected)
    worst = int(np.argmin(cosines))
    if cosines[worst] < MIN_COSINE:
        raise ModelError(f"{path}: {int((cosines < MIN_COSINE).sum())} of {len(references)} "
                         f"texts do not match; worst: text {worst + 1} "
                         f"{references[worst].text[:50]!r}"
                         f" at cosine {cosines[worst]:.4f} (needs {MIN_COSINE}): the model is not"
                         " read as the reference computes it (pooling, normalisation, max length "
                         "or the ONNX file)")
    return float(cosines.min())


def row_cosines(a: Vector, b: Vector) -> Vector:
    """The cosine of each row of ``a`` with the same row of ``b``."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    result: Vector = ((a * b).sum(axis=1) / np.clip(norms, 1e-12, None)).astype(np.float32)
    return result


INT8_MIN_COSINE = 0.95
"""The least cosine an int8 variant's vector may have with its fp32 model's, text by text.
On the probe and reference texts all-MiniLM-L6-v2's int8 variant keeps 0.9695 (its SciFact
nDCG@10 moves 0.004); an MPNet whose int8 fell to 0.76 lost 0.0071 nDCG@10 on a subset."""


def check_int8(int8: OnnxModel, fp32: OnnxModel, *, tolerance: float = INT8_MIN_COSINE,
               accept_loss: bool = False, expect: Path | None = None) -> str:
    """Judge an int8 variant against its fp32 model (and the references, when given), text
    by text, each alone (int8 vectors move with their batch): the line the manifest keeps;
    ModelError naming the worst text and its cosine below ``tolerance`` unless accepted."""
    texts = list(PROBES) + _reference_texts(expect, fp32.dimensions)
    quantised = np.stack([int8.embed([text])[0] for text in texts])
    cosines = row_cosines(quantised, np.stack([fp32.embed([text])[0] for text in texts]))
    worst = int(np.argmin(cosines))
    said = (f"int8 against fp32: min cosine {cosines[worst]:.4f} over {len(texts)} texts "
            f"(tolerance {tolerance:g})")
    if expect is not None:
        references = read_references(expect, fp32.dimensions)
        reference = float(row_cosines(quantised[len(PROBES):], np.array(
            [r.vector for r in references], dtype=np.float32)).min())
        said += f"; reference vectors min cosine {reference:.4f}"
    if cosines[worst] >= tolerance:
        return said
    if accept_loss:
        return said + ": below it, accepted (--accept-loss)"
    raise ModelError(f"{fp32.folder.name}: the int8 variant drifts from fp32: cosine "
                     f"{cosines[worst]:.4f} for {texts[worst][:40]!r}, under the tolerance "
                     f"{tolerance:g} ({said}); keep fp32, or accept the loss with --accept-loss")


def _reference_texts(expect: Path | None, dimensions: int) -> list[str]:
    return [] if expect is None else [r.text for r in read_references(expect, dimensions)]
