"""
Geometry is never guessed: a NIfTI header that does not define the voxel size, orientation and position is refused
with a message naming the file and the header field, in inference, datalist validation and dataset preparation.

Bad headers are written byte for byte (:func:`_patch_header`): nibabel repairs zero voxel sizes and invalid codes
when it writes a file, as it does when it reads one.
"""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest

from scripts.data.checks import DataValidationError, check_image_label_pair
from scripts.data.datalist import validate_datalist
from scripts.data.geometry import (
    MAX_SPACING_MM,
    MIN_SPACING_MM,
    NiftiHeaderWarning,
    check_affine,
    check_nifti_geometry,
)

from .conftest import AFFINE, BUNDLE_ROOT, SMALL_SHAPE, ct_image, organ_label, write_nifti


def _rotated(degrees: float, spacing=(0.8, 0.8, 5.0), origin=(120.0, -40.0, -700.0)) -> np.ndarray:
    """An oblique LPS-like affine: rotated about z, anisotropic voxels."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[-c, s, 0], [-s, -c, 0], [0, 0, 1]]) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _shifted(mm: float) -> np.ndarray:
    """AFFINE with its origin moved ``mm`` along x."""
    shifted = AFFINE.copy()
    shifted[0, 3] += mm
    return shifted


def _gantry_tilt(degrees: float) -> np.ndarray:
    """AFFINE with its slice axis tilted in the y-z plane, as a tilted CT series converted without resampling."""
    tilted = AFFINE.copy()
    t = np.radians(degrees)
    tilted[:3, 2] = 4.5 * np.array([0.0, np.sin(t), np.cos(t)])
    return tilted


def _write_coded(path, data: np.ndarray, affine: np.ndarray = AFFINE, klass=nib.Nifti1Image) -> str:
    """A NIfTI file whose qform and sform (both code 1, scanner) are ``affine``, units mm."""
    img = klass(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    nib.save(img, str(path))
    return str(path)


def _patch_header(path: str, **fields) -> str:
    """Overwrite header fields of a saved NIfTI file in place; ``pixdim1`` .. ``pixdim3`` set one voxel size."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        blob = f.read()
    klass = nib.Nifti2Header if np.frombuffer(blob[:4], "<i4")[0] == 540 else nib.Nifti1Header
    header = klass(blob[: klass.template_dtype.itemsize], check=False)
    for name, value in fields.items():
        if name.startswith("pixdim"):
            header["pixdim"][int(name[-1])] = value
        else:
            header[name] = value
    with opener(path, "wb") as f:
        f.write(header.binaryblock + blob[len(header.binaryblock) :])
    return path


def _problems(path: str) -> list[str]:
    """Problems of the image-only check, as inference and the test items of a datalist run it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NiftiHeaderWarning)  # the tests of the messages are below
        return check_image_label_pair(path, None, num_classes=14)


# ---------------------------------------------------------------------------------------------------------------
# good headers pass
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [AFFINE, _rotated(30.0)], ids=["lps", "oblique"])
def test_anisotropic_lps_like_geometry_passes(tmp_path, affine):
    plain = write_nifti(tmp_path / "plain.nii.gz", ct_image(), affine)  # sform only, units unknown
    coded = _write_coded(tmp_path / "coded.nii.gz", ct_image(), affine)  # qform and sform agree, units mm
    label = write_nifti(tmp_path / "label.nii.gz", organ_label(), affine)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NiftiHeaderWarning)
        assert check_image_label_pair(plain, label, 14) == []
        assert check_image_label_pair(coded, label, 14) == []
    assert check_nifti_geometry(nib.load(coded), coded) == []
    assert nib.load(coded).header.get_xyzt_units()[0] == "mm"


def test_qform_only_and_nifti2_pass(tmp_path):
    qform_only = _patch_header(_write_coded(tmp_path / "q.nii.gz", ct_image()), sform_code=0)
    assert _problems(qform_only) == []
    assert _problems(_write_coded(tmp_path / "n2.nii", ct_image(), _rotated(-15.0), nib.Nifti2Image)) == []


def test_synthetic_phantom_passes():
    from scripts.data.synthetic import phantom_to_nifti

    image, label = phantom_to_nifti(ct_image(), organ_label(), spacing=(0.7, 0.7, 2.5), axcodes="PLS")
    assert check_nifti_geometry(image, "image") == [] and check_nifti_geometry(label, "label") == []


# ---------------------------------------------------------------------------------------------------------------
# each refusal names the file and the header field
# ---------------------------------------------------------------------------------------------------------------


def _only(problems: list[str], path: str, *expected: str) -> None:
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems
    assert all(e in problems[0] for e in expected), problems


BAD_VOXEL_SIZES = [
    ("zero", 0.0, "pixdim[3] (voxel size along axis 2) is 0; voxel sizes must be finite and positive"),
    ("negative", -4.5, "pixdim[3] (voxel size along axis 2) is -4.5; voxel sizes must be finite and positive"),
    ("nan", np.nan, "pixdim[3] (voxel size along axis 2) is nan"),
    ("inf", np.inf, "pixdim[3] (voxel size along axis 2) is inf"),
    (
        "huge",
        120.0,
        f"pixdim[3] (voxel size along axis 2) is 120 mm, outside the accepted "
        f"{MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm",
    ),
    ("tiny", 0.001, "pixdim[3] (voxel size along axis 2) is 0.001 mm, outside the accepted 0.01..50 mm"),
]


@pytest.mark.parametrize("case, size, expected", BAD_VOXEL_SIZES, ids=[c for c, _, _ in BAD_VOXEL_SIZES])
def test_bad_voxel_size_is_refused(tmp_path, case, size, expected):
    # qform only: nibabel builds the affine from pixdim, and would read a zero as 1 and a negative size as its abs
    path = _patch_header(_write_coded(tmp_path / "img.nii.gz", ct_image()), sform_code=0, pixdim3=size)
    _only(_problems(path), path, expected)


def test_bad_voxel_size_is_refused_when_the_sform_is_used_too(tmp_path):
    path = _patch_header(write_nifti(tmp_path / "img.nii.gz", ct_image()), pixdim1=0.0)
    _only(_problems(path), path, "pixdim[1] (voxel size along axis 0) is 0")


def test_sform_voxel_size_out_of_range_is_refused(tmp_path):
    huge = np.diag([-2.0, -2.0, 80.0, 1.0])
    path = write_nifti(tmp_path / "img.nii.gz", ct_image(), huge)
    problems = _problems(path)
    assert f"{path}: sform voxel size along axis 2 is 80 mm, outside the accepted 0.01..50 mm" in problems


def test_no_qform_and_no_sform_is_refused(tmp_path):
    path = _patch_header(write_nifti(tmp_path / "img.nii.gz", ct_image()), qform_code=0, sform_code=0)
    _only(_problems(path), path, "qform_code and sform_code are both 0", "does not define the orientation or position")


def test_zero_voxel_size_and_no_xform_lists_both(tmp_path):
    path = _patch_header(write_nifti(tmp_path / "img.nii.gz", ct_image()), qform_code=0, sform_code=0, pixdim3=0.0)
    problems = _problems(path)
    assert len(problems) == 2 and all(p.startswith(f"{path}: ") for p in problems), problems
    assert "qform_code and sform_code are both 0" in problems[0] and "pixdim[3]" in problems[1]


def test_invalid_xform_code_is_refused(tmp_path):
    path = _patch_header(_write_coded(tmp_path / "img.nii.gz", ct_image()), sform_code=9)
    _only(_problems(path), path, "sform_code 9 is not a NIfTI xform code [0, 1, 2, 3, 4, 5]; nibabel ignores the sform")


def _sform(path: str, affine: np.ndarray) -> str:
    """Write ``affine`` into the sform rows of ``path``, as nibabel would refuse to."""
    return _patch_header(path, srow_x=affine[0], srow_y=affine[1], srow_z=affine[2])


BAD_AFFINES = [
    ("nan", lambda a: np.where(np.eye(4, dtype=bool), np.nan, a), "sform has NaN/Inf entries"),
    ("zero_column", lambda a: a * [1, 0, 1, 1], "sform column 1 has zero length: voxel axis 1 has no extent"),
    ("parallel_columns", lambda a: a[:, [0, 0, 2, 3]] * [1, 1.01, 1, 1], "sform is singular (not invertible)"),
    ("gantry_tilt", lambda a: _gantry_tilt(12.0), "sform voxel axes 1 and 2 are not orthogonal (78.000 degrees apart"),
]


@pytest.mark.parametrize("case, make, expected", BAD_AFFINES, ids=[c for c, _, _ in BAD_AFFINES])
def test_bad_affine_is_refused(tmp_path, case, make, expected):
    path = _sform(write_nifti(tmp_path / "img.nii.gz", ct_image()), make(AFFINE))
    _only(_problems(path), path, expected)


def test_gantry_tilt_message_says_to_resample(tmp_path):
    path = write_nifti(tmp_path / "tilted.nii.gz", ct_image(), _gantry_tilt(0.5))  # nibabel writes a shear as is
    _only(_problems(path), path, "not orthogonal", "sheared, e.g. by CT gantry tilt", "resample the image")


@pytest.mark.parametrize(
    "qform, expected",
    [
        (_shifted(3.0), "origins by 3 mm"),
        (AFFINE @ np.diag([1.0, 1.0, 0.5, 1.0]), "voxel axes differ by up to 0.5"),  # slices half as thick
        (_rotated(5.0, (2.0, 2.0, 4.5), AFFINE[:3, 3]), "voxel axes differ by up to 0.0872"),  # turned by 5 degrees
    ],
    ids=["origin", "voxel_size", "direction"],
)
def test_qform_and_sform_that_disagree_are_refused(tmp_path, qform, expected):
    img = nib.Nifti1Image(ct_image(), AFFINE)
    img.set_qform(qform, code=1)
    img.set_sform(AFFINE, code=1)
    path = str(tmp_path / "img.nii.gz")
    nib.save(img, path)
    _only(
        _problems(path),
        path,
        "qform and sform (qform_code 1, sform_code 1) disagree",
        expected,
        "nibabel and MONAI use the sform",
    )


def test_non_finite_qform_is_refused_when_the_sform_is_used(tmp_path):
    path = _patch_header(_write_coded(tmp_path / "img.nii.gz", ct_image()), qoffset_y=np.nan)
    _only(_problems(path), path, "qform has NaN/Inf entries (quatern_b/c/d or qoffset_x/y/z)")


def test_qform_and_sform_within_tolerance_agree(tmp_path):
    img = nib.Nifti1Image(ct_image(), AFFINE)
    img.set_qform(_shifted(0.001), code=1)  # 1 micrometre apart
    path = str(tmp_path / "img.nii.gz")
    nib.save(img, path)
    assert _problems(path) == []


@pytest.mark.parametrize("unit", ["meter", "micron"])
def test_spatial_unit_other_than_mm_is_refused(tmp_path, unit):
    img = nib.Nifti1Image(ct_image(), AFFINE)
    img.header.set_xyzt_units(unit, "sec")
    path = str(tmp_path / "img.nii.gz")
    nib.save(img, path)
    _only(_problems(path), path, f"xyzt_units gives the spatial unit as '{unit}', not mm")


@pytest.mark.parametrize(
    "data, expected",
    [
        (ct_image().astype(np.complex64), "datatype 'complex64' (complex)"),
        (np.zeros(SMALL_SHAPE, [("R", "u1"), ("G", "u1"), ("B", "u1")]), "datatype 'RGB' (structured, e.g. RGB)"),
    ],
    ids=["complex", "rgb"],
)
def test_non_intensity_datatype_is_refused(tmp_path, data, expected):
    path = write_nifti(tmp_path / "img.nii.gz", data)
    _only(_problems(path), path, expected)


def test_label_header_is_checked_too(tmp_path):
    image = write_nifti(tmp_path / "img.nii.gz", ct_image())
    label = _patch_header(write_nifti(tmp_path / "label.nii.gz", organ_label()), qform_code=0, sform_code=0)
    problems = check_image_label_pair(image, label, 14)
    _only(problems, label, "qform_code and sform_code are both 0")


def test_a_bad_header_is_refused_before_the_voxel_data_is_read(tmp_path):
    path = _patch_header(write_nifti(tmp_path / "img.nii.gz", ct_image()), qform_code=0, sform_code=0)
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])  # truncated data: reading it would be a second problem
    _only(_problems(path), path, "qform_code and sform_code are both 0")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_nibabel_repairs_are_warnings_naming_the_file_not_unnamed_log_lines(tmp_path):
    path = _patch_header(_write_coded(tmp_path / "img.nii.gz", ct_image()), sform_code=0, pixdim2=0.0)
    stderr = _Records()  # stands in for the stderr handler nibabel puts on its logger
    nib.imageglobals.logger.addHandler(stderr)
    try:
        with pytest.warns(NiftiHeaderWarning) as caught:
            problems = check_image_label_pair(path, None, 14)
    finally:
        nib.imageglobals.logger.removeHandler(stderr)
    assert f"{path}: nibabel: pixdim[1,2,3] should be non-zero; setting 0 dims to 1" in [str(w.message) for w in caught]
    assert stderr.records == []
    _only(problems, path, "pixdim[2] (voxel size along axis 1) is 0")


def test_check_affine_for_other_readers():
    assert check_affine(_rotated(10.0), "series/") == []
    assert check_affine(_gantry_tilt(3.0), "series/", source="DICOM affine")[0].startswith(
        "series/: DICOM affine voxel axes 1 and 2 are not orthogonal (87.000 degrees apart"
    )
    assert check_affine(np.eye(3), "series/") == ["series/: affine is not a 4x4 matrix (shape (3, 3))"]
    assert check_affine(np.diag([0.001, 1, 1, 1]), "series/", spacing_range=None) == []
    assert "outside the accepted 0.01..50 mm" in check_affine(np.diag([0.001, 1, 1, 1]), "series/")[0]


# ---------------------------------------------------------------------------------------------------------------
# every entry point refuses
# ---------------------------------------------------------------------------------------------------------------


def test_inference_sets_aside_an_image_without_geometry(tmp_path):
    from scripts.engine.infer_folder import check_image

    path = _patch_header(write_nifti(tmp_path / "img.nii.gz", ct_image()), qform_code=0, sform_code=0)
    _only(check_image(path), path, "qform_code and sform_code are both 0")


def _datalist_study(root: str) -> dict:
    datalist = {"training": [], "validation": [], "testing": []}
    for i, key in enumerate(("training", "training", "validation")):
        item = {"image": f"img{i}.nii.gz", "label": f"label{i}.nii.gz"}
        write_nifti(os.path.join(root, item["image"]), ct_image(seed=i))
        write_nifti(os.path.join(root, item["label"]), organ_label())
        datalist[key].append(item)
    datalist["testing"].append({"image": write_nifti(os.path.join(root, "test.nii.gz"), ct_image(seed=9))})
    return datalist


def test_validate_datalist_refuses_a_header_without_geometry(tmp_path):
    root = str(tmp_path)
    datalist = _datalist_study(root)
    validate_datalist(datalist, root, keys=("training", "validation", "testing"))  # test items need no label
    bad = _patch_header(os.path.join(root, "img1.nii.gz"), pixdim3=-4.5)
    with pytest.raises(DataValidationError) as raised, pytest.warns(NiftiHeaderWarning, match="should be positive"):
        validate_datalist(datalist, root)
    _only(raised.value.problems, bad, "pixdim[3]")


def test_validate_datalist_refuses_a_training_item_without_label(tmp_path):
    root = str(tmp_path)
    datalist = _datalist_study(root)
    del datalist["training"][1]["label"]
    datalist["validation"].append("img0.nii.gz")
    with pytest.raises(DataValidationError) as raised:
        validate_datalist(datalist, root)
    assert raised.value.problems == [
        f"{root}: datalist['training'][1] (image {os.path.join(root, 'img1.nii.gz')}) has no 'label' entry; "
        "training items are image/label pairs",
        f"{root}: datalist['validation'][1] is not an {{'image': ...}} dict: 'img0.nii.gz'",
    ]


@pytest.mark.parametrize(
    "value", [{"image": "img0.nii.gz", "label": "label0.nii.gz"}, "img0.nii.gz"], ids=["dict", "str"]
)
def test_validate_datalist_refuses_a_training_value_that_is_not_a_list(tmp_path, value):
    root = str(tmp_path)
    datalist = _datalist_study(root)
    datalist["training"] = value
    with pytest.raises(DataValidationError) as raised:
        validate_datalist(datalist, root)
    assert raised.value.problems == [
        f"{root}: datalist['training'] must be a list of {{'image': ..., 'label': ...}} items, "
        f"got a {type(value).__name__}"
    ]


def test_prepare_dataset_cli_refuses_a_header_without_geometry(tmp_path):
    for case in range(3):
        write_nifti(tmp_path / "ct" / f"{case}_img.nii.gz", ct_image(seed=case))
        write_nifti(tmp_path / "seg" / f"{case}_mask.nii.gz", organ_label(value=1))
    bad = _patch_header(str(tmp_path / "ct" / "1_img.nii.gz"), qform_code=0, sform_code=0, pixdim3=0.0)
    output = tmp_path / "datalist.json"
    command = [
        sys.executable,
        "-m",
        "scripts.data.prepare_dataset",
        "folder",
        "--images",
        str(tmp_path / "ct" / "*_img.nii.gz"),
        "--labels",
        str(tmp_path / "seg" / "*_mask.nii.gz"),
        "--label_names",
        "['background','liver']",
        "--output",
        str(output),
    ]
    result = subprocess.run(command, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "error: image/label pairs of" in result.stderr
    assert f"{bad}: qform_code and sform_code are both 0" in result.stderr
    assert f"{bad}: pixdim[3] (voxel size along axis 2) is 0" in result.stderr
    assert not output.exists()


def test_prepare_btcv_refuses_a_header_without_geometry(tmp_path):
    from scripts.data.prepare_dataset import prepare_btcv

    for case in (1, 2, 3):
        write_nifti(tmp_path / "Training" / "img" / f"img{case:04d}.nii.gz", ct_image(seed=case))
        write_nifti(tmp_path / "Training" / "label" / f"label{case:04d}.nii.gz", organ_label())
    bad = _sform(str(tmp_path / "Training" / "label" / "label0002.nii.gz"), _gantry_tilt(20.0))
    output = tmp_path / "datalist.json"
    with pytest.raises(DataValidationError) as raised:
        prepare_btcv(str(tmp_path), output=str(output), split="random")
    assert any(p.startswith(f"{bad}: sform voxel axes 1 and 2 are not orthogonal") for p in raised.value.problems)
    assert not output.exists()


def test_an_analyze_file_is_refused_for_its_missing_orientation(tmp_path):
    from scripts.data.checks import check_image_label_pair

    path = str(tmp_path / "old.hdr")
    nib.save(nib.AnalyzeImage(np.full((8, 8, 4), 40, np.int16), np.diag([2.0, 2.0, 4.0, 1.0])), path)
    assert check_image_label_pair(path, None, 14) == [
        f"{path}: an Analyze 7.5 header defines no orientation or position of the voxels; convert it to NIfTI with the "
        "scanner geometry"
    ]
