"""
Side-by-side benchmark of CoTr, CoTr*, CoTr† and MONAI's 3D segmentation networks (SwinUNETR, UNETR, SegResNet,
DynUNet), each built from the bundle's own configs: ``configs/train.json`` merged with the network's overlay
(``configs/variants/*.json``, ``configs/baselines/*.json``), so every network runs with the recipe's patch size,
batch size, loss, optimiser and sliding-window inferer. In one process on the CPU, for every network:

- parameters;
- forward: eval mode, batch 1, one training patch, ``torch.inference_mode``;
- training step: a batch of ``batch_size`` patches through the network, the config's loss (Dice + CE with deep
  supervision), backward, gradient clipping at ``grad_clip_norm`` and the config's optimiser step (what one
  ``SupervisedTrainer`` iteration of the recipe does), random labels;
- sliding-window inference of a synthetic abdominal CT volume (:func:`scripts.data.synthetic.make_phantom`,
  normalised as in the recipe): the validation inferer (Gaussian, overlap ``sw_overlap``, window = the network's
  patch, ``sw_batch_size`` windows per call), without and with flip test-time augmentation
  (:class:`scripts.engine.inferers.FlipTTAInferer` over the three axes, 8 passes per window, as ``evaluate.json`` and
  ``inference.json`` use it).

Each part is run for all networks in turn, round by round when repeated, so that a change in the machine's load
affects them alike. Times are the fastest of the timed calls: on a machine shared with other jobs, those only ever
add time, so the minimum is the figure they disturb least (as Python's ``timeit`` advises). Peak memory is the
increase of resident memory during the first timed call (:func:`scripts.benchmarks.common.times_and_peak_rss`):
activations, gradients, workspaces and output buffers, not the weights, the optimiser state or the input. Ratios
are to CoTr measured in the same run.

The defaults are the full sizes (each overlay's training patch, a 512x512x128 volume at 0.76x0.76x3 mm), which
take many hours on a small CPU; ``patch_size``, ``volume_size`` and the ``forward`` / ``train`` /
``sliding_window`` / ``tta`` switches make shorter runs.

Usage::

    python -m scripts.benchmarks.compare_networks --write_docs      # full sizes, every network
    python -m scripts.benchmarks.compare_networks --networks "[cotr,segresnet]" --patch_size "[96,96,32]" \\
        --volume_size "[144,144,48]" --tta False
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from scripts.benchmarks.common import (
    REPO_ROOT,
    format_bytes,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    num_windows,
    release_memory,
    times_and_peak_rss,
    update_docs_section,
)
from scripts.data.synthetic import make_phantom
from scripts.engine.atomic import atomic_output
from scripts.engine.inferers import FlipTTA, FlipTTAInferer

__all__ = ["NETWORKS", "METRICS", "load_config", "synthetic_volume", "build_network", "run_benchmark"]

CONFIGS = os.path.join(REPO_ROOT, "configs")
PNG_NAME = "benchmarks_networks.png"
FULL_VOLUME, FULL_SPACING = (512, 512, 128), (0.76, 0.76, 3.0)
TTA_AXES = (0, 1, 2)
DEFAULT_REPEATS = {"forward": 3, "sw": 1, "train": 2}

#: name -> (label, overlays merged over configs/train.json, paths relative to configs/); CoTr is the reference
NETWORKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cotr": ("CoTr", ()),
    "cotr_star": ("CoTr*", ("variants/cotr_star.json",)),
    "cotr_dagger": ("CoTr†", ("variants/cotr_dagger.json",)),
    "swinunetr": ("SwinUNETR", ("baselines/swinunetr.json",)),
    "unetr": ("UNETR", ("baselines/unetr.json",)),
    "segresnet": ("SegResNet", ("baselines/segresnet.json",)),
    "dynunet": ("DynUNet", ("baselines/dynunet.json",)),
}

#: measured part -> label
PARTS = {"forward": "forward", "sw": "sliding window", "tta": "SW + flip TTA", "train": "training step"}

#: measured quantity -> (column label, unit); "s" values are seconds, "B" bytes
METRICS: dict[str, tuple[str, str]] = {
    "params": ("parameters", ""),
    "forward_s": ("forward", "s"),
    "forward_mem": ("forward mem", "B"),
    "train_s": ("train step", "s"),
    "train_mem": ("train step mem", "B"),
    "sw_s": ("sliding window", "s"),
    "sw_mem": ("sliding window mem", "B"),
    "tta_s": ("SW + flip TTA", "s"),
    "tta_mem": ("SW + flip TTA mem", "B"),
}


def load_config(overlays: Sequence[str], overrides: Mapping[str, Any] | None = None) -> ConfigParser:
    """``configs/train.json`` merged with ``overlays`` (relative to ``configs/``), then config-id ``overrides``."""
    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, "train.json"), *(os.path.join(CONFIGS, o) for o in overlays)])
    parser.update(dict(overrides or {}))
    return parser


def synthetic_volume(size: Sequence[int], spacing: Sequence[float], parser: ConfigParser) -> torch.Tensor:
    """A synthetic abdominal CT phantom of ``size`` voxels, clipped and normalised as in the recipe: (1, 1, X, Y, Z)."""
    image, _ = make_phantom(size, spacing, seed=0)
    keys = ("hu_min", "hu_max", "intensity_mean", "intensity_std")
    hu_min, hu_max, mean, std = (parser.get_parsed_content(k) for k in keys)
    normalised = (np.clip(image.astype(np.float32), hu_min, hu_max) - mean) / std
    return torch.from_numpy(normalised)[None, None]


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _logged(label: str, part: str, fn: Callable[[], None]) -> Callable[[], None]:
    def call() -> None:
        _log(f"{label}: {part} ...")
        start = time.perf_counter()
        fn()
        _log(f"{label}: {part} took {time.perf_counter() - start:.2f} s")

    return call


def build_network(
    name: str,
    volume: torch.Tensor | None = None,
    patch_size: Sequence[int] | None = None,
    forward: bool = True,
    train: bool = True,
    tta: bool = True,
    precision: str = "float32",
) -> tuple[dict[str, Any], dict[str, Callable[[], None]]]:
    """
    Build network ``name`` of :data:`NETWORKS` from its config (on the CPU: peak memory is resident memory, as in
    the other benchmarks) and return its facts (``params``, ``patch``, ``batch``, ``windows``) and one call per
    part to measure: ``forward``, ``sw``, ``tta`` (sliding window without / with flip TTA) and ``train``.

    Args:
        name: a key of :data:`NETWORKS`.
        volume: normalised (1, 1, X, Y, Z) volume for sliding-window inference; None skips it.
        patch_size: training patch (x, y, z) instead of the config's ``patch_size``.
        forward: include the forward pass at one training patch (eval, batch 1).
        train: include the training step.
        tta: with ``volume``, include sliding-window inference with flip test-time augmentation.
        precision: arithmetic of the forward and sliding-window calls (see :class:`scripts.engine.inferers.FlipTTA`).
    """
    label, overlays = NETWORKS[name]
    overrides: dict[str, Any] = {"device": "$torch.device('cpu')", "amp": False, "validate#inferer#progress": True}
    if patch_size is not None:
        overrides["patch_size"] = list(patch_size)
    parser = load_config(overlays, overrides)
    network = parser.get_parsed_content("network")
    patch = parser.get_parsed_content("patch_size")
    batch = parser.get_parsed_content("batch_size")
    facts: dict[str, Any] = {
        "params": sum(p.numel() for p in network.parameters() if p.requires_grad),
        "patch": patch,
        "batch": batch,
    }
    _log(f"{label}: {facts['params']:,} parameters, patch {_size(patch)}")
    generator = torch.Generator().manual_seed(0)
    calls: dict[str, Callable[[], None]] = {}

    def inference(inputs: torch.Tensor, inferer: Callable[[torch.Tensor, torch.nn.Module], Any]) -> Callable[[], None]:
        def call() -> None:
            network.eval()
            with torch.inference_mode():
                inferer(inputs, network)

        return call

    if forward:
        patch_input = torch.randn(1, 1, *patch, generator=generator)
        # FlipTTA without flips is the network in `precision`
        calls["forward"] = inference(patch_input, lambda x, net: FlipTTA(net, (), precision)(x))
    if volume is not None:
        sliding_window = parser.get_parsed_content("validate#inferer")
        facts["windows"] = num_windows(volume.shape[2:], patch, parser.get_parsed_content("sw_overlap"))
        calls["sw"] = inference(volume, FlipTTAInferer(sliding_window, (), precision))
        if tta:
            calls["tta"] = inference(volume, FlipTTAInferer(sliding_window, TTA_AXES, precision))
    if train:
        loss_function, optimizer = parser.get_parsed_content("loss"), parser.get_parsed_content("optimizer")
        max_norm = parser.get_parsed_content("grad_clip_norm")
        images = torch.randn(batch, 1, *patch, generator=generator)
        # float labels: DeepSupervisionLoss downsamples them with nearest interpolation, which rejects integers
        labels = torch.randint(0, parser.get_parsed_content("num_classes"), (batch, 1, *patch), generator=generator)
        labels = labels.float()

        def step() -> None:
            network.train()
            optimizer.zero_grad(set_to_none=True)
            loss_function(network(images), labels).backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), max_norm)
            optimizer.step()

        calls["train"] = step
    return facts, {part: _logged(label, PARTS[part], fn) for part, fn in calls.items()}


def run_benchmark(
    networks: Sequence[str] = tuple(NETWORKS),
    patch_size: Sequence[int] | None = None,
    volume_size: Sequence[int] = FULL_VOLUME,
    volume_spacing: Sequence[float] = FULL_SPACING,
    forward: bool = True,
    train: bool = True,
    sliding_window: bool = True,
    tta: bool = True,
    precision: str = "float32",
    forward_repeats: int = DEFAULT_REPEATS["forward"],
    train_repeats: int = DEFAULT_REPEATS["train"],
    sw_repeats: int = DEFAULT_REPEATS["sw"],
    write_docs: bool = False,
    plot: bool = True,
) -> dict[str, dict[str, Any]]:
    """
    Benchmark ``networks``, print the tables and optionally update ``docs/benchmarks.md``.

    Args:
        networks: keys of :data:`NETWORKS`; CoTr, the reference of the ratios, is always included.
        patch_size: one training patch (x, y, z) for every network instead of each config's ``patch_size``; it must
            suit every network (multiples of 32 suit all).
        volume_size: sliding-window volume in voxels (x, y, z).
        volume_spacing: its voxel size in mm (shapes the synthetic anatomy only: the volume is taken as resampled).
        forward: measure the forward pass at one training patch.
        train: measure the training step.
        sliding_window: measure sliding-window inference of the volume.
        tta: with ``sliding_window``, also with flip test-time augmentation (8 passes per window).
        precision: arithmetic of the forward and sliding-window calls: ``"float32"`` (as ``evaluate.json``) or
            ``"bfloat16"`` / ``"float16"`` autocast (``inference.json`` on a CPU with native bfloat16). Training
            steps run in float32 (the recipe uses mixed precision on CUDA only).
        forward_repeats: timed forward calls per network (after one warm-up).
        train_repeats: timed training steps per network (after one warm-up step).
        sw_repeats: timed sliding-window calls per network, with and without TTA (no warm-up: a call covers many
            windows).
        write_docs: replace this benchmark's section of ``docs/benchmarks.md``.
        plot: with ``write_docs``, also draw the ratios into ``docs/benchmarks_networks.png``.
    """
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        raise ValueError(f"unknown networks {unknown}; choose among {list(NETWORKS)}.")
    names = ["cotr"] + [n for n in NETWORKS if n in networks and n != "cotr"]
    info = machine_info()
    print(machine_line(info), flush=True)
    volume = synthetic_volume(volume_size, volume_spacing, load_config(())) if sliding_window else None
    results, calls = {}, {}
    for name in names:
        results[name], calls[name] = build_network(name, volume, patch_size, forward, train, tta, precision)
    repeats = {"forward": forward_repeats, "sw": sw_repeats, "tta": sw_repeats, "train": train_repeats}
    for part, count in repeats.items():
        functions = {name: calls[name][part] for name in names if part in calls[name]}
        if functions:
            times, memory = times_and_peak_rss(functions, count, warmup=0 if part in ("sw", "tta") else 1)
            for name in functions:
                results[name].update({f"{part}_s": min(times[name]), f"{part}_mem": memory[name]})
    release_memory()
    add_ratios(results)
    info["load_end"] = load_average()
    settings = {
        "patch_size": patch_size,
        "volume_size": tuple(volume_size) if sliding_window else None,
        "volume_spacing": tuple(volume_spacing),
        "precision": precision,
        "repeats": repeats,
    }
    text = report(results, info, settings)
    print(text)
    if write_docs:
        sizes = f"patch {_size(patch_size) if patch_size else 'as configured'}"
        sizes += f", volume {_size(volume_size)}" if sliding_window else ""
        title = f"Ratios to CoTr on {info['cpu']} ({info['cores']} cores), {sizes}"
        if plot and _plot(results, os.path.join(REPO_ROOT, "docs", PNG_NAME), title):
            text += f"\n![CoTr vs MONAI networks, ratios to CoTr]({PNG_NAME})\n"
        print("updated", update_docs_section("compare_networks", text))
    return results


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    """Add ``ratios``: every measured value divided by CoTr's (NaN where CoTr's is 0)."""
    reference = results["cotr"]
    for result in results.values():
        measured = [k for k in METRICS if k in result and k in reference]
        result["ratios"] = {k: result[k] / reference[k] if reference[k] else float("nan") for k in measured}


def _format(value: float, unit: str) -> str:
    if unit == "B":
        return format_bytes(value)
    if unit == "s":
        return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"
    return f"{value / 1e6:.1f}M"


def _size(values: Sequence[int] | None) -> str:
    return "x".join(map(str, values)) if values else "-"


def _command(settings: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    parts = ["python -m scripts.benchmarks.compare_networks"]
    if settings["patch_size"]:
        parts.append(f'--patch_size "[{",".join(map(str, settings["patch_size"]))}]"')
    if settings["volume_size"] and settings["volume_size"] != FULL_VOLUME:
        parts.append(f'--volume_size "[{",".join(map(str, settings["volume_size"]))}]"')
    if settings["precision"] != "float32":
        parts.append(f"--precision {settings['precision']}")
    if settings["volume_spacing"] != FULL_SPACING:
        parts.append(f'--volume_spacing "[{",".join(map(str, settings["volume_spacing"]))}]"')
    for part, count in settings["repeats"].items():
        if part != "tta" and count != DEFAULT_REPEATS[part]:
            parts.append(f"--{part}_repeats {count}")
    if set(results) != set(NETWORKS):
        parts.append(f'--networks "[{",".join(results)}]"')
    return " ".join(parts + ["--write_docs"])


def report(results: dict[str, dict[str, Any]], info: dict[str, str], settings: Mapping[str, Any]) -> str:
    """The docs section: what was measured at which size, the ratio table and the absolute table."""
    columns = [k for k in METRICS if any(k in r for r in results.values())]
    repeats = settings["repeats"]
    first = next(iter(results.values()))
    full_patches = {name: load_config(NETWORKS[name][1]).get_parsed_content("patch_size") for name in results}
    reduced_patch = settings["patch_size"] is not None
    reduced_volume = settings["volume_size"] is not None and settings["volume_size"] != FULL_VOLUME
    volume = settings["volume_size"]
    lines = [
        "## CoTr vs MONAI's 3D segmentation networks",
        "",
        f"`{_command(settings, results)}` — machine: {machine_line(info)}.",
        "",
    ]
    if reduced_patch or reduced_volume:
        lines += [
            "**Measured at reduced sizes, not the full ones**: on a CPU a CoTr forward of one 192x192x48 window takes "
            "seconds, so the full-size run (125 windows per volume, x8 with flip TTA, for 7 networks) takes many "
            "hours. Sizes measured here:",
            "",
        ]
    else:
        lines += ["Full sizes:", ""]
    configured = ", ".join(f"{NETWORKS[n][0]} {_size(p)}" for n, p in full_patches.items())
    if reduced_patch:
        lines.append(
            f"- training patch: {_size(settings['patch_size'])} for every network, instead of the configured "
            f"patches ({configured});"
        )
    else:
        lines.append(f"- training patch: each network's configured `patch_size` ({configured});")
    if volume:
        spacing = "x".join(f"{s:g}" for s in settings["volume_spacing"])
        lines.append(
            f"- sliding-window volume: {_size(volume)} voxels at {spacing} mm (synthetic phantom)"
            + (f" instead of {_size(FULL_VOLUME)}" if reduced_volume else "")
            + f", {first.get('windows', '-')} windows per volume for CoTr (overlap 0.5, Gaussian weighting)."
        )
    lines += [
        "",
        "Full-size run (the issue's sizes; many hours on this CPU): `python -m scripts.benchmarks.compare_networks "
        "--write_docs`.",
        "",
        "Every network is `configs/train.json` + its overlay (CoTr* `variants/cotr_star.json`, CoTr† "
        "`variants/cotr_dagger.json`, the others `baselines/<name>.json`): same loss (Dice + CE, deep supervision "
        "where the network has it: CoTr and DynUNet), optimiser, batch and inferer. Forward: eval, batch 1; training "
        f"step: batch {first.get('batch', '-')}, forward + loss + backward + gradient clipping + SGD step, random "
        "labels; sliding window: `validate#inferer` (window = training patch, `sw_batch_size` windows per call) over a "
        "synthetic CT phantom, and the same wrapped in `FlipTTAInferer` over the 3 axes (8 passes per window). "
        f"Forward and sliding window in {settings['precision']}, training in float32. Times: the fastest of "
        f"{repeats['forward']} forwards / {repeats['train']} training steps after one warm-up / {repeats['sw']} "
        "sliding-window calls; each part runs for all networks in turn, round by round, and the machine is shared "
        "with other jobs, which only ever add time. Memory: peak RSS increase of the first timed call (activations, "
        "gradients, output buffers; not the weights or optimiser state).",
        "",
        "### Ratios to CoTr (same run; below 1 = faster or smaller than CoTr)",
        "",
        *markdown_table(
            ["network", *(METRICS[k][0] for k in columns)],
            (
                [NETWORKS[name][0], *("-" if math.isnan(r["ratios"][k]) else f"{r['ratios'][k]:.2f}x" for k in columns)]
                for name, r in results.items()
            ),
        ),
        "",
        "### Absolute values",
        "",
        *markdown_table(
            ["network", "overlay", "patch", *(METRICS[k][0] for k in columns)],
            (
                [
                    NETWORKS[name][0],
                    ", ".join(f"`{o}`" for o in NETWORKS[name][1]) or "(none)",
                    _size(r["patch"]),
                    *(_format(r[k], METRICS[k][1]) if k in r else "-" for k in columns),
                ]
                for name, r in results.items()
            ),
        ),
        "",
        "SwinUNETR needs sizes divisible by 32, so its overlay trains on 192x192x64 patches (the smallest such patch "
        "containing CoTr's 192x192x48) and slides 192x192x64 windows; UNETR's `img_size` is the patch size. DynUNet "
        "is `scripts.networks.baselines.DeepSupervisionDynUNet`: MONAI's DynUNet with an nnU-Net-style plan for this "
        "patch and spacing, returning its 3 deep-supervision heads at their own resolution as a list (CoTr's form), so "
        "`DeepSupervisionLoss` weights them 8/15, 4/15, 2/15, 1/15 against downsampled labels as for CoTr.",
    ]
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, dict[str, Any]], path: str, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return None
    panels = {
        "time / CoTr": [k for k in METRICS if METRICS[k][1] == "s"],
        "parameters and peak memory / CoTr": [k for k in METRICS if METRICS[k][1] != "s"],
    }
    names = [n for n in results if n != "cotr"]
    ratios = [v for n in names for v in results[n]["ratios"].values() if v > 0]
    ticks = [2.0**k for k in range(math.floor(math.log2(min(ratios))), math.ceil(math.log2(max(ratios))) + 1)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.2 + 1.1 * len(names)), squeeze=False)
    for ax, (panel, keys) in zip(axes[0], panels.items()):
        keys = [k for k in keys if k in results["cotr"]["ratios"]]
        height = 0.8 / max(len(keys), 1)
        for i, key in enumerate(keys):
            positions = [j + (i - (len(keys) - 1) / 2) * height for j in range(len(names))]
            ax.barh(positions, [results[n]["ratios"][key] for n in names], height=height, label=METRICS[key][0])
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{panel} (log scale; line = CoTr)", fontsize=10)
        ax.set_yticks(range(len(names)), [NETWORKS[n][0] for n in names])
        ax.invert_yaxis()
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_output(path, suffix=".tmp.png") as temporary:
        fig.savefig(temporary, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import fire

    fire.Fire(run_benchmark, serialize=lambda _: None)  # the tables are printed already
