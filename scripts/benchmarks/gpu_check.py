"""
GPU check: on a CUDA machine, in a few minutes, whether CoTr computes there what it computes on the CPU, and how fast
and how large it runs.

Checks (pass / fail, float32 with TF32 off for the comparisons):

- the full CoTr (train mode, deep-supervision outputs, dropout off) forward and backward on the device against the
  same weights on the CPU: every output within :data:`FORWARD_TOLERANCE` and every parameter gradient within
  :data:`GRADIENT_TOLERANCE` of the CPU's, as ``max |device - cpu| / max |cpu|`` per tensor (:func:`relative_error`;
  for a gradient at least :data:`GRADIENT_FLOOR` of the network's largest gradient in the denominator);
- the MS-DMSA gather kernel against the ``grid_sample`` formulation on the device, values within
  :data:`KERNEL_VALUE_TOLERANCE` and the gradients of value, locations and weights within
  :data:`KERNEL_GRADIENT_TOLERANCE`;
- one AMP training step with deep supervision (float16 with a gradient scaler on CUDA, bfloat16 on the CPU): the
  recipe's loss and optimiser of ``configs/train.json``, finite loss and gradients, weights updated.

Figures: forward time at batch 1 on a 192x192x48 patch in float32 and AMP (the paper reports < 30 ms on a GTX 2080 Ti),
training-step time and peak memory at batch 2 with and without activation checkpointing, and the bundle's streaming
sliding-window inference of a 512x512x128 volume with and without flip TTA. Peak memory: on CUDA the peak of
``torch.cuda.max_memory_allocated`` over what was allocated before the call; on the CPU the peak resident-memory
increase (:func:`scripts.benchmarks.common.measure_peak_rss`).

Without CUDA (or with ``--tiny True``) everything runs at tiny sizes on the CPU, comparing the CPU with itself: a test
of the script, not a measurement.

Usage::

    python -m scripts.benchmarks.gpu_check                        # prints the table; on CUDA also writes its section
                                                                  # of docs/benchmarks.md
    python -m scripts.benchmarks.gpu_check --docs_path out.md     # the section into another file (any size)
    python -m scripts.benchmarks.gpu_check --tiny True            # tiny sizes

The exit status is 1 when a check failed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from scripts.benchmarks.common import (
    DOCS_PATH,
    REPO_ROOT,
    format_bytes,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    measure_peak_rss,
    median,
    median_times,
    num_windows,
    update_docs_section,
)
from scripts.engine.atomic import atomic_output
from scripts.engine.streaming import StreamingSegmentationInferer
from scripts.networks import ms_deform_attn as msda

__all__ = [
    "FORWARD_TOLERANCE",
    "GRADIENT_TOLERANCE",
    "GRADIENT_FLOOR",
    "KERNEL_VALUE_TOLERANCE",
    "KERNEL_GRADIENT_TOLERANCE",
    "PAPER_FORWARD_MS",
    "Sizes",
    "FULL",
    "TINY",
    "Check",
    "relative_error",
    "compare_forward_backward",
    "compare_kernels",
    "amp_training_step",
    "run_checks",
    "main",
]

#: largest ``max |device - cpu| / max |cpu|`` of a CoTr output (float32, TF32 off)
FORWARD_TOLERANCE = 1e-4
#: the same for each parameter gradient: the backward pass sums in other orders (atomics, other conv algorithms)
GRADIENT_TOLERANCE = 1e-3
#: a gradient is compared relative to at least this fraction of the network's largest gradient
GRADIENT_FLOOR = 1e-6
#: the gather kernel against ``grid_sample`` on the same device: values, then the gradients of its three inputs
KERNEL_VALUE_TOLERANCE = 1e-5
KERNEL_GRADIENT_TOLERANCE = 1e-4
#: the paper's forward time of one 48x192x192 patch on a GTX 2080 Ti
PAPER_FORWARD_MS = 30.0
SECTION = "gpu_check"


@dataclass(frozen=True)
class Sizes:
    """
    What the check runs at.

    Attributes:
        network: ``network_def`` overrides of ``configs/train.json`` (empty: the full CoTr).
        compare_input: spatial size (X, Y, Z) of the CPU / device comparison (batch 1).
        patch: the training patch: forward timing at batch 1, training step at batch 2.
        volume: the sliding-window inference volume.
        kernel_shapes: the MS-DMSA levels (X, Y, Z) of the kernel comparison.
        kernel_heads, kernel_points, kernel_channels, kernel_batch: its heads, points per level, channels per head
            and batch.
        repeats: timed calls per figure (after one warm-up).
    """

    network: dict = field(default_factory=dict)
    compare_input: tuple[int, int, int] = (96, 96, 48)
    patch: tuple[int, int, int] = (192, 192, 48)
    volume: tuple[int, int, int] = (512, 512, 128)
    kernel_shapes: tuple[tuple[int, int, int], ...] = ((24, 24, 12), (12, 12, 6))
    kernel_heads: int = 6
    kernel_points: int = 4
    kernel_channels: int = 64
    kernel_batch: int = 2
    repeats: int = 10


FULL = Sizes()
TINY = Sizes(
    network={
        "blocks": [1, 1, 1],
        "channels": [8, 16, 24, 24],
        "d_model": 24,
        "num_heads": 2,
        "num_layers": 1,
        "mlp_dim": 48,
    },  # fmt: skip
    compare_input=(32, 32, 16),
    patch=(32, 32, 16),
    volume=(40, 32, 16),
    kernel_shapes=((4, 4, 2), (2, 2, 1)),
    kernel_heads=2,
    kernel_points=2,
    kernel_channels=4,
    kernel_batch=1,
    repeats=1,
)


@dataclass
class Check:
    """One row of the table: what, what was measured, against what, and whether it passed (None: a figure)."""

    name: str
    measured: str
    reference: str = ""
    passed: bool | None = None


def relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """
    ``max |actual - expected| / max(max |expected|, floor)``, in float64 on the CPU (for a zero ``expected`` and no
    ``floor``: the error itself).
    """
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, floor)
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    return error / scale if scale > 0 else error


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """float32 matrix products and convolutions in full float32 (CUDA otherwise rounds them to TF32 on Ampere+)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _outputs(network: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = network(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def compare_forward_backward(
    reference: nn.Module, candidate: nn.Module, x: torch.Tensor, seed: int = 0
) -> tuple[float, float, str]:
    """
    Train-mode forward of ``x`` (B, C_in, X, Y, Z) through both networks (on their own devices) and backward of the
    same random weighting of every output.

    Returns:
        the largest :func:`relative_error` of the candidate's outputs, the largest of its parameter gradients (each
        relative to at least :data:`GRADIENT_FLOOR` of the network's largest gradient), and the name of that
        parameter.
    """
    weights = None
    grads = []
    results = []
    for network in (reference, candidate):
        device = next(network.parameters()).device
        network.train()
        network.zero_grad(set_to_none=True)
        with _no_tf32():
            outputs = _outputs(network, x.to(device))
            if weights is None:
                generator = torch.Generator().manual_seed(seed)
                weights = [torch.randn(o.shape, generator=generator) for o in outputs]
            sum((o * w.to(device)).sum() for o, w in zip(outputs, weights)).backward()
        results.append([o.detach() for o in outputs])
        grads.append({n: p.grad for n, p in network.named_parameters() if p.grad is not None})
    forward = max(relative_error(c, r) for r, c in zip(*results))
    # a gradient that is zero in exact arithmetic (a parameter whose effect cancels) is rounding noise on both
    # devices: it is measured against the network's gradient scale, not against itself
    floor = GRADIENT_FLOOR * max(g.abs().max().item() for g in grads[0].values())
    gradient, worst = max((relative_error(grads[1][n], g, floor), n) for n, g in grads[0].items())
    return forward, gradient, worst


def kernel_inputs(sizes: Sizes, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """Random float32 (value, locations, weights) of MS-DMSA at ``sizes``, some locations outside [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(x * y * z for x, y, z in sizes.kernel_shapes)
    levels, heads, points = len(sizes.kernel_shapes), sizes.kernel_heads, sizes.kernel_points
    value = torch.randn(sizes.kernel_batch, tokens, heads, sizes.kernel_channels, generator=generator)
    locations = torch.rand(sizes.kernel_batch, tokens, heads, levels, points, 3, generator=generator) * 1.2 - 0.1
    weights = torch.rand(sizes.kernel_batch, tokens, heads, levels, points, generator=generator)
    return [t.to(device).requires_grad_(True) for t in (value, locations, weights)]


def compare_kernels(
    sizes: Sizes,
    device: torch.device,
    fast: Callable[..., torch.Tensor] = msda.ms_deform_attn_3d_gather,
    reference: Callable[..., torch.Tensor] = msda.ms_deform_attn_3d_grid_sample,
    seed: int = 0,
) -> tuple[float, dict[str, float]]:
    """
    ``fast`` against ``reference`` (both ``f(value, shapes, locations, weights)``) on ``device``, in float32.

    Returns:
        the :func:`relative_error` of the values, and of the gradients of ``value``, ``locations`` and ``weights``.
    """
    inputs = kernel_inputs(sizes, device, seed)
    shapes = [list(s) for s in sizes.kernel_shapes]
    with _no_tf32():
        expected = reference(inputs[0], shapes, *inputs[1:])
        out = fast(inputs[0], shapes, *inputs[1:])
        grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
        expected_grads = torch.autograd.grad(expected, inputs, grad_out)
        grads = torch.autograd.grad(out, inputs, grad_out)
    names = ("value", "locations", "weights")
    return relative_error(out, expected), {n: relative_error(g, e) for n, g, e in zip(names, grads, expected_grads)}


def _recipe(sizes: Sizes, **network: object) -> ConfigParser:
    """``configs/train.json`` with ``sizes``' network overrides and ``network``'s."""
    parser = ConfigParser()
    parser.read_config(os.path.join(REPO_ROOT, "configs", "train.json"))
    for key, value in {**sizes.network, **network}.items():
        parser[f"network_def#{key}"] = value
    return parser


def _amp_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _training_step(
    network: nn.Module,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    target: torch.Tensor,
) -> float:
    """Forward under autocast, deep-supervision loss, scaled backward, the optimiser step: the loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=_amp_dtype(x.device)):
        loss = loss_fn(_outputs(network, x), target)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def _batch(sizes: Sizes, batch: int, num_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 1, *sizes.patch, generator=generator)
    target = torch.randint(0, num_classes, (batch, 1, *sizes.patch), generator=generator).float()
    return x.to(device), target.to(device)


def _step_function(
    parser: ConfigParser, network: nn.Module, sizes: Sizes
) -> tuple[Callable[[], float], torch.amp.GradScaler]:
    """One AMP training step of ``network`` at batch 2 with the recipe's loss and optimiser (``parser``), as a call."""
    device = next(network.parameters()).device
    parser["network"] = network
    loss_fn, optimizer = parser.get_parsed_content("loss"), parser.get_parsed_content("optimizer")
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    x, target = _batch(sizes, 2, parser.get_parsed_content("num_classes"), device)
    network.train()
    return functools.partial(_training_step, network, loss_fn, optimizer, scaler, x, target), scaler


def amp_training_step(parser: ConfigParser, network: nn.Module, sizes: Sizes, max_tries: int = 10) -> dict:
    """
    AMP training steps of ``network`` (the recipe's loss and optimiser from ``parser``) at batch 2 until the gradient
    scaler takes one (float16's first steps can overflow at the scaler's initial scale and are skipped).

    Returns:
        ``loss`` (of the step taken), ``skipped`` steps, ``finite`` (loss and every gradient), ``updated`` (weights
        changed by the step).
    """
    step, scaler = _step_function(parser, network, sizes)
    before = [p.detach().clone() for p in network.parameters()]
    skipped = 0
    while True:
        scale = scaler.get_scale()
        loss = step()
        if scaler.get_scale() >= scale or skipped + 1 == max_tries:  # a skipped step lowers the scale
            break
        skipped += 1
    finite = torch.isfinite(torch.tensor(loss)).item() and all(
        torch.isfinite(p.grad).all().item() for p in network.parameters() if p.grad is not None
    )
    updated = any(not torch.equal(b, p.detach()) for b, p in zip(before, network.parameters()))
    return {"loss": loss, "skipped": skipped, "finite": finite, "updated": updated}


def _synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


def _seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls after one warm-up."""
    return median(median_times({"fn": _synchronized(fn, device)}, repeats, warmup=1)["fn"])


def _peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory of one call over what was allocated before it (device memory on CUDA, resident memory else)."""
    if device.type != "cuda":
        return measure_peak_rss(fn)[0]
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    _synchronized(fn, device)()
    return torch.cuda.max_memory_allocated(device) - base


def _inference_image(sizes: Sizes, device: torch.device) -> MetaTensor:
    """A preprocessed volume whose original grid is its own (1 mm, RAS): the inferer resamples nothing."""
    image = torch.randn(1, 1, *sizes.volume, generator=torch.Generator().manual_seed(3)).to(device)
    meta = {"original_affine": torch.eye(4, dtype=torch.float64), "spatial_shape": torch.tensor(sizes.volume)}
    return MetaTensor(image, affine=torch.eye(4, dtype=torch.float64), meta=meta)


def _network_checks(sizes: Sizes, device: torch.device) -> list[Check]:
    on = f"{device.type} vs cpu" if device.type != "cpu" else "cpu vs cpu (no CUDA: a self-test of the check)"
    torch.manual_seed(0)
    reference = _recipe(sizes, dropout_rate=0.0).get_parsed_content("network_def")
    x = torch.randn(1, 1, *sizes.compare_input)
    forward, gradient, worst = compare_forward_backward(reference, copy.deepcopy(reference).to(device), x)
    shape = "x".join(map(str, sizes.compare_input))
    return [
        Check(f"CoTr forward, {on}, {shape}, float32", f"{forward:.1e}", f"<= {FORWARD_TOLERANCE:g}",
              forward <= FORWARD_TOLERANCE),
        Check(f"CoTr parameter gradients, {on}", f"{gradient:.1e} (worst: {worst})", f"<= {GRADIENT_TOLERANCE:g}",
              gradient <= GRADIENT_TOLERANCE),
    ]  # fmt: skip


def _kernel_checks(sizes: Sizes, device: torch.device) -> list[Check]:
    values, grads = compare_kernels(sizes, device)
    levels = " + ".join("x".join(map(str, s)) for s in sizes.kernel_shapes)
    name = f"MS-DMSA gather vs grid_sample on {device.type}"
    return [
        Check(f"{name}, values ({levels})", f"{values:.1e}", f"<= {KERNEL_VALUE_TOLERANCE:g}",
              values <= KERNEL_VALUE_TOLERANCE),
        Check(f"{name}, gradients", ", ".join(f"{n} {e:.1e}" for n, e in grads.items()),
              f"<= {KERNEL_GRADIENT_TOLERANCE:g}", max(grads.values()) <= KERNEL_GRADIENT_TOLERANCE),
    ]  # fmt: skip


def _forward_figures(network: nn.Module, sizes: Sizes, device: torch.device) -> list[Check]:
    network.eval()
    x = torch.randn(1, 1, *sizes.patch).to(device)
    patch = "x".join(map(str, sizes.patch))
    figures = []
    for dtype in (None, _amp_dtype(device)):

        def forward(dtype: torch.dtype | None = dtype) -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
                network(x)

        seconds = _seconds(forward, device, sizes.repeats)
        name = "float32" if dtype is None else f"AMP {str(dtype).replace('torch.', '')}"
        figures.append(Check(f"forward, batch 1, {patch}, {name}", f"{1e3 * seconds:.1f} ms",
                             f"paper: < {PAPER_FORWARD_MS:g} ms (GTX 2080 Ti, 48x192x192)"))  # fmt: skip
    return figures


def _training_figures(parser: ConfigParser, network: nn.Module, sizes: Sizes, device: torch.device) -> list[Check]:
    """Step time and peak memory with and without activation checkpointing, the same weights."""
    measured = {}
    for use_checkpoint in (False, True):
        model = _recipe(sizes, use_checkpoint=use_checkpoint).get_parsed_content("network_def").to(device)
        model.load_state_dict(network.state_dict())
        step, _ = _step_function(parser, model, sizes)
        measured[use_checkpoint] = (_seconds(step, device, max(1, sizes.repeats // 2)), _peak_bytes(step, device))
    (plain_seconds, plain_peak), (seconds, peak) = measured[False], measured[True]
    name = f"training step, batch 2, {'x'.join(map(str, sizes.patch))}, AMP, use_checkpoint="
    return [
        Check(f"{name}False", f"{1e3 * plain_seconds:.0f} ms, peak +{format_bytes(plain_peak)}"),
        Check(f"{name}True", f"{1e3 * seconds:.0f} ms, peak +{format_bytes(peak)} ({seconds / plain_seconds:.2f}x "
                             f"the time, {peak / max(plain_peak, 1):.2f}x the memory)"),
    ]  # fmt: skip


def _inference_figures(network: nn.Module, sizes: Sizes, device: torch.device) -> list[Check]:
    """The bundle's streaming sliding window over ``sizes.volume``, without and with flip TTA (one run each)."""
    network.eval()
    image = _inference_image(sizes, device)
    precision = "float16" if device.type == "cuda" else "float32"
    name = (f"sliding window {'x'.join(map(str, sizes.volume))} ({num_windows(sizes.volume, sizes.patch, 0.5)} "
            f"windows of {'x'.join(map(str, sizes.patch))}, overlap 0.5, {precision}), flip TTA")  # fmt: skip
    figures, plain = [], 0.0
    for axes in ((), (0, 1, 2)):
        inferer = StreamingSegmentationInferer(
            sizes.patch, sw_batch_size=2, overlap=0.5, mode="gaussian", tta_axes=axes, precision=precision
        )

        def infer(inferer: StreamingSegmentationInferer = inferer) -> None:
            with torch.inference_mode():
                inferer(image, network)

        start = time.perf_counter()
        peak = _peak_bytes(infer, device)
        seconds = time.perf_counter() - start
        plain = plain or seconds
        ratio = f" ({seconds / plain:.1f}x the time)" if axes else ""
        figures.append(Check(f"{name} {'on (8 flips)' if axes else 'off'}",
                             f"{seconds:.1f} s, peak +{format_bytes(peak)}{ratio}"))  # fmt: skip
    return figures


def run_checks(
    tiny: bool | None = None, device: str | None = None, docs_path: str | None = None, sizes: Sizes | None = None
) -> list[Check]:
    """
    Run every check and figure, print the table, and write the markdown section.

    Args:
        tiny: :data:`TINY` sizes; default: when there is no CUDA device.
        device: default ``cuda`` when available, else ``cpu``.
        docs_path: file whose ``gpu_check`` section is replaced (atomically); default ``docs/benchmarks.md`` for a
            full-size run on CUDA, and no file otherwise (tiny figures never replace the GPU's).
        sizes: explicit sizes (overrides ``tiny``).

    Returns:
        the rows of the table.
    """
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = target.type != "cuda" if tiny is None else bool(tiny)
    sizes = sizes or (TINY if tiny else FULL)
    if docs_path is None and not tiny and target.type == "cuda":
        docs_path = DOCS_PATH
    info = machine_info()
    print(machine_line(info), flush=True)
    checks: list[Check] = []

    def report(rows: list[Check]) -> None:
        for check in rows:
            status = "" if check.passed is None else (" ok" if check.passed else " FAILED")
            print(f"{check.name}: {check.measured}{status}", flush=True)
        checks.extend(rows)

    report(_network_checks(sizes, target))
    report(_kernel_checks(sizes, target))
    torch.manual_seed(0)
    parser = _recipe(sizes)
    network = parser.get_parsed_content("network_def").to(target)
    step = amp_training_step(parser, network, sizes)
    report([Check(
        f"AMP training step ({str(_amp_dtype(target)).replace('torch.', '')}, deep supervision, batch 2)",
        f"loss {step['loss']:.3f}, {step['skipped']} step(s) skipped by the gradient scaler first",
        "finite loss and gradients, weights updated", step["finite"] and step["updated"],
    )])  # fmt: skip
    report(_forward_figures(network, sizes, target))
    report(_training_figures(parser, network, sizes, target))
    report(_inference_figures(network, sizes, target))
    info["load_end"] = load_average()
    text = _section(checks, info, sizes, tiny, target)
    print("\n" + text)
    if docs_path:
        print("updated", write_section(text, docs_path))
    return checks


def _section(checks: Sequence[Check], info: dict[str, str], sizes: Sizes, tiny: bool, device: torch.device) -> str:
    passed = [c.passed for c in checks if c.passed is not None]
    rows = [[c.name, c.measured, c.reference, "" if c.passed is None else ("ok" if c.passed else "**FAILED**")]
            for c in checks]  # fmt: skip
    network = "the default CoTr (41.9M parameters)" if not sizes.network else f"CoTr with {sizes.network}"
    lines = [
        "## GPU check (`gpu_check.py`)",
        "",
        f"`python -m scripts.benchmarks.gpu_check` — machine: {machine_line(info)}.",
        "",
        f"{network}, device `{device}`{', **tiny sizes: a test of the script, not a measurement**' if tiny else ''}. "
        f"Comparisons in float32 with TF32 off, as `max |{device.type} - cpu| / max |cpu|` per tensor; times are "
        f"medians of {sizes.repeats} calls after one warm-up (training: {max(1, sizes.repeats // 2)}, sliding window: "
        "one run); peak memory over what was allocated before the call.",
        "",
        *markdown_table(["check", "measured", "tolerance / reference", ""], rows),
        "",
        f"**{sum(passed)} of {len(passed)} checks passed.**",
    ]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: str = DOCS_PATH) -> str:
    """Replace the ``gpu_check`` section of ``path`` (or add it) atomically: readers see the old file or the new one."""
    with atomic_output(path, suffix=".tmp.md") as temporary:
        if os.path.exists(path):
            shutil.copyfile(path, temporary)
        update_docs_section(SECTION, text, temporary)
    return path


def main(tiny: bool | None = None, device: str | None = None, docs_path: str | None = None) -> None:
    """:func:`run_checks`, exiting with status 1 when a check failed."""
    checks = run_checks(tiny, device, docs_path)
    if any(c.passed is False for c in checks):
        raise SystemExit(1)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
