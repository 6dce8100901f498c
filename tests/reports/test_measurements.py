from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.reports.measurements import (
    MEASUREMENT_COLUMNS,
    SaveMeasurementsd,
    organ_measurements,
    scan_axis,
    write_measurement_summary,
    write_rows_csv,
)

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
    rows = {
        r["name"]: r
        for r in organ_measurements(str(tmp_path / "img0001.nii.gz"), str(tmp_path / "img0001_seg.nii.gz"), NAMES)
    }
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
    transform = SaveMeasurementsd(
        "image", output_dir=str(tmp_path / "out"), seg_dir=str(tmp_path), label_names=NAMES, min_organ_ml=0.05
    )
    data = {"image": image}
    assert transform(data)["image"] is image
    with open(tmp_path / "out" / "img0001_measurements.csv") as f:
        assert tuple(next(csv.reader(f))) == MEASUREMENT_COLUMNS
    per_case = list(csv.DictReader(open(tmp_path / "out" / "img0001_measurements.csv")))
    assert [r["name"] for r in per_case] == ["liver", "spleen", "absent"]
    assert int(per_case[0]["voxels"]) == 7 * 8 * 3
    # 168 voxels of 1.68 uL: 0.28 mL; the spleen's 18 voxels (0.03 mL) are below the 0.05 mL given
    assert [(r["small"], r["components"]) for r in per_case] == [("False", "1"), ("True", "1"), ("False", "0")]
    summary = list(csv.DictReader(open(tmp_path / "out" / "measurements_summary.csv")))
    assert summary == per_case
    disabled = SaveMeasurementsd("image", output_dir=str(tmp_path / "off"), seg_dir=str(tmp_path), enabled=False)
    disabled(data)
    assert not (tmp_path / "off").exists()


# ---------------------------------------------------------------------------------------------------------------
# flags: organs cut by the field of view, organs too small to be one
# ---------------------------------------------------------------------------------------------------------------

FLAG_NAMES = {0: "background", 1: "liver", 2: "spleen", 3: "kidney", 4: "fragments", 5: "speck", 6: "absent"}
SHAPE = (12, 20, 16)
VOXEL_ML = 3.0 * 0.7 * 0.8 / 1000


def _flag_case(tmp_path, superior_first: bool):
    """
    Hand-placed organs in a scan whose slices run along voxel axis 0 (world z, 3 mm; axes 1 and 2 are world x and
    -y): index 0 is the most superior slice when ``superior_first``.
    """
    z = -3.0 if superior_first else 3.0
    affine = np.array([[0.0, 0.7, 0.0, 10.0], [0.0, 0.0, -0.8, 20.0], [z, 0.0, 0.0, 100.0], [0, 0, 0, 1]])
    labels = np.zeros(SHAPE, np.uint8)
    labels[0:4, 5:12, 4:10] = 1  # first slice along the scan axis
    labels[8:12, 2:8, 0:4] = 2  # last slice, and the in-plane edge (axis 2 starts at 0)
    labels[4:8, 13:17, 5:9] = 3  # a 4x4x4 part...
    labels[5:7, 2:4, 11:13] = 3  # ...and a 2x2x2 part with one more voxel touching it only at a corner
    labels[7, 4, 13] = 3
    for box in (
        (slice(1, 4), slice(14, 17), slice(11, 14)),
        (slice(1, 4), slice(1, 4), slice(12, 15)),
        (slice(8, 11), slice(10, 13), slice(11, 14)),
    ):
        labels[box] = 4  # three separate 3x3x3 fragments
    labels[6, 9, 13:15] = 5
    hu = np.random.default_rng(1).integers(-100, 200, size=SHAPE).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "case.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "case_seg.nii.gz")
    return labels


@pytest.mark.parametrize("superior_first", [True, False])
def test_flags_of_hand_placed_organs(tmp_path, superior_first):
    labels = _flag_case(tmp_path, superior_first)
    rows = organ_measurements(str(tmp_path / "case.nii.gz"), str(tmp_path / "case_seg.nii.gz"), FLAG_NAMES, 0.05)
    first, last = ("superior", "inferior") if superior_first else ("inferior", "superior")
    expected = {  # name: voxels, touches_border, components, voxels of the largest component, small (< 0.05 mL)
        "liver": (4 * 7 * 6, first, 1, 4 * 7 * 6, False),
        "spleen": (4 * 6 * 4, f"{last};in_plane", 1, 4 * 6 * 4, False),
        "kidney": (64 + 8 + 1, "", 2, 64, False),  # 26-connected: the corner voxel joins the 2x2x2 part
        "fragments": (3 * 27, "", 3, 27, True),  # 0.136 mL in all, but no part reaches 0.05 mL
        "speck": (2, "", 1, 2, True),
        "absent": (0, "", 0, 0, False),
    }
    assert scan_axis(nib.load(tmp_path / "case.nii.gz").affine) == 0
    for row in rows:
        voxels, border, components, largest, small = expected[row["name"]]
        assert row["voxels"] == voxels == (labels == row["label"]).sum(), row["name"]
        assert (row["touches_border"], row["components"], row["small"]) == (border, components, small), row["name"]
        assert row["largest_component_ml"] == pytest.approx(largest * VOXEL_ML), row["name"]
    assert [r["name"] for r in rows] == list(expected)


def _components_by_flood_fill(mask: np.ndarray) -> list[int]:
    """Sizes of the 26-connected components of ``mask``, by a plain breadth-first search."""
    seen = np.zeros(mask.shape, bool)
    offsets = [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)]
    sizes = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, size = True, [start], 0
        while queue:
            voxel = queue.pop()
            size += 1
            for offset in offsets:
                n = tuple(v + o for v, o in zip(voxel, offset))
                if all(0 <= c < s for c, s in zip(n, mask.shape)) and mask[n] and not seen[n]:
                    seen[n] = True
                    queue.append(n)
        sizes.append(size)
    return sizes


def test_components_match_a_flood_fill_on_random_labels(tmp_path):
    rng = np.random.default_rng(4)
    labels = (rng.random((9, 8, 7)) < 0.12).astype(np.uint8) * rng.integers(1, 3, size=(9, 8, 7)).astype(np.uint8)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(rng.integers(-50, 50, size=labels.shape).astype(np.int16), affine), tmp_path / "r.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "r_seg.nii.gz")
    rows = organ_measurements(str(tmp_path / "r.nii.gz"), str(tmp_path / "r_seg.nii.gz"), {1: "a", 2: "b"})
    for row in rows:
        sizes = _components_by_flood_fill(labels == row["label"])
        assert len(sizes) > 3  # several components: the connectivity matters
        assert row["components"] == len(sizes)
        assert row["largest_component_ml"] == pytest.approx(max(sizes) * 0.8 * 0.8 * 2.5 / 1000)


@pytest.mark.parametrize("value", [-0.5, "1", True, float("nan")])
def test_min_organ_ml_is_checked(value):
    from scripts.engine.config_check import ConfigValueError, check_config

    check_config({"min_organ_ml": 0.0})
    with pytest.raises(ConfigValueError, match="config id 'min_organ_ml' must be a number >= 0"):
        check_config({"min_organ_ml": value})


def test_summary_is_rebuilt_from_every_case_file_in_the_folder(tmp_path, caplog):
    """Cases written by other processes or earlier runs are in the summary; a file with foreign columns is named."""
    rows = {case: {c: f"{case}-{c}" for c in MEASUREMENT_COLUMNS} for case in ("b", "a")}
    for case, row in rows.items():
        write_rows_csv([row], str(tmp_path / f"{case}_measurements.csv"))
    (tmp_path / "old_measurements.csv").write_text("case,volume\nold,1\n")
    with caplog.at_level("WARNING"):
        write_measurement_summary(str(tmp_path))
    with open(tmp_path / "measurements_summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert summary == [rows["a"], rows["b"]]
    assert "old_measurements.csv" in caplog.text


def test_transform_summary_covers_an_earlier_run_and_every_case_of_this_one(tmp_path):
    _case(tmp_path)
    (tmp_path / "img0002_seg.nii.gz").write_bytes((tmp_path / "img0001_seg.nii.gz").read_bytes())
    output = tmp_path / "out"
    earlier = {c: f"earlier-{c}" for c in MEASUREMENT_COLUMNS}
    write_rows_csv([earlier], str(output / "img0000_measurements.csv"))  # a continued run's finished case
    transform = SaveMeasurementsd("image", output_dir=str(output), seg_dir=str(tmp_path), label_names=NAMES)
    for case in ("img0002", "img0001"):
        image = MetaTensor(torch.zeros(1, 20, 16, 6), meta={"filename_or_obj": str(tmp_path / "img0001.nii.gz")})
        transform({"image": image, "case": case})
    with open(output / "measurements_summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [r["case"] for r in summary] == ["earlier-case"] + ["img0001"] * 3 + ["img0002"] * 3
    assert summary[0] == earlier
