"""Tests of ``scripts/networks/detrans.py``: reference points, DeTrans layer wiring, shapes and parameter count."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from scripts.networks import DeTransEncoder, DeTransLayer, sine_position_encoding_3d, voxel_centre_reference_points


@pytest.mark.parametrize("shapes", [[(5, 7, 3), (2, 3, 4)], [(3, 4, 6)], [(4, 2, 5), (2, 1, 3), (1, 1, 2)]])
def test_reference_points_are_voxel_centres_in_flatten_order(shapes):
    ref = voxel_centre_reference_points(shapes, dtype=torch.float64)
    assert ref.shape == (sum(x * y * z for x, y, z in shapes), 3)
    # explicit loop, (x, y, z) components, row-major over (X, Y, Z) = flatten order
    expected = [
        [(i + 0.5) / x_size, (j + 0.5) / y_size, (k + 0.5) / z_size]
        for x_size, y_size, z_size in shapes
        for i, j, k in itertools.product(range(x_size), range(y_size), range(z_size))
    ]
    torch.testing.assert_close(ref, torch.tensor(expected, dtype=torch.float64))
    # and from the maps themselves: a map holding its own voxel indices, flattened like the DeTrans does
    start = 0
    for shape in shapes:
        grid = torch.stack(torch.meshgrid(*(torch.arange(s) for s in shape), indexing="ij"))[None]  # (1, 3, X, Y, Z)
        indices = grid.flatten(2).transpose(1, 2)[0].double()
        n = indices.shape[0]
        torch.testing.assert_close(ref[start : start + n] * torch.tensor(shape, dtype=torch.float64) - 0.5, indices)
        start += n


def test_reference_points_dtype():
    assert voxel_centre_reference_points([(2, 3, 4)], dtype=torch.float64).dtype == torch.float64


SHAPE_CASES = [
    # d_model, heads, shapes, batch
    (24, 4, [(4, 6, 2), (2, 3, 1)], 1),
    (24, 4, [(4, 6, 2), (2, 3, 1)], 3),
    (12, 2, [(3, 5, 7), (2, 2, 2)], 2),
    (18, 3, [(3, 4, 5)], 2),
    (12, 1, [(4, 4, 4), (2, 2, 2), (1, 1, 1)], 1),
]


@pytest.mark.parametrize("d_model, heads, shapes, batch", SHAPE_CASES)
def test_output_shapes(d_model, heads, shapes, batch):
    torch.manual_seed(0)
    enc = DeTransEncoder(d_model, heads, num_levels=len(shapes), num_points=2, num_layers=2, mlp_dim=16)
    maps = [torch.randn(batch, d_model, *s) for s in shapes]
    for mode in (enc.train, enc.eval):
        mode()
        out = enc(maps)
        assert isinstance(out, list) and [o.shape for o in out] == [m.shape for m in maps]


def test_parameter_count_default():
    enc = DeTransEncoder()
    assert sum(p.numel() for p in enc.parameters() if p.requires_grad) == 9_316_992
    assert enc.level_embed.shape == (2, 384)


def test_forward_follows_post_norm_formula():
    """Independent composition of the spec's layer: x = LN(x + MSDMSA(x + pos, ref, x)); x = LN(x + W2 GELU(W1 x))."""
    torch.manual_seed(1)
    d_model, shapes, batch = 12, [(3, 4, 2), (2, 1, 3)], 2
    enc = DeTransEncoder(d_model, num_heads=2, num_levels=2, num_points=3, num_layers=2, mlp_dim=20).double().eval()
    with torch.no_grad():
        for layer in enc.layers:  # make attention do something non-trivial
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.3)
            layer.self_attn.attention_weights.weight.normal_(0, 0.3)
            for norm in (layer.norm_attn, layer.norm_mlp):
                norm.weight.normal_(1, 0.2)
                norm.bias.normal_(0, 0.2)
    maps = [torch.randn(batch, d_model, *s, dtype=torch.float64) for s in shapes]
    tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
    pos = torch.cat(
        [sine_position_encoding_3d(s, d_model, dtype=torch.float64) + enc.level_embed[i] for i, s in enumerate(shapes)]
    )[None]
    ref = voxel_centre_reference_points(shapes, dtype=torch.float64)[None, :, None, :].expand(batch, -1, 2, -1)
    with torch.no_grad():
        x = tokens
        for layer in enc.layers:
            attn = layer.self_attn(x + pos, ref, x, shapes)  # positions on the query only, value from the tokens
            x = F.layer_norm(x + attn, (d_model,), layer.norm_attn.weight, layer.norm_attn.bias)
            hidden = F.gelu(F.linear(x, layer.mlp[0].weight, layer.mlp[0].bias))
            ffn = F.linear(hidden, layer.mlp[3].weight, layer.mlp[3].bias)
            x = F.layer_norm(x + ffn, (d_model,), layer.norm_mlp.weight, layer.norm_mlp.bias)
        out = enc(maps)
    start = 0
    for o, shape in zip(out, shapes):
        n = shape[0] * shape[1] * shape[2]
        expected = x[:, start : start + n].transpose(1, 2).reshape(batch, d_model, *shape)
        torch.testing.assert_close(o, expected, atol=1e-10, rtol=0)
        start += n


def test_tokens_return_to_their_own_voxel():
    """With the attention output zeroed every layer is a per-token map: outputs follow any voxel permutation."""
    torch.manual_seed(2)
    d_model, shapes = 12, [(4, 3, 2), (2, 3, 1)]
    enc = DeTransEncoder(d_model, num_heads=2, num_levels=2, num_points=2, num_layers=2, mlp_dim=16).eval()
    with torch.no_grad():
        for layer in enc.layers:
            layer.self_attn.output_proj.weight.zero_()
            layer.self_attn.output_proj.bias.zero_()
    maps = [torch.randn(2, d_model, *s) for s in shapes]
    with torch.no_grad():
        out = enc(maps)
        perm = [torch.randperm(s[0] * s[1] * s[2]) for s in shapes]
        permuted = [m.flatten(2)[..., p].reshape(m.shape) for m, p in zip(maps, perm)]
        out_permuted = enc(permuted)
    for o, op, p in zip(out, out_permuted, perm):
        torch.testing.assert_close(op, o.flatten(2)[..., p].reshape(o.shape), atol=1e-5, rtol=1e-5)
        # and the map is not a trivial function (varies over voxels)
        assert o.flatten(2).std(-1).mean() > 0.1


def test_positions_matter_when_attention_is_on():
    """With attention active, permuting voxels does not simply permute the output (sampling is spatial)."""
    torch.manual_seed(3)
    d_model, shapes = 12, [(4, 3, 2)]
    enc = DeTransEncoder(d_model, num_heads=2, num_levels=1, num_points=2, num_layers=1, mlp_dim=16).eval()
    m = torch.randn(1, d_model, *shapes[0])
    with torch.no_grad():
        out = enc([m])[0]
        flipped = enc([m.flip(2)])[0]
    assert not torch.allclose(flipped, out.flip(2), atol=1e-3)


def test_wrong_number_of_maps():
    enc = DeTransEncoder(12, 2, num_levels=2, num_points=1, num_layers=1, mlp_dim=8)
    with pytest.raises(ValueError, match="2"):
        enc([torch.randn(1, 12, 2, 2, 2)])
    with pytest.raises(ValueError):
        enc([torch.randn(1, 12, 2, 2, 2)] * 3)


@pytest.mark.parametrize("kwargs", [dict(d_model=16, num_heads=2), dict(num_layers=0), dict(d_model=12, num_heads=5)])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        DeTransEncoder(**kwargs)


def test_layer_dropout_rate_checked():
    with pytest.raises(ValueError):
        DeTransLayer(12, 2, 1, 1, 8, dropout_rate=1.5)


def test_no_cuda_or_dtype_assumptions():
    enc = DeTransEncoder(12, 2, num_levels=1, num_points=1, num_layers=1, mlp_dim=8).double()
    out = enc([torch.randn(1, 12, 2, 3, 4, dtype=torch.float64)])
    assert out[0].dtype == torch.float64
