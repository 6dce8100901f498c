"""The README's main job, shortened: synthetic study -> training -> evaluation -> inference -> pictures."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import BUNDLE_ROOT


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.apps.demo",
            "--workdir",
            str(tmp_path),
            "--num_cases",
            "4",
            "--num_test",
            "1",
            "--max_epochs",
            "1",
        ],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    dice = re.search(r"Held-out mean Dice over the 13 organs \(synthetic data\): ([0-9.]+)", result.stdout)
    assert dice and 0.0 <= float(dice.group(1)) <= 1.0
    report = tmp_path / "eval" / "report"
    assert (report / "dice_boxplot.png").exists() and (report / "per_case_metrics.csv").exists()
    assert (tmp_path / "eval" / "training_curves.png").exists()
    inference = sorted(os.listdir(tmp_path / "inference"))
    assert inference == ["img0005.png", "img0005_seg.nii.gz"]
    assert result.stdout.rstrip().splitlines()[-1].startswith("Segmentations and pictures")  # no stray return value
