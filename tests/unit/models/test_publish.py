"""A model folder appears whole or not at all, and two builders of one model end with one folder.

The second builder's copy is dropped, not an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.models.catalog import _publish
from proxy.models.manifest import MANIFEST


def test_the_second_builder_of_a_folder_keeps_the_first_ones(tmp_path: Path) -> None:
    folder = tmp_path / "m"

    def first(tmp: Path) -> None:
        (tmp / MANIFEST).write_text("first")

    def second(tmp: Path) -> None:
        (tmp / MANIFEST).write_text("second")
        _publish(folder, first)  # the other process finishes while this one builds

    assert _publish(folder, second) == folder
    assert (folder / MANIFEST).read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no half-built folder left


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        (tmp / "model.onnx").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _publish(tmp_path / "m", broken)
    assert list(tmp_path.iterdir()) == []
