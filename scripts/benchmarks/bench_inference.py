"""
Whole-volume inference benchmark: the bundle's real inference (``configs/inference.json``: load, resample, crop,
normalise, Gaussian sliding window, labels in the original geometry, save) on a synthetic
abdominal CT volume, measured side by side in one run for a straightforward configuration (float32, one window
at a time, CoTr's output layer in the paper's order) and two fast ones: exact float32 arithmetic (the output layer
projected before upsampling, encoder and decoder compiled with frozen weights) and bfloat16 autocast where the CPU
computes it natively: wall time, peak resident memory and the Dice of each segmentation against the
straightforward one.

With ``--streaming True`` it compares instead the whole-volume inferer and postprocessing the configs had before
(sliding window, then softmax, ``Invertd`` and argmax of whole-volume probabilities) with the streaming one,
:class:`scripts.engine.streaming.StreamingSegmentationInferer` (labels straight in the original geometry, bounded
memory), each in its own process: peak memory of the whole run and of the case's inference + postprocessing, time,
windows, seconds per window and the Dice of the streaming labels against the whole-volume ones, for every size in
``--shapes``.

Usage::

    python -m scripts.benchmarks.bench_inference                       # 512x512x128 at 0.76x0.76x3 mm, full CoTr
    python -m scripts.benchmarks.bench_inference --shape "[320,320,96]" --write_docs True
    python -m scripts.benchmarks.bench_inference --overlay configs/demo.json --checkpoint demo/models/model.pt
    python -m scripts.benchmarks.bench_inference --network_standin True    # the memory of everything but the network
    python -m scripts.benchmarks.bench_inference --streaming True --shapes "[[512,512,300]]"  # ~1 h on 2 CPU cores
    python -m scripts.benchmarks.bench_inference --streaming True --network_standin True \\
        --shapes "[[512,512,300],[512,512,1000]]"

Without ``--checkpoint`` the network has seeded random weights: the times and memory are those of the real
network, but its near-tied logits make the Dice a worst case for agreement; a trained checkpoint gives the
agreement that matters. The compiled configuration needs a C++ compiler (``torch.compile`` on CPU).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import resource
import shutil
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
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow

from scripts.benchmarks.common import (
    REPO_ROOT,
    _peak_rss,
    _reset_peak_rss,
    current_rss,
    format_bytes,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    measure_peak_rss,
    num_windows,
    release_memory,
    set_malloc_mmap_threshold,
    update_docs_section,
)
from scripts.data.synthetic import make_phantom, phantom_to_nifti
from scripts.engine.inferers import default_precision
from scripts.networks.decoder import CoTrDecoder

__all__ = [
    "VARIANTS",
    "STREAMING_INFERER",
    "WHOLE_VOLUME_INFERER",
    "comparison_overrides",
    "run_benchmark",
    "run_streaming_benchmark",
    "segmentation_dice",
]

#: a 1x1x1 convolution in place of CoTr: the pipeline's own memory and time (buffers, postprocessing) at full size
STANDIN_NETWORK = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": "@num_classes", "kernel_size": 1}

#: how the reports name the stand-in
STANDIN_DESCRIPTION = "a 1x1x1 convolution standing in for the network"

#: name -> config overrides; the first is the reference the others are compared with
VARIANTS: dict[str, dict[str, Any]] = {
    "straightforward (float32, 1 window per call, output layer in the paper's order)": {
        "inference_precision": "float32",
        "sw_batch_size": 1,
    },
    "fast, float32 (output layer projected first, encoder + decoder compiled with frozen weights)": {
        "inference_precision": "float32",
        "sw_batch_size": 1,
        "compile_network": True,
    },
    "fast, bfloat16 autocast where native (output layer projected first, 2 windows per call)": {
        "inference_precision": default_precision(),
        "sw_batch_size": 2,
    },
}


#: the streaming inferer with the settings of ``configs/inference.json``, padding with air as training does
STREAMING_INFERER: dict[str, Any] = {
    "_target_": "scripts.engine.streaming.StreamingSegmentationInferer",
    "roi_size": "@patch_size",
    "sw_batch_size": "@sw_batch_size",
    "overlap": "@sw_overlap",
    "mode": "gaussian",
    "pad_value": "@background_value",
    "tta_axes": "@tta_flip_axes",
    "precision": "@inference_precision",
    "progress": "@sw_progress",
}

#: the inferer before the streaming one: whole-volume logits (padding with air too, so that only the method differs)
WHOLE_VOLUME_INFERER: dict[str, Any] = {
    "_target_": "scripts.engine.inferers.FlipTTAInferer",
    "inferer": {
        "_target_": "SlidingWindowInferer",
        "roi_size": "@patch_size",
        "sw_batch_size": "@sw_batch_size",
        "overlap": "@sw_overlap",
        "mode": "gaussian",
        "cval": "@background_value",
        "progress": "@sw_progress",
    },
    "spatial_axes": "@tta_flip_axes",
    "precision": "@inference_precision",
}

#: the postprocessing before the streaming inferer, ahead of saving: softmax, back to the original geometry, argmax
WHOLE_VOLUME_POSTPROCESSING: list[dict[str, Any]] = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {
        "_target_": "Invertd",
        "keys": "pred",
        "transform": "@preprocessing",
        "orig_keys": "image",
        "nearest_interp": False,
        "to_tensor": True,
    },
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
]

#: longest phantom drawn at once; longer volumes stack phantoms along Z (drawing costs ~55 bytes per voxel)
PHANTOM_MAX_SLICES = 256

#: seconds a variant's process may take to exit after its result, before it is killed
CHILD_EXIT_S = 60

#: share of the memory available when a variant starts that it may take (its allocations past it fail, reported)
MEMORY_SHARE = 0.8


def comparison_overrides(parser: ConfigParser) -> dict[str, dict[str, Any]]:
    """
    ``"whole_volume"`` and ``"streaming"``: overrides of ``parser``'s inference config with :data:`WHOLE_VOLUME_INFERER`
    and :data:`WHOLE_VOLUME_POSTPROCESSING` before the config's saving transforms, and with :data:`STREAMING_INFERER`
    and the saving transforms alone (whichever inferer the config has).
    """
    streamed = {t["_target_"] for t in WHOLE_VOLUME_POSTPROCESSING}

    def is_streamed(t: Any) -> bool:
        target = t.get("_target_") if isinstance(t, dict) else None
        return target in streamed and (target != "AsDiscreted" or bool(t.get("argmax")))

    saving = [t for t in parser["postprocessing"]["transforms"] if not is_streamed(t)]
    return {
        "whole_volume": {
            "inferer": WHOLE_VOLUME_INFERER,
            "postprocessing": {"_target_": "Compose", "transforms": WHOLE_VOLUME_POSTPROCESSING + saving},
        },
        "streaming": {"inferer": STREAMING_INFERER, "postprocessing": {"_target_": "Compose", "transforms": saving}},
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
    """An LPS phantom of ``shape`` in ``folder``: phantoms of at most :data:`PHANTOM_MAX_SLICES` stacked along Z."""
    lengths = [len(part) for part in np.array_split(np.arange(shape[2]), -(-shape[2] // PHANTOM_MAX_SLICES))]
    pairs = [make_phantom((*shape[:2], n), spacing, seed=seed + index) for index, n in enumerate(lengths)]
    image, label = (np.concatenate(arrays, axis=2) for arrays in zip(*pairs))
    del pairs
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
    output_layer = (
        mock.patch.object(CoTrDecoder, "final_logits", paper_order_final_logits) if paper_order else nullcontext()
    )
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
        print(
            f"synthetic volume {'x'.join(map(str, shape))} at {'x'.join(map(str, spacing))} mm written in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
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
                "dataset_dir": inputs,
                "output_dir": output,
                "ckpt_path": weights,
                "num_workers": 0,
                "tta_flip_axes": [],
                "sw_progress": True,
                **overrides,
            }
            print(f"[{index + 1}/{len(VARIANTS)}] {name}: {settings}", flush=True)
            increase, _, seconds = measure_peak_rss(
                lambda: _run_variant(config_files, settings, paper_order=index == 0)
            )
            segmentations[name] = np.asarray(nib.load(os.path.join(output, "volume_seg.nii.gz")).dataobj)
            results[name] = {"seconds": seconds, "peak_rss": increase}
            print(f"    {seconds:.1f} s, peak memory +{format_bytes(increase)}", flush=True)
        reference = next(iter(VARIANTS))
        for name in VARIANTS:
            results[name]["speedup"] = results[reference]["seconds"] / results[name]["seconds"]
            results[name]["dice"] = segmentation_dice(segmentations[reference], segmentations[name])
    info["load_end"] = load_average()
    network = STANDIN_DESCRIPTION if network_standin else f"the network of {overlay or 'configs/inference.json'}"
    report = _report(results, info, shape, spacing, resampled, roi, overlap, network, checkpoint)
    print(report)
    if write_docs:
        update_docs_section("bench_inference", report)
    return results


def _report(
    results: Mapping[str, Mapping[str, float]],
    info: Mapping[str, str],
    shape: Sequence[int],
    spacing: Sequence[float],
    resampled: Sequence[int],
    roi: Sequence[int],
    overlap: float,
    network: str,
    checkpoint: str | None,
) -> str:
    lines = [
        "## Whole-volume inference (`bench_inference.py`)",
        "",
        f"Machine: {machine_line(dict(info))}.",
        "",
        f"The bundle's inference workflow on one synthetic abdominal CT volume of {'x'.join(map(str, shape))} voxels "
        f"at {'x'.join(f'{s:g}' for s in spacing)} mm ({'x'.join(map(str, resampled))} at the target spacing, "
        f"at most {num_windows(resampled, roi, overlap)} windows of {'x'.join(map(str, roi))} at overlap {overlap}), "
        f"no test-time augmentation; {network} with "
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


def _run_measured(config_files: Sequence[str], overrides: Mapping[str, Any]) -> dict[str, float]:
    """
    Run the inference workflow once (one case) and measure it: whole-run time and peak RSS increase, and from the
    case's start (its preprocessed image loaded) to the end of its postprocessing, the time and peak RSS increase.
    """
    workflow = ConfigWorkflow(config_file=list(config_files), workflow_type="infer", **overrides)
    result: dict[str, float] = {"windows": 0}
    marks: dict[str, float] = {}  # at the case's start

    def case_started(_: Any) -> None:
        release_memory()
        marks.update(peak=_peak_rss(), rss=current_rss(), start=time.perf_counter())  # peak: the whole run's so far
        _reset_peak_rss()

    def case_completed(_: Any) -> None:
        result["case_seconds"] = time.perf_counter() - marks["start"]
        result["case_peak_rss"] = max(_peak_rss() - marks["rss"], 0)

    def count_windows(_: Any, args: tuple[torch.Tensor, ...]) -> None:
        result["windows"] += args[0].shape[0]

    release_memory()
    rss = current_rss()
    _reset_peak_rss()
    start = time.perf_counter()
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")
    workflow.parser.get_parsed_content("network").register_forward_pre_hook(count_windows)
    evaluator.add_event_handler(Events.ITERATION_STARTED, case_started)
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, case_completed)
    workflow.run()
    workflow.finalize()
    result["seconds"] = time.perf_counter() - start
    result["peak_rss"] = max(max(marks.get("peak", 0), _peak_rss()) - rss, 0)
    return result


def _measure_in_child(connection: Any, config_files: Sequence[str], overrides: Mapping[str, Any], limit: int) -> None:
    """Process entry: :func:`_run_measured` with at most ``limit`` bytes more address space; sends the result."""
    set_malloc_mmap_threshold()
    with open("/proc/self/statm") as f:
        address_space = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    # an allocation past the limit fails (and is reported) instead of driving a shared machine out of memory
    resource.setrlimit(resource.RLIMIT_AS, (address_space + limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        connection.send(_run_measured(config_files, overrides))
    except Exception as e:  # reported in the table, e.g. out of memory: the innermost error says what failed
        while e.__cause__ is not None:
            e = e.__cause__
        connection.send({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]})
    finally:
        connection.close()


def _available_memory() -> int:
    """Bytes of memory the system can give without swapping (``MemAvailable``)."""
    with open("/proc/meminfo") as f:
        return int(re.search(r"^MemAvailable:\s*(\d+)\s*kB", f.read(), flags=re.MULTILINE).group(1)) * 1024


def _measure_in_process(
    config_files: Sequence[str], overrides: Mapping[str, Any], memory_limit: int, timeout_s: float
) -> dict[str, Any]:
    """
    :func:`_run_measured` in a fresh process, so that its peak memory is its own; a failure comes back as
    ``error``.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_measure_in_child, args=(sender, list(config_files), dict(overrides), memory_limit)
    )
    process.start()
    sender.close()  # only the child writes: a child that dies closes the pipe
    try:
        result = receiver.recv() if receiver.poll(timeout_s) else {"error": f"not done after {timeout_s:.0f} s"}
    except EOFError:  # died without a word (killed by the system)
        result = None
    process.join(timeout=CHILD_EXIT_S)
    if process.is_alive():
        process.kill()
        process.join()
    return result or {"error": f"process died with exit code {process.exitcode}"}


def run_streaming_benchmark(
    shapes: Sequence[Sequence[int]] = ((512, 512, 300),),
    spacing: Sequence[float] = (0.76, 0.76, 3.0),
    overlay: str | None = None,
    checkpoint: str | None = None,
    network_standin: bool = False,
    seed: int = 0,
    memory_limit_gib: float | None = None,
    timeout_s: float = 4 * 3600,
    write_docs: bool = False,
) -> dict[str, dict[str, dict[str, Any]]]:
    """
    For each volume size in ``shapes``: the inference workflow with the whole-volume inferer and postprocessing, then
    with :data:`STREAMING_INFERER` (:func:`comparison_overrides`), each in its own process; print (and optionally write
    to ``docs/benchmarks.md``) their peak memory, times, windows, seconds per window and the Dice of the streaming
    labels against the whole-volume ones. float32, no test-time augmentation, one window per network call.

    Args:
        shapes: volume sizes (x, y, z) in voxels.
        spacing: voxel size (x, y, z) in mm of the volumes; the default is the target spacing, so that only the
            whole-volume postprocessing of the probabilities (not a resampling) weighs on its memory.
        overlay: config overlay merged over ``configs/inference.json``.
        checkpoint: trained weights for the network; default seeded random weights.
        network_standin: replace the network by :data:`STANDIN_NETWORK`, to measure the rest of the pipeline.
        seed: seed of the phantoms and of the random weights.
        memory_limit_gib: address space a variant may add, past which its allocations fail and the table says so;
            default :data:`MEMORY_SHARE` of the memory available when it starts.
        timeout_s: time a variant may take before it is stopped and reported as not done.
        write_docs: write the table into ``docs/benchmarks.md``.

    Returns:
        shape (``"XxYxZ"``) -> ``"whole_volume"`` / ``"streaming"`` -> measurements (or ``error``), and for the
        shape's streaming run ``dice`` and ``peak_ratio`` (the whole-volume case peak over the streaming one) where the
        whole-volume run finished.
    """
    set_malloc_mmap_threshold()
    torch.manual_seed(seed)
    info = machine_info()
    config_files = [os.path.join(REPO_ROOT, "configs", "inference.json")] + ([overlay] if overlay else [])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as work:
        if network_standin:
            config_files.append(os.path.join(work, "standin.json"))
            with open(config_files[-1], "w") as f:
                json.dump({"network_def": STANDIN_NETWORK}, f)
        parser = ConfigParser()
        parser.read_config(config_files)
        weights = checkpoint or _checkpoint(parser, os.path.join(work, "model.pt"), seed)
        variants = comparison_overrides(parser)
        for shape in shapes:
            key = "x".join(map(str, shape))
            inputs = os.path.join(work, key)
            os.makedirs(inputs)
            start = time.perf_counter()
            _write_volume(inputs, shape, spacing, seed)
            print(
                f"synthetic volume {key} at {'x'.join(map(str, spacing))} mm written in "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
            results[key] = {}
            for name, overrides in variants.items():
                output = os.path.join(work, f"{key}_{name}")
                settings = {
                    "dataset_dir": inputs,
                    "output_dir": output,
                    "ckpt_path": weights,
                    "num_workers": 0,
                    "tta_flip_axes": [],
                    "inference_precision": "float32",
                    "sw_batch_size": 1,
                    "sw_progress": False,
                    "debug": True,  # a failing case raises (reported with its cause) instead of being skipped
                    **overrides,
                }
                print(f"[{key}] {name}", flush=True)
                limit = (
                    int(memory_limit_gib * (1 << 30)) if memory_limit_gib else int(MEMORY_SHARE * _available_memory())
                )
                measured = _measure_in_process(config_files, settings, limit, timeout_s)
                measured["memory_limit"] = limit
                if "error" not in measured:
                    measured["labels"] = os.path.join(output, "volume_seg.nii.gz")
                print(f"    {measured}", flush=True)
                results[key][name] = measured
            whole, streaming = results[key]["whole_volume"], results[key]["streaming"]
            if "error" not in whole and "error" not in streaming:
                labels = [np.asarray(nib.load(r.pop("labels")).dataobj) for r in (whole, streaming)]
                streaming["dice"] = segmentation_dice(*labels)
                streaming["peak_ratio"] = whole["case_peak_rss"] / max(streaming["case_peak_rss"], 1)
            shutil.rmtree(inputs)
    info["load_end"] = load_average()
    options = [f'--shapes "{json.dumps([list(s) for s in shapes], separators=(",", ":"))}"']
    if tuple(spacing) != (0.76, 0.76, 3.0):
        options.append(f'--spacing "{json.dumps(list(spacing), separators=(",", ":"))}"')
    options += [
        f"--{k} {v}"
        for k, v in (("network_standin", network_standin), ("overlay", overlay), ("checkpoint", checkpoint))
        if v
    ]
    command = " ".join(["python -m scripts.benchmarks.bench_inference --streaming True", *options])
    network = STANDIN_DESCRIPTION if network_standin else f"the network of {overlay or 'configs/inference.json'}"
    report = _streaming_report(results, info, spacing, parser, network, checkpoint, command)
    print(report)
    if write_docs:
        update_docs_section("bench_inference_streaming" + ("_standin" if network_standin else ""), report)
    return results


def _streaming_report(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    info: Mapping[str, str],
    spacing: Sequence[float],
    parser: ConfigParser,
    network: str,
    checkpoint: str | None,
    command: str,
) -> str:
    def cells(r: Mapping[str, Any]) -> list[str]:
        if "error" in r:
            return [f"failed (allowed +{format_bytes(r['memory_limit'])}): {r['error']}", "", "", "", "", ""]
        return [
            f"{r['seconds']:.1f} s",
            f"{r['case_seconds']:.1f} s",
            str(r["windows"]),
            f"{r['case_seconds'] / max(r['windows'], 1):.2f} s",
            format_bytes(r["peak_rss"]),
            format_bytes(r["case_peak_rss"]),
        ]

    rows = []
    for key, variants in results.items():
        streaming = variants["streaming"]
        ratio = f"{streaming['peak_ratio']:.1f}x" if "peak_ratio" in streaming else "n/a"
        dice = f"{streaming['dice']:.4f}" if "dice" in streaming else "n/a"
        rows.append(
            [key, "whole volume: sliding window, softmax, `Invertd`, argmax", *cells(variants["whole_volume"]), "", ""]
        )
        rows.append([key, "`StreamingSegmentationInferer`", *cells(streaming), ratio, dice])
    lines = [
        "## Streaming inference vs the whole-volume postprocessing"
        f"{' (stand-in network)' if network == STANDIN_DESCRIPTION else ''}",
        "",
        f"`{command}` — machine: {machine_line(dict(info))}.",
        "",
        "The bundle's inference workflow on one synthetic abdominal CT volume per size at "
        f"{'x'.join(f'{s:g}' for s in spacing)} mm "
        f"(LPS; preprocessed to {'x'.join(f'{s:g}' for s in parser.get_parsed_content('target_spacing'))} mm and "
        "cropped to the body), "
        f"windows of {'x'.join(map(str, parser.get_parsed_content('patch_size')))} at overlap "
        f"{parser.get_parsed_content('sw_overlap')}, one per network call, float32, no test-time augmentation; "
        f"{network} with "
        f"{'weights ' + checkpoint if checkpoint else 'seeded random weights'}. Each configuration runs in its own "
        "process, with a limit on the address space it may add. Whole run: load, preprocess, infer, postprocess, "
        "save; case: from the preprocessed image loaded to the end of its postprocessing (saving included). Peak "
        "memory is the peak RSS increase over the start of each; the ratio is the whole-volume case peak over the "
        "streaming one; Dice: the streaming labels against the whole-volume ones.",
        "",
        *markdown_table(
            [
                "volume",
                "configuration",
                "whole run",
                "case",
                "windows",
                "case time per window",
                "peak memory, whole run",
                "peak memory, case",
                "case peak ratio",
                "Dice vs whole volume",
            ],
            rows,
        ),
    ]
    return "\n".join(lines) + "\n"


def main(streaming: bool = False, **kwargs: Any) -> Any:
    """Command line: :func:`run_benchmark`, or with ``--streaming True`` :func:`run_streaming_benchmark`."""
    return (run_streaming_benchmark if streaming else run_benchmark)(**kwargs)


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda _: None)  # the table is printed already
