"""Tests of ``scripts/engine/atomic.py``: atomic JSON writing, and what a killed write leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scripts.engine.atomic import stale_temporaries, write_json_atomic

from ..conftest import BUNDLE_ROOT


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


def test_stale_temporaries_finds_what_a_killed_write_left_for_that_file_only(tmp_path):
    target, other = tmp_path / "case_seg.nii.gz", tmp_path / "case_seg.nii"
    script = (
        "import os, sys\n"
        "from scripts.engine.atomic import atomic_output\n"
        "with atomic_output(sys.argv[1], suffix='.tmp.nii.gz') as temporary:\n"
        "    open(temporary, 'w').write('partial')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    for path in (target, other):
        killed = subprocess.run([sys.executable, "-c", script, str(path)], cwd=BUNDLE_ROOT)
        assert killed.returncode == -9
    left = sorted(os.listdir(tmp_path))
    assert len(left) == 2 and not target.exists()
    (found,) = stale_temporaries(target)
    assert os.path.basename(found).startswith(".case_seg.nii.gz.") and open(found).read() == "partial"
