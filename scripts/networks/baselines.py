"""MONAI baseline networks adapted to the bundle's training recipe."""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet

__all__ = ["DeepSupervisionDynUNet"]


class DeepSupervisionDynUNet(DynUNet):
    """
    MONAI's :class:`~monai.networks.nets.DynUNet` (nnU-Net-style U-Net) returning its deep-supervision outputs
    the way CoTr does and ``DeepSupervisionLoss`` reads them: in training mode with ``deep_supervision``, a list
    ``[full, 1/2, 1/4, ...]`` of logits, each at its head's own resolution (``deep_supr_num`` + 1 tensors);
    otherwise one tensor of logits.

    ``DynUNet`` itself stacks the heads, upsampled to full size, into one (B, 1 + deep_supr_num, C, X, Y, Z)
    tensor, which ``DeepSupervisionLoss`` would take for a single output. Keeping each head at its resolution
    also computes its loss against nearest-downsampled labels, as for CoTr and in nnU-Net. The parameters and
    their names are ``DynUNet``'s, so the weights load into either class.

    Example::

        net = DeepSupervisionDynUNet(3, 1, 14, kernel_size=[3] * 4, strides=[1, 2, 2, 2],
                                     upsample_kernel_size=[2] * 3, deep_supervision=True, deep_supr_num=2)
        outputs = net.train()(torch.zeros(1, 1, 64, 64, 32))  # shapes (1, 14) + (64, 64, 32), (32, 32, 16), (16, 16, 8)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        """``x``: (B, in_channels, X, Y, Z) -> logits, or the list of deep-supervision logits in training."""
        if not (self.training and self.deep_supervision):
            return super().forward(x)
        out = self.output_block(self.skip_layers(x))
        return [out, *self.heads]  # the skip layers have just written each head's output into self.heads
