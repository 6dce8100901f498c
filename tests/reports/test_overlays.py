from __future__ import annotations

import itertools
import logging
import os

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from monai.data import MetaTensor

from scripts.data.labels import BTCV_LABELS
from scripts.reports.overlays import (
    BTCV_COLOURS,
    OVERLAY_DPI,
    OVERLAY_FIGSIZE,
    SaveOverlayd,
    choose_slices,
    legend_entries,
    load_canonical,
    organ_colour,
    organ_name,
    orthogonal_slices,
    save_overlay_png,
)

# RAS voxel grid of the synthetic cases: (X, Y, Z) with anisotropic spacing in mm
SHAPE = (40, 36, 8)
SPACING = (0.8, 0.7, 3.0)
OVERLAY_SIZE = (round(OVERLAY_FIGSIZE[1] * OVERLAY_DPI), round(OVERLAY_FIGSIZE[0] * OVERLAY_DPI))  # rows, cols


def make_case(organs: dict[int, tuple[slice, slice, slice]], fill_body: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """RAS arrays (HU image, labels): an elliptic body of 40 HU in air, each organ a box of its label."""
    x, y = np.meshgrid(np.linspace(-1, 1, SHAPE[0]), np.linspace(-1, 1, SHAPE[1]), indexing="ij")
    body = np.broadcast_to(((x / 0.95) ** 2 + (y / 0.9) ** 2 <= 1)[..., None], SHAPE)
    image = np.where(body | fill_body, 40.0, -1000.0)
    label = np.zeros(SHAPE, np.uint8)
    for value, box in organs.items():
        label[box] = value
        image[box] = 40.0 + 8 * value
    return image.astype(np.int16), label


def write_nifti(array: np.ndarray, path: str, axcodes: str = "LPS", spacing=SPACING) -> str:
    """Save a RAS array in the orientation ``axcodes`` with a matching non-identity affine (same world positions)."""
    ras = np.diag([*spacing, 1.0])
    ras[:3, 3] = (-12.5, 30.0, -40.0)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(axcodes))
    affine = ras @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    data = np.ascontiguousarray(nib.orientations.apply_orientation(array, ornt))
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


# organs by position in RAS voxels: liver on the patient's right (high X), spleen on the left (low X)
ORGANS = {
    6: (slice(26, 36), slice(14, 28), slice(2, 7)),  # liver
    1: (slice(5, 11), slice(12, 20), slice(3, 6)),  # spleen
    8: (slice(18, 21), slice(8, 11), slice(0, 8)),  # aorta
}


def count_colour(png: np.ndarray, colour, tolerance: float = 0.02) -> int:
    """Pixels of ``png`` (rows, cols, RGB[A] in [0, 1]) within ``tolerance`` of ``colour`` in every channel."""
    return int(np.all(np.abs(png[..., :3] - np.asarray(colour)) <= tolerance, axis=-1).sum())


def test_organ_colours_follow_the_label_table():
    organs = {k for k in BTCV_LABELS if k > 0}
    assert set(BTCV_COLOURS) == organs
    for label in organs:
        assert organ_colour(label) == pytest.approx(to_rgb(BTCV_COLOURS[label]))
    for a, b in itertools.combinations(sorted(organs), 2):  # distinguishable
        assert np.abs(np.subtract(organ_colour(a), organ_colour(b))).max() > 0.15, (a, b)
    assert organ_colour(20) == organ_colour(20) and len(organ_colour(20)) == 3  # any other label is stable


def test_legend_entries_use_readable_names_in_label_order():
    entries = legend_entries([6, 2, 0, 2], BTCV_LABELS, scores={2: 0.8123, 6: float("nan")})
    assert entries == [("right kidney 0.81", organ_colour(2)), ("liver", organ_colour(6))]
    assert organ_name(9, BTCV_LABELS) == "inferior vena cava"
    assert organ_name(42, BTCV_LABELS) == "label 42"


@pytest.mark.parametrize("axcodes", ["LPS", "PLI"])
def test_slices_are_in_radiological_convention(tmp_path, axcodes):
    volume = np.zeros(SHAPE, np.int16)
    volume[-6:, -5:, -2:] = 1  # the patient's right, anterior, superior corner
    path = write_nifti(volume, str(tmp_path / "marker.nii.gz"), axcodes)
    canonical, zooms = load_canonical(path)
    assert canonical.shape == SHAPE
    np.testing.assert_allclose(zooms, SPACING)
    np.testing.assert_array_equal(canonical, volume)
    slices = orthogonal_slices(canonical, choose_slices(canonical))
    for view, (rows, cols) in {"axial": ("A", "R"), "coronal": ("S", "R"), "sagittal": ("S", "A")}.items():
        plane = slices[view]
        top, left = plane[: plane.shape[0] // 2], plane[:, : plane.shape[1] // 2]
        assert plane.sum() > 0 and top.sum() == plane.sum(), f"{view}: {rows} must be at the top"
        assert left.sum() == plane.sum(), f"{view}: {cols} must be on the left"
    assert slices["axial"].shape == (SHAPE[1], SHAPE[0])
    assert slices["sagittal"].shape == (SHAPE[2], SHAPE[1])


def test_choose_slices_goes_through_most_organs():
    image, label = make_case(ORGANS)
    x, y, z = choose_slices(label)
    assert 3 <= z < 6  # the axial slices showing all three organs
    assert len(set(np.unique(label[:, :, z])) - {0}) == 3
    assert choose_slices(np.zeros(SHAPE, np.uint8)) == tuple(s // 2 for s in SHAPE)


def test_overlay_png_size_colours_and_content(tmp_path):
    image, label = make_case(ORGANS)
    prediction = label.copy()
    prediction[prediction == 8] = 0  # aorta only in the ground truth
    paths = {}
    for name, array in (("image", image), ("label", label), ("prediction", prediction)):
        paths[name] = write_nifti(array, str(tmp_path / f"{name}.nii.gz"))
    out = save_overlay_png(
        paths["image"], paths["prediction"], str(tmp_path / "out" / "case.png"), paths["label"], BTCV_LABELS
    )
    png = mpimg.imread(out)
    assert png.shape[:2] == OVERLAY_SIZE
    assert png[..., :3].var() > 0.01
    for present in (6, 1, 8):  # the ground-truth aorta is drawn too
        assert count_colour(png, organ_colour(present)) > 20, BTCV_LABELS[present]
    for absent in (2, 7, 9):  # right kidney, stomach, inferior vena cava
        assert count_colour(png, organ_colour(absent)) == 0, BTCV_LABELS[absent]
    assert not [f for f in os.listdir(tmp_path / "out") if f != "case.png"]  # no temporary file left

    inference = save_overlay_png(
        paths["image"], paths["prediction"], str(tmp_path / "inference.png"), None, BTCV_LABELS
    )
    png = mpimg.imread(inference)
    assert png.shape[:2] == OVERLAY_SIZE
    assert count_colour(png, organ_colour(6)) > 20 and count_colour(png, organ_colour(8)) == 0


def test_overlay_keeps_the_physical_aspect_ratio(tmp_path):
    image, label = make_case(ORGANS, fill_body=True)  # the whole field of view is tissue, so it can be measured
    paths = [write_nifti(a, str(tmp_path / f"{n}.nii.gz"), "LPS") for n, a in (("image", image), ("label", label))]
    png = mpimg.imread(save_overlay_png(paths[0], paths[1], str(tmp_path / "aspect.png"), None, BTCV_LABELS))
    bright = png[..., :3].mean(-1) > 0.2
    centre_row, centre_col = OVERLAY_SIZE[0] // 2, OVERLAY_SIZE[1] // 2  # inside the coronal panel

    def run(line: np.ndarray, index: int) -> tuple[int, int]:
        """The run of bright pixels of ``line`` around ``index``."""
        start, stop = index, index
        while start > 0 and line[start - 1]:
            start -= 1
        while stop < len(line) - 1 and line[stop + 1]:
            stop += 1
        return start, stop

    left, right = run(bright[centre_row - 60], centre_col)  # clear of the orientation letters
    column = (3 * left + right) // 4  # clear of the orientation letters
    top, bottom = run(bright[:, column], centre_row)
    width, height = right - left + 1, bottom - top + 1
    expected = (SHAPE[0] * SPACING[0]) / (SHAPE[2] * SPACING[2])  # 32 mm wide, 24 mm high
    assert width / height == pytest.approx(expected, rel=0.06)


def test_overlay_rejects_mismatched_shapes(tmp_path):
    image, label = make_case(ORGANS)
    image_path = write_nifti(image, str(tmp_path / "image.nii.gz"))
    small = write_nifti(label[:-2], str(tmp_path / "small.nii.gz"))
    with pytest.raises(ValueError, match="does not match"):
        save_overlay_png(image_path, small, str(tmp_path / "x.png"))


def test_save_overlayd_draws_the_saved_segmentation(tmp_path, caplog):
    image, label = make_case(ORGANS)
    source = write_nifti(image, str(tmp_path / "img0061.nii.gz"))
    out_dir = tmp_path / "inference"
    out_dir.mkdir()
    write_nifti(label, str(out_dir / "img0061_seg.nii.gz"))
    data = {"image": MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": source}), "pred": torch.ones(1)}

    assert SaveOverlayd("image", output_dir=str(out_dir), enabled=False)(data).keys() == data.keys()
    assert not (out_dir / "img0061.png").exists()

    result = SaveOverlayd("image", output_dir=str(out_dir), output_postfix="seg")(data)
    assert result["pred"] is data["pred"] and result["image"] is data["image"]
    png = mpimg.imread(str(out_dir / "img0061.png"))
    assert png.shape[:2] == OVERLAY_SIZE and count_colour(png, organ_colour(8)) > 10

    with caplog.at_level(logging.WARNING, logger="scripts.engine.transforms"):
        SaveOverlayd("image", output_dir=str(tmp_path / "elsewhere"))(data)  # no segmentation there: a warning
    assert "img0061" in caplog.text and not (tmp_path / "elsewhere" / "img0061.png").exists()
