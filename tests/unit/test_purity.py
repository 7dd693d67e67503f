"""The core stays pure: no I/O library is imported by rollout_rules, directly or indirectly."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.paths import REPO

IO_LIBRARIES = {"aiohttp", "redis", "qdrant_client", "qdrant_edge", "onnxruntime", "structlog",
                "opentelemetry", "proxy", "socket", "asyncio", "subprocess", "requests", "httpx"}


def test_no_module_of_the_core_imports_an_io_library() -> None:
    offenders = []
    for path in sorted((REPO / "rollout_rules").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in IO_LIBRARIES]
    assert offenders == []


def test_importing_the_core_loads_no_io_library() -> None:
    code = ("import sys, rollout_rules, rollout_rules.ops, rollout_rules.coverage;"
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    loaded = set(eval(out.stdout))
    assert loaded & (IO_LIBRARIES - {"socket", "asyncio", "subprocess"}) == set()
