"""Tests of ``scripts/data/datalist.py``: validation of a whole datalist."""

from __future__ import annotations

import os

import pytest

from scripts.data.checks import DataValidationError
from scripts.data.datalist import make_datalist, validate_datalist
from scripts.engine.atomic import write_json_atomic
from tests.data.test_checks import _bad_image, _bad_label, write_pair


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
