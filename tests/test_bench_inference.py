"""The whole-volume inference benchmark: its Dice, and a tiny run of the real workflow in both configurations."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from scripts.benchmarks.bench_inference import VARIANTS, run_benchmark, segmentation_dice

from .conftest import BUNDLE_ROOT


def test_segmentation_dice_matches_monai():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 4, size=(12, 10, 6))
    other = np.where(rng.random(reference.shape) < 0.2, rng.integers(0, 4, size=reference.shape), reference)
    other[other == 3] = 0  # a label only the reference has
    as_onehot = [one_hot(torch.as_tensor(a)[None, None], num_classes=4) for a in (other, reference)]
    expected = compute_dice(*as_onehot, include_background=False, ignore_empty=False)
    assert segmentation_dice(reference, other) == pytest.approx(float(expected.mean()), abs=1e-6)
    assert segmentation_dice(reference, reference) == 1.0 and segmentation_dice(reference * 0, other * 0) == 1.0


@pytest.mark.slow
def test_tiny_run_compares_both_configurations():
    results = run_benchmark(shape=(96, 96, 40), spacing=(1.5, 1.5, 3.0), overlay=os.path.join(BUNDLE_ROOT, "configs", "demo.json"))
    assert list(results) == list(VARIANTS)
    reference, fast = (results[name] for name in VARIANTS)
    assert reference["speedup"] == 1.0 and reference["dice"] == 1.0
    assert fast["seconds"] > 0 and fast["peak_rss"] > 0 and 0.5 < fast["dice"] <= 1.0
