"""Tests of ``scripts/networks/ms_deform_attn.py``: MS-DMSA (paper eq. 3-4) against an independent loop."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import scripts.networks.ms_deform_attn as ms_deform_attn_module
from scripts.networks import MSDeformAttn3D, ms_deform_attn_3d, voxel_centre_reference_points

# every sampling kernel the module offers is checked against the same independent loop
KERNELS = [k for k in getattr(ms_deform_attn_module, "IMPLEMENTATIONS", ()) if k != "auto"] or ["auto"]


def make_attn(*args, kernel: str = "auto", **kwargs) -> MSDeformAttn3D:
    if kernel != "auto":
        kwargs["implementation"] = kernel
    return MSDeformAttn3D(*args, **kwargs)


def sample_fn(value, shapes, locations, weights, kernel: str = "auto") -> torch.Tensor:
    if kernel == "auto":
        return ms_deform_attn_3d(value, shapes, locations, weights)
    return ms_deform_attn_3d(value, shapes, locations, weights, implementation=kernel)


# ---------------------------------------------------------------------------------------------------------------
# independent reference implementation (numpy, float64, explicit loops; no grid_sample)
# ---------------------------------------------------------------------------------------------------------------


def trilinear_zero_pad(volume: np.ndarray, coord: np.ndarray) -> np.ndarray:
    """
    Trilinear sample of ``volume`` (X, Y, Z, C) at the continuous voxel coordinate ``coord`` (3,), where integer
    coordinates are voxel centres. Corners outside the volume contribute zeros.
    """
    sizes = volume.shape[:3]
    base = [math.floor(c) for c in coord]
    frac = [c - b for c, b in zip(coord, base)]
    out = np.zeros(volume.shape[3], dtype=np.float64)
    for corner in itertools.product((0, 1), repeat=3):
        index = [base[a] + corner[a] for a in range(3)]
        if not all(0 <= index[a] < sizes[a] for a in range(3)):
            continue
        weight = 1.0
        for a in range(3):
            weight *= frac[a] if corner[a] else 1.0 - frac[a]
        out += weight * volume[index[0], index[1], index[2]]
    return out


def level_volumes(value: np.ndarray, shapes) -> list[np.ndarray]:
    """Split (N, H, C_h) tokens into per-level (X, Y, Z, H, C_h) volumes, token (i, j, k) at row (i * Y + j) * Z + k."""
    volumes, start = [], 0
    for x_size, y_size, z_size in shapes:
        vol = np.empty((x_size, y_size, z_size) + value.shape[1:], dtype=np.float64)
        for i, j, k in itertools.product(range(x_size), range(y_size), range(z_size)):
            vol[i, j, k] = value[start + (i * y_size + j) * z_size + k]
        volumes.append(vol)
        start += x_size * y_size * z_size
    return volumes


def naive_sampling(value, shapes, continuous_coords, weights) -> np.ndarray:
    """
    Eq. 3 per query: ``head_h = sum_l sum_k w[h, l, k] * f_l(c[h, l, k])``.

    value (B, N, H, C_h); continuous_coords (B, L_q, H, L, K, 3) in voxel units of each level (integer = voxel
    centre); weights (B, L_q, H, L, K). Returns (B, L_q, H * C_h).
    """
    batch, _, heads, head_channels = value.shape
    _, num_queries, _, num_levels, num_points, _ = continuous_coords.shape
    out = np.zeros((batch, num_queries, heads, head_channels))
    for b in range(batch):
        volumes = level_volumes(value[b], shapes)
        for q in range(num_queries):
            for h in range(heads):
                for lvl in range(num_levels):
                    for p in range(num_points):
                        sample = trilinear_zero_pad(volumes[lvl][..., h, :], continuous_coords[b, q, h, lvl, p])
                        out[b, q, h] += weights[b, q, h, lvl, p] * sample
    return out.reshape(batch, num_queries, heads * head_channels)


def naive_function(value, shapes, sampling_locations, attention_weights) -> np.ndarray:
    """The parameter-free core with normalised locations: voxel coordinate = location * size - 0.5."""
    sizes = np.asarray(shapes, dtype=np.float64)  # (L, 3)
    coords = sampling_locations * sizes[None, None, None, :, None, :] - 0.5
    return naive_sampling(value, shapes, coords, attention_weights)


def naive_module(module: MSDeformAttn3D, query, reference_points, input_flatten, shapes) -> np.ndarray:
    """Eq. 3-4 with the module's weights: offsets in voxels of each level added to the rescaled reference point."""
    params = {k: v.detach().double().numpy() for k, v in module.state_dict().items()}
    heads, levels, points = module.num_heads, module.num_levels, module.num_points
    batch, num_queries, d_model = query.shape
    value = input_flatten @ params["value_proj.weight"].T + params["value_proj.bias"]
    value = value.reshape(batch, -1, heads, d_model // heads)
    offsets = query @ params["sampling_offsets.weight"].T + params["sampling_offsets.bias"]
    offsets = offsets.reshape(batch, num_queries, heads, levels, points, 3)
    logits = query @ params["attention_weights.weight"].T + params["attention_weights.bias"]
    logits = logits.reshape(batch, num_queries, heads, levels * points)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = (weights / weights.sum(-1, keepdims=True)).reshape(batch, num_queries, heads, levels, points)
    sizes = np.asarray(shapes, dtype=np.float64)
    # sigma_l(p) = p * size_l (continuous coordinate, voxel centre i at i + 0.5), then + offset, then -0.5 to index
    coords = reference_points[:, :, None, :, None, :] * sizes[None, None, None, :, None, :] + offsets - 0.5
    heads_out = naive_sampling(value, shapes, coords, weights)
    return heads_out @ params["output_proj.weight"].T + params["output_proj.bias"]


def randomise(module: MSDeformAttn3D, offset_scale: float = 1.0) -> MSDeformAttn3D:
    """Random weights everywhere, including non-zero offset and attention-logit weights."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.startswith("sampling_offsets"):
                param.normal_(0.0, offset_scale)
            else:
                param.normal_(0.0, 0.5)
    return module


def num_tokens(shapes) -> int:
    return sum(x * y * z for x, y, z in shapes)


# ---------------------------------------------------------------------------------------------------------------
# (a) zero offsets return the query's own voxel
# ---------------------------------------------------------------------------------------------------------------

ZERO_OFFSET_CASES = [
    # shape, heads, points, dtype
    ((5, 7, 3), 1, 1, torch.float64),
    ((5, 7, 3), 2, 3, torch.float64),
    ((3, 4, 6), 4, 2, torch.float32),
    ((8, 2, 5), 1, 1, torch.float32),
]


def own_voxel_module(shape, heads, points, dtype, d_model=8, kernel="auto"):
    torch.manual_seed(0)
    module = make_attn(d_model=d_model, num_levels=1, num_heads=heads, num_points=points, kernel=kernel)
    with torch.no_grad():
        module.value_proj.weight.normal_()
        module.value_proj.bias.normal_()
        module.output_proj.bias.normal_()
        module.attention_weights.weight.normal_()  # any weights: all points coincide
        module.sampling_offsets.weight.zero_()
        module.sampling_offsets.bias.zero_()
    module = module.to(dtype)
    n = num_tokens([shape])
    x = torch.randn(2, n, d_model, dtype=dtype)
    query = x + torch.randn_like(x)
    ref = voxel_centre_reference_points([shape], dtype=dtype)[None, :, None, :].expand(2, -1, 1, -1)
    return module, x, query, ref


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape, heads, points, dtype", ZERO_OFFSET_CASES)
def test_zero_offsets_sample_own_voxel(shape, heads, points, dtype, kernel):
    module, x, query, ref = own_voxel_module(shape, heads, points, dtype, kernel=kernel)
    with torch.no_grad():
        out = module(query, ref, x, [shape])
        expected = module.output_proj(module.value_proj(x))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("permutation", [(2, 1, 0), (1, 2, 0), (0, 2, 1)])
def test_zero_offsets_detect_permuted_reference_points(permutation, kernel):
    """The same check fails when the reference-point components are permuted (the reference code's bug)."""
    shape = (5, 7, 3)
    module, x, query, ref = own_voxel_module(shape, 1, 1, torch.float64, kernel=kernel)
    with torch.no_grad():
        expected = module.output_proj(module.value_proj(x))
        out = module(query, ref[..., list(permutation)], x, [shape])
    assert not torch.allclose(out, expected, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# (b) an offset of one voxel moves the sample by one voxel
# ---------------------------------------------------------------------------------------------------------------


def shifted(volume: np.ndarray, axis: int, step: float) -> np.ndarray:
    """volume (X, Y, Z, C) sampled at voxel i + step along ``axis`` (step in {-1, +1, +0.5}), zero outside."""
    size = volume.shape[axis]
    out = np.zeros_like(volume)
    for i in range(size):
        lo = math.floor(i + step)
        frac = i + step - lo
        for idx, w in ((lo, 1.0 - frac), (lo + 1, frac)):
            if w and 0 <= idx < size:
                dst = [slice(None)] * 4
                src = [slice(None)] * 4
                dst[axis], src[axis] = i, idx
                out[tuple(dst)] += w * volume[tuple(src)]
    return out


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("step", [1.0, -1.0, 0.5])
def test_offset_moves_sample_along_axis(axis, step, kernel):
    shape = (5, 7, 3)
    module, x, query, ref = own_voxel_module(shape, 1, 1, torch.float64, kernel=kernel)
    bias = torch.zeros(3, dtype=torch.float64)
    bias[axis] = step
    with torch.no_grad():
        module.sampling_offsets.bias.copy_(bias)
        out = module(query, ref, x, [shape]).numpy()
        value = module.value_proj(x).numpy()  # (B, N, C), rows in flatten order
    w_out = module.output_proj.weight.detach().numpy()
    b_out = module.output_proj.bias.detach().numpy()
    for b in range(value.shape[0]):
        volume = value[b].reshape(*shape, -1)  # token (i, j, k) -> volume[i, j, k]
        moved = shifted(volume, axis, step).reshape(-1, value.shape[-1])
        np.testing.assert_allclose(out[b], moved @ w_out.T + b_out, atol=1e-10)
    if step == 1.0:  # concretely: the query at voxel (0, 0, 0) reads voxel (1, 0, 0) / (0, 1, 0) / (0, 0, 1)
        target = [0, 0, 0]
        target[axis] = 1
        row = (target[0] * shape[1] + target[1]) * shape[2] + target[2]
        np.testing.assert_allclose(out[0, 0], value[0, row] @ w_out.T + b_out, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# (c) module and function against the naive loop
# ---------------------------------------------------------------------------------------------------------------

LOOP_CASES = [
    # shapes per level, heads, points, d_model, batch
    ([(5, 7, 3)], 1, 1, 6, 1),
    ([(4, 6, 3)], 2, 4, 8, 2),
    ([(5, 7, 3), (2, 4, 3)], 2, 3, 8, 2),
    ([(6, 4, 5), (3, 2, 3)], 4, 2, 8, 1),
    ([(4, 5, 6), (2, 3, 3), (1, 2, 2)], 1, 2, 4, 1),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shapes, heads, points, d_model, batch", LOOP_CASES)
def test_module_matches_naive_loop_self_attention(shapes, heads, points, d_model, batch, kernel):
    torch.manual_seed(1)
    levels = len(shapes)
    module = randomise(make_attn(d_model, levels, heads, points, kernel=kernel)).double()
    n = num_tokens(shapes)
    x = torch.randn(batch, n, d_model, dtype=torch.float64)
    query = x + torch.randn_like(x)
    ref = voxel_centre_reference_points(shapes, dtype=torch.float64)[None, :, None, :].expand(batch, -1, levels, -1)
    with torch.no_grad():
        out = module(query, ref, x, shapes).numpy()
    expected = naive_module(module, query.numpy(), ref.numpy(), x.numpy(), shapes)
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shapes, heads, points, d_model, batch", LOOP_CASES[1:4])
def test_module_matches_naive_loop_free_reference_points(shapes, heads, points, d_model, batch, kernel):
    """Queries that are not the tokens, with arbitrary per-level reference points (some near the border)."""
    torch.manual_seed(2)
    levels = len(shapes)
    module = randomise(make_attn(d_model, levels, heads, points, kernel=kernel), offset_scale=2.0).double()
    x = torch.randn(batch, num_tokens(shapes), d_model, dtype=torch.float64)
    query = torch.randn(batch, 9, d_model, dtype=torch.float64)
    ref = torch.rand(batch, 9, levels, 3, dtype=torch.float64) * 1.2 - 0.1
    with torch.no_grad():
        out = module(query, ref, x, shapes).numpy()
    expected = naive_module(module, query.numpy(), ref.numpy(), x.numpy(), shapes)
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shapes, heads, points, d_model, batch", LOOP_CASES)
def test_function_matches_naive_loop(shapes, heads, points, d_model, batch, kernel):
    torch.manual_seed(3)
    levels = len(shapes)
    head_channels = d_model // heads
    value = torch.randn(batch, num_tokens(shapes), heads, head_channels, dtype=torch.float64)
    locations = torch.rand(batch, 11, heads, levels, points, 3, dtype=torch.float64) * 1.3 - 0.15
    weights = torch.rand(batch, 11, heads, levels, points, dtype=torch.float64)
    out = sample_fn(value, shapes, locations, weights, kernel)
    assert out.shape == (batch, 11, heads * head_channels)
    expected = naive_function(value.numpy(), shapes, locations.numpy(), weights.numpy())
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6, rtol=0)


def test_naive_loop_is_sensitive_to_axis_order():
    """Sanity check of the reference itself: reversing the location components changes the result."""
    torch.manual_seed(4)
    shapes = [(5, 7, 3)]
    value = torch.randn(1, num_tokens(shapes), 1, 2, dtype=torch.float64)
    locations = torch.rand(1, 6, 1, 1, 1, 3, dtype=torch.float64)
    weights = torch.ones(1, 6, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn_3d(value, shapes, locations, weights).numpy()
    flipped = naive_function(value.numpy(), shapes, locations.flip(-1).numpy(), weights.numpy())
    assert not np.allclose(out, flipped, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# (d) gradients
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_function(kernel):
    torch.manual_seed(5)
    shapes = [(3, 4, 2), (2, 3, 2)]
    batch, queries, heads, head_channels, points = 1, 3, 2, 2, 2
    levels = len(shapes)
    value = torch.randn(batch, num_tokens(shapes), heads, head_channels, dtype=torch.float64, requires_grad=True)
    sizes = torch.tensor(shapes, dtype=torch.float64)[None, None, None, :, None, :]
    # voxel coordinates n + f with f in [0.2, 0.8]: away from the kinks at integer coordinates (and the border)
    # (n ranges over -1 .. size - 1, so some samples straddle the border and mix in zero padding)
    base = torch.stack(
        [
            torch.stack([torch.randint(-1, shape[axis], (batch, queries, heads, points)) for axis in range(3)], dim=-1)
            for shape in shapes
        ],
        dim=3,
    )  # (B, L_q, H, L, K, 3)
    coords = base.double() + 0.2 + 0.6 * torch.rand(batch, queries, heads, levels, points, 3, dtype=torch.float64)
    locations = ((coords + 0.5) / sizes).requires_grad_(True)
    weights = torch.rand(batch, queries, heads, levels, points, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, loc, w: sample_fn(v, shapes, loc, w, kernel), (value, locations, weights), eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("kernel", KERNELS)
def test_module_backward_reaches_every_parameter(kernel):
    torch.manual_seed(6)
    shapes = [(4, 3, 2), (2, 2, 1)]
    module = randomise(make_attn(8, 2, 2, 2, kernel=kernel))
    x = torch.randn(2, num_tokens(shapes), 8, requires_grad=True)
    ref = voxel_centre_reference_points(shapes)[None, :, None, :].expand(2, -1, 2, -1)
    module(x + 0.1, ref, x, shapes).square().sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------------------------------
# (e) arguments and initialisation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [dict(d_model=10, num_heads=4), dict(d_model=384, num_heads=5), dict(num_levels=0), dict(num_points=0)]
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        MSDeformAttn3D(**kwargs)


@pytest.mark.parametrize("heads, levels, points", [(6, 2, 4), (4, 1, 2), (2, 3, 1), (1, 2, 3)])
def test_initialisation(heads, levels, points):
    torch.manual_seed(7)
    d_model = 12 * heads
    module = MSDeformAttn3D(d_model, levels, heads, points)
    # attention weights are uniform at init: logits are zero for any query
    query = torch.randn(2, 5, d_model)
    logits = module.attention_weights(query)
    assert torch.count_nonzero(logits) == 0
    # offsets do not depend on the query at init; bias = unit direction of the head * (k + 1)
    assert torch.count_nonzero(module.sampling_offsets.weight) == 0
    bias = module.sampling_offsets.bias.detach().double().view(heads, levels, points, 3)
    norms = bias.norm(dim=-1)
    expected_norms = torch.arange(1, points + 1, dtype=torch.float64).expand(heads, levels, points)
    torch.testing.assert_close(norms, expected_norms, atol=1e-6, rtol=0)
    directions = bias / norms[..., None]
    torch.testing.assert_close(directions, directions[:, :1, :1].expand_as(directions), atol=1e-6, rtol=0)
    head_dirs = directions[:, 0, 0]
    if heads > 1:  # every head looks its own way
        cosines = head_dirs @ head_dirs.T - 2 * torch.eye(heads, dtype=torch.float64)
        assert cosines.max() < 0.99
    # value / output projections: Xavier-uniform, zero bias
    bound = math.sqrt(6.0 / (2 * d_model))
    for proj in (module.value_proj, module.output_proj):
        assert torch.count_nonzero(proj.bias) == 0
        assert proj.weight.abs().max() <= bound
        assert proj.weight.std() > 0.5 * bound / math.sqrt(3)


def test_output_shape_and_dtype_follow_input():
    shapes = [(4, 6, 2), (2, 3, 1)]
    module = MSDeformAttn3D(24, 2, 4, 3)
    x = torch.randn(3, num_tokens(shapes), 24)
    ref = voxel_centre_reference_points(shapes)[None, :, None, :].expand(3, -1, 2, -1)
    assert module(x, ref, x, shapes).shape == (3, num_tokens(shapes), 24)
    out64 = module.double()(x.double(), ref.double(), x.double(), shapes)
    assert out64.dtype == torch.float64
