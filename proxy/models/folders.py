"""Reading a model folder a user brings: every setting that changes a vector decided once, with
where it came from, or a ModelError that names the flag settling what the folder leaves open.

Three shapes are read:

- our own manifest (``embedshift-model.json``) beside ``model.onnx`` and ``tokenizer.json``;
- a sentence-transformers folder, old (2.x-3.x: ``sentence_bert_config.json``,
  ``word_embedding_dimension``, ``sentence_transformers.models.Normalize``) or current (5.x-6.x:
  ``embedding_dimension``, the max length in ``tokenizer_config.json``, modules under
  ``sentence_transformers.base.modules``), with its ONNX graph as ``model.onnx`` or
  ``onnx/model*.onnx`` (sentence-transformers' own ``backend="onnx"`` export), or, for the
  BERT family, only ``model.safetensors``, built into a graph here without torch;
- a Hugging Face ONNX folder with no sentence-transformers files, where the flags say how to pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from proxy.models.manifest import MANIFEST, POOLINGS, Manifest, Pooling, read_manifest
from rollout_rules.errors import ModelError

UNBOUNDED = 1_000_000  # tokenizer_config.json says 1e30 when it sets no limit
POOLING_FLAGS: dict[str, Pooling] = {
    "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "lasttoken"}
UNSUPPORTED_POOLING = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")

PADDING_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert",
                                  "mpnet", "longformer", "data2vec-text", "ibert"})
"""Architectures whose position ids start at the padding index + 1 (Hugging Face's
``create_position_ids_from_input_ids``): their true maximum is the table less those."""


@dataclass(frozen=True)
class Choices:
    """What the user settled on the command line (None: read it from the folder)."""

    onnx: str | None = None  # which ONNX file, by name, where a folder offers several
    pooling: Pooling | None = None
    normalize: bool | None = None
    max_length: int | None = None
    model_id: str | None = None
    output: str | None = None  # which graph output to read (None: as the pooling implies)


@dataclass(frozen=True)
class Draft:
    """A folder read: the manifest it implies (file hashes not yet taken), the files to copy,
    and where each setting came from, for the user to see."""

    manifest: Manifest
    onnx: Path | None  # None: BERT weights to build a graph from (``weights``)
    tokenizer: Path
    weights: Path | None = None
    decided: dict[str, str] = field(default_factory=dict)


def read_folder(folder: Path, choices: Choices = Choices()) -> Draft:
    """The folder as a draft manifest, or ModelError saying what is missing or ambiguous."""
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder")
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelError(f"{folder} has no tokenizer.json (save the model with a fast tokenizer:"
                         " tokenizer.save_pretrained(folder))")
    if (folder / MANIFEST).exists():
        manifest = read_manifest(folder)
        return Draft(manifest, folder / "model.onnx", tokenizer,
                     decided={"all settings": MANIFEST})
    onnx, weights = _graph_file(folder, choices.onnx)
    reader = _Reader(folder, choices)
    pooling, normalize = reader.pooling(), reader.normalize()  # the flags' order in the help
    manifest = Manifest(
        model_id=choices.model_id or reader.model_id(), dimensions=reader.dimensions(),
        max_length=reader.max_length(), pooling=pooling, output=choices.output or "",
        normalize=normalize,
        query_prefix=reader.query_prefix(),
        source={"folder": str(folder.resolve()), "onnx": onnx.name if onnx else "built"})
    reader.decided["onnx"] = _graph_note(folder, onnx)
    return Draft(manifest, onnx, tokenizer, weights, reader.decided)


def _graph_file(folder: Path, chosen: str | None) -> tuple[Path | None, Path | None]:
    """(the ONNX graph, None), or (None, the safetensors weights to build one from)."""
    offered = _offered(folder)
    if chosen is not None:
        named = [p for p in offered if chosen in (p.name, p.stem, str(p.relative_to(folder)))]
        if not named:
            raise ModelError(f"{folder}: no ONNX file named {chosen!r}; offered: "
                             f"{_names(folder, offered) or 'none'}")
        return named[0], None
    if len(offered) == 1:
        return offered[0], None
    for preferred in ("model.onnx", "onnx/model.onnx"):
        if (folder / preferred) in offered:
            return folder / preferred, None
    if len(offered) > 1:
        raise ModelError(f"{folder} offers several ONNX files ({_names(folder, offered)}); "
                         "choose one with --onnx NAME")
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return None, folder / "model.safetensors"
    raise ModelError(f"{folder} has no ONNX graph (model.onnx or onnx/model.onnx) and no "
                     "model.safetensors with config.json to build one from; export it with "
                     "SentenceTransformer(name, backend='onnx').save(folder)")


def _graph_note(folder: Path, onnx: Path | None) -> str:
    if onnx is None:
        return "built from model.safetensors (BERT family)"
    others = [p for p in _offered(folder) if p != onnx]
    return str(onnx.relative_to(folder)) + (
        f" (also offered: {_names(folder, others)}; choose with --onnx)" if others else "")


def _offered(folder: Path) -> list[Path]:
    return sorted({*folder.glob("*.onnx"), *folder.glob("onnx/*.onnx")})


def _names(folder: Path, paths: list[Path]) -> str:
    return ", ".join(str(p.relative_to(folder)) for p in paths)


class _Reader:
    """The folder's config files, read once; each setting records where it was decided."""

    def __init__(self, folder: Path, choices: Choices) -> None:
        self.folder, self.choices = folder, choices
        self.pooling_config = _json(folder / "1_Pooling" / "config.json")
        self.st_config = _json(folder / "sentence_bert_config.json")
        self.tokenizer_config = _json(folder / "tokenizer_config.json")
        self.hf_config = _json(folder / "config.json")
        self.st_model_config = _json(folder / "config_sentence_transformers.json")
        modules = _json(folder / "modules.json").get("list", [])
        self.module_types = [str(m.get("type", "")) for m in modules if isinstance(m, dict)] \
            if isinstance(modules, list) else []
        self.sentence_transformers = bool(self.pooling_config or self.module_types)
        self.decided: dict[str, str] = {}

    def model_id(self) -> str:
        # config.json's _name_or_path names the checkpoint it was fine-tuned from: not this model
        self.decided["model_id"] = "the folder's name; --model-id sets it"
        return self.folder.resolve().name

    def dimensions(self) -> int:
        for key in ("embedding_dimension", "word_embedding_dimension"):
            if key in self.pooling_config:
                self.decided["dimensions"] = f"1_Pooling/config.json {key}"
                return int(str(self.pooling_config[key]))
        if "hidden_size" in self.hf_config:
            self.decided["dimensions"] = "config.json hidden_size"
            return int(str(self.hf_config["hidden_size"]))
        self.decided["dimensions"] = "measured from the graph's output"
        return 0  # measured when the graph is first run

    def pooling(self) -> Pooling:
        if self.choices.pooling is not None:
            self.decided["pooling"] = "--pooling"
            return self.choices.pooling
        for dense in ("Dense", "LayerNorm", "WordWeights"):
            if any(t.endswith(f".{dense}") for t in self.module_types):
                raise ModelError(f"{self.folder}/modules.json has a {dense} module after pooling:"
                                 " embedshift cannot apply it; export a graph that includes it "
                                 "(one vector per text) and pass --pooling none")
        if not self.pooling_config:
            raise ModelError(f"{self.folder} does not say how to pool token vectors (no "
                             "1_Pooling/config.json): pass --pooling mean|cls|max|lasttoken, or "
                             "--pooling none when the graph already gives one vector per text")
        mode = self.pooling_config.get("pooling_mode")
        on: list[str] = [name for key, name in POOLING_FLAGS.items()
                         if self.pooling_config.get(key)]
        if isinstance(mode, str):
            on = [mode] if mode in POOLINGS else []
        unsupported = [k for k in UNSUPPORTED_POOLING if self.pooling_config.get(k)]
        if unsupported or len(on) != 1:
            raise ModelError(f"{self.folder}/1_Pooling/config.json: embedshift pools with exactly"
                             f" one of mean, cls, max, lasttoken; this config turns on "
                             f"{', '.join(unsupported + on) or 'none'}")
        self.decided["pooling"] = "1_Pooling/config.json"
        return POOLINGS[POOLINGS.index(on[0])]

    def normalize(self) -> bool:
        if self.choices.normalize is not None:
            self.decided["normalize"] = "--normalize" if self.choices.normalize else \
                "--no-normalize"
            return self.choices.normalize
        if not self.sentence_transformers:
            raise ModelError(f"{self.folder} has no modules.json to say whether vectors are "
                             "normalised: pass --normalize or --no-normalize")
        found = any(t.rsplit(".", 1)[-1] == "Normalize" for t in self.module_types)
        self.decided["normalize"] = "modules.json " + ("has a Normalize module" if found else
                                                       "has no Normalize module")
        return found

    def max_length(self) -> int:
        limits = self._position_limit()
        if self.choices.max_length is not None:
            self.decided["max_length"] = "--max-length"
            found = self.choices.max_length
        elif "max_seq_length" in self.st_config:
            self.decided["max_length"] = "sentence_bert_config.json max_seq_length"
            found = int(str(self.st_config["max_seq_length"]))
        elif _bounded(self.tokenizer_config.get("model_max_length")):
            self.decided["max_length"] = "tokenizer_config.json model_max_length"
            found = int(float(str(self.tokenizer_config["model_max_length"])))
        elif limits:
            self.decided["max_length"] = "config.json max_position_embeddings"
            found = limits
        else:
            raise ModelError(f"{self.folder} does not say how many tokens the model reads: pass "
                             "--max-length N")
        if limits and found > limits:
            raise ModelError(f"{self.folder}: max length {found} ({self.decided['max_length']}) "
                             f"exceeds the model's {limits} positions ({self._positions_said()}"
                             f"); pass --max-length {limits} or less")
        return found

    def _position_limit(self) -> int:
        """The tokens the model can place: its position table, less the positions its
        architecture reserves below the first token (RoBERTa-style models, MPNet among them,
        number positions from the padding index + 1)."""
        positions = self.hf_config.get("max_position_embeddings")
        if not isinstance(positions, int):
            return 0
        return positions - self._reserved_positions()

    def _reserved_positions(self) -> int:
        if str(self.hf_config.get("model_type", "")) not in PADDING_OFFSET_TYPES:
            return 0
        pad = self.hf_config.get("pad_token_id", 1)
        return (pad if isinstance(pad, int) and pad >= 0 else 1) + 1

    def _positions_said(self) -> str:
        positions = self.hf_config.get("max_position_embeddings")
        reserved = self._reserved_positions()
        said = f"config.json max_position_embeddings {positions}"
        return said + (f", less {reserved} reserved before the first token in "
                       f"{self.hf_config.get('model_type')}" if reserved else "")

    def query_prefix(self) -> str:
        prompts = self.st_model_config.get("prompts")
        prefix = prompts.get("query", "") if isinstance(prompts, dict) else ""
        if prefix:
            self.decided["query_prefix"] = ("config_sentence_transformers.json prompts.query "
                                            "(set it as the version's query_prefix)")
        return str(prefix)


def _bounded(value: object) -> bool:
    return isinstance(value, int | float) and 0 < value < UNBOUNDED


def _json(path: Path) -> dict[str, object]:
    """A JSON file as a dict (a top-level list under "list"); {} when absent."""
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    return value if isinstance(value, dict) else {"list": value}


def bert_config(draft: Draft) -> dict[str, object]:
    """The Hugging Face config of a folder to build, refused unless it is plain BERT."""
    assert draft.weights is not None
    config = _json(draft.weights.parent / "config.json")
    model_type = config.get("model_type")
    if model_type != "bert":
        raise ModelError(f"{draft.weights.parent}/config.json: model_type {model_type!r}: "
                         "embedshift builds BERT-family graphs only (BERT, MiniLM, BGE, E5, GTE);"
                         " export other architectures to ONNX and add that folder")
    position = config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ModelError(f"{draft.weights.parent}/config.json: position_embedding_type "
                         f"{position!r}: only absolute positions are built here")
    return config

