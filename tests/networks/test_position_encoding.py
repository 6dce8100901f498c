"""Tests of ``scripts/networks/position_encoding.py`` against an independent numpy version of paper eq. 2."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from scripts.networks import sine_position_encoding_3d


def numpy_encoding(shape, channels, temperature=10000.0) -> np.ndarray:
    """
    Paper eq. 2 per axis: ``C/3`` channels, pair ``(2k, 2k+1) = (sin(p v_k), cos(p v_k))`` with
    ``v_k = 1 / temperature ** (2k / (C/3))`` and ``p = 2 pi (i + 0.5) / size``; blocks concatenated x, y, z.
    Returns (X, Y, Z, C).
    """
    per_axis = channels // 3
    out = np.zeros(tuple(shape) + (channels,), dtype=np.float64)
    for i, j, k in itertools.product(*(range(s) for s in shape)):
        for axis, index in enumerate((i, j, k)):
            pos = (index + 0.5) / shape[axis] * 2.0 * np.pi
            for pair in range(per_axis // 2):
                freq = 1.0 / temperature ** (2.0 * pair / per_axis)
                out[i, j, k, axis * per_axis + 2 * pair] = np.sin(pos * freq)
                out[i, j, k, axis * per_axis + 2 * pair + 1] = np.cos(pos * freq)
    return out


CASES = [
    ((5, 7, 3), 6, 10000.0),
    ((4, 6, 2), 48, 10000.0),
    ((2, 3, 4), 384, 10000.0),
    ((1, 1, 1), 12, 10000.0),
    ((3, 2, 5), 36, 100.0),
]


@pytest.mark.parametrize("shape, channels, temperature", CASES)
def test_matches_paper_eq2(shape, channels, temperature):
    enc = sine_position_encoding_3d(shape, channels, temperature=temperature)
    assert enc.shape == (int(np.prod(shape)), channels)
    assert enc.dtype == torch.float32
    expected = numpy_encoding(shape, channels, temperature)
    np.testing.assert_allclose(enc.numpy(), expected.reshape(-1, channels), atol=2e-5, rtol=0)


@pytest.mark.parametrize("shape, channels, temperature", CASES[:3])
def test_rows_follow_flatten_order(shape, channels, temperature):
    """Row n of the encoding belongs to the voxel that ``map.flatten(2)`` puts at token n."""
    expected = torch.from_numpy(numpy_encoding(shape, channels, temperature)).permute(3, 0, 1, 2)[None]  # (1, C, X, Y, Z)
    tokens = expected.flatten(2).transpose(1, 2)[0]
    enc = sine_position_encoding_3d(shape, channels, temperature=temperature, dtype=torch.float64)
    assert enc.dtype == torch.float64
    torch.testing.assert_close(enc, tokens, atol=2e-5, rtol=0)


def test_axis_blocks_depend_only_on_their_axis():
    shape, channels = (4, 5, 3), 12
    enc = sine_position_encoding_3d(shape, channels).view(*shape, channels)
    per_axis = channels // 3
    for axis in range(3):
        block = enc[..., axis * per_axis : (axis + 1) * per_axis]
        other_axes = [a for a in range(3) if a != axis]
        # constant along the other two axes, varying along its own
        torch.testing.assert_close(block, block.mean(dim=other_axes, keepdim=True).expand_as(block))
        assert block.std(dim=axis).max() > 0.1
    # pair (0, 1) of each axis is (sin p, cos p) with p = 2 pi (i + 0.5) / size
    x_pos = (torch.arange(4) + 0.5) / 4 * 2 * torch.pi
    torch.testing.assert_close(enc[:, 0, 0, 0], x_pos.sin())
    torch.testing.assert_close(enc[:, 0, 0, 1], x_pos.cos())


@pytest.mark.parametrize("channels", [4, 8, 9, 10, 15, 382])
def test_channels_not_divisible_by_six(channels):
    with pytest.raises(ValueError):
        sine_position_encoding_3d((2, 3, 4), channels)
