"""The model commands: ``models add|list|show|remove|build`` (the catalogue) and ``eval`` (models
compared in memory; ``eval --alias`` instead judges an alias through its collections, in the
proxy)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

import msgspec

from proxy.cli.common import AddCommand, Result
from proxy.cli.data import cmd_quality
from proxy.config import Settings
from proxy.models.builtin import L3_ID, L6_ID
from proxy.models.catalog import (
    Added,
    AddedServed,
    Entry,
    add_model,
    add_served,
    build_model,
    default_rollout,
    describe,
    entries,
    find,
    open_model,
    remove_model,
)
from proxy.models.encoders import default_threads
from proxy.models.evaluation import Scores, evaluate, load_beir
from proxy.models.folders import Choices
from proxy.models.manifest import Pooling
from proxy.models.served import ServedSpec
from proxy.state.rulestore import open_store
from rollout_rules.errors import ModelError, RuleError
from rollout_rules.model import Rollout, Target, Version
from rollout_rules.text import one_line

METRICS = [("nDCG@10", "ndcg_at_10"), ("recall@10", "recall_at_10"),
           ("recall@100", "recall_at_100"), ("MRR@10", "mrr_at_10")]
ACTIONS = {"add": ("name",), "show": ("name",), "remove": ("name",), "list": (),
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
    if entry.served is not None:
        spec = entry.served
        return (f"{entry.name:46} {'served':7} {spec.dimensions:>5} {'':>5} {'':9} "
                f"{'yes' if spec.normalize else 'no':5} {'none':5} {'':>8}  "
                f"{spec.identity[:19]} {spec.model_id} at {spec.url}")
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
            "manifest": None if entry.manifest is None else msgspec.to_builtins(entry.manifest),
            **({"served": msgspec.to_builtins(_shown(entry.served))} if entry.served else {})}


def show_model(name: str, models_dir: Path) -> Result:
    entry = find(name, models_dir)
    payload = _as_dict(entry)
    return payload, msgspec.json.format(msgspec.json.encode(payload)).decode()


def add(args: argparse.Namespace, models_dir: Path, environ: Mapping[str, str]) -> Result:
    if args.openai_url:
        return add_served_model(args, models_dir, environ)
    if args.path is None:
        raise RuleError("path", "models add needs NAME PATH (a model folder), or NAME "
                                "--openai-url URL --model-id ID (a served model)")
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


def add_served_model(args: argparse.Namespace, models_dir: Path,
                     environ: Mapping[str, str]) -> Result:
    if not args.model_id:
        raise RuleError("--model-id", "a served model needs the id the service knows it by "
                                      "(the request's model field)")
    if args.path is not None:
        raise RuleError("path", "a served model has no folder: give --openai-url or a PATH")
    for flag, value, low, high in (("--max-batch", args.max_batch, 1, 2048),
                                   ("--max-concurrency", args.max_concurrency, 1, 64),
                                   ("--rpm", args.rpm, 0, 10**9), ("--tpm", args.tpm, 0, 10**12),
                                   ("--dimensions", args.dimensions or 1, 1, 65536)):
        if not low <= value <= high:
            raise RuleError(flag, f"{value}: from {low} to {high}")
    if not 0 < args.timeout <= 60:
        raise RuleError("--timeout", f"{args.timeout}: more than 0, at most 60 seconds")
    draft = ServedSpec(url=served_url(args.openai_url), model_id=args.model_id,
                       dimensions=args.dimensions or 0,
                       ask_dimensions=args.dimensions is not None,
                       api_key_env=args.api_key_env or "", api_key_file=args.api_key_file or "",
                       max_batch=args.max_batch, max_concurrency=args.max_concurrency,
                       rpm=args.rpm, tpm=args.tpm, timeout_s=args.timeout)
    added = add_served(args.name, draft, models_dir, environ=environ,
                       expect=Path(args.expect) if args.expect else None, log=print)
    return {"name": added.name, "folder": str(added.folder), "existing": added.existing,
            "served": msgspec.to_builtins(_shown(added.spec))}, render_served(added)


def served_url(url: str) -> str:
    """The API's base URL, checked: http(s), a host, no credentials (a key goes in
    --api-key-env or --api-key-file, never in the catalogue)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RuleError("--openai-url", f"{one_line(url)!r} is not an http(s) URL (the API's "
                                        "base, e.g. https://api.openai.com/v1)")
    if parts.username or parts.password:
        raise RuleError("--openai-url", "holds credentials: give the key with --api-key-env "
                                        "VAR or --api-key-file PATH instead")
    if parts.query or parts.fragment:
        raise RuleError("--openai-url", "the API's base URL has no query or fragment")
    return url.rstrip("/")


def _shown(spec: ServedSpec) -> ServedSpec:
    return msgspec.structs.replace(spec, probes=())  # 5 x dims numbers: in the file, not shown


def render_served(added: AddedServed) -> str:
    spec = added.spec
    if added.existing:
        return (f"already catalogued as {added.name} (same identity {spec.identity[:19]}): "
                f"name it in a rule as model {added.name!r}")
    key = (f"${spec.api_key_env}" if spec.api_key_env else spec.api_key_file) or "none"
    limits = ", ".join(f"{value} {unit}" for value, unit in ((spec.rpm, "requests/min"),
                                                             (spec.tpm, "tokens/min")) if value)
    lines = [f"added {added.name}: {spec.model_id} served at {spec.url}",
             f"  folder       {added.folder}", f"  identity     {spec.identity}",
             f"  fingerprint  {spec.fingerprint} (the probe texts' vectors)",
             f"  dimensions   {spec.dimensions}", f"  key          {key}",
             f"  calls        at most {spec.max_batch} texts each, {spec.max_concurrency} at "
             f"once{', ' + limits if limits else ''}; a query's call times out after "
             f"{spec.timeout_s:g} s"]
    lines += ["checks passed:"] + [f"  {line}" for line in spec.checks]
    version = {"name": "v2", "model": added.name, "dimensions": spec.dimensions,
               "normalized": spec.normalize, "target": {"collection": "ALIAS_v2"}}
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
        return add(args, models_dir, environ)
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
        model = open_model(version, models_dir, default_threads())
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
                   "(cosine >= 0.9999; 0.999 for a served model), made with "
                   "sentence-transformers")
    served = p.add_argument_group("a served model (an OpenAI-compatible embeddings API)")
    served.add_argument("--openai-url", help="with add, instead of PATH: the API's base URL "
                        "(embeddings are POSTed to URL/embeddings); --model-id names the model")
    served.add_argument("--dimensions", type=int, help="ask the service for vectors of N "
                        "numbers (models that shorten on request; default: what it gives)")
    served.add_argument("--api-key-env", help="the environment variable holding the API key")
    served.add_argument("--api-key-file", help="or a file holding it")
    served.add_argument("--max-batch", type=int, default=32, help="texts per call (32)")
    served.add_argument("--max-concurrency", type=int, default=4, help="calls at once (4)")
    served.add_argument("--rpm", type=int, default=0, help="requests per minute allowed")
    served.add_argument("--tpm", type=int, default=0, help="tokens per minute allowed")
    served.add_argument("--timeout", type=float, default=2.0,
                        help="seconds a query's call may take before stable answers (2)")
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
