"""Tests of ``scripts/engine/atomic.py``: atomic JSON writing."""

from __future__ import annotations

import json
import os

import pytest

from scripts.engine.atomic import write_json_atomic


def test_write_json_atomic(tmp_path):
    path = str(tmp_path / "sub" / "dl.json")
    assert write_json_atomic({"a": 1}, path) == path
    with open(path) as f:
        assert json.load(f) == {"a": 1}
    with pytest.raises(FileExistsError, match="overwrite"):
        write_json_atomic({"a": 2}, path)
    with open(path) as f:
        assert json.load(f) == {"a": 1}
    write_json_atomic({"a": 3}, path, overwrite=True)
    with open(path) as f:
        assert json.load(f) == {"a": 3}
    # a failed serialisation leaves the old file and no temporary file behind
    with pytest.raises(TypeError):
        write_json_atomic({"a": object()}, path, overwrite=True)
    with open(path) as f:
        assert json.load(f) == {"a": 3}
    assert os.listdir(tmp_path / "sub") == ["dl.json"]
    with pytest.raises(IsADirectoryError):
        write_json_atomic({}, str(tmp_path / "sub"), overwrite=True)
