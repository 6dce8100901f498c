from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.measurements import SaveMeasurementsd, organ_measurements

NAMES = {0: "background", 1: "liver", 2: "spleen", 3: "absent"}


def _case(tmp_path):
    rng = np.random.default_rng(0)
    # anisotropic, flipped and rotated in-plane by 90 degrees: voxel volume 0.7 * 0.8 * 3.0 mm^3
    affine = np.array([[0.0, -0.8, 0.0, 40.0], [-0.7, 0.0, 0.0, 10.0], [0.0, 0.0, 3.0, -200.0], [0, 0, 0, 1]])
    hu = rng.integers(-200, 300, size=(20, 16, 6)).astype(np.int16)
    labels = np.zeros((20, 16, 6), np.uint8)
    labels[2:9, 3:11, 1:4] = 1
    labels[12:15, 5:7, 2:5] = 2
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "img0001.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "img0001_seg.nii.gz")
    return hu.astype(float), labels


def test_measurements_match_an_independent_computation(tmp_path):
    hu, labels = _case(tmp_path)
    rows = {r["name"]: r for r in organ_measurements(str(tmp_path / "img0001.nii.gz"), str(tmp_path / "img0001_seg.nii.gz"), NAMES)}
    assert set(rows) == {"liver", "spleen", "absent"}
    for value, name in ((1, "liver"), (2, "spleen")):
        inside = hu[labels == value]
        assert rows[name]["voxels"] == (labels == value).sum()
        assert rows[name]["volume_ml"] == pytest.approx((labels == value).sum() * 0.7 * 0.8 * 3.0 / 1000)
        assert rows[name]["mean"] == pytest.approx(inside.mean())
        assert rows[name]["median"] == pytest.approx(np.median(inside))
        assert rows[name]["p5"] == pytest.approx(np.percentile(inside, 5))
        assert rows[name]["p95"] == pytest.approx(np.percentile(inside, 95))
    assert rows["absent"]["voxels"] == 0 and np.isnan(rows["absent"]["mean"])


def test_measurements_refuse_a_segmentation_in_another_geometry(tmp_path):
    _case(tmp_path)
    other = nib.load(tmp_path / "img0001_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(other.dataobj), np.diag([1.0, 1.0, 1.0, 1.0])), tmp_path / "moved_seg.nii.gz")
    with pytest.raises(ValueError, match="moved_seg.nii.gz"):
        organ_measurements(str(tmp_path / "img0001.nii.gz"), str(tmp_path / "moved_seg.nii.gz"), NAMES)


def test_transform_writes_case_and_summary_csv(tmp_path):
    _case(tmp_path)
    image = MetaTensor(torch.zeros(1, 20, 16, 6), meta={"filename_or_obj": str(tmp_path / "img0001.nii.gz")})
    transform = SaveMeasurementsd("image", output_dir=str(tmp_path / "out"), seg_dir=str(tmp_path), label_names=NAMES)
    data = {"image": image}
    assert transform(data)["image"] is image
    per_case = list(csv.DictReader(open(tmp_path / "out" / "img0001_measurements.csv")))
    assert [r["name"] for r in per_case] == ["liver", "spleen", "absent"]
    assert int(per_case[0]["voxels"]) == 7 * 8 * 3
    summary = list(csv.DictReader(open(tmp_path / "out" / "measurements_summary.csv")))
    assert summary == per_case
    disabled = SaveMeasurementsd("image", output_dir=str(tmp_path / "off"), seg_dir=str(tmp_path), enabled=False)
    disabled(data)
    assert not (tmp_path / "off").exists()
