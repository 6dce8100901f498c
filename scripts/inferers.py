"""Test-time augmentation by flipping, for any MONAI inferer."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import torch
import torch.nn as nn
from monai.inferers import Inferer

__all__ = ["FlipTTA", "FlipTTAInferer", "flip_combinations"]


def flip_combinations(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``spatial_axes`` (the empty one first): 2**n flips, as nnU-Net mirrors."""
    return [combo for r in range(len(spatial_axes) + 1) for combo in combinations(spatial_axes, r)]


class FlipTTA(nn.Module):
    """
    Averages ``network``'s logits over every combination of flips along ``spatial_axes`` (each flip undone
    before averaging). With no axes it is the network itself.

    Args:
        network: maps (B, C_in, X, Y, Z) to (B, C_out, X, Y, Z).
        spatial_axes: spatial axes (0 = X) to mirror.
    """

    def __init__(self, network: nn.Module, spatial_axes: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__()
        if any(a not in (0, 1, 2) for a in spatial_axes) or len(set(spatial_axes)) != len(spatial_axes):
            raise ValueError(f"spatial_axes must be distinct values among 0, 1, 2, got {list(spatial_axes)}.")
        self.network = network
        self.flips = [tuple(a + 2 for a in combo) for combo in flip_combinations(spatial_axes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C_in, X, Y, Z) -> mean logits (B, C_out, X, Y, Z)."""
        total = None
        for dims in self.flips:
            out = self.network(x.flip(dims)).flip(dims) if dims else self.network(x)
            total = out if total is None else total + out
        return total / len(self.flips)


class FlipTTAInferer(Inferer):
    """
    Runs ``inferer`` with the network wrapped in :class:`FlipTTA`, e.g. a Gaussian sliding window whose every
    window is predicted under all flips (the CoTr / nnU-Net test-time augmentation).

    Args:
        inferer: the inner inferer, e.g. ``SlidingWindowInferer``.
        spatial_axes: spatial axes to mirror; empty disables the augmentation.
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__()
        self.inferer = inferer
        self.spatial_axes = tuple(spatial_axes)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.inferer(inputs, FlipTTA(network, self.spatial_axes), *args, **kwargs)
