"""3D multi-scale deformable self-attention (MS-DMSA, paper eq. 3-4)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ms_deform_attn_3d", "MSDeformAttn3D", "fibonacci_sphere"]


def ms_deform_attn_3d(
    value: torch.Tensor,
    spatial_shapes: Sequence[Sequence[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """
    Sample every level of ``value`` trilinearly (zero padding) at ``sampling_locations`` and sum the samples
    with ``attention_weights``: the parameter-free core of MS-DMSA.

    Coordinates follow the MONAI axis order: component 0 runs along X, 1 along Y and 2 along Z, and
    ``(i + 0.5) / size`` is the centre of voxel ``i`` (``align_corners=False``). ``grid_sample`` reads its
    coordinates in reverse (last axis first), which this function handles.

    Args:
        value: (B, sum_l X_l * Y_l * Z_l, H, C_h), the levels' tokens concatenated in ``map.flatten(2)`` order.
        spatial_shapes: ``(X_l, Y_l, Z_l)`` of each of the L levels.
        sampling_locations: (B, L_q, H, L, K, 3) in [0, 1] (outside means zeros).
        attention_weights: (B, L_q, H, L, K).

    Returns:
        (B, L_q, H * C_h).
    """
    batch, _, heads, head_channels = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    level_sizes = [int(x) * int(y) * int(z) for x, y, z in spatial_shapes]
    # grid_sample wants (x, y, z) coordinates of a (D, H, W) = (X, Y, Z) tensor as (z, y, x) in [-1, 1]
    grids = (2 * sampling_locations - 1).flip(-1)
    samples = []
    for level, (tokens, shape) in enumerate(zip(value.split(level_sizes, dim=1), spatial_shapes)):
        volume = tokens.flatten(2).transpose(1, 2).reshape(batch * heads, head_channels, *shape)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, num_queries, num_points, 1, 3)
        sampled = F.grid_sample(volume, grid.to(volume.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        samples.append(sampled.squeeze(-1))  # (B * H, C_h, L_q, K)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, num_levels * num_points)
    output = (torch.cat(samples, dim=-1) * weights.to(samples[0].dtype)).sum(-1)  # (B * H, C_h, L_q)
    return output.view(batch, heads * head_channels, num_queries).transpose(1, 2)


def fibonacci_sphere(num: int) -> torch.Tensor:
    """(num, 3) unit vectors spread evenly over the sphere (golden-angle spiral); the first points along +Z."""
    index = torch.arange(num, dtype=torch.float64)
    z = 1 - 2 * (index + 0.5) / num if num > 1 else torch.ones(1, dtype=torch.float64)
    radius = (1 - z**2).clamp_min(0).sqrt()
    theta = index * math.pi * (3 - math.sqrt(5))
    return torch.stack((radius * theta.cos(), radius * theta.sin(), z), dim=-1).float()


class MSDeformAttn3D(nn.Module):
    """
    3D multi-scale deformable attention (paper eq. 3-4, after Deformable DETR).

    For each query, a linear layer predicts ``num_heads * num_levels * num_points`` 3D offsets and as many
    attention logits (softmax over the ``num_levels * num_points`` logits of each head). Offsets are in
    voxels of their level and are divided by that level's size per axis before they are added to the
    query's reference point.

    Args:
        d_model: token width; must be divisible by ``num_heads``.
        num_levels: number of feature levels L.
        num_heads: attention heads H.
        num_points: sampling points K per head and level.

    Example::

        attn = MSDeformAttn3D(d_model=384, num_levels=2, num_heads=6, num_points=4)
    """

    def __init__(self, d_model: int = 384, num_levels: int = 2, num_heads: int = 6, num_points: int = 4) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}).")
        for name, val in (("num_levels", num_levels), ("num_heads", num_heads), ("num_points", num_points)):
            if val < 1:
                raise ValueError(f"{name} must be at least 1, got {val}.")
        self.d_model = d_model
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 3)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable-DETR initialisation: point k of every head starts (k + 1) voxels along the head's direction."""
        nn.init.zeros_(self.sampling_offsets.weight)
        directions = fibonacci_sphere(self.num_heads)[:, None, None, :]
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, None, :, None]
        bias = (directions * scale).expand(self.num_heads, self.num_levels, self.num_points, 3)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        """
        Args:
            query: (B, L_q, d_model), usually tokens plus positional encoding.
            reference_points: (B, L_q, L, 3) in [0, 1], (x, y, z) of each query's reference in every level.
            input_flatten: (B, sum_l X_l * Y_l * Z_l, d_model), the levels' tokens concatenated.
            spatial_shapes: ``(X_l, Y_l, Z_l)`` of each level.

        Returns:
            (B, L_q, d_model).
        """
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(input_flatten).view(batch, input_flatten.shape[1], heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 3)
        logits = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = logits.softmax(-1).view(batch, num_queries, heads, levels, points)
        level_size = torch.tensor(spatial_shapes, device=query.device, dtype=reference_points.dtype)  # (L, 3)
        locations = reference_points[:, :, None, :, None, :] + offsets / level_size[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_3d(value, spatial_shapes, locations, weights))
