"""
Whole-volume inference benchmark: the bundle's real inference (``configs/inference.json``: load, resample, crop,
normalise, Gaussian sliding window, softmax, invert to the original geometry, argmax, save) on a synthetic
abdominal CT volume, measured side by side in one run for a straightforward configuration (float32, one window
at a time, CoTr's output layer in the paper's order) and two fast ones: exact float32 arithmetic (the output layer
projected before upsampling, encoder and decoder compiled with frozen weights) and bfloat16 autocast where the CPU
computes it natively: wall time, peak resident memory and the Dice of each segmentation against the
straightforward one.

Usage::

    python -m scripts.benchmarks.bench_inference                       # 512x512x128 at 0.76x0.76x3 mm, full CoTr
    python -m scripts.benchmarks.bench_inference --shape "[320,320,96]" --write_docs True
    python -m scripts.benchmarks.bench_inference --overlay configs/demo.json --checkpoint demo/models/model.pt
    python -m scripts.benchmarks.bench_inference --network_standin True    # the memory of everything but the network

Without ``--checkpoint`` the network has seeded random weights: the times and memory are those of the real
network, but its near-tied logits make the Dice a worst case for agreement; a trained checkpoint gives the
agreement that matters. The compiled configuration needs a C++ compiler (``torch.compile`` on CPU).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any
from unittest import mock

import nibabel as nib
import numpy as np
import torch
import torch._inductor.config
from monai.bundle import ConfigParser, ConfigWorkflow

from scripts.benchmarks.common import (
    REPO_ROOT,
    format_bytes,
    machine_info,
    machine_line,
    markdown_table,
    load_average,
    measure_peak_rss,
    num_windows,
    set_malloc_mmap_threshold,
    update_docs_section,
)
from scripts.inferers import default_precision
from scripts.networks.decoder import CoTrDecoder
from scripts.synthetic import make_phantom, phantom_to_nifti

__all__ = ["VARIANTS", "run_benchmark", "segmentation_dice"]

#: a 1x1x1 convolution in place of CoTr: the pipeline's own memory and time (buffers, postprocessing) at full size
STANDIN_NETWORK = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": "@num_classes", "kernel_size": 1}

#: name -> config overrides; the first is the reference the others are compared with
VARIANTS: dict[str, dict[str, Any]] = {
    "straightforward (float32, 1 window per call, output layer in the paper's order)": {
        "inference_precision": "float32", "sw_batch_size": 1,
    },
    "fast, float32 (output layer projected first, encoder + decoder compiled with frozen weights)": {
        "inference_precision": "float32", "sw_batch_size": 1, "compile_network": True,
    },
    "fast, bfloat16 autocast where native (output layer projected first, 2 windows per call)": {
        "inference_precision": default_precision(), "sw_batch_size": 2,
    },
}


def paper_order_final_logits(decoder: CoTrDecoder, x: torch.Tensor) -> torch.Tensor:
    """The straightforward output layer: upsample the ``channels[0]`` maps to full resolution, then project."""
    return decoder.final_head(decoder.final_upsample(x))


def segmentation_dice(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean Dice over the labels > 0 present in either label map (1.0 when neither has any)."""
    labels = [v for v in np.union1d(np.unique(reference), np.unique(other)) if v > 0]
    scores = []
    for v in labels:
        a, b = reference == v, other == v
        scores.append(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores)) if scores else 1.0


def _write_volume(folder: str, shape: Sequence[int], spacing: Sequence[float], seed: int) -> str:
    image, label = make_phantom(shape, spacing, seed=seed)
    img, _ = phantom_to_nifti(image, label, spacing, axcodes="LPS")
    path = os.path.join(folder, "volume.nii.gz")
    nib.save(img, path)
    return path


def _checkpoint(parser: ConfigParser, path: str, seed: int) -> str:
    torch.manual_seed(seed)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def _run_variant(config_files: Sequence[str], overrides: Mapping[str, Any], paper_order: bool) -> float:
    workflow = ConfigWorkflow(config_file=list(config_files), workflow_type="infer", **overrides)
    output_layer = mock.patch.object(CoTrDecoder, "final_logits", paper_order_final_logits) if paper_order else nullcontext()
    start = time.perf_counter()
    # compile_for_inference sets Inductor's process-wide weight freezing: undone after the variant
    with output_layer, torch._inductor.config.patch(freezing=torch._inductor.config.freezing):
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    return time.perf_counter() - start


def run_benchmark(
    shape: Sequence[int] = (512, 512, 128),
    spacing: Sequence[float] = (0.76, 0.76, 3.0),
    overlay: str | None = None,
    checkpoint: str | None = None,
    network_standin: bool = False,
    seed: int = 0,
    write_docs: bool = False,
) -> dict[str, dict[str, float]]:
    """
    Run every :data:`VARIANTS` entry on one synthetic volume and print (and optionally write to
    ``docs/benchmarks.md``) their times, peak memory, speed-up and Dice against the first, which runs CoTr's
    output layer in the paper's order (:func:`paper_order_final_logits`).

    Args:
        shape: volume size (x, y, z) in voxels.
        spacing: voxel size (x, y, z) in mm.
        overlay: config overlay merged over ``configs/inference.json`` (e.g. ``configs/demo.json``).
        checkpoint: trained weights for the network; default seeded random weights.
        network_standin: replace the network by :data:`STANDIN_NETWORK`, to measure the rest of the pipeline.
        seed: seed of the phantom and of the random weights.
        write_docs: write the result table into ``docs/benchmarks.md``.
    """
    set_malloc_mmap_threshold()
    torch.manual_seed(seed)
    info = machine_info()
    config_files = [os.path.join(REPO_ROOT, "configs", "inference.json")] + ([overlay] if overlay else [])
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as work:
        inputs = os.path.join(work, "inputs")
        os.makedirs(inputs)
        if network_standin:
            config_files.append(os.path.join(work, "standin.json"))
            with open(config_files[-1], "w") as f:
                json.dump({"network_def": STANDIN_NETWORK}, f)
        start = time.perf_counter()
        _write_volume(inputs, shape, spacing, seed)
        print(f"synthetic volume {'x'.join(map(str, shape))} at {'x'.join(map(str, spacing))} mm written in {time.perf_counter() - start:.0f} s", flush=True)
        parser = ConfigParser()
        parser.read_config(config_files)
        weights = checkpoint or _checkpoint(parser, os.path.join(work, "model.pt"), seed)
        roi, overlap = parser.get_parsed_content("patch_size"), parser.get_parsed_content("sw_overlap")
        target = parser.get_parsed_content("target_spacing")
        resampled = [int(round(s * sp / t)) for s, sp, t in zip(shape, spacing, target)]
        segmentations = {}
        for index, (name, overrides) in enumerate(VARIANTS.items()):
            output = os.path.join(work, f"out{index}")
            settings = {
                "dataset_dir": inputs, "output_dir": output, "ckpt_path": weights, "num_workers": 0,
                "tta_flip_axes": [], "sw_progress": True, **overrides,
            }
            print(f"[{index + 1}/{len(VARIANTS)}] {name}: {settings}", flush=True)
            increase, _, seconds = measure_peak_rss(lambda: _run_variant(config_files, settings, paper_order=index == 0))
            segmentations[name] = np.asarray(nib.load(os.path.join(output, "volume_seg.nii.gz")).dataobj)
            results[name] = {"seconds": seconds, "peak_rss": increase}
            print(f"    {seconds:.1f} s, peak memory +{format_bytes(increase)}", flush=True)
        reference = next(iter(VARIANTS))
        for name in VARIANTS:
            results[name]["speedup"] = results[reference]["seconds"] / results[name]["seconds"]
            results[name]["dice"] = segmentation_dice(segmentations[reference], segmentations[name])
    info["load_end"] = load_average()
    network = "a 1x1x1 convolution standing in for the network" if network_standin else f"the network of {overlay or 'configs/inference.json'}"
    report = _report(results, info, shape, spacing, resampled, roi, overlap, network, checkpoint)
    print(report)
    if write_docs:
        update_docs_section("bench_inference", report)
    return results


def _report(
    results: Mapping[str, Mapping[str, float]], info: Mapping[str, str], shape: Sequence[int], spacing: Sequence[float],
    resampled: Sequence[int], roi: Sequence[int], overlap: float, network: str, checkpoint: str | None,
) -> str:
    lines = [
        "## Whole-volume inference (`bench_inference.py`)",
        "",
        f"Machine: {machine_line(dict(info))}.",
        "",
        f"The bundle's inference workflow on one synthetic abdominal CT volume of {'x'.join(map(str, shape))} voxels at "
        f"{'x'.join(f'{s:g}' for s in spacing)} mm ({'x'.join(map(str, resampled))} at the target spacing, at most "
        f"{num_windows(resampled, roi, overlap)} windows of {'x'.join(map(str, roi))} at overlap {overlap}), no test-time "
        f"augmentation; {network} with "
        f"{'weights ' + checkpoint if checkpoint else 'seeded random weights'}; the fast precision on this machine "
        f"is {default_precision()}. Time and peak memory cover the whole run (load, preprocess, compile where "
        "compiled, sliding window, postprocess, save); Dice is each segmentation against the straightforward one.",
        "",
        *markdown_table(
            ["configuration", "time", "speed-up", "peak memory", "Dice vs straightforward"],
            (
                [name, f"{r['seconds']:.1f} s", f"{r['speedup']:.2f}x", format_bytes(r["peak_rss"]), f"{r['dice']:.4f}"]
                for name, r in results.items()
            ),
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import fire

    fire.Fire(run_benchmark, serialize=lambda _: None)  # the table is printed already
