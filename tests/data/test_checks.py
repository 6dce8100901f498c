"""Tests of ``scripts/data/checks.py``: checks of image/label NIfTI pairs."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from scripts.data.checks import check_image_label_pair

AFFINE = np.array([[-1.5, 0, 0, 100.0], [0, -1.5, 0, 80.0], [0, 0, 3.0, -400.0], [0, 0, 0, 1]])
SHAPE = (32, 32, 16)


def write_nifti(path: str, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    """Save ``data`` as NIfTI (folder created) and return the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return str(path)


def write_pair(folder, name: str = "case", shape=SHAPE, seed: int = 0, num_classes: int = 14) -> tuple[str, str]:
    """A valid int16 image / uint8 label pair with the labels 0..num_classes-1 present."""
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1000, size=shape).astype(np.int16)
    label = (np.arange(int(np.prod(shape))) % num_classes).reshape(shape).astype(np.uint8)
    return (
        write_nifti(os.path.join(folder, f"{name}_img.nii.gz"), image),
        write_nifti(os.path.join(folder, f"{name}_label.nii.gz"), label),
    )


def truncate(path: str, keep: float = 0.5) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def test_valid_pair_has_no_problems(tmp_path):
    image, label = write_pair(tmp_path)
    assert check_image_label_pair(image, label, 14) == []
    assert check_image_label_pair(image, None, 14) == []


def test_trailing_singleton_and_tiny_affine_difference_allowed(tmp_path):
    rng = np.random.default_rng(0)
    image = write_nifti(str(tmp_path / "img.nii.gz"), rng.normal(size=SHAPE + (1,)).astype(np.float32))
    near = AFFINE.copy()
    near[0, 3] += 1e-5
    label = write_nifti(str(tmp_path / "lbl.nii.gz"), np.zeros(SHAPE, np.uint8), near)
    assert check_image_label_pair(image, label, 14) == []


def _bad_image(kind: str, path: str) -> None:
    rng = np.random.default_rng(1)
    if kind == "truncated":
        write_nifti(path, rng.integers(-1000, 1000, size=SHAPE).astype(np.int16))
        truncate(path)
    elif kind == "corrupt":
        with open(path, "wb") as f:
            f.write(b"this is not a NIfTI file" * 4)
    elif kind == "2d":
        write_nifti(path, rng.normal(size=SHAPE[:2]).astype(np.float32))
    elif kind == "4d":
        write_nifti(path, rng.normal(size=SHAPE + (2,)).astype(np.float32))
    elif kind == "nan":
        data = rng.normal(size=SHAPE).astype(np.float32)
        data[3, 4, 5] = np.nan
        data[1, 1, 1] = np.inf
        write_nifti(path, data)
    elif kind == "constant":
        write_nifti(path, np.full(SHAPE, -1000, np.int16))
    elif kind != "missing":
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing", "file not found"),
        ("truncated", "truncated"),
        ("corrupt", "unreadable"),
        ("2d", "not 3D"),
        ("4d", "not 3D"),
        ("nan", "2 NaN/Inf"),
        ("constant", "constant value (-1000)"),
    ],
)
def test_bad_image_is_reported(tmp_path, kind, expected):
    _, label = write_pair(tmp_path)
    image = str(tmp_path / "bad_img.nii.gz")
    _bad_image(kind, image)
    problems = check_image_label_pair(image, label, 14)
    assert len(problems) >= 1, problems
    assert any(p.startswith(f"{image}: ") and expected in p for p in problems), problems
    # the image-only check reports it too
    assert any(expected in p for p in check_image_label_pair(image, None, 14))


def _bad_label(kind: str, path: str) -> None:
    if kind == "truncated":
        write_nifti(path, (np.arange(np.prod(SHAPE)) % 14).reshape(SHAPE).astype(np.uint8))
        truncate(path, 0.6)
    elif kind == "shape":
        write_nifti(path, np.zeros((32, 32, 15), np.uint8))
    elif kind == "affine":
        shifted = AFFINE.copy()
        shifted[2, 3] += 1.0
        write_nifti(path, np.zeros(SHAPE, np.uint8), shifted)
    elif kind == "out_of_range":
        data = np.zeros(SHAPE, np.uint8)
        data[0, 0, 0], data[1, 0, 0] = 20, 14
        write_nifti(path, data)
    elif kind == "negative":
        data = np.zeros(SHAPE, np.int16)
        data[0, 0, 0] = -1
        write_nifti(path, data)
    elif kind == "non_integer":
        data = np.zeros(SHAPE, np.float32)
        data[0, 0, 0] = 1.5
        write_nifti(path, data)
    elif kind == "4d":
        write_nifti(path, np.zeros(SHAPE + (3,), np.uint8))
    elif kind != "missing":
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing", "file not found"),
        ("truncated", "truncated"),
        ("shape", "label shape (32, 32, 15) differs from image shape (32, 32, 16)"),
        ("affine", "affine differs"),
        ("out_of_range", "outside [0, 13] (14 classes): 14, 20"),
        ("negative", "outside [0, 13] (14 classes): -1"),
        ("non_integer", "non-integer values: 1.5"),
        ("4d", "not 3D"),
    ],
)
def test_bad_label_is_reported(tmp_path, kind, expected):
    image, _ = write_pair(tmp_path)
    label = str(tmp_path / "bad_label.nii.gz")
    _bad_label(kind, label)
    problems = check_image_label_pair(image, label, 14)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{label}: ") and expected in problems[0], problems


def test_several_problems_all_reported(tmp_path):
    image = str(tmp_path / "img.nii.gz")
    label = str(tmp_path / "lbl.nii.gz")
    _bad_image("constant", image)
    data = np.zeros((32, 32, 15), np.uint8)
    data[0, 0, 0] = 20
    write_nifti(label, data)
    problems = check_image_label_pair(image, label, 14)
    assert len(problems) == 3, problems
    assert "constant" in problems[0] and "shape" in problems[1] and "20" in problems[2]


def test_label_range_follows_num_classes(tmp_path):
    image, label = write_pair(tmp_path, num_classes=14)
    assert check_image_label_pair(image, label, 14) == []
    problems = check_image_label_pair(image, label, 3)
    assert len(problems) == 1 and "outside [0, 2]" in problems[0]
    with pytest.raises(ValueError, match="num_classes"):
        check_image_label_pair(image, label, 0)
