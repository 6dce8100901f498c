"""3D sine-cosine positional encoding of CoTr (paper eq. 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["sine_position_encoding_3d"]


def sine_position_encoding_3d(
    spatial_size: Sequence[int],
    channels: int,
    temperature: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """
    Sine-cosine encoding of the voxel positions of one 3D map, following paper eq. 2.

    Each of the three axes gets ``channels / 3`` channels. Channel pair ``(2k, 2k + 1)`` of an axis holds
    ``sin(p * v_k)`` and ``cos(p * v_k)`` with ``v_k = temperature ** (-2k / (channels / 3))`` and the
    normalised coordinate ``p = 2 * pi * (index + 0.5) / size``. The blocks are concatenated in the map's
    axis order (x, y, z for MONAI tensors).

    Args:
        spatial_size: ``(X, Y, Z)`` of the map.
        channels: total channels; must be divisible by 6.
        temperature: frequency base.
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        (X * Y * Z, channels) tensor, rows in the order of ``map.flatten(2)``.
    """
    if channels % 6 != 0:
        raise ValueError(f"channels must be divisible by 6 (3 axes x sin/cos pairs), got {channels}.")
    per_axis = channels // 3
    exponent = 2 * torch.div(torch.arange(per_axis, device=device, dtype=torch.float32), 2, rounding_mode="floor")
    inv_freq = temperature ** (-exponent / per_axis)
    encodings = []
    for size in spatial_size:
        position = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 * math.pi
        angle = position[:, None] * inv_freq[None, :]
        encodings.append(torch.stack((angle[:, 0::2].sin(), angle[:, 1::2].cos()), dim=-1).flatten(1))
    x, y, z = spatial_size
    grid = torch.cat(
        (
            encodings[0][:, None, None, :].expand(x, y, z, per_axis),
            encodings[1][None, :, None, :].expand(x, y, z, per_axis),
            encodings[2][None, None, :, :].expand(x, y, z, per_axis),
        ),
        dim=-1,
    )
    return grid.reshape(x * y * z, channels).to(dtype)
