"""
The gather kernel of MS-DMSA (:func:`ms_deform_attn_3d_gather`): trilinear sampling and the attention-weighted sum as
one fused ``embedding_bag`` reduction, with its backward pass written out (:class:`_GatherSampling`). Same values
and gradients as the reference formulation :func:`scripts.networks.ms_deform_attn.ms_deform_attn_3d_grid_sample`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["ms_deform_attn_3d_gather"]


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
            f"spatial_shapes needs one (X, Y, Z) per level ({sampling_locations.shape[3]} levels), "
            f"got {spatial_shapes}."
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


def _corner_dots(
    grad: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, sparse: bool | None = None
) -> torch.Tensor:
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
        rows, corner_weights, axis_weights, axis_slopes, lower = _corner_geometry(
            locations, attention, shapes, num_tokens
        )
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
                    size = torch.tensor(ctx.shapes, device=dots.device, dtype=dots.dtype).view(
                        num_levels, 3, 1, 1, 1, 1
                    )
                    grad_locations = torch.stack((d_x, d_y, d_z), dim=1) * (attention[:, None] * size)
                    grad_locations = grad_locations.permute(2, 3, 4, 0, 5, 1)  # (B, L_q, H, L, K, 3)
            if needs_value:
                grad_value = _value_gradient(grad, corner_weights, lower, ctx.shapes).view_as(value)
        return grad_value, grad_locations, grad_attention, None
