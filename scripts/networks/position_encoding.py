"""3D sine-cosine positional encoding of CoTr (paper eq. 2)."""

from __future__ import annotations

import math

import torch

__all__ = ["sine_position_encoding_3d"]


def sine_position_encoding_3d(
    spatial_size: list[int],
    channels: int,
    temperature: float = 10000.0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """
    Sine-cosine encoding of the voxel positions of one 3D map, following paper eq. 2.

    Each of the three axes gets ``channels / 3`` channels. Channel pair ``(2k, 2k + 1)`` of an axis holds
    ``sin(p * v_k)`` and ``cos(p * v_k)`` with ``v_k = temperature ** (-2k / (channels / 3))`` and the
    normalised coordinate ``p = 2 * pi * (index + 0.5) / size``. The blocks are concatenated in the paper's order
    ``PE_D, PE_H, PE_W``: for a MONAI (B, C, X, Y, Z) map (Z the slice axis D, Y = H, X = W) that is the Z block
    first, then Y, then X. Everything is computed in ``dtype``.

    Args:
        spatial_size: ``(X, Y, Z)`` of the map.
        channels: total channels; must be divisible by 6.
        temperature: frequency base.
        device: device of the result.
        dtype: dtype of the computation and the result.

    Returns:
        (X * Y * Z, channels) tensor, rows in the order of ``map.flatten(2)``.
    """
    if channels % 6 != 0:
        raise ValueError(f"channels must be divisible by 6 (3 axes x sin/cos pairs), got {channels}.")
    if len(spatial_size) != 3:
        raise ValueError(f"spatial_size needs 3 values (X, Y, Z), got {spatial_size}.")
    per_axis = channels // 3
    pair = torch.arange(0, per_axis, 2, device=device, dtype=dtype)  # 2k of the k-th sin/cos pair
    inv_freq = temperature ** (-pair / per_axis)
    x, y, z = spatial_size
    blocks = []
    for axis in [2, 1, 0]:  # D, H, W
        size = spatial_size[axis]
        position = (torch.arange(size, device=device, dtype=dtype) + 0.5) * (2 * math.pi / size)
        angle = position[:, None] * inv_freq[None, :]
        encoding = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(1)  # (size, per_axis): sin, cos, sin, ...
        shape = [1, 1, 1, per_axis]
        shape[axis] = size
        blocks.append(encoding.view(shape).expand(x, y, z, per_axis))
    return torch.cat(blocks, dim=-1).reshape(x * y * z, channels)
