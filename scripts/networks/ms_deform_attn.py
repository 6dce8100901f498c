"""3D multi-scale deformable self-attention (MS-DMSA, paper eq. 3-4)."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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
        sampled = F.grid_sample(volume.to(dtype), grid.to(dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        samples.append(sampled.squeeze(-1))  # (B * H, C_h, L_q, K)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, num_levels * num_points)
    output = (torch.cat(samples, dim=-1) * weights.to(samples[0].dtype)).sum(-1)  # (B * H, C_h, L_q)
    return output.view(batch, heads * head_channels, num_queries).transpose(1, 2)


def ms_deform_attn_3d_gather(
    value: torch.Tensor,
    spatial_shapes: Sequence[Sequence[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """
    :func:`ms_deform_attn_3d` as one fused gather-weighted-sum over the concatenated tokens (the fast path).

    Every sample reads the 8 corners of its voxel cell from ``value`` viewed as a (B * N * H, C_h) table. The
    sample's attention weight is folded into its corners' trilinear weights (zero for a corner outside the map,
    whose index is clamped), and one ``embedding_bag(mode="sum", per_sample_weights=...)`` reduces the
    L * K * 8 corners of every (batch, query, head): the (B, L_q, H, L, K, C_h) samples are never materialised.
    The backward pass is written out (:class:`_GatherSampling`): per-corner dot products (:func:`_corner_dots`)
    give the gradients of the locations and attention weights, and the gradient of ``value`` is the same kind of
    reduction over the samples sorted by their lower corner (:func:`_value_gradient`). Indices and weights are
    computed in float32 (float64 for float64 inputs) with autocast disabled; the result has the dtype of
    ``value``. Only ops that every device has are used (``embedding_bag``, ``sort``, ``bincount``; on CPU also
    ``sparse.sampled_addmm``). Exact: same values and gradients as :func:`ms_deform_attn_3d_grid_sample`, up to
    rounding. Arguments and result as in :func:`ms_deform_attn_3d`.
    """
    shapes = tuple(tuple(int(s) for s in shape) for shape in spatial_shapes)
    if len(shapes) != sampling_locations.shape[3] or any(len(s) != 3 for s in shapes):
        raise ValueError(
            f"spatial_shapes needs one (X, Y, Z) per level ({sampling_locations.shape[3]} levels), got {spatial_shapes}."
        )
    if sum(x * y * z for x, y, z in shapes) != value.shape[1]:
        raise ValueError(f"spatial_shapes {list(shapes)} do not add up to the {value.shape[1]} tokens of value.")
    # plain tensors (still in the autograd graph): a subclass such as MONAI's MetaTensor would run every op of the
    # kernel through its __torch_function__
    value, sampling_locations, attention_weights = (
        t.as_subclass(torch.Tensor) for t in (value, sampling_locations, attention_weights)
    )
    compute_dtype = torch.float32
    for tensor in (value, sampling_locations, attention_weights):
        compute_dtype = torch.promote_types(compute_dtype, tensor.dtype)
    with _autocast_disabled(value.device.type):
        output = _GatherSampling.apply(
            value.to(compute_dtype), sampling_locations.to(compute_dtype), attention_weights.to(compute_dtype), shapes
        )
    return output.to(value.dtype)


def _autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off for ``device_type`` (a no-op context where that device has no autocast)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _corner_geometry(
    locations: torch.Tensor, attention: torch.Tensor, shapes: Sequence[tuple[int, int, int]], num_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The trilinear corners of every sample, as rows of the (B * N * H, C_h) value table and weights.

    Everything is computed axis by axis on (B, L_q, H, K) vectors of one level (long contiguous vectors and Python
    scalars: several times faster on CPU than broadcasting over trailing dimensions of size 2 or 3), and the rows
    and weights are written straight into their bags (``out=``, so not differentiable: the backward pass is
    :class:`_GatherSampling`'s).

    Args:
        locations: (B, L_q, H, L, K, 3) normalised (x, y, z); voxel coordinate = location * size - 0.5.
        attention: (B, L_q, H, L, K).
        shapes: (X_l, Y_l, Z_l) of each level.
        num_tokens: tokens of all levels together (N).

    Returns:
        ``rows`` (B * L_q * H, K * L * 8), int32 (int64 for tables of 2**31 rows or more): the bag of every
        (batch, query, head) lists its corners in (k, level, corner) order, corner ``4 * dx + 2 * dy + dz``; the
        index of a corner outside the map is clamped into it.
        ``corner_weights`` (same shape): attention weight x trilinear weight, zero outside the map.
        ``axis_weights`` (L, 3, 2, B, L_q, H, K): linear weights of the lower and upper neighbour along each axis.
        ``axis_slopes`` (same shape): their derivatives by the voxel coordinate (-1 / +1 inside the map, else 0).
        ``lower`` (L, 3, B, L_q, H, K) (dtype of ``rows``): lower corner, clamped to [-1, size - 1].
    """
    batch, num_queries, heads, num_levels, num_points, _ = locations.shape
    device = locations.device
    # int32 indices: half the memory traffic of int64 (interleaving int64 into bags is several times slower)
    index_dtype = torch.int32 if batch * num_tokens * heads < 2**31 else torch.int64
    coords = locations.permute(3, 5, 0, 1, 2, 4).contiguous()  # (L, 3, B, L_q, H, K)
    attention = attention.permute(3, 0, 1, 2, 4).contiguous()  # (L, B, L_q, H, K)
    head_rows = torch.arange(batch, device=device, dtype=index_dtype).view(-1, 1, 1, 1) * (num_tokens * heads)
    head_rows = head_rows + torch.arange(heads, device=device, dtype=index_dtype).view(1, 1, -1, 1)
    head_rows = head_rows.expand(-1, num_queries, -1, num_points)
    # bags of (batch, query, head), each listing its corners in (k, level, corner) order; written in place
    rows = torch.empty(batch, num_queries, heads, num_points, num_levels * 8, device=device, dtype=index_dtype)
    corner_weights = locations.new_empty(rows.shape)
    axis_weights = locations.new_empty((num_levels, 3, 2, batch, num_queries, heads, num_points))
    axis_slopes = torch.empty_like(axis_weights)
    lower = torch.empty(axis_weights.shape[:2] + axis_weights.shape[3:], device=device, dtype=index_dtype)
    start = 0
    for level, shape in enumerate(shapes):
        strides = (shape[1] * shape[2] * heads, shape[2] * heads, heads)
        axis_rows = []
        for axis, (size, stride) in enumerate(zip(shape, strides)):
            position = coords[level, axis] * size - 0.5  # integer = voxel centre (align_corners=False)
            floor = position.floor()
            frac = position - floor
            lower_inside = (floor >= 0) & (floor <= size - 1)
            upper_inside = (floor >= -1) & (floor <= size - 2)
            torch.mul(1 - frac, lower_inside, out=axis_weights[level, axis, 0])
            torch.mul(frac, upper_inside, out=axis_weights[level, axis, 1])
            axis_slopes[level, axis, 0] = lower_inside
            axis_slopes[level, axis, 0].neg_()
            axis_slopes[level, axis, 1] = upper_inside
            # a sample further out than one voxel has zero weights: any valid index will do (NaN / inf included)
            corner = lower[level, axis]
            corner.copy_(torch.nan_to_num(floor, nan=-1.0).clamp(-1, size - 1))
            axis_rows.append((corner.clamp_min(0) * stride, (corner + 1).clamp_max(size - 1) * stride))
        first_row = head_rows + start * heads
        (x_lo, x_hi), (y_lo, y_hi), (z_lo, z_hi) = axis_rows
        xy_rows = [x + first_row + y for x in (x_lo, x_hi) for y in (y_lo, y_hi)]
        weight_x, weight_y, weight_z = axis_weights[level]
        xy_weights = [x * attention[level] * y for x in weight_x for y in weight_y]
        for xy in range(4):
            for z in range(2):
                column = level * 8 + 2 * xy + z
                torch.add(xy_rows[xy], (z_lo, z_hi)[z], out=rows[..., column])
                torch.mul(xy_weights[xy], weight_z[z], out=corner_weights[..., column])
        start += shape[0] * shape[1] * shape[2]
    bags = batch * num_queries * heads
    return rows.view(bags, -1), corner_weights.view(bags, -1), axis_weights, axis_slopes, lower


def _corner_dots(grad: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, sparse: bool | None = None) -> torch.Tensor:
    """
    ``dots[i, j] = <grad[i], table[rows[i, j]]>``: the gradient of the output of bag ``i`` by the weight of its
    corner ``j``. (M, C), (T, C), (M, J) -> (M, J).

    ``sparse`` computes it as a sampled dense-dense product on the corners' CSR pattern (every entry is computed
    on its own, so repeated and unsorted column indices are fine), several times faster on CPU than the backward
    of ``embedding_bag``'s ``per_sample_weights``, which is used otherwise. Default: on CPU, unless a bag has more
    corners than the table has rows (tiny maps), which torch's CSR result allocation does not allow.
    """
    if sparse is None:
        sparse = grad.device.type == "cpu" and rows.shape[1] <= table.shape[0]
    if sparse:
        index_dtype = rows.dtype if rows.numel() < 2**31 else torch.int64  # CSR: one dtype for both index arrays
        crow = torch.arange(0, rows.numel() + 1, rows.shape[1], device=rows.device, dtype=index_dtype)
        columns = rows.reshape(-1).to(index_dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta state"
            pattern = torch.sparse_csr_tensor(
                crow, columns, grad.new_zeros(rows.numel()), (rows.shape[0], table.shape[0]), check_invariants=False
            )
            return torch.sparse.sampled_addmm(pattern, grad, table.t(), beta=0.0).values().view(rows.shape)
    with torch.enable_grad():
        weights = grad.new_ones(rows.shape, requires_grad=True)
        bags = F.embedding_bag(rows, table.detach(), per_sample_weights=weights, mode="sum")
        return torch.autograd.grad(bags, weights, grad)[0]


def _value_gradient(
    grad: torch.Tensor, corner_weights: torch.Tensor, lower: torch.Tensor, shapes: Sequence[tuple[int, int, int]]
) -> torch.Tensor:
    """
    Adjoint of the gather: every corner adds ``weight * grad[bag]`` to its token's row.

    Per level, the samples are sorted by their lower corner in a map zero-padded by one voxel on every side, so
    that a sample's 8 corners are its lower corner plus 8 fixed row offsets (none is clamped). One
    ``embedding_bag`` per corner sums ``weight * grad[bag]`` per lower corner; the 8 sums are added at their row
    offsets and the padding is cropped. Sorting the samples is 8 times cheaper than sorting the corners.

    Args:
        grad: (B * L_q * H, C_h) gradient of the output per bag.
        corner_weights: (B * L_q * H, K * L * 8) as from :func:`_corner_geometry`.
        lower: (L, 3, B, L_q, H, K) lower corners in [-1, size - 1].
        shapes: (X_l, Y_l, Z_l) of each level.

    Returns:
        (B, N, H, C_h).
    """
    num_levels, _, batch, _, heads, num_points = lower.shape
    channels, device = grad.shape[1], grad.device
    # (L, 8, B * L_q * H * K): the weights of one level and corner as one vector, samples in (bag, k) order
    weights = corner_weights.view(-1, num_levels * 8).t().reshape(num_levels, 8, -1)
    level_grads = []
    for level, (x, y, z) in enumerate(shapes):
        px, py, pz = x + 2, y + 2, z + 2
        num_rows = batch * px * py * pz * heads
        cell_x, cell_y, cell_z = lower[level].long() + 1  # lower corner in the padded map, in [0, size]
        head_rows = torch.arange(batch, device=device).view(-1, 1, 1, 1) * (px * py * pz * heads)
        head_rows = head_rows + torch.arange(heads, device=device).view(1, 1, -1, 1)
        key = ((cell_x * py + cell_y) * pz + cell_z) * heads + head_rows
        key, order = key.reshape(-1).sort()
        counts = torch.bincount(key, minlength=num_rows)
        offsets = counts.cumsum(0) - counts
        sorted_bags = torch.div(order, num_points, rounding_mode="floor")
        sorted_weights = weights[level].index_select(1, order)
        padded = None
        for corner in range(8):
            dx, dy, dz = corner >> 2, (corner >> 1) & 1, corner & 1
            shift = ((dx * py + dy) * pz + dz) * heads
            part = F.embedding_bag(sorted_bags, grad, offsets, per_sample_weights=sorted_weights[corner], mode="sum")
            if padded is None:  # corner 0 has no shift
                padded = part
            else:
                padded[shift:] += part[: num_rows - shift]
        padded = padded.view(batch, px, py, pz, heads, channels)[:, 1:-1, 1:-1, 1:-1]
        level_grads.append(padded.reshape(batch, x * y * z, heads, channels))
    return torch.cat(level_grads, dim=1)


class _GatherSampling(torch.autograd.Function):
    """Autograd function of :func:`ms_deform_attn_3d_gather` (inputs already in the compute dtype)."""

    @staticmethod
    def forward(ctx, value, locations, attention, shapes):  # type: ignore[override]
        batch, num_tokens, heads, channels = value.shape
        num_queries = locations.shape[1]
        rows, corner_weights, axis_weights, axis_slopes, lower = _corner_geometry(locations, attention, shapes, num_tokens)
        # detached inputs: embedding_bag then skips the bookkeeping for its own backward
        table = value.detach().reshape(-1, channels)
        output = F.embedding_bag(rows, table, per_sample_weights=corner_weights.detach(), mode="sum")
        ctx.save_for_backward(value, attention, rows, corner_weights, axis_weights, axis_slopes, lower)
        ctx.shapes = shapes
        return output.view(batch, num_queries, heads * channels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        value, attention, rows, corner_weights, axis_weights, axis_slopes, lower = ctx.saved_tensors
        needs_value, needs_locations, needs_attention = ctx.needs_input_grad[:3]
        channels = value.shape[-1]
        grad = grad_output.reshape(-1, channels).contiguous()
        grad_value = grad_locations = grad_attention = None
        with _autocast_disabled(value.device.type):
            if needs_locations or needs_attention:
                num_levels = axis_weights.shape[0]
                dots = _corner_dots(grad, value.reshape(-1, channels), rows)  # (bags, K * L * 8)
                # corner-major: (L, dx, dy, dz, B, L_q, H, K)
                dots = dots.view(-1, num_levels * 8).t().reshape(num_levels, 2, 2, 2, *axis_weights.shape[3:])
                weight_x, weight_y, weight_z = axis_weights.unbind(1)  # (L, 2, B, L_q, H, K)
                slope_x, slope_y, slope_z = axis_slopes.unbind(1)
                dots_z = (dots * weight_z[:, None, None]).sum(3)  # z contracted: (L, dx, dy, ...)
                dots_yz = (dots_z * weight_y[:, None]).sum(2)  # (L, dx, ...)
                attention = attention.permute(3, 0, 1, 2, 4)  # (L, B, L_q, H, K)
                if needs_attention:
                    grad_attention = (dots_yz * weight_x).sum(1).permute(1, 2, 3, 0, 4)
                if needs_locations:
                    d_x = (dots_yz * slope_x).sum(1)
                    d_y = ((dots_z * weight_x[:, :, None]).sum(1) * slope_y).sum(1)
                    d_z = (((dots * slope_z[:, None, None]).sum(3) * weight_y[:, None]).sum(2) * weight_x).sum(1)
                    size = torch.tensor(ctx.shapes, device=dots.device, dtype=dots.dtype).view(num_levels, 3, 1, 1, 1, 1)
                    grad_locations = torch.stack((d_x, d_y, d_z), dim=1) * (attention[:, None] * size)
                    grad_locations = grad_locations.permute(2, 3, 4, 0, 5, 1)  # (B, L_q, H, L, K, 3)
            if needs_value:
                grad_value = _value_gradient(grad, corner_weights, lower, ctx.shapes).view_as(value)
        return grad_value, grad_locations, grad_attention, None


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
        self, d_model: int = 384, num_levels: int = 2, num_heads: int = 6, num_points: int = 4, implementation: str = "auto"
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
