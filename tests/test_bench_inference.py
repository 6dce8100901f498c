"""The whole-volume inference benchmark: its Dice, and a tiny run of the real workflow in both configurations."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch._inductor.config
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from scripts.benchmarks.bench_inference import VARIANTS, paper_order_final_logits, run_benchmark, segmentation_dice
from scripts.networks.decoder import CoTrDecoder

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
def test_tiny_run_compares_all_configurations():
    results = run_benchmark(shape=(96, 96, 40), spacing=(1.5, 1.5, 3.0), overlay=os.path.join(BUNDLE_ROOT, "configs", "demo.json"))
    assert not torch._inductor.config.freezing  # the compiled variant's process-wide setting does not leak out
    assert list(results) == list(VARIANTS)
    reference, exact, bfloat16 = (results[name] for name in VARIANTS)
    assert reference["speedup"] == 1.0 and reference["dice"] == 1.0
    for fast in (exact, bfloat16):
        assert fast["seconds"] > 0 and fast["peak_rss"] > 0 and fast["speedup"] > 0
    # float32 throughout: reordering the output layer and compiling change only rounding
    assert exact["dice"] >= 0.999
    assert 0.5 < bfloat16["dice"] <= 1.0


def test_paper_order_output_layer_equals_the_networks():
    torch.manual_seed(0)
    decoder = CoTrDecoder((4, 8), ((2, 2, 1), (2, 2, 2)), 3, ("instance", {"affine": True}), "relu").double()
    x = torch.randn(1, 4, 6, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(paper_order_final_logits(decoder, x), decoder.final_logits(x), atol=1e-12, rtol=1e-12)
