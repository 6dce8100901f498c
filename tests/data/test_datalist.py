"""Tests of ``scripts/data/datalist.py``: pair checks, datalist validation, atomic JSON writing and splits."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from scripts.data.datalist import (
    BTCV_LABELS,
    PAPER_TRAIN_CASES,
    PAPER_VAL_CASES,
    DataValidationError,
    check_image_label_pair,
    make_datalist,
    split_cases,
    validate_datalist,
    write_json_atomic,
)

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


# ---------------------------------------------------------------------------------------------------------------
# check_image_label_pair
# ---------------------------------------------------------------------------------------------------------------


def test_labels_constant():
    assert list(BTCV_LABELS) == list(range(14))
    assert BTCV_LABELS[0] == "background" and BTCV_LABELS[1] == "spleen" and BTCV_LABELS[6] == "liver"
    assert BTCV_LABELS[10] == "portal_and_splenic_veins" and BTCV_LABELS[13] == "left_adrenal_gland"
    assert all(name == name.lower() and " " not in name for name in BTCV_LABELS.values())


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


# ---------------------------------------------------------------------------------------------------------------
# validate_datalist
# ---------------------------------------------------------------------------------------------------------------


def test_validate_datalist_ok_and_from_file(tmp_path):
    write_pair(tmp_path / "a", "c1", seed=1)
    write_pair(tmp_path / "a", "c2", seed=2)
    datalist = make_datalist(
        training=[{"image": "a/c1_img.nii.gz", "label": "a/c1_label.nii.gz"}],
        validation=[{"image": "a/c2_img.nii.gz", "label": "a/c2_label.nii.gz"}],
        testing=[{"image": "a/c2_img.nii.gz"}],
    )
    validate_datalist(datalist, str(tmp_path))
    validate_datalist(datalist, str(tmp_path), keys=("training", "testing"))
    path = write_json_atomic(datalist, str(tmp_path / "dl.json"))
    validate_datalist(path, str(tmp_path))


def test_validate_datalist_lists_every_problem(tmp_path):
    good_img, good_lbl = write_pair(tmp_path, "good")
    bad_img, bad_lbl = write_pair(tmp_path, "bad")
    _bad_image("nan", bad_img)
    _bad_label("out_of_range", bad_lbl)
    datalist = {
        "training": [
            {"image": os.path.basename(good_img), "label": os.path.basename(good_lbl)},
            {"image": os.path.basename(bad_img), "label": os.path.basename(bad_lbl)},
            {"image": "missing.nii.gz", "label": os.path.basename(good_lbl)},
            {"label": os.path.basename(good_lbl)},
        ],
        "validation": [],
    }
    with pytest.raises(DataValidationError) as info:
        validate_datalist(datalist, str(tmp_path))
    err = info.value
    assert isinstance(err, ValueError)
    message = str(err)
    assert len(err.problems) == 5, err.problems
    lines = message.splitlines()
    assert lines[0].startswith("dataset validation failed: 5 problem(s)")
    assert len(lines) == 6
    assert any(bad_img in ln and "NaN" in ln for ln in lines)
    assert any(bad_lbl in ln and "20" in ln for ln in lines)
    assert any(str(tmp_path / "missing.nii.gz") in ln and "not found" in ln for ln in lines)
    assert any("has no 'image'" in ln for ln in lines)
    assert any("'validation' is missing or empty" in ln for ln in lines)


def test_validate_datalist_empty_and_leakage(tmp_path):
    with pytest.raises(DataValidationError, match="empty"):
        validate_datalist({}, str(tmp_path))
    img, lbl = write_pair(tmp_path)
    item = {"image": img, "label": lbl}  # absolute paths are used as they are
    with pytest.raises(DataValidationError, match="listed under both 'training' and 'validation'"):
        validate_datalist({"training": [item], "validation": [item]}, str(tmp_path / "elsewhere"))


# ---------------------------------------------------------------------------------------------------------------
# write_json_atomic
# ---------------------------------------------------------------------------------------------------------------


def test_write_json_atomic(tmp_path):
    path = str(tmp_path / "sub" / "dl.json")
    assert write_json_atomic({"a": 1}, path) == path
    with open(path) as f:
        assert json.load(f) == {"a": 1}
    with pytest.raises(FileExistsError, match="overwrite"):
        write_json_atomic({"a": 2}, path)
    with open(path) as f:
        assert json.load(f) == {"a": 1}
    write_json_atomic({"a": 3}, path, overwrite=True)
    with open(path) as f:
        assert json.load(f) == {"a": 3}
    # a failed serialisation leaves the old file and no temporary file behind
    with pytest.raises(TypeError):
        write_json_atomic({"a": object()}, path, overwrite=True)
    with open(path) as f:
        assert json.load(f) == {"a": 3}
    assert os.listdir(tmp_path / "sub") == ["dl.json"]
    with pytest.raises(IsADirectoryError):
        write_json_atomic({}, str(tmp_path / "sub"), overwrite=True)


# ---------------------------------------------------------------------------------------------------------------
# split_cases
# ---------------------------------------------------------------------------------------------------------------

BTCV_CASES = list(range(1, 11)) + list(range(21, 41))


def test_paper_split():
    train, val = split_cases(BTCV_CASES[::-1], split="paper")
    assert train == list(range(1, 11)) + list(range(21, 32))
    assert val == list(range(32, 41))
    assert (len(train), len(val)) == (21, 9)
    assert tuple(train) == PAPER_TRAIN_CASES and tuple(val) == PAPER_VAL_CASES


@pytest.mark.parametrize("cases", [BTCV_CASES[:-1], BTCV_CASES + [11], list(range(1, 13))])
def test_paper_split_needs_btcv_cases(cases):
    with pytest.raises(ValueError, match="split='random'"):
        split_cases(cases, split="paper")


def test_random_split_seeded_and_disjoint():
    cases = list(range(1, 21))
    train, val = split_cases(cases, split="random", seed=3, val_fraction=0.3)
    assert (train, val) == split_cases(cases[::-1], split="random", seed=3, val_fraction=0.3)
    assert len(val) == 6 and len(train) == 14
    assert not set(train) & set(val) and sorted(train + val) == cases
    assert train == sorted(train) and val == sorted(val)
    others = {tuple(split_cases(cases, split="random", seed=s, val_fraction=0.3)[1]) for s in range(5)}
    assert len(others) > 1
    # at least one case on each side, even for extreme fractions
    assert [len(x) for x in split_cases([1, 2], split="random", val_fraction=0.01)] == [1, 1]
    assert [len(x) for x in split_cases([1, 2, 3], split="random", val_fraction=0.99)] == [1, 2]


@pytest.mark.parametrize("num_cases, num_folds", [(30, 5), (12, 5), (7, 7), (13, 2)])
def test_kfold_partitions(num_cases, num_folds):
    cases = list(range(100, 100 + num_cases))
    vals = []
    for fold in range(num_folds):
        train, val = split_cases(cases, split="kfold", seed=1, num_folds=num_folds, fold=fold)
        assert not set(train) & set(val) and sorted(train + val) == cases
        assert (train, val) == split_cases(cases, split="kfold", seed=1, num_folds=num_folds, fold=fold)
        vals.append(val)
    flat = [c for v in vals for c in v]
    assert sorted(flat) == cases  # every case held out exactly once
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "loo"}, "split must be one of"),
        ({"split": "random", "val_fraction": 0.0}, "val_fraction"),
        ({"split": "random", "val_fraction": 1.0}, "val_fraction"),
        ({"split": "kfold", "num_folds": 1}, "num_folds"),
        ({"split": "kfold", "num_folds": 11}, "num_folds"),
        ({"split": "kfold", "fold": 5}, "fold must be"),
        ({"split": "kfold", "fold": -1}, "fold must be"),
    ],
)
def test_split_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_cases(range(10), **kwargs)


def test_split_rejects_duplicates_and_single_case():
    with pytest.raises(ValueError, match="unique"):
        split_cases([1, 2, 2, 3], split="random")
    with pytest.raises(ValueError, match="at least 2"):
        split_cases([1], split="kfold")
