"""Tests of ``scripts/networks/decoder.py``: output shapes, heads, transposed convolutions and the residual block."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from scripts.networks import CoTrDecoder, DecoderResBlock

NORM = ("instance", {"affine": True})
ACT = ("leakyrelu", {"negative_slope": 0.01})
CHANNELS = (8, 16, 32, 32)
DEFAULT_STRIDES = ((2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))


def encoder_like_features(batch, channels, strides, size):
    """Random maps with the widths and sizes an encoder with these strides gives for an input of ``size``."""
    features, current = [], list(size)
    for width, stride in zip(channels, strides):
        current = [c // s for c, s in zip(current, stride)]
        features.append(torch.randn(batch, width, *current))
    return features


CASES = [
    # strides, batch, input size, expected sizes (full, 1/2, 1/4, 1/8)
    (DEFAULT_STRIDES, 2, (32, 48, 16), [(32, 48, 16), (16, 24, 16), (8, 12, 8), (4, 6, 4)]),
    (DEFAULT_STRIDES, 1, (16, 16, 8), [(16, 16, 8), (8, 8, 8), (4, 4, 4), (2, 2, 2)]),
    (((1, 1, 1), (2, 2, 1), (2, 2, 1), (2, 1, 1)), 3, (16, 8, 3), [(16, 8, 3), (16, 8, 3), (8, 4, 3), (4, 2, 3)]),
]


@pytest.mark.parametrize("strides, batch, size, sizes", CASES)
def test_output_shapes(strides, batch, size, sizes):
    torch.manual_seed(0)
    dec = CoTrDecoder(CHANNELS, strides, out_channels=5, norm_name=NORM, act_name=ACT)
    features = encoder_like_features(batch, CHANNELS, strides, size)
    outputs = dec(features, deep_supervision=True)
    assert [o.shape for o in outputs] == [(batch, 5, *s) for s in sizes]
    single = dec(features, deep_supervision=False)
    assert isinstance(single, list) and len(single) == 1
    torch.testing.assert_close(single[0], outputs[0])


def test_structure():
    dec = CoTrDecoder(CHANNELS, DEFAULT_STRIDES, out_channels=14, norm_name=NORM, act_name=ACT)
    # heads are always built (a checkpoint loads in either mode), coarsest step first
    assert len(dec.heads) == 3 and len(dec.upsamples) == 3 and len(dec.blocks) == 3
    assert [(u.in_channels, u.out_channels) for u in dec.upsamples] == [(32, 32), (32, 16), (16, 8)]
    for up, stride in zip(dec.upsamples, DEFAULT_STRIDES[:0:-1]):
        assert isinstance(up, nn.ConvTranspose3d)
        assert up.kernel_size == tuple(stride) and up.stride == tuple(stride) and up.bias is None
    assert [(h.in_channels, h.out_channels, h.kernel_size) for h in dec.heads] == [
        (32, 14, (1, 1, 1)),
        (16, 14, (1, 1, 1)),
        (8, 14, (1, 1, 1)),
    ]
    assert dec.final_head.in_channels == 8 and dec.final_head.kernel_size == (1, 1, 1)
    assert dec.final_upsample.mode == "trilinear"
    assert tuple(dec.final_upsample.scale_factor) == (2.0, 2.0, 1.0)


def test_final_logits_equal_the_papers_upsample_then_project():
    """With zeroed transposed convs the finest map is block(stem skip); the output must equal the paper's
    1x1 conv(trilinear x[2, 2, 1](x)), while the 1x1 conv runs on the coarse map (the cheap order)."""
    torch.manual_seed(1)
    dec = CoTrDecoder(CHANNELS, DEFAULT_STRIDES, out_channels=3, norm_name=NORM, act_name=ACT).double().eval()
    features = [f.double() for f in encoder_like_features(1, CHANNELS, DEFAULT_STRIDES, (16, 16, 8))]
    head_inputs = []
    dec.final_head.register_forward_hook(lambda module, args, output: head_inputs.append(args[0].shape))
    with torch.no_grad():
        for up in dec.upsamples:
            up.weight.zero_()
        out = dec(features)[0]
        x = dec.blocks[2](features[0])
        up = torch.nn.functional.interpolate(x, scale_factor=(2.0, 2.0, 1.0), mode="trilinear", align_corners=False)
        expected = torch.nn.functional.conv3d(up, dec.final_head.weight, dec.final_head.bias)
    assert out.shape == (1, 3, 16, 16, 8)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    assert head_inputs == [(1, 8, 8, 8, 8)]


def test_res_block_identity_path():
    torch.manual_seed(2)
    block = DecoderResBlock(6, NORM, ACT)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 2 and all(c.kernel_size == (3, 3, 3) and c.bias is None for c in convs)
    x = torch.randn(2, 6, 3, 4, 5)
    with torch.no_grad():
        for conv in convs:
            conv.weight.zero_()
        torch.testing.assert_close(block(x), x)


def test_state_dict_independent_of_deep_supervision():
    dec = CoTrDecoder(CHANNELS, DEFAULT_STRIDES, 4, NORM, ACT)
    keys = set(dec.state_dict())
    assert {k for k in keys if k.startswith("heads.")} == {
        f"heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")
    }


def test_mismatched_lengths():
    with pytest.raises(ValueError):
        CoTrDecoder(CHANNELS, DEFAULT_STRIDES[:3], 4, NORM, ACT)
