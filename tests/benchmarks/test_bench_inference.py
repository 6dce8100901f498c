"""
The whole-volume inference benchmark: its Dice, a tiny run of the real workflow in all its configurations, and a tiny
run of the streaming comparison.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch._inductor.config
from monai.bundle import ConfigParser
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.transforms import Activationsd, AsDiscreted, Invertd, SaveImaged

from scripts.benchmarks.bench_inference import (
    VARIANTS,
    _measure_in_process,
    comparison_overrides,
    paper_order_final_logits,
    run_benchmark,
    run_streaming_benchmark,
    segmentation_dice,
)
from scripts.engine.inferers import FlipTTAInferer
from scripts.engine.streaming import StreamingSegmentationInferer
from scripts.networks.decoder import CoTrDecoder
from tests.conftest import BUNDLE_ROOT


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
    results = run_benchmark(
        shape=(96, 96, 40), spacing=(1.5, 1.5, 3.0), overlay=os.path.join(BUNDLE_ROOT, "configs", "demo.json")
    )
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


def test_comparison_overrides_share_the_saving_postprocessing():
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE_ROOT, "configs", "inference.json"))
    overrides = comparison_overrides(parser)
    parsed = {}
    for name, override in overrides.items():
        variant = ConfigParser(parser.get())  # a copy: the overrides apply to the config as it is
        variant.update(override)
        parsed[name] = (variant.get_parsed_content("inferer"), variant.get_parsed_content("postprocessing").transforms)
    (whole_inferer, whole_post), (streaming_inferer, streaming_post) = parsed["whole_volume"], parsed["streaming"]
    assert isinstance(whole_inferer, FlipTTAInferer) and isinstance(streaming_inferer, StreamingSegmentationInferer)
    assert [type(t) for t in whole_post[:3]] == [Activationsd, Invertd, AsDiscreted]
    assert (
        [type(t) for t in whole_post[3:]] == [type(t) for t in streaming_post]
        and type(streaming_post[0]).__name__ == "KeepOrgansd"
        and isinstance(streaming_post[1], SaveImaged)
    )
    background = (parser["hu_min"] - parser["intensity_mean"]) / parser["intensity_std"]
    assert streaming_inferer.pad_value == pytest.approx(background) and whole_inferer.inferer.cval == pytest.approx(
        background
    )
    assert streaming_inferer.roi_size == tuple(parser["patch_size"]) and streaming_inferer.tta_axes == tuple(
        parser["tta_flip_axes"]
    )


@pytest.mark.slow
def test_tiny_streaming_comparison():
    shapes = [(96, 96, 40), (96, 96, 80)]
    results = run_streaming_benchmark(
        shapes=shapes,
        spacing=(1.5, 1.5, 4.0),
        overlay=os.path.join(BUNDLE_ROOT, "configs", "demo.json"),
        network_standin=True,
    )
    assert list(results) == ["96x96x40", "96x96x80"]
    for runs in results.values():
        whole, streaming = runs["whole_volume"], runs["streaming"]
        assert "error" not in whole and "error" not in streaming
        assert whole["windows"] == streaming["windows"] >= 1  # the same windows, counted at the network
        for r in (whole, streaming):
            assert r["seconds"] >= r["case_seconds"] > 0 and r["peak_rss"] >= r["case_peak_rss"] > 0
        assert streaming["dice"] >= 0.999 and streaming["peak_ratio"] > 0
    assert results["96x96x80"]["whole_volume"]["windows"] > results["96x96x40"]["whole_volume"]["windows"]


@pytest.mark.slow
def test_a_variant_out_of_memory_is_reported():
    config = os.path.join(BUNDLE_ROOT, "configs", "inference.json")
    result = _measure_in_process([config], {}, memory_limit=1 << 20, timeout_s=600)
    assert set(result) == {"error"} and "can't allocate memory" in result["error"]  # CoTr's weights do not fit in 1 MiB
