"""CNN encoder of CoTr: a Conv-Norm-Act stem followed by stages of single-convolution residual blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers.utils import get_act_layer
from torch.utils.checkpoint import checkpoint

__all__ = ["EncoderResBlock", "CNNEncoder"]


class EncoderResBlock(nn.Module):
    """
    Residual block with a single 3x3x3 convolution: ``act(norm(conv(x)) + shortcut(x))``.

    The shortcut is the identity, or a strided 1x1x1 convolution followed by a norm when the
    block changes the width or the resolution. CoTr's published parameter counts only add up
    with this single-convolution form.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: convolution stride, per axis or one for all.
        norm_name: normalisation, as accepted by ``monai.networks.layers.utils.get_norm_layer``.
        act_name: activation, as accepted by ``monai.networks.layers.utils.get_act_layer``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: Sequence[int] | int,
        norm_name: tuple | str,
        act_name: tuple | str,
    ) -> None:
        super().__init__()
        self.conv = Convolution(
            3, in_channels, out_channels, strides=stride, kernel_size=3, act=None, norm=norm_name, bias=False
        )
        strides = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels or any(s != 1 for s in strides):
            self.shortcut = Convolution(
                3, in_channels, out_channels, strides=stride, kernel_size=1, act=None, norm=norm_name, bias=False
            )
        self.act = get_act_layer(act_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C_in, X, Y, Z) -> (B, C_out, X / s_x, Y / s_y, Z / s_z)."""
        return self.act(self.conv(x) + self.shortcut(x))


class CNNEncoder(nn.Module):
    """
    CoTr's CNN encoder: a stem ``Conv(7, stem_stride) -> Norm -> Act`` and ``len(blocks)`` stages of
    :class:`EncoderResBlock`, the first block of each stage downsampling by ``stage_stride``.

    Args:
        in_channels: image channels.
        channels: width of the stem followed by the width of every stage.
        blocks: residual blocks per stage; (3, 3, 2) is CoTr, (2, 2, 2) CoTr† and (1, 1, 1) CoTr*.
        stem_stride: stride of the stem per axis (MONAI (x, y, z) order).
        stage_stride: stride of the first block of each stage per axis.
        norm_name: normalisation for every convolution.
        act_name: activation.
        use_checkpoint: recompute each block in the backward pass instead of storing its activations.

    Returns from ``forward`` a list of ``len(blocks) + 1`` maps: stem output first, deepest stage last.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (64, 192, 384, 384),
        blocks: Sequence[int] = (3, 3, 2),
        stem_stride: Sequence[int] = (2, 2, 1),
        stage_stride: Sequence[int] = (2, 2, 2),
        norm_name: tuple | str = ("instance", {"affine": True}),
        act_name: tuple | str = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != len(blocks) + 1:
            raise ValueError(
                f"channels needs one width for the stem and one per stage, got {channels} for blocks {blocks}."
            )
        if any(b < 1 for b in blocks):
            raise ValueError(f"every stage needs at least one block, got blocks={blocks}.")
        self.channels = tuple(channels)
        self.strides = (tuple(stem_stride),) + (tuple(stage_stride),) * len(blocks)
        self.use_checkpoint = use_checkpoint
        self.stem = Convolution(
            3, in_channels, channels[0], strides=stem_stride, kernel_size=7, act=act_name, norm=norm_name, bias=False
        )
        self.stages = nn.ModuleList()
        for width_in, width_out, num_blocks in zip(channels[:-1], channels[1:], blocks):
            stage = [EncoderResBlock(width_in, width_out, stage_stride, norm_name, act_name)]
            stage += [EncoderResBlock(width_out, width_out, 1, norm_name, act_name) for _ in range(num_blocks - 1)]
            self.stages.append(nn.Sequential(*stage))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        ``x``: (B, C_in, X, Y, Z) -> [(B, channels[i], X / S_i, Y / S_i, Z / S_i)] with S_i the cumulative
        strides.
        """
        features = [self.stem(x)]
        for stage in self.stages:
            y = features[-1]
            for block in stage:
                # TorchScript cannot compile torch.utils.checkpoint: a scripted module runs every block plainly
                if self.use_checkpoint and self.training and not torch.jit.is_scripting():
                    y = checkpoint(block, y, use_reentrant=False)
                else:
                    y = block(y)
            features.append(y)
        return features
