"""
3D multi-scale deformable self-attention (MS-DMSA, paper eq. 3-4): the module, the dispatch between the sampling
kernels and their reference formulation (``grid_sample``); the fast gather kernel is in
:mod:`scripts.networks.ms_deform_attn_gather`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from scripts.networks.ms_deform_attn_gather import ms_deform_attn_3d_gather

__all__ = [
    "ms_deform_attn_3d",
    "ms_deform_attn_3d_grid_sample",
    "ms_deform_attn_3d_gather",
    "use_grid_sample",
    "MSDeformAttn3D",
    "fibonacci_sphere",
]

IMPLEMENTATIONS = ("auto", "gather", "grid_sample")


def use_grid_sample() -> bool:
    """
    True while tracing, exporting or compiling: exporters (TorchScript tracing, ONNX, ``torch.export``) and
    ``torch.compile`` need the ``grid_sample`` formulation; the gather kernel is for eager execution.
    """
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def ms_deform_attn_3d(
    value: torch.Tensor,
    spatial_shapes: list[list[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    implementation: str = "auto",
) -> torch.Tensor:
    """
    Sample every level of ``value`` trilinearly (zero padding) at ``sampling_locations`` and sum the samples
    with ``attention_weights``: the parameter-free core of MS-DMSA.

    Coordinates follow the MONAI axis order: component 0 runs along X, 1 along Y and 2 along Z, and
    ``(i + 0.5) / size`` is the centre of voxel ``i`` (``align_corners=False``).

    Args:
        value: (B, sum_l X_l * Y_l * Z_l, H, C_h), the levels' tokens concatenated in ``map.flatten(2)`` order.
        spatial_shapes: ``(X_l, Y_l, Z_l)`` of each of the L levels.
        sampling_locations: (B, L_q, H, L, K, 3) in [0, 1] (outside means zeros).
        attention_weights: (B, L_q, H, L, K).
        implementation: ``"gather"`` (:func:`ms_deform_attn_3d_gather`, fast in eager mode),
            ``"grid_sample"`` (:func:`ms_deform_attn_3d_grid_sample`, what exporters understand) or ``"auto"``:
            ``grid_sample`` while tracing, exporting or compiling (:func:`use_grid_sample`), ``gather`` otherwise.
            Both give the same values and gradients. TorchScript (scripting) always uses ``grid_sample``: the gather
            kernel's autograd function cannot be scripted.

    Returns:
        (B, L_q, H * C_h).
    """
    if not torch.jit.is_scripting():
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got '{implementation}'.")
        if implementation == "gather" or (implementation == "auto" and not use_grid_sample()):
            return ms_deform_attn_3d_gather(value, spatial_shapes, sampling_locations, attention_weights)
    return ms_deform_attn_3d_grid_sample(value, spatial_shapes, sampling_locations, attention_weights)


def ms_deform_attn_3d_grid_sample(
    value: torch.Tensor,
    spatial_shapes: list[list[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """
    :func:`ms_deform_attn_3d` as one ``grid_sample`` per level: the reference formulation, and the one used
    while tracing or exporting (ONNX ``GridSample``). Arguments and result as in :func:`ms_deform_attn_3d`;
    ``grid_sample`` reads its coordinates in reverse (last axis first), which this function handles.
    """
    batch, _, heads, head_channels = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    level_sizes = [int(shape[0]) * int(shape[1]) * int(shape[2]) for shape in spatial_shapes]
    # grid_sample wants (x, y, z) coordinates of a (D, H, W) = (X, Y, Z) tensor as (z, y, x) in [-1, 1]
    grids = (2 * sampling_locations - 1).flip(-1)
    samples = []
    for level, tokens in enumerate(value.split(level_sizes, dim=1)):
        volume = tokens.flatten(2).transpose(1, 2).reshape([batch * heads, head_channels] + list(spatial_shapes[level]))
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, num_queries, num_points, 1, 3)
        # the coarser dtype of the two is promoted: bfloat16 locations would be off by ~0.02 voxel on a 24-voxel map
        dtype = torch.promote_types(volume.dtype, grid.dtype)
        sampled = F.grid_sample(
            volume.to(dtype), grid.to(dtype), mode="bilinear", padding_mode="zeros", align_corners=False
        )
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
        implementation: sampling kernel, see :func:`ms_deform_attn_3d`: ``"auto"`` (the fast ``"gather"`` kernel
            in eager mode, ``"grid_sample"`` while tracing, exporting or compiling), ``"gather"`` or ``"grid_sample"``.

    Example::

        attn = MSDeformAttn3D(d_model=384, num_levels=2, num_heads=6, num_points=4)
    """

    def __init__(
        self,
        d_model: int = 384,
        num_levels: int = 2,
        num_heads: int = 6,
        num_points: int = 4,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}.")
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}).")
        for name, val in (("num_levels", num_levels), ("num_heads", num_heads), ("num_points", num_points)):
            if val < 1:
                raise ValueError(f"{name} must be at least 1, got {val}.")
        self.d_model = d_model
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.implementation = implementation
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
        spatial_shapes: list[list[int]],
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
        return self.output_proj(ms_deform_attn_3d(value, spatial_shapes, locations, weights, self.implementation))
