"""
How each sliding window is predicted, for any MONAI inferer: test-time augmentation by flipping, and the
arithmetic precision of the network (float32, or autocast to bfloat16 / float16 with float32 logits out).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import torch
import torch.nn as nn
from monai.inferers import Inferer

__all__ = [
    "FlipTTA",
    "FlipTTAInferer",
    "flip_combinations",
    "PRECISIONS",
    "native_bfloat16_cpu",
    "default_precision",
    "compile_for_inference",
]

#: the precisions a window can be predicted in
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def native_bfloat16_cpu() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX), so that autocast to it is faster."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_precision() -> str:
    """``"bfloat16"`` on a CPU-only machine whose CPU computes it natively, else ``"float32"`` (CUDA uses AMP)."""
    return "bfloat16" if not torch.cuda.is_available() and native_bfloat16_cpu() else "float32"


def compile_for_inference(network: nn.Module) -> None:
    """
    Compile ``network`` in place (``network.compile``) with Inductor's weight freezing, for a process that only
    predicts: graphs compiled without gradients fold the weights in as constants and prepack the convolution
    weights (the gain on CPU is measured in ``docs/benchmarks.md``, "Whole-volume inference").

    Freezing is a process-wide Inductor setting (``torch.compile(options=...)`` does not reach it), and weights
    loaded after the first forward pass are ignored: load the checkpoint before predicting (the workflows'
    checkpoint loader runs when the evaluator starts), and never call this in a process that trains.
    """
    import torch._inductor.config as inductor_config  # heavy: only when compiling

    inductor_config.freezing = True
    # static shapes: a second window shape (a last, smaller sliding-window batch) gets its own graph, as Inductor
    # failed to lower frozen graphs with the symbolic sizes that automatic dynamic shapes would switch to
    network.compile(dynamic=False)


def flip_combinations(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``spatial_axes`` (the empty one first): 2**n flips, as nnU-Net mirrors."""
    return [combo for r in range(len(spatial_axes) + 1) for combo in combinations(spatial_axes, r)]


class FlipTTA(nn.Module):
    """
    Averages ``network``'s logits over every combination of flips along ``spatial_axes`` (each flip undone
    before averaging). With no axes and float32 it is the network itself.

    Args:
        network: maps (B, C_in, X, Y, Z) to (B, C_out, X, Y, Z).
        spatial_axes: spatial axes (0 = X) to mirror.
        precision: ``"float32"``, or ``"bfloat16"`` / ``"float16"`` to run the network under autocast on the
            input's device; the logits are summed in float32 either way.
    """

    def __init__(self, network: nn.Module, spatial_axes: Sequence[int] = (0, 1, 2), precision: str = "float32") -> None:
        super().__init__()
        if any(a not in (0, 1, 2) for a in spatial_axes) or len(set(spatial_axes)) != len(spatial_axes):
            raise ValueError(f"spatial_axes must be distinct values among 0, 1, 2, got {list(spatial_axes)}.")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
        self.network = network
        self.flips = [tuple(a + 2 for a in combo) for combo in flip_combinations(spatial_axes)]
        self.precision = precision

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "float32":
            return self.network(x)
        with torch.autocast(x.device.type, dtype=PRECISIONS[self.precision]):
            return self.network(x).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C_in, X, Y, Z) -> mean float32 logits (B, C_out, X, Y, Z)."""
        total = None
        for dims in self.flips:
            out = self._predict(x.flip(dims)).flip(dims) if dims else self._predict(x)
            total = out if total is None else total + out
        return total / len(self.flips)


class FlipTTAInferer(Inferer):
    """
    Runs ``inferer`` with the network wrapped in :class:`FlipTTA`, e.g. a Gaussian sliding window whose every
    window is predicted under all flips (the CoTr / nnU-Net test-time augmentation).

    Args:
        inferer: the inner inferer, e.g. ``SlidingWindowInferer``.
        spatial_axes: spatial axes to mirror; empty disables the augmentation.
        precision: arithmetic of the network, see :class:`FlipTTA`.
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = (0, 1, 2), precision: str = "float32") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
        self.inferer = inferer
        self.spatial_axes = tuple(spatial_axes)
        self.precision = precision

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.inferer(inputs, FlipTTA(network, self.spatial_axes, self.precision), *args, **kwargs)
