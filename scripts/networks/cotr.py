"""CoTr: CNN encoder, deformable Transformer (DeTrans) encoder and CNN decoder with deep supervision."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from .decoder import CoTrDecoder
from .detrans import DeTransEncoder
from .encoder import CNNEncoder

__all__ = ["CoTr"]


class CoTr(nn.Module):
    """
    CoTr (Xie et al., MICCAI 2021) for 3D segmentation.

    The CNN encoder gives a stem map and ``len(blocks)`` stage maps; the DeTrans encoder refines the deepest
    ``num_levels`` of them jointly with multi-scale deformable self-attention; the decoder upsamples back to
    the input size with additive skips and deep-supervision heads.

    Args:
        in_channels: image channels.
        out_channels: classes (background included).
        blocks: residual blocks per encoder stage: (3, 3, 2) is CoTr, (2, 2, 2) CoTr† and (1, 1, 1) CoTr*.
        channels: width of the stem followed by the width of each stage.
        stem_stride: stride of the stem per axis (MONAI (x, y, z) order); the final trilinear upsampling undoes it.
            ``(2, 2, 1)`` keeps the through-plane axis of anisotropic CT at full resolution.
        stage_stride: stride of the first block of every stage, undone by the decoder's transposed convolutions.
        d_model: DeTrans token width; must equal the width of every map it attends over.
        num_heads: attention heads H.
        num_points: sampling points K per head and level.
        num_layers: DeTrans layers L_D.
        mlp_dim: hidden width of the DeTrans feed-forward network.
        dropout_rate: DeTrans dropout.
        num_levels: deepest encoder maps given to the DeTrans: 2 is the paper's multi-scale CoTr, 1 the
            single-scale ablation and 0 the "w/o DeTrans" ablation (the decoder takes the CNN maps).
        norm_name: normalisation of every convolution, e.g. ``("instance", {"affine": True})``, ``"batch"`` or
            ``("group", {"num_groups": 16})``.
        act_name: activation, e.g. ``("leakyrelu", {"negative_slope": 0.01})`` or ``"relu"``.
        deep_supervision: in training mode, also return the three deep-supervision outputs.
        use_checkpoint: activation checkpointing of every encoder block, DeTrans layer and decoder block
            (trades compute for memory in training).

    Returns from ``forward``: in training mode with ``deep_supervision``, a list
    ``[full, 1/2, 1/4, 1/8]`` of logits, each (B, out_channels, ...) at its head's resolution; otherwise one
    (B, out_channels, X, Y, Z) tensor of logits.

    Exports by ``torch.jit.trace`` and by ``torch.jit.script``; a scripted CoTr computes MS-DMSA with ``grid_sample``
    and never checkpoints activations (both give the same values as the eager paths).

    Example::

        net = CoTr(in_channels=1, out_channels=14)
        logits = net.eval()(torch.zeros(1, 1, 192, 192, 48))  # (1, 14, 192, 192, 48)
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        blocks: Sequence[int] = (3, 3, 2),
        channels: Sequence[int] = (64, 192, 384, 384),
        stem_stride: Sequence[int] = (2, 2, 1),
        stage_stride: Sequence[int] = (2, 2, 2),
        d_model: int = 384,
        num_heads: int = 6,
        num_points: int = 4,
        num_layers: int = 6,
        mlp_dim: int = 1536,
        dropout_rate: float = 0.1,
        num_levels: int = 2,
        norm_name: tuple | str = ("instance", {"affine": True}),
        act_name: tuple | str = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision: bool = True,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if len(stem_stride) != 3 or len(stage_stride) != 3:
            raise ValueError(f"stem_stride and stage_stride need 3 values, got {stem_stride} and {stage_stride}.")
        if not 0 <= num_levels <= len(blocks):
            raise ValueError(f"num_levels must be in [0, {len(blocks)}] (the number of stages), got {num_levels}.")
        attended = list(channels)[len(channels) - num_levels :] if num_levels else []
        if any(width != d_model for width in attended):
            raise ValueError(
                f"d_model ({d_model}) must equal the width of the {num_levels} deepest encoder maps {attended}: "
                "the DeTrans has no input projection."
            )
        self.deep_supervision = deep_supervision
        self.encoder = CNNEncoder(
            in_channels, channels, blocks, stem_stride, stage_stride, norm_name, act_name, use_checkpoint
        )
        self.detrans = (
            DeTransEncoder(
                d_model, num_heads, num_levels, num_points, num_layers, mlp_dim, dropout_rate, use_checkpoint
            )
            if num_levels
            else None
        )
        self.decoder = CoTrDecoder(channels, self.encoder.strides, out_channels, norm_name, act_name, use_checkpoint)
        self.size_divisor = tuple(math.prod(axis) for axis in zip(*self.encoder.strides))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) convolutions with zero bias, unit norms; the DeTrans keeps its own init."""
        for module in (*self.encoder.modules(), *self.decoder.modules()):
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, a=1e-2, mode="fan_out", nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def check_input_size(self, spatial_shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless the spatial shape (X, Y, Z) fits the network (see ``forward``)."""
        bad = [f"axis {i}: {s}" for i, (s, d) in enumerate(zip(spatial_shape, self.size_divisor)) if s % d]
        if bad:
            raise ValueError(
                f"CoTr needs spatial sizes divisible by {list(self.size_divisor)} (the total stride per axis); "
                f"got {list(spatial_shape)} ({', '.join(bad)} not divisible)."
            )
        if all(s == d for s, d in zip(spatial_shape, self.size_divisor)):
            # the deepest map would be one voxel, which instance normalisation cannot normalise
            raise ValueError(
                f"CoTr needs an input larger than {list(self.size_divisor)} along at least one axis "
                f"(a multiple of it), got {list(spatial_shape)}."
            )

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """
        Compile the CNN encoder and the decoder in place with ``torch.compile`` (same arguments). The DeTrans stays
        eager: compiling it would trace MS-DMSA's ``grid_sample`` form, slower than the eager gather kernel.
        """
        self.encoder.compile(*args, **kwargs)
        self.decoder.compile(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``x``: (B, in_channels, X, Y, Z) with X, Y, Z divisible by ``size_divisor`` and not all equal to it."""
        if not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input_size(x.shape[2:])
        features = self.encoder(x)
        if self.detrans is not None:
            levels = self.detrans.num_levels
            features = features[:-levels] + self.detrans(features[-levels:])
        outputs = self.decoder(features, deep_supervision=self.training and self.deep_supervision)
        if self.training and self.deep_supervision:
            return outputs
        return outputs[0]
