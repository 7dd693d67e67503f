"""The model commands: ``models add|list|show|remove|build`` (the catalogue) and ``eval`` (models
compared in memory; ``eval --alias`` instead judges an alias through its collections, in the
proxy)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

import msgspec

from proxy.cli.common import AddCommand, Result
from proxy.cli.data import cmd_quality
from proxy.config import Settings
from proxy.models.builtin import L3_ID, L6_ID
from proxy.models.catalog import (
    Added,
    Entry,
    add_model,
    build_model,
    default_rollout,
    describe,
    entries,
    find,
    load_model,
    remove_model,
)
from proxy.models.encoders import default_threads
from proxy.models.evaluation import Scores, evaluate, load_beir
from proxy.models.folders import Choices
from proxy.models.manifest import Pooling
from proxy.state.rulestore import open_store
from rollout_rules.errors import ModelError, RuleError
from rollout_rules.model import Rollout, Target, Version

METRICS = [("nDCG@10", "ndcg_at_10"), ("recall@10", "recall_at_10"),
           ("recall@100", "recall_at_100"), ("MRR@10", "mrr_at_10")]
ACTIONS = {"add": ("name", "path"), "show": ("name",), "remove": ("name",), "list": (),
           "build": ()}


def build_models(models_dir: Path, int8: bool) -> Result:
    built = []
    for model_id in (L3_ID, L6_ID):
        for quantization in ("none", "int8") if int8 else ("none",):
            built.append(str(build_model(model_id, quantization, models_dir, log=print)))
    return built, "\n".join(f"ready: {folder}" for folder in built)


def list_models(models_dir: Path) -> Result:
    rows = entries(models_dir)
    header = (f"{'NAME':46} {'KIND':7} {'DIMS':>5} {'MAX':>5} {'POOLING':9} {'NORM':5} "
              f"{'QUANT':5} {'SIZE':>8}  IDENTITY")
    lines = [header] + [_row(entry) for entry in rows]
    lines.append(f"models folder: {models_dir}; add your own: embedshift models add NAME PATH")
    return [_as_dict(entry) for entry in rows], "\n".join(lines)


def _row(entry: Entry) -> str:
    m = entry.manifest
    if m is None:
        return f"{entry.name:46} {'default':7} {'384':>5} {'':>5} {'':9} {'yes':5} {'none':5} " \
               f"{'':>8}  (built on first use, or: embedshift models build)"
    return (f"{entry.name:46} {entry.kind:7} {m.dimensions:>5} {m.max_length:>5} "
            f"{m.pooling:9} {'yes' if m.normalize else 'no':5} {m.quantization:5} "
            f"{entry.size_bytes / 1e6:>6.1f}MB  {m.identity[:19]}")


def _as_dict(entry: Entry) -> dict[str, object]:
    return {"name": entry.name, "kind": entry.kind, "folder": str(entry.folder),
            "size_bytes": entry.size_bytes,
            "manifest": None if entry.manifest is None else msgspec.to_builtins(entry.manifest)}


def show_model(name: str, models_dir: Path) -> Result:
    entry = find(name, models_dir)
    payload = _as_dict(entry)
    return payload, msgspec.json.format(msgspec.json.encode(payload)).decode()


def add(args: argparse.Namespace, models_dir: Path) -> Result:
    choices = Choices(onnx=args.onnx, pooling=args.pooling, normalize=args.normalize,
                      max_length=args.max_length, model_id=args.model_id, output=args.output)
    added = add_model(args.name, Path(args.path), models_dir, choices=choices,
                      expect=Path(args.expect) if args.expect else None, int8=args.int8,
                      accept_loss=args.accept_loss, log=print)
    return {"name": added.name, "folder": str(added.folder), "existing": added.existing,
            "decided": added.decided, "manifest": msgspec.to_builtins(added.manifest)}, \
        render_added(added)


def render_added(added: Added) -> str:
    m = added.manifest
    if added.existing:
        return (f"already catalogued as {added.name} (same identity {m.identity[:19]}): "
                f"name it in a rule as model {added.name!r}")
    why = added.decided
    lines = [f"added {added.name}: {m.model_id}", f"  folder      {added.folder}",
             f"  identity    {m.identity}",
             f"  model id    {m.model_id} ({why.get('model_id', '--model-id')})",
             f"  dimensions  {m.dimensions} ({why.get('dimensions', '')})",
             f"  max length  {m.max_length} tokens ({why.get('max_length', '')})",
             f"  pooling     {m.pooling} ({why.get('pooling', '')})",
             f"  normalise   {'yes' if m.normalize else 'no'} ({why.get('normalize', '')})",
             f"  onnx        {why.get('onnx', '')}"]
    if m.query_prefix:
        lines.append(f"  query prefix {m.query_prefix!r} ({why.get('query_prefix', '')})")
    lines += ["checks passed:"] + [f"  {line}" for line in m.checks]
    version = {"name": "v2", "model": added.name, "dimensions": m.dimensions,
               "normalized": m.normalize, "target": {"collection": "ALIAS_v2"}}
    if m.query_prefix:
        version["query_prefix"] = m.query_prefix
    lines.append("name it in a rule: " + msgspec.json.encode(version).decode())
    return "\n".join(lines)


def remove(name: str, settings: Settings, environ: Mapping[str, str]) -> Result:
    async def rules() -> list[Rollout]:
        store = open_store(settings, environ, start=False)
        try:
            return [await store.get(alias) for alias in await store.aliases()]
        finally:
            await store.aclose()

    removed = remove_model(name, settings.models_path, asyncio.run(rules()))
    return [str(p) for p in removed], "\n".join(f"removed {p}" for p in removed)


def run(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> Result:
    missing = [part for part in ACTIONS[args.action] if getattr(args, part) is None]
    if missing:
        raise RuleError(missing[0], f"models {args.action} needs "
                        f"{' '.join(p.upper() for p in ACTIONS[args.action])}")
    models_dir = settings.models_path
    if args.action == "build":
        return build_models(models_dir, args.int8)
    if args.action == "add":
        return add(args, models_dir)
    if args.action == "show":
        return show_model(args.name, models_dir)
    if args.action == "remove":
        return remove(args.name, settings, environ)
    return list_models(models_dir)


# -- eval ----------------------------------------------------------------------------------------

def run_eval(args: argparse.Namespace, models_dir: Path, versions: list[Version]) -> Result:
    dataset = load_beir(Path(args.dataset), max_docs=args.max_docs)
    results: dict[str, Scores] = {}
    for version in versions:
        model = load_model(version, models_dir, default_threads())
        results[version.name] = evaluate(model, dataset, version.query_prefix)
    payload = {"dataset": dataset.name, "results": {
        v.name: {"model": v.model, "quantization": v.quantization,
                 **msgspec.to_builtins(results[v.name])} for v in versions}}
    return payload, render_eval(dataset.name, versions, results)


def eval_versions(specs: list[str] | None, models_dir: Path) -> list[Version]:
    """``--model NAME[:int8][:prefix=TEXT]`` options as versions v1, v2, ...; default the pair."""
    if not specs:
        return list(default_rollout("eval").versions)
    versions = []
    for index, spec in enumerate(specs, start=1):
        model, _, rest = spec.partition(":")
        quantization: Literal["none", "int8"] = \
            "int8" if rest.split(":")[0] == "int8" else "none"
        prefix = rest.partition("prefix=")[2] if "prefix=" in rest else ""
        found = describe(model, models_dir)
        if found is None:
            raise ModelError(f"--model {spec}: {model!r} is not in the catalogue "
                             "(embedshift models list)")
        versions.append(Version(name=f"v{index}", model=model, dimensions=found[0],
                                normalized=found[1], quantization=quantization,
                                query_prefix=prefix, target=Target(collection="eval")))
    return versions


def render_eval(name: str, versions: list[Version], results: dict[str, Scores]) -> str:
    first = results[versions[0].name]
    header = f"{name}: {first.queries} queries, {first.documents} documents"
    labels = [f"{v.name} {v.model.rsplit('/', 1)[-1]}"
              + ("" if v.quantization == "none" else f" {v.quantization}") for v in versions]
    width = max(len(label) for label in labels) + 2
    lines = [header, f"{'metric':12}" + "".join(f"{label:>{width}}" for label in labels)
             + ("   delta" if len(versions) == 2 else "")]
    for title, field in METRICS:
        values = [getattr(results[v.name], field) for v in versions]
        delta = f"  {values[1] - values[0]:+.4f}" if len(values) == 2 else ""
        lines.append(f"{title:12}" + "".join(f"{value:>{width}.4f}" for value in values) + delta)
    return "\n".join(lines)


def run_eval_command(args: argparse.Namespace, settings: Settings,
                     environ: Mapping[str, str]) -> Result:
    if args.alias:
        return cmd_quality(args, settings, environ)
    return run_eval(args, settings.models_path, eval_versions(args.model, settings.models_path))


def add_parsers(add_command: AddCommand) -> None:
    p = add_command(
        "models", run, "the model catalogue: bring your own model (add), list, show, remove; "
        "build the defaults")
    p.add_argument("action", choices=list(ACTIONS), help="add NAME PATH: read, check and "
                   "catalogue a model folder (sentence-transformers, ONNX, or BERT safetensors);"
                   " list; show NAME; remove NAME; build: the default models")
    p.add_argument("name", nargs="?", help="the model's name in the catalogue (rules name it)")
    p.add_argument("path", nargs="?", help="with add: the model folder")
    p.add_argument("--int8", action="store_true", help="also build the int8-quantised variant, "
                   "kept only if its vectors stay within cosine 0.95 of fp32 text by text")
    p.add_argument("--accept-loss", action="store_true",
                   help="with --int8: keep the variant even below that tolerance")
    p.add_argument("--onnx", help="with add: which ONNX file, where the folder offers several")
    p.add_argument("--output", help="with add: which graph output to read (default: one "
                   "(batch, dims) output with --pooling none, else the token vectors)")
    p.add_argument("--pooling", choices=get_args(Pooling),
                   help="with add: how token vectors become one (none: the graph does it)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="with add: whether vectors are L2-normalised (default: modules.json)")
    p.add_argument("--max-length", type=int, help="with add: tokens the model reads")
    p.add_argument("--model-id", help="with add: the upstream model id to record")
    p.add_argument("--expect", help="with add: JSON lines {text, vector} the model must match "
                   "(cosine >= 0.9999), made with sentence-transformers")
    p = add_command("eval", run_eval_command, "retrieval quality per model on a BEIR-format "
                    "dataset")
    p.add_argument("--dataset", required=True, help="a BEIR folder: queries.jsonl and "
                   "qrels/test.tsv, with corpus.jsonl when models are judged in memory (with "
                   "--alias the corpus is what the collections hold)")
    p.add_argument("--model", action="append", help="a catalogued model to judge, as NAME, "
                   "NAME:int8 or NAME:prefix=TEXT; repeat it (default: the v1/v2 default pair)")
    p.add_argument("--alias", help="judge this alias's stable and candidate through their real "
                                   "collections, in the running proxy, and keep the result for "
                                   "promote (default: models in memory)")
    p.add_argument("--url", help="the proxy's address, with --alias (default: "
                                 "http://EMBEDSHIFT_HOST:EMBEDSHIFT_PORT)")
    p.add_argument("--max-docs", type=int, help="keep the judged documents plus others up to N")
