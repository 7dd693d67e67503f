"""The core imports no I/O library, imports flow one way, and no two modules import each other."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO

IO_LIBRARIES = {"aiohttp", "redis", "qdrant_client", "qdrant_edge", "onnxruntime", "structlog",
                "opentelemetry", "proxy", "socket", "asyncio", "subprocess", "requests", "httpx"}

# Each package's layer: a module may import its own package and any lower layer, nothing else.
# config and telemetry are cross-cutting (settings, attribute names): any proxy package may
# use them. The CLI sits above the web app because ``serve`` starts it; nothing imports the CLI.
LAYERS = {
    "rollout_rules": 0,
    "proxy.config": 1, "proxy.telemetry": 1, "proxy.tasks": 1, "proxy.http": 1,
    "proxy.state": 2, "proxy.vectors": 2, "proxy.models": 2,
    "proxy.serving": 3, "proxy.control": 3, "proxy.ingest": 3, "proxy.online": 3,
    "proxy.web": 4, "proxy.qdrant_api": 4,
    "proxy.qdrant_grpc": 5,  # translates gRPC into the Qdrant REST edge's calls
    "proxy.cli": 6,
}


def _imports(path: Path) -> list[str]:
    """Every name ``path`` imports, type-only ones included; a relative import as ``.``-led
    (the layers cannot place it, so it is refused)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _sources(root: Path) -> dict[str, Path]:
    """Every module of the package and the core, by dotted name."""
    paths = sorted([*root.glob("proxy/**/*.py"), *root.glob("rollout_rules/**/*.py")])
    return {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in paths}


def _package(module: str) -> str | None:
    """The layered package a dotted module name belongs to (longest prefix), if any."""
    found = [p for p in LAYERS if module == p or module.startswith(f"{p}.")]
    return max(found, key=len) if found else None


def wrong_way_imports(root: Path) -> list[str]:
    """Every import under ``root`` that goes against the layers, as 'file: imported (why)'."""
    problems = []
    for module, path in _sources(root).items():
        own = _package(module)
        if own is None:
            if module != "proxy":
                problems.append(f"{path.relative_to(root)}: in no layer (add it to LAYERS)")
            continue
        for name in _imports(path):
            if name.startswith("."):
                problems.append(f"{path.relative_to(root)}: {name} (relative: name it in full)")
                continue
            other = _package(name)
            if other is None or other == own or LAYERS[other] < LAYERS[own]:
                continue
            way = "sideways" if LAYERS[other] == LAYERS[own] else "upwards"
            problems.append(f"{path.relative_to(root)}: {name} ({own} -> {other}, {way})")
    return sorted(set(problems))


def import_cycle(root: Path) -> list[str]:
    """Modules that import each other, directly or through others, as the path round (empty:
    none). Type-only imports count: a cycle hidden behind TYPE_CHECKING is still two modules
    that cannot be read apart."""
    sources = _sources(root)
    graph = {module: {name if name in sources else name.rpartition(".")[0]
                      for name in _imports(path)} & set(sources) - {module}
             for module, path in sources.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return []


def test_imports_flow_one_way() -> None:
    assert wrong_way_imports(REPO) == []


def test_no_modules_import_each_other() -> None:
    assert import_cycle(REPO) == []


def test_an_import_cycle_is_caught(tmp_path: Path) -> None:
    for module, source in {
            "proxy/serving/search.py": "from proxy.serving.shadow import Shadow\n",
            "proxy/serving/shadow.py": "from typing import TYPE_CHECKING\n"
                                       "if TYPE_CHECKING:\n"
                                       "    from proxy.serving.search import Query\n",
            "proxy/serving/cohorts.py": "import proxy.serving.shadow\n"}.items():
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text(source)
    assert sorted(import_cycle(tmp_path)[1:]) == ["proxy.serving.search", "proxy.serving.shadow"]


def test_a_wrong_way_import_is_caught(tmp_path: Path) -> None:
    for module, source in {
            "proxy/state/store.py": "from proxy.web.app import make_app\n",
            "proxy/serving/search.py": "import proxy.control.operator\n",
            "proxy/models/fine.py": "from proxy.config import Settings\nimport numpy\n",
            "rollout_rules/model.py": "def f() -> None:\n    from proxy.state import base\n",
            "rollout_rules/inner/rule.py": "from . import model\n",
            "proxy/stray.py": ""}.items():
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text(source)
    assert wrong_way_imports(tmp_path) == [
        "proxy/serving/search.py: proxy.control.operator (proxy.serving -> proxy.control, "
        "sideways)",
        "proxy/state/store.py: proxy.web.app (proxy.state -> proxy.web, upwards)",
        "proxy/state/store.py: proxy.web.app.make_app (proxy.state -> proxy.web, upwards)",
        "proxy/stray.py: in no layer (add it to LAYERS)",
        "rollout_rules/inner/rule.py: . (relative: name it in full)",
        "rollout_rules/model.py: proxy.state (rollout_rules -> proxy.state, upwards)",
        "rollout_rules/model.py: proxy.state.base (rollout_rules -> proxy.state, upwards)",
    ]


def test_no_module_of_the_core_imports_an_io_library() -> None:
    offenders = []
    for path in sorted((REPO / "rollout_rules").glob("**/*.py")):  # subpackages too
        names = _imports(path)
        offenders += [f"{path.relative_to(REPO)}: {n}" for n in names
                      if n.split(".")[0] in IO_LIBRARIES]
    assert offenders == []


def test_importing_the_core_loads_no_io_library() -> None:
    code = ("import sys, rollout_rules, rollout_rules.ops, rollout_rules.coverage;"
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    loaded = set(eval(out.stdout))
    assert loaded & (IO_LIBRARIES - {"socket", "asyncio", "subprocess"}) == set()
