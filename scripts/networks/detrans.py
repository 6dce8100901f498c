"""DeTrans encoder of CoTr: a stack of post-norm deformable Transformer layers over multi-scale 3D maps."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .ms_deform_attn import MSDeformAttn3D
from .position_encoding import sine_position_encoding_3d

__all__ = ["DeTransLayer", "DeTransEncoder", "voxel_centre_reference_points"]


def voxel_centre_reference_points(
    spatial_shapes: list[list[int]], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """
    Normalised centre ``((i + 0.5) / X, (j + 0.5) / Y, (k + 0.5) / Z)`` of every token's own voxel.

    Returns:
        (sum_l X_l * Y_l * Z_l, 3), rows in the order of the concatenated ``map.flatten(2)`` tokens,
        components in (x, y, z) order.
    """
    centres = []
    for shape in spatial_shapes:
        axes = [(torch.arange(size, device=device, dtype=dtype) + 0.5) / size for size in shape]
        centres.append(torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1).reshape(-1, 3))
    return torch.cat(centres, dim=0)


class DeTransLayer(nn.Module):
    """
    Post-norm deformable Transformer layer:
    ``x = LN(x + Drop(MSDMSA(x + pos, ref, x)))`` then ``x = LN(x + Drop(W2 Drop(GELU(W1 x))))``.

    Args:
        d_model: token width.
        num_heads: attention heads.
        num_levels: feature levels.
        num_points: sampling points per head and level.
        mlp_dim: hidden width of the feed-forward network.
        dropout_rate: dropout after attention, inside and after the feed-forward network.
    """

    def __init__(
        self,
        d_model: int = 384,
        num_heads: int = 6,
        num_levels: int = 2,
        num_points: int = 4,
        mlp_dim: int = 1536,
        dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0 <= dropout_rate <= 1:
            raise ValueError(f"dropout_rate must be in [0, 1], got {dropout_rate}.")
        self.self_attn = MSDeformAttn3D(d_model, num_levels, num_heads, num_points)
        self.dropout_attn = nn.Dropout(dropout_rate)
        self.norm_attn = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout_rate),
            nn.Linear(mlp_dim, d_model),
            nn.Dropout(dropout_rate),
        )
        self.norm_mlp = nn.LayerNorm(d_model)

    def forward(
        self, tokens: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: list[list[int]]
    ) -> torch.Tensor:
        """``tokens`` and ``pos``: (B, N, d_model); ``reference_points``: (B, N, L, 3) -> (B, N, d_model)."""
        attended = self.self_attn(tokens + pos, reference_points, tokens, spatial_shapes)
        tokens = self.norm_attn(tokens + self.dropout_attn(attended))
        return self.norm_mlp(tokens + self.mlp(tokens))


class DeTransEncoder(nn.Module):
    """
    DeTrans encoder: flattens L maps of ``d_model`` channels into one token sequence, adds the 3D sine
    encoding and a learned per-level embedding, runs ``num_layers`` :class:`DeTransLayer` and reshapes the
    tokens back into maps. Works for any map sizes; the reference point of each token is the centre of its
    own voxel, shared by all layers.

    Args:
        d_model: token width, equal to the channels of every input map (there is no input projection).
        num_heads: attention heads.
        num_levels: number of input maps L.
        num_points: sampling points per head and level.
        num_layers: stacked layers.
        mlp_dim: hidden width of the feed-forward network.
        dropout_rate: dropout rate.
        use_checkpoint: recompute each layer in the backward pass instead of storing its activations.
    """

    def __init__(
        self,
        d_model: int = 384,
        num_heads: int = 6,
        num_levels: int = 2,
        num_points: int = 4,
        num_layers: int = 6,
        mlp_dim: int = 1536,
        dropout_rate: float = 0.1,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}.")
        if d_model % 6 != 0:
            raise ValueError(
                f"d_model must be divisible by 6 for the 3D sine encoding (3 axes x sin/cos), got {d_model}."
            )
        self.d_model = d_model
        self.num_levels = num_levels
        self.use_checkpoint = use_checkpoint
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        self.layers = nn.ModuleList(
            DeTransLayer(d_model, num_heads, num_levels, num_points, mlp_dim, dropout_rate) for _ in range(num_layers)
        )
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for layer in self.layers:
            for linear in (layer.mlp[0], layer.mlp[3]):
                nn.init.xavier_uniform_(linear.weight)
        nn.init.normal_(self.level_embed)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """``maps``: L tensors (B, d_model, X_l, Y_l, Z_l) -> L tensors of the same shapes."""
        if len(maps) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(maps)}.")
        spatial_shapes = [[int(s) for s in m.shape[2:]] for m in maps]
        batch = maps[0].shape[0]
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # (B, N, d_model)
        # geometry stays in at least float32 under autocast: bfloat16 cannot resolve voxel centres
        geometry_dtype = torch.promote_types(tokens.dtype, torch.float32)
        level_pos = []
        for level, shape in enumerate(spatial_shapes):
            encoding = sine_position_encoding_3d(shape, self.d_model, device=tokens.device, dtype=geometry_dtype)
            level_pos.append(encoding + self.level_embed[level])
        pos = torch.cat(level_pos, dim=0)[None].expand(batch, -1, -1)
        reference_points = voxel_centre_reference_points(spatial_shapes, device=tokens.device, dtype=geometry_dtype)
        reference_points = reference_points[None, :, None, :].expand(batch, -1, self.num_levels, -1)
        for layer in self.layers:
            # TorchScript cannot compile torch.utils.checkpoint: a scripted module runs every layer plainly
            if self.use_checkpoint and self.training and not torch.jit.is_scripting():
                tokens = checkpoint(layer, tokens, pos, reference_points, spatial_shapes, use_reentrant=False)
            else:
                tokens = layer(tokens, pos, reference_points, spatial_shapes)
        sizes = [s[0] * s[1] * s[2] for s in spatial_shapes]
        return [
            t.transpose(1, 2).reshape([batch, self.d_model] + shape)
            for t, shape in zip(tokens.split(sizes, dim=1), spatial_shapes)
        ]
