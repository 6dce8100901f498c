"""Tests of the fast MS-DMSA kernel (``ms_deform_attn_3d_gather``) against the ``grid_sample`` formulation."""

from __future__ import annotations

import pytest
import torch

from scripts.networks import ms_deform_attn as msda
from scripts.networks import ms_deform_attn_gather as gather
from scripts.networks.detrans import voxel_centre_reference_points
from scripts.networks.ms_deform_attn import (
    MSDeformAttn3D,
    ms_deform_attn_3d,
    ms_deform_attn_3d_gather,
    ms_deform_attn_3d_grid_sample,
)

# (spatial shapes, heads, points): 1-3 levels, cubic and non-cubic maps, sizes of 1 included
CASES = [
    ([(4, 4, 4)], 1, 1),
    ([(5, 3, 2)], 2, 3),
    ([(6, 4, 3), (3, 2, 2)], 3, 2),
    ([(4, 6, 2), (2, 3, 1)], 2, 4),
    ([(8, 4, 4), (4, 2, 2), (2, 1, 1)], 2, 2),
    ([(3, 5, 7), (2, 3, 4), (1, 2, 2)], 4, 1),
]


def num_tokens(shapes) -> int:
    return sum(x * y * z for x, y, z in shapes)


def special_locations(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """
    Locations in [-0.3, 1.3] (outside means zeros) where about half the coordinates are exactly on a border, a
    voxel centre or a voxel face: dyadic values k / 16, exact in both formulations, plus far-away points.
    """
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64) * 1.6 - 0.3
    special = torch.tensor([0.0, 1.0, 0.5, 0.25, 0.75, 1 / 16, 15 / 16, 3 / 8, 1 / 8, -1 / 16, 17 / 16, -3.0, 5.0])
    picks = special[torch.randint(0, len(special), shape, generator=generator)].double()
    return torch.where(torch.rand(shape, generator=generator) < 0.5, picks, uniform)


def random_inputs(shapes, heads, points, batch=2, queries=7, channels=3, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    value = torch.randn(batch, num_tokens(shapes), heads, channels, generator=generator, dtype=torch.float64)
    locations = special_locations(generator, (batch, queries, heads, levels, points, 3))
    weights = torch.rand(batch, queries, heads, levels, points, generator=generator, dtype=torch.float64)
    return [t.to(dtype).requires_grad_(True) for t in (value, locations, weights)]


@pytest.mark.parametrize("shapes, heads, points", CASES)
def test_forward_and_gradients_match_grid_sample(shapes, heads, points):
    value, locations, weights = random_inputs(shapes, heads, points, seed=len(shapes) * 10 + heads)
    expected = ms_deform_attn_3d_grid_sample(value, shapes, locations, weights)
    out = ms_deform_attn_3d_gather(value, shapes, locations, weights)
    assert out.shape == expected.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, atol=1e-8, rtol=0)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (value, locations, weights), grad_out)
    grads = torch.autograd.grad(out, (value, locations, weights), grad_out)
    for name, grad, expected_grad in zip(("value", "locations", "weights"), grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-8, rtol=0, msg=f"gradient of {name}")


def test_every_sample_outside_gives_zeros():
    shapes = [(3, 4, 2), (2, 2, 1)]
    value, locations, weights = random_inputs(shapes, 2, 2)
    far = (locations.detach() + 2.0).requires_grad_(True)  # all in [1.7, 3.3]
    out = ms_deform_attn_3d_gather(value, shapes, far, weights)
    assert torch.count_nonzero(out) == 0
    grads = torch.autograd.grad(out.sum(), (value, far, weights))
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_gradcheck():
    shapes = [(3, 4, 2), (2, 3, 1)]
    generator = torch.Generator().manual_seed(3)
    batch, queries, heads, channels, points = 1, 3, 2, 2, 2
    value = torch.randn(batch, num_tokens(shapes), heads, channels, generator=generator, dtype=torch.float64)
    sizes = torch.tensor(shapes, dtype=torch.float64)[:, None, :]
    # voxel coordinates n + f, f in [0.2, 0.8], n from -1 (half outside) to size - 1: away from the kinks
    lower = torch.stack(
        [torch.randint(-1, 3, (batch, queries, heads, len(shapes), points), generator=generator) for _ in range(3)], -1
    )
    coords = lower + 0.2 + 0.6 * torch.rand(lower.shape, generator=generator, dtype=torch.float64)
    locations = (coords + 0.5) / sizes
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator, dtype=torch.float64)
    inputs = tuple(t.requires_grad_(True) for t in (value, locations, weights))
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn_3d_gather(v, shapes, loc, w), inputs)


@pytest.mark.parametrize("sparse, table_rows", [(True, 9), (False, 9), (None, 9), (None, 3)])
def test_corner_dots_both_kernels(sparse, table_rows):
    """Sampled dense-dense product (CPU default) and embedding_bag backward; auto falls back for tiny tables."""
    generator = torch.Generator().manual_seed(4)
    grad = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    table = torch.randn(table_rows, 3, generator=generator, dtype=torch.float64)
    rows = torch.randint(0, table_rows, (5, 8), generator=generator)
    rows[0, :2] = table_rows - 1  # a repeated index within a bag
    expected = (table[rows] * grad[:, None, :]).sum(-1)
    torch.testing.assert_close(gather._corner_dots(grad, table, rows, sparse=sparse), expected, atol=1e-12, rtol=0)


def test_function_dispatch_and_arguments():
    shapes = [(4, 3, 2), (2, 2, 1)]
    value, locations, weights = random_inputs(shapes, 2, 3)
    expected = ms_deform_attn_3d_grid_sample(value, shapes, locations, weights)
    for implementation in ("auto", "gather", "grid_sample"):
        out = ms_deform_attn_3d(value, shapes, locations, weights, implementation=implementation)
        torch.testing.assert_close(out, expected, atol=1e-8, rtol=0)
    # shapes as a tensor, value not contiguous
    strided = value.detach().transpose(0, 1).contiguous().transpose(0, 1)
    out = ms_deform_attn_3d_gather(strided, torch.tensor(shapes), locations, weights)
    torch.testing.assert_close(out, expected, atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="implementation"):
        ms_deform_attn_3d(value, shapes, locations, weights, implementation="cuda")
    with pytest.raises(ValueError, match="tokens"):
        ms_deform_attn_3d_gather(value, [(4, 3, 2), (2, 2, 2)], locations, weights)
    with pytest.raises(ValueError, match="implementation"):
        MSDeformAttn3D(8, 2, 2, 2, implementation="fast")


def small_module(implementation: str = "auto"):
    torch.manual_seed(0)
    shapes = [(4, 3, 2), (2, 2, 1)]
    module = MSDeformAttn3D(d_model=8, num_levels=2, num_heads=2, num_points=2, implementation=implementation)
    with torch.no_grad():  # offsets that depend on the query, non-uniform attention
        module.sampling_offsets.weight.normal_(0, 0.5)
        module.attention_weights.weight.normal_(0, 0.5)
    x = torch.randn(2, num_tokens(shapes), 8)
    ref = voxel_centre_reference_points(shapes)[None, :, None, :].expand(2, -1, 2, -1)
    return module, x, ref, shapes


def count_calls(monkeypatch) -> dict[str, int]:
    calls = {"gather": 0, "grid_sample": 0}
    for name in calls:
        original = getattr(msda, f"ms_deform_attn_3d_{name}")

        def wrapped(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(msda, f"ms_deform_attn_3d_{name}", wrapped)
    return calls


def test_module_uses_gather_in_eager_mode(monkeypatch):
    module, x, ref, shapes = small_module()
    calls = count_calls(monkeypatch)
    out = module(x, ref, x, shapes)
    out.sum().backward()
    assert calls == {"gather": 1, "grid_sample": 0}
    reference = small_module("grid_sample")[0]
    torch.testing.assert_close(out, reference(x, ref, x, shapes), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:torch.tensor results are registered as constants")
def test_module_uses_grid_sample_under_trace(monkeypatch):
    module, x, ref, shapes = small_module()
    calls = count_calls(monkeypatch)

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = module

        def forward(self, tokens, reference_points):
            return self.attn(tokens, reference_points, tokens, shapes)

    with torch.no_grad():
        traced = torch.jit.trace(SelfAttention(), (x, ref), check_trace=False)
    assert calls == {"gather": 0, "grid_sample": 1}
    graph = str(traced.inlined_graph)
    assert "grid_sampler" in graph and "embedding_bag" not in graph
    x2 = torch.randn_like(x)
    torch.testing.assert_close(traced(x2, ref), module(x2, ref, x2, shapes), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["auto", "gather"])
def test_scripted_module_uses_grid_sample(implementation):
    """TorchScript cannot compile the gather kernel's autograd function: scripting always takes grid_sample."""
    module, x, ref, shapes = small_module(implementation)

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = module
            self.shapes = [list(s) for s in shapes]

        def forward(self, tokens: torch.Tensor, reference_points: torch.Tensor) -> torch.Tensor:
            return self.attn(tokens, reference_points, tokens, self.shapes)

    scripted = torch.jit.script(SelfAttention())
    graph = str(scripted.inlined_graph)
    assert "grid_sampler" in graph and "embedding_bag" not in graph
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, ref), module(x, ref, x, shapes), atol=1e-5, rtol=1e-5)


def test_bf16_autocast_close_to_float32():
    module, x, ref, shapes = small_module()
    expected = module(x, ref, x, shapes)
    x_bf16 = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x_bf16, ref, x_bf16, shapes)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)
    out.float().square().sum().backward()
    assert x_bf16.grad is not None and torch.isfinite(x_bf16.grad).all()
    # the kernel itself with bfloat16 inputs: computed in float32, returned in bfloat16
    value, locations, weights = random_inputs([(4, 3, 2)], 2, 2, dtype=torch.float32)
    out = ms_deform_attn_3d_gather(value.bfloat16(), [(4, 3, 2)], locations.bfloat16(), weights.bfloat16())
    assert out.dtype == torch.bfloat16
    expected = ms_deform_attn_3d_gather(value, [(4, 3, 2)], locations.bfloat16().float(), weights)
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=2e-2)


def test_metatensor_inputs():
    """MONAI pipelines feed MetaTensors through the network: the kernel runs on plain tensors, gradients still flow."""
    from monai.data import MetaTensor

    shapes = [(4, 3, 2), (2, 2, 1)]
    value, locations, weights = random_inputs(shapes, 2, 2)
    expected = ms_deform_attn_3d_grid_sample(value, shapes, locations, weights)
    meta_value = MetaTensor(value.detach().clone()).requires_grad_(True)
    out = ms_deform_attn_3d_gather(meta_value, shapes, locations, weights)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), expected, atol=1e-8, rtol=0)
    out.sum().backward()
    expected_grad = torch.autograd.grad(expected.sum(), value)[0]
    torch.testing.assert_close(meta_value.grad.as_subclass(torch.Tensor), expected_grad, atol=1e-8, rtol=0)
