"""Prometheus and Alertmanager from Debian, installed by the test set-up when absent."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

PACKAGES = {"prometheus": "prometheus", "promtool": "prometheus",
            "prometheus-alertmanager": "prometheus-alertmanager",
            "amtool": "prometheus-alertmanager"}


def install_missing(commands: list[str]) -> dict[str, str]:
    """The path of each command, installing its Debian package (as root) when it is missing."""
    missing = sorted({PACKAGES[c] for c in commands if shutil.which(c) is None})
    if missing:
        if os.geteuid() != 0:
            pytest.fail(f"need Debian packages {missing}: run as root, or install them")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env=env)
    return {c: str(shutil.which(c)) for c in commands}


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    return install_missing(list(PACKAGES))
