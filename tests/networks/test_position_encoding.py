"""Tests of ``scripts/networks/position_encoding.py`` against paper eq. 2 written out channel by channel in float64."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from scripts.networks import sine_position_encoding_3d

#: paper dimension of each block of eq. 2, in its concatenation order (PE_D, PE_H, PE_W), as a MONAI axis of
#: (X, Y, Z) = (W, H, D)
PAPER_BLOCK_AXIS = {"D": 2, "H": 1, "W": 0}


def eq2_channel(index_xyz, shape_xyz, channel: int, channels: int, temperature: float = 10000.0) -> float:
    """
    Channel ``channel`` of paper eq. 2 at voxel ``index_xyz``: block ``channel // (C/3)`` is PE_D, PE_H or PE_W;
    inside it channel ``2k`` is ``sin(pos v)`` and ``2k + 1`` is ``cos(pos v)`` with ``v = 1 / T ** (2k / (C/3))``
    and ``pos = 2 pi (i + 0.5) / size`` along that block's dimension.
    """
    per_axis = channels // 3
    block, within = divmod(channel, per_axis)
    axis = PAPER_BLOCK_AXIS["DHW"[block]]
    k, is_cos = divmod(within, 2)
    pos = 2.0 * math.pi * (index_xyz[axis] + 0.5) / shape_xyz[axis]
    v = 1.0 / temperature ** (2.0 * k / per_axis)
    return math.cos(pos * v) if is_cos else math.sin(pos * v)


def eq2(shape, channels, temperature=10000.0) -> np.ndarray:
    """(X, Y, Z, C) float64, every entry from :func:`eq2_channel`."""
    out = np.empty(tuple(shape) + (channels,), dtype=np.float64)
    for index in itertools.product(*(range(s) for s in shape)):
        out[index] = [eq2_channel(index, shape, c, channels, temperature) for c in range(channels)]
    return out


CASES = [
    ((5, 7, 3), 6, 10000.0),
    ((4, 6, 2), 48, 10000.0),
    ((2, 3, 4), 384, 10000.0),
    ((1, 1, 1), 12, 10000.0),
    ((3, 2, 5), 36, 100.0),
]


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape, channels, temperature", CASES)
def test_matches_paper_eq2(shape, channels, temperature, dtype, atol):
    enc = sine_position_encoding_3d(shape, channels, temperature=temperature, dtype=dtype)
    assert enc.shape == (int(np.prod(shape)), channels) and enc.dtype == dtype
    expected = eq2(shape, channels, temperature)
    np.testing.assert_allclose(enc.double().numpy(), expected.reshape(-1, channels), atol=atol, rtol=0)


@pytest.mark.parametrize("shape, channels, temperature", CASES[:3])
def test_rows_follow_flatten_order(shape, channels, temperature):
    """Row n of the encoding belongs to the voxel that ``map.flatten(2)`` puts at token n."""
    expected = torch.from_numpy(eq2(shape, channels, temperature)).permute(3, 0, 1, 2)[None]  # (1, C, X, Y, Z)
    tokens = expected.flatten(2).transpose(1, 2)[0]
    enc = sine_position_encoding_3d(shape, channels, temperature=temperature, dtype=torch.float64)
    torch.testing.assert_close(enc, tokens, atol=1e-12, rtol=0)


def test_blocks_in_paper_order_slices_first():
    """On a map with three different sizes: block 0 varies along Z (the slice axis D) only, 1 along Y, 2 along X."""
    shape, channels = (4, 5, 3), 12
    enc = sine_position_encoding_3d(shape, channels, dtype=torch.float64).view(*shape, channels)
    per_axis = channels // 3
    for block, axis in enumerate((2, 1, 0)):
        values = enc[..., block * per_axis : (block + 1) * per_axis]
        other_axes = [a for a in range(3) if a != axis]
        torch.testing.assert_close(values, values.mean(dim=other_axes, keepdim=True).expand_as(values))
        assert values.std(dim=axis).max() > 0.1
        # its first pair is (sin p, cos p) with p = 2 pi (i + 0.5) / size along that axis
        size = shape[axis]
        p = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 * math.pi
        line = values.movedim(axis, 0)[:, 0, 0]
        torch.testing.assert_close(line[:, 0], p.sin())
        torch.testing.assert_close(line[:, 1], p.cos())


def test_computes_in_the_dtype_it_is_given():
    """float64 is accurate to float64 rounding (a float32 computation cast up is off by ~1e-6); half types stay half."""
    shape, channels = (7, 9, 11), 48
    expected = torch.from_numpy(eq2(shape, channels)).reshape(-1, channels)
    enc = sine_position_encoding_3d(shape, channels, dtype=torch.float64)
    assert (enc - expected).abs().max() < 1e-13
    float32 = sine_position_encoding_3d(shape, channels, dtype=torch.float32)
    assert (float32.double() - expected).abs().max() > 1e-9  # the check above can tell the two apart
    for half in (torch.float16, torch.bfloat16):
        low = sine_position_encoding_3d(shape, channels, dtype=half)
        assert low.dtype == half
        assert (low.double() - expected).abs().max() < 0.05


def test_scripted_equals_eager():
    scripted = torch.jit.script(sine_position_encoding_3d)
    torch.testing.assert_close(scripted([3, 4, 5], 24), sine_position_encoding_3d((3, 4, 5), 24), atol=0, rtol=0)


@pytest.mark.parametrize("channels", [4, 8, 9, 10, 15, 382])
def test_channels_not_divisible_by_six(channels):
    with pytest.raises(ValueError, match="divisible by 6"):
        sine_position_encoding_3d((2, 3, 4), channels)


def test_spatial_size_needs_three_axes():
    with pytest.raises(ValueError, match="3 values"):
        sine_position_encoding_3d((2, 3), 12)
