"""
Benchmark of 3D multi-scale deformable self-attention (MS-DMSA) at CoTr's real shapes, against dense attention.

Shapes: batch 2, two levels of 24x24x12 and 12x12x6 tokens (7,776 tokens; what the DeTrans sees for a
192x192x48 patch), d_model 384, 6 heads of 64 channels, 4 points per head and level. Variants, in one run:

- (i) ``grid_sample``: :func:`scripts.networks.ms_deform_attn.ms_deform_attn_3d_grid_sample` (baseline; the
  path used while tracing / exporting);
- (ii) ``gather``: :func:`scripts.networks.ms_deform_attn.ms_deform_attn_3d_gather` (the default in eager mode);
- alternatives of (ii) that were measured to choose it: the same gather with the stock ``embedding_bag``
  autograd backward, and with the corner dot products taken from ``embedding_bag``'s backward (what the kernel
  does off-CPU) instead of a sampled dense-dense product;
- (iii) dense multi-head self-attention over the same tokens, ``softmax(Q K^T / sqrt(64)) V`` written out
  (the attention matrix is materialised, as in a standard Transformer), and for information
  ``F.scaled_dot_product_attention`` (a fused flash-attention kernel on CPU that does not store it).

Every variant is the attention core only (no projections; they are the same linear layers either way).
Times: median wall-clock of ``repeats`` interleaved calls after one warm-up (dense attention: no warm-up, a
call takes seconds); forward under ``no_grad``, forward+backward with gradients to every input. Peak memory:
each variant in a fresh subprocess (glibc ``mallopt(M_MMAP_THRESHOLD=64 KiB)`` so freed tensors leave RSS at
once), the peak RSS increase of one call; see :func:`scripts.benchmarks.common.measure_peak_rss`.

Usage::

    python -m scripts.benchmarks.bench_ms_deform_attn                  # print the table
    python -m scripts.benchmarks.bench_ms_deform_attn --write_docs     # and update docs/benchmarks.md + PNG
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from unittest import mock

import torch
import torch.nn.functional as F

from scripts.benchmarks.common import (
    REPO_ROOT,
    format_bytes,
    load_average,
    machine_info,
    machine_line,
    measure_peak_rss,
    median,
    median_times,
    set_malloc_mmap_threshold,
    update_docs_section,
)
from scripts.networks import ms_deform_attn as msda
from scripts.networks import ms_deform_attn_gather

__all__ = ["VARIANTS", "make_case", "memory_worker", "run_benchmark"]

SHAPES = ((24, 24, 12), (12, 12, 6))
BATCH, D_MODEL, HEADS, POINTS = 2, 384, 6, 4
SPEEDUP_TARGET, MEMORY_TARGET = 1.5, 10.0

# name -> label; the order is the table's
VARIANTS = {
    "grid_sample": "(i) MS-DMSA, grid_sample (baseline)",
    "gather": "(ii) MS-DMSA, fused gather (default)",
    "gather_autograd": "(ii) alternative: gather + stock embedding_bag autograd",
    "gather_eb_dots": "(ii) alternative: corner dots by embedding_bag backward (off-CPU path)",
    "dense": "(iii) dense MHSA, softmax(QK^T)V",
    "dense_sdpa": "dense MHSA, F.scaled_dot_product_attention (flash)",
}
MSDA_VARIANTS = ("grid_sample", "gather", "gather_autograd", "gather_eb_dots")
DENSE_VARIANTS = ("dense", "dense_sdpa")


def _gather_stock_autograd(value, shapes, locations, weights):
    """
    The gather of (ii) written with broadcasting tensor ops and differentiated by autograd (``embedding_bag``'s own
    backward, autograd through the trilinear weights) instead of (ii)'s written-out backward.
    """
    batch, num_tokens, heads, channels = value.shape
    device = value.device
    size = torch.tensor(shapes, device=device, dtype=locations.dtype)[:, None, :]  # (L, 1, 3)
    position = locations * size - 0.5
    floor = position.floor().detach()
    frac = position - floor
    inside = torch.stack(((floor >= 0) & (floor <= size - 1), (floor >= -1) & (floor <= size - 2)), dim=-1)
    axis_weights = torch.stack((1 - frac, frac), dim=-1) * inside  # (B, L_q, H, L, K, 3, 2)
    lower = floor.clamp(min=-1).minimum(size - 1).long()
    last = torch.tensor(shapes, device=device)[:, None, :] - 1
    strides = torch.tensor([(y * z * heads, z * heads, heads) for _, y, z in shapes], device=device)[:, None, :]
    axis_rows = torch.stack((lower.clamp_min(0), torch.minimum(lower + 1, last)), dim=-1) * strides[..., None]
    starts = torch.tensor([0] + [x * y * z for x, y, z in shapes[:-1]], device=device).cumsum(0)
    first_row = (torch.arange(batch, device=device).view(-1, 1, 1, 1) * num_tokens + starts) * heads
    first_row = first_row + torch.arange(heads, device=device).view(1, 1, -1, 1)  # (B, 1, H, L)
    x_rows = axis_rows[..., 0, :] + first_row[..., None, None]
    rows = ((x_rows[..., :, None] + axis_rows[..., 1, None, :])[..., None] + axis_rows[..., 2, None, None, :]).flatten(
        -3
    )
    weight_x, weight_y, weight_z = axis_weights.unbind(-2)
    weight_xy = (weight_x * weights[..., None])[..., :, None] * weight_y[..., None, :]
    corner_weights = (weight_xy[..., None] * weight_z[..., None, None, :]).flatten(-3)
    bags = batch * locations.shape[1] * heads
    out = F.embedding_bag(
        rows.view(bags, -1), value.reshape(-1, channels), per_sample_weights=corner_weights.view(bags, -1), mode="sum"
    )
    return out.view(batch, locations.shape[1], heads * channels)


def _eb_dots_patch() -> contextlib.AbstractContextManager:
    """While active, the gather's backward takes its corner dot products from embedding_bag (the non-CPU choice)."""
    dense = functools.partial(ms_deform_attn_gather._corner_dots, sparse=False)
    return mock.patch.object(ms_deform_attn_gather, "_corner_dots", dense)


def _dense_explicit(q, k, v):
    attn = (q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5)).softmax(-1)
    return (attn @ v).transpose(1, 2).flatten(2)


def _dense_sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


def make_case(variant: str, seed: int = 0) -> tuple[list[torch.Tensor], Callable[..., torch.Tensor]]:
    """Inputs (requiring grad) and the function of ``variant`` at CoTr's shapes."""
    generator = torch.Generator().manual_seed(seed)
    num_tokens = sum(x * y * z for x, y, z in SHAPES)
    channels, levels = D_MODEL // HEADS, len(SHAPES)
    if variant in DENSE_VARIANTS:
        inputs = [torch.randn(BATCH, HEADS, num_tokens, channels, generator=generator) for _ in range(3)]
        fn = _dense_explicit if variant == "dense" else _dense_sdpa
        return [t.requires_grad_(True) for t in inputs], fn
    value = torch.randn(BATCH, num_tokens, HEADS, channels, generator=generator)
    # reference = own voxel centre; offsets as at initialisation ((k + 1) voxels along the head's direction) + noise
    centres = []
    for shape in SHAPES:
        axes = [(torch.arange(s, dtype=torch.float32) + 0.5) / s for s in shape]
        centres.append(torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3))
    reference = torch.cat(centres)[None, :, None, None, None, :]
    directions = msda.fibonacci_sphere(HEADS)[:, None, None, :] * torch.arange(1.0, POINTS + 1)[None, None, :, None]
    offsets = directions + torch.randn(BATCH, num_tokens, HEADS, levels, POINTS, 3, generator=generator)
    locations = reference + offsets / torch.tensor(SHAPES, dtype=torch.float32)[:, None, :]
    weights = torch.randn(BATCH, num_tokens, HEADS, levels * POINTS, generator=generator).softmax(-1)
    weights = weights.view(BATCH, num_tokens, HEADS, levels, POINTS)
    kernel = {
        "grid_sample": msda.ms_deform_attn_3d_grid_sample,
        "gather": msda.ms_deform_attn_3d_gather,
        "gather_autograd": _gather_stock_autograd,
        "gather_eb_dots": msda.ms_deform_attn_3d_gather,  # run inside _eb_dots_patch(), see _calls
    }[variant]
    inputs = [t.requires_grad_(True) for t in (value, locations, weights)]
    return inputs, lambda v, loc, w: kernel(v, SHAPES, loc, w)


def _calls(
    variant: str, inputs: list[torch.Tensor], fn: Callable[..., torch.Tensor]
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(forward under no_grad, forward + backward) closures of ``variant``."""
    context = _eb_dots_patch if variant == "gather_eb_dots" else contextlib.nullcontext
    num_tokens = sum(x * y * z for x, y, z in SHAPES)
    grad_out = torch.randn(BATCH, num_tokens, D_MODEL, generator=torch.Generator().manual_seed(1))

    def forward() -> None:
        with torch.no_grad(), context():
            fn(*inputs)

    def forward_backward() -> None:
        for t in inputs:
            t.grad = None
        with context():
            fn(*inputs).backward(grad_out)

    return forward, forward_backward


def memory_worker(variant: str) -> None:
    """
    Subprocess entry: print {"forward": bytes, "train": bytes}, the peak RSS increase of one forward and of one
    forward+backward call of ``variant``. MS-DMSA variants get one warm-up call of each first; dense attention
    none (a call takes seconds and allocates gigabytes, next to which warm-up effects vanish).
    """
    set_malloc_mmap_threshold()
    inputs, fn = make_case(variant)
    calls = dict(zip(("forward", "train"), _calls(variant, inputs, fn)))
    if variant not in DENSE_VARIANTS:
        for call in calls.values():
            call()
    result = {}
    for mode, call in calls.items():
        for t in inputs:
            t.grad = None
        result[mode] = measure_peak_rss(call)[0]
    print(json.dumps(result))


def _measure_memory(variant: str) -> dict[str, int]:
    code = f"from scripts.benchmarks.bench_ms_deform_attn import memory_worker; memory_worker({variant!r})"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_benchmark(
    repeats: int = 7,
    dense_repeats: int = 2,
    memory: bool = True,
    with_sdpa: bool = True,
    write_docs: bool = False,
    plot: bool = True,
) -> dict:
    """
    Time and measure every variant, print the table and optionally write ``docs/benchmarks.md`` and a PNG.

    Args:
        repeats: timed calls per MS-DMSA variant (after one warm-up).
        dense_repeats: timed calls per dense-attention variant (each takes seconds on a CPU).
        memory: also measure peak memory (one subprocess per variant and mode).
        with_sdpa: include ``F.scaled_dot_product_attention``.
        write_docs: replace this benchmark's section of ``docs/benchmarks.md``.
        plot: with ``write_docs``, also write ``docs/benchmarks_ms_deform_attn.png``.
    """
    info = machine_info()
    print(machine_line(info), flush=True)
    variants = [v for v in VARIANTS if with_sdpa or v != "dense_sdpa"]
    results: dict[str, dict[str, float]] = {v: {} for v in variants}
    dense = tuple(v for v in DENSE_VARIANTS if v in variants)
    for group, reps, warmup in ((MSDA_VARIANTS, repeats, 1), (dense, dense_repeats, 0)):
        calls = {v: _calls(v, *make_case(v)) for v in group}
        forward = median_times({v: c[0] for v, c in calls.items()}, reps, warmup)
        train = median_times({v: c[1] for v, c in calls.items()}, reps, warmup)
        for v in group:
            results[v].update(
                forward_ms=1e3 * median(forward[v]), train_ms=1e3 * median(train[v]), repeats=reps, warmup=warmup
            )
            r = results[v]
            print(f"{v}: forward {r['forward_ms']:.0f} ms, forward+backward {r['train_ms']:.0f} ms", flush=True)
        del calls
    if memory:
        for v in variants:
            measured = _measure_memory(v)
            results[v].update(forward_mem=measured["forward"], train_mem=measured["train"])
            print(
                f"{v}: peak memory forward {format_bytes(results[v]['forward_mem'])}, "
                f"forward+backward {format_bytes(results[v]['train_mem'])}",
                flush=True,
            )
    info["load_end"] = load_average()
    text = _report(results, info, memory)
    print(text)
    if write_docs:
        png = _plot(results, memory) if plot else None
        if png:
            text += "\n![MS-DMSA benchmark](benchmarks_ms_deform_attn.png)\n"
        print("updated", update_docs_section("bench_ms_deform_attn", text))
    return results


def _report(results: dict[str, dict[str, float]], info: dict[str, str], memory: bool) -> str:
    base = results["grid_sample"]
    dense = results.get("dense", {})
    num_tokens = sum(x * y * z for x, y, z in SHAPES)
    lines = [
        "## MS-DMSA kernel vs dense self-attention",
        "",
        f"`python -m scripts.benchmarks.bench_ms_deform_attn` — machine: {machine_line(info)}.",
        "",
        f"Shapes: batch {BATCH}, levels {' + '.join('x'.join(map(str, s)) for s in SHAPES)} = {num_tokens:,} tokens "
        f"(queries = keys), d_model {D_MODEL}, {HEADS} heads x {D_MODEL // HEADS} channels, {POINTS} points per head "
        "and level; float32. Attention core only (no projections). Time: median of "
        f"{base['repeats']} interleaved calls after one warm-up (dense: {dense.get('repeats', '-')} calls, no "
        "warm-up); forward under `no_grad`, forward+backward with gradients to every input; speed-ups relative to (i) "
        "in the same run. Peak memory: increase of resident memory during one call, each variant in a fresh process "
        "(glibc `M_MMAP_THRESHOLD` 64 KiB so freed tensors leave RSS at once; MS-DMSA after one warm-up call).",
        "",
        "| variant | forward | speed-up | fwd+bwd | speed-up | peak mem forward | peak mem fwd+bwd "
        "| (iii) / this, fwd+bwd mem |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, r in results.items():
        mem_f = format_bytes(r["forward_mem"]) if memory else "-"
        mem_t = format_bytes(r["train_mem"]) if memory else "-"
        ratio = f"{dense['train_mem'] / r['train_mem']:.1f}x" if memory and dense and r["train_mem"] > 0 else "-"
        lines.append(
            f"| {VARIANTS[v]} | {r['forward_ms']:.0f} ms | {base['forward_ms'] / r['forward_ms']:.2f}x "
            f"| {r['train_ms']:.0f} ms | {base['train_ms'] / r['train_ms']:.2f}x | {mem_f} | {mem_t} | {ratio} |"
        )
    fast = results["gather"]
    speedup = base["train_ms"] / fast["train_ms"]
    lines += [
        "",
        "Targets:",
        f"- (ii) at least {SPEEDUP_TARGET}x faster than (i), forward+backward: **{speedup:.2f}x — "
        f"{'met' if speedup >= SPEEDUP_TARGET else 'MISSED'}** "
        f"(forward alone: {base['forward_ms'] / fast['forward_ms']:.2f}x).",
    ]
    if memory and dense:
        for v in ("grid_sample", "gather"):
            for mode, label in (("train", "forward+backward"), ("forward", "forward")):
                ratio = dense[f"{mode}_mem"] / max(results[v][f"{mode}_mem"], 1)
                lines.append(
                    f"- {VARIANTS[v].split(',')[0]} at least {MEMORY_TARGET:.0f}x less peak memory than (iii), "
                    f"{label}: **{ratio:.1f}x — {'met' if ratio >= MEMORY_TARGET else 'MISSED'}** "
                    f"({format_bytes(results[v][f'{mode}_mem'])} vs {format_bytes(dense[f'{mode}_mem'])})."
                )
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, dict[str, float]], memory: bool) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(results)
    labels = [VARIANTS[v].replace(", ", ",\n", 1).replace(": ", ":\n", 1) for v in names]
    fig, axes = plt.subplots(1, 2 if memory else 1, figsize=(13, 5.5), squeeze=False)
    y = range(len(names))
    ax = axes[0][0]
    ax.barh([i + 0.2 for i in y], [results[v]["forward_ms"] for v in names], height=0.4, label="forward")
    ax.barh([i - 0.2 for i in y], [results[v]["train_ms"] for v in names], height=0.4, label="forward+backward")
    ax.set_xscale("log"), ax.set_xlabel("time (ms, log)"), ax.set_yticks(list(y), labels, fontsize=7), ax.invert_yaxis()
    ax.legend()
    if memory:
        ax = axes[0][1]
        ax.barh([i + 0.2 for i in y], [results[v]["forward_mem"] / 2**20 for v in names], height=0.4, label="forward")
        ax.barh(
            [i - 0.2 for i in y], [results[v]["train_mem"] / 2**20 for v in names], height=0.4, label="forward+backward"
        )
        (
            ax.set_xscale("log"),
            ax.set_xlabel("peak memory increase (MiB, log)"),
            ax.set_yticks(list(y), [""] * len(names)),
        )
        ax.invert_yaxis(), ax.legend()
    fig.suptitle("MS-DMSA vs dense self-attention, 7,776 tokens, batch 2, d_model 384, 6 heads (CPU)")
    fig.tight_layout()
    path = os.path.join(REPO_ROOT, "docs", "benchmarks_ms_deform_attn.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import fire

    fire.Fire(run_benchmark, serialize=lambda _: None)  # the tables are printed already
