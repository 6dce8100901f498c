"""Tests of ``scripts/networks/encoder.py``: stage shapes, block counts, shortcuts and the residual form."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scripts.networks import CNNEncoder, EncoderResBlock

SMALL_CHANNELS = (8, 16, 32, 32)

SHAPE_CASES = [
    # kwargs, input shape, expected spatial sizes (stem, stage 1, 2, 3)
    (dict(), (2, 1, 32, 48, 16), [(16, 24, 16), (8, 12, 8), (4, 6, 4), (2, 3, 2)]),
    (dict(blocks=(1, 1, 1)), (1, 1, 16, 32, 8), [(8, 16, 8), (4, 8, 4), (2, 4, 2), (1, 2, 1)]),
    (dict(in_channels=2, blocks=(2, 2, 2)), (3, 2, 48, 16, 24), [(24, 8, 24), (12, 4, 12), (6, 2, 6), (3, 1, 3)]),
    (
        dict(stem_stride=(1, 1, 1), stage_stride=(2, 2, 1)),
        (1, 1, 16, 8, 5),
        [(16, 8, 5), (8, 4, 5), (4, 2, 5), (2, 1, 5)],
    ),
]


@pytest.mark.parametrize("kwargs, input_shape, sizes", SHAPE_CASES)
def test_stage_shapes(kwargs, input_shape, sizes):
    torch.manual_seed(0)
    enc = CNNEncoder(channels=SMALL_CHANNELS, **kwargs)
    features = enc(torch.randn(*input_shape))
    assert len(features) == 4
    for feature, width, size in zip(features, SMALL_CHANNELS, sizes):
        assert feature.shape == (input_shape[0], width, *size)


@pytest.mark.parametrize("blocks", [(3, 3, 2), (1, 1, 1), (2, 2, 2), (1, 4)])
def test_block_counts_and_shortcuts(blocks):
    channels = SMALL_CHANNELS[: len(blocks) + 1]
    enc = CNNEncoder(channels=channels, blocks=blocks)
    assert [len(stage) for stage in enc.stages] == list(blocks)
    for stage in enc.stages:
        for index, block in enumerate(stage):
            assert isinstance(block, EncoderResBlock)
            # every stage downsamples in its first block: projection there, identity elsewhere
            assert isinstance(block.shortcut, nn.Identity) == (index > 0)


def test_default_stem_and_widths():
    enc = CNNEncoder()
    convs = [m for m in enc.stem.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 1
    stem = convs[0]
    assert stem.kernel_size == (7, 7, 7) and stem.stride == (2, 2, 1) and stem.padding == (3, 3, 3)
    assert stem.bias is None and stem.in_channels == 1 and stem.out_channels == 64
    norms = [m for m in enc.stem.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert len(norms) == 1 and norms[0].affine
    acts = [m for m in enc.stem.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 1 and acts[0].negative_slope == pytest.approx(0.01)
    assert [stage[-1].conv.conv.out_channels for stage in enc.stages] == [192, 384, 384]
    assert [len(stage) for stage in enc.stages] == [3, 3, 2]
    for module in enc.modules():
        if isinstance(module, nn.Conv3d):
            assert module.bias is None
    assert enc.strides == ((2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))


@pytest.mark.parametrize(
    "in_ch, out_ch, stride, projection",
    [(8, 8, 1, False), (8, 16, 1, True), (8, 8, 2, True), (8, 8, (1, 1, 2), True), (8, 8, (1, 1, 1), False)],
)
def test_shortcut_only_when_width_or_stride_changes(in_ch, out_ch, stride, projection):
    block = EncoderResBlock(in_ch, out_ch, stride, ("instance", {"affine": True}), "leakyrelu")
    assert isinstance(block.shortcut, nn.Identity) != projection
    if projection:
        convs = [m for m in block.shortcut.modules() if isinstance(m, nn.Conv3d)]
        assert len(convs) == 1 and convs[0].kernel_size == (1, 1, 1) and convs[0].bias is None
        strides = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        assert convs[0].stride == strides
    x = torch.randn(2, in_ch, 4, 6, 4)
    strides = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
    assert block(x).shape == (2, out_ch, *(s // d for s, d in zip((4, 6, 4), strides)))


def test_residual_form_single_conv():
    """act(norm(conv(x)) + x): with the conv zeroed an identity block is just the activation of its input."""
    torch.manual_seed(1)
    block = EncoderResBlock(6, 6, 1, ("instance", {"affine": True}), ("leakyrelu", {"negative_slope": 0.01}))
    convs = [m for m in block.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 1  # a single convolution per block (the paper's parameter counts need it)
    x = torch.randn(2, 6, 3, 4, 5)
    with torch.no_grad():
        convs[0].weight.zero_()
        torch.testing.assert_close(block(x), F.leaky_relu(x, 0.01))
        # projection block: act(norm(conv(x)) + norm(conv1x1(x)))
        proj = EncoderResBlock(6, 4, 2, ("instance", {"affine": True}), "relu")
        proj.conv.conv.weight.zero_()
        expected = F.relu(F.instance_norm(F.conv3d(x, proj.shortcut.conv.weight, stride=2)))
        torch.testing.assert_close(proj(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs", [dict(channels=(8, 16, 32), blocks=(1, 1, 1)), dict(channels=(8, 16, 32, 32), blocks=(1, 0, 1))]
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        CNNEncoder(**kwargs)
