from __future__ import annotations

import os
import subprocess
import sys

import pytest

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(BUNDLE_ROOT, "configs")
SCHEMA = os.path.join(os.path.dirname(BUNDLE_ROOT), "shared", "reference", "meta_schema_20240725.json")

if BUNDLE_ROOT not in sys.path:  # monai.bundle puts the bundle root on sys.path only inside run()
    sys.path.insert(0, BUNDLE_ROOT)


#: a CoTr small enough to build, export and compile in seconds, as the zoo's unit tests shrink their networks by id
SMALL_COTR = {
    "network_def#blocks": [1, 1, 1],
    "network_def#channels": [8, 16, 24, 24],
    "network_def#d_model": 24,
    "network_def#num_heads": 4,
    "network_def#num_layers": 1,
    "network_def#mlp_dim": 32,
}


def config_paths(*names: str) -> list[str]:
    return [os.path.join(CONFIGS, name) for name in names]


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ...`` as a user would, failing with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"monai.bundle {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result
