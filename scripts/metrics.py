"""Metric handlers that MONAI has only in voxel units."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.handlers import HausdorffDistance

__all__ = ["PhysicalHausdorffDistance", "voxel_spacing"]


def voxel_spacing(image: torch.Tensor) -> list[float]:
    """Voxel size in mm of a channel-first MetaTensor, read from its affine (1.0 per axis without one)."""
    spatial_dims = image.ndim - 1
    if not isinstance(image, MetaTensor):
        return [1.0] * spatial_dims
    affine = np.asarray(image.affine, dtype=np.float64)
    return np.linalg.norm(affine[:spatial_dims, :spatial_dims], axis=0).tolist()


class PhysicalHausdorffDistance(HausdorffDistance):
    """
    MONAI's ``HausdorffDistance`` handler measured in millimetres: each image's voxel spacing is taken from
    its label's affine (after ``Invertd`` that is the original scan's geometry). Use ``percentile=95`` for HD95.
    """

    def update(self, output: Sequence) -> None:
        if len(output) != 2:
            raise ValueError(f"output must have length 2, got {len(output)}.")
        y_pred, y = output
        images = list(y) if isinstance(y, (list, tuple)) else [y[i] for i in range(y.shape[0])]
        self.metric_fn(y_pred, y, spacing=[voxel_spacing(image) for image in images])
