"""
CNN decoder of CoTr: transposed-convolution upsampling, additive skips, residual refinement and deep-supervision
heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from torch.utils.checkpoint import checkpoint

__all__ = ["DecoderResBlock", "CoTrDecoder"]


class DecoderResBlock(nn.Module):
    """
    Decoder residual block: two ``Conv(3) -> Norm -> Act`` units plus the identity.

    Args:
        channels: input and output channels.
        norm_name: normalisation.
        act_name: activation.
    """

    def __init__(self, channels: int, norm_name: tuple | str, act_name: tuple | str) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(
                Convolution(3, channels, channels, kernel_size=3, act=act_name, norm=norm_name, bias=False)
                for _ in range(2)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, X, Y, Z) -> (B, C, X, Y, Z)."""
        return self.convs(x) + x


class CoTrDecoder(nn.Module):
    """
    CoTr decoder. Starting from the deepest map, each step upsamples by a transposed convolution whose kernel
    equals the stride of the encoder stage it undoes, adds the skip map, refines with a
    :class:`DecoderResBlock` and feeds a 1x1x1 deep-supervision head. A 1x1x1 convolution and a trilinear
    upsampling by the stem stride give full-resolution logits (see :meth:`final_logits`).

    Args:
        channels: widths of the encoder maps, stem first (the decoder mirrors them).
        strides: stride of each encoder map relative to the previous one, stem first.
        out_channels: number of classes.
        norm_name: normalisation.
        act_name: activation.
        use_checkpoint: recompute each residual block in the backward pass.
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[Sequence[int]],
        out_channels: int,
        norm_name: tuple | str,
        act_name: tuple | str,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError(f"channels {channels} and strides {strides} need one entry per encoder map.")
        self.use_checkpoint = use_checkpoint
        self.upsamples = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.heads = nn.ModuleList()
        for level in range(len(channels) - 1, 0, -1):
            width_in, width_out, stride = channels[level], channels[level - 1], tuple(strides[level])
            self.upsamples.append(
                nn.ConvTranspose3d(width_in, width_out, kernel_size=stride, stride=stride, bias=False)
            )
            self.blocks.append(DecoderResBlock(width_out, norm_name, act_name))
            self.heads.append(nn.Conv3d(width_out, out_channels, kernel_size=1))
        self.final_upsample = nn.Upsample(scale_factor=tuple(float(s) for s in strides[0]), mode="trilinear")
        self.final_head = nn.Conv3d(channels[0], out_channels, kernel_size=1)

    def forward(self, features: list[torch.Tensor], deep_supervision: bool = False) -> list[torch.Tensor]:
        """
        ``features``: encoder maps, stem first, (B, channels[i], ...).

        Returns the full-resolution logits (B, out_channels, X, Y, Z) and, with ``deep_supervision``, the
        heads' logits from the finest to the coarsest, each at its own resolution.
        """
        x = features[-1]
        head_outputs: list[torch.Tensor] = []
        for step, (upsample, block, head) in enumerate(zip(self.upsamples, self.blocks, self.heads)):
            x = upsample(x) + features[-2 - step]
            # TorchScript cannot compile torch.utils.checkpoint: a scripted module runs every block plainly
            if self.use_checkpoint and self.training and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if deep_supervision:
                head_outputs.append(head(x))
        return [self.final_logits(x)] + head_outputs[::-1]

    def final_logits(self, x: torch.Tensor) -> torch.Tensor:
        """
        ``x``: finest decoder map (B, channels[0], ...) -> logits (B, out_channels, ...) upsampled by the stem stride.

        Equal to the paper's ``final_head(final_upsample(x))``: the 1x1x1 convolution commutes with trilinear
        interpolation, whose weights sum to one. Projecting first convolves 1/prod(stem stride) of the voxels and
        interpolates ``out_channels`` instead of ``channels[0]`` maps (a fifth of the default forward time on CPU).
        """
        return self.final_upsample(self.final_head(x))
