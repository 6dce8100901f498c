from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from scripts.metrics import PhysicalHausdorffDistance, voxel_spacing


def _surface_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    edge = mask & ~binary_erosion(mask)
    return np.argwhere(edge) * spacing


def test_voxel_spacing_reads_a_rotated_affine():
    affine = np.array([[0, -0.8, 0, 10], [-0.7, 0, 0, 5], [0, 0, 3.0, 0], [0, 0, 0, 1]], dtype=float)
    image = MetaTensor(torch.zeros(1, 2, 2, 2), affine=torch.as_tensor(affine))
    assert voxel_spacing(image) == pytest.approx([0.7, 0.8, 3.0])
    assert voxel_spacing(torch.zeros(1, 2, 2, 2)) == [1.0, 1.0, 1.0]


def test_hd95_is_in_millimetres():
    spacing = np.array([0.8, 0.8, 3.0])
    affine = torch.as_tensor(np.diag([*spacing, 1.0]))
    truth = np.zeros((20, 20, 12), dtype=bool)
    truth[5:12, 6:14, 3:8] = True
    prediction = np.zeros_like(truth)
    prediction[7:15, 5:13, 4:10] = True
    onehot = lambda m: MetaTensor(torch.as_tensor(np.stack([~m, m])).float(), affine=affine)  # noqa: E731
    handler = PhysicalHausdorffDistance(include_background=False, percentile=95, save_details=False)
    handler.reset()
    handler.update(([onehot(prediction)], [onehot(truth)]))
    distances = cdist(_surface_mm(prediction, spacing), _surface_mm(truth, spacing))
    expected = max(np.percentile(distances.min(1), 95), np.percentile(distances.min(0), 95))
    assert handler.compute() == pytest.approx(expected, rel=1e-4)
    voxel_only = cdist(_surface_mm(prediction, np.ones(3)), _surface_mm(truth, np.ones(3)))
    assert expected != pytest.approx(max(np.percentile(voxel_only.min(1), 95), np.percentile(voxel_only.min(0), 95)))
