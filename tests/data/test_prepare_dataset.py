"""Datalists of a user's own dataset: MSD / nnU-Net layouts, glob-matched pairs, and every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from scripts.data.checks import DataValidationError
from scripts.data.prepare_dataset import match_pairs, parse_msd_labels, prepare_folder, prepare_msd
from scripts.data.synthetic import generate_msd

from ..conftest import BUNDLE_ROOT

SHAPE = (48, 48, 16)


@pytest.fixture(scope="module")
def msd_source(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("msd") / "Task01_Synthetic")
    generate_msd(root, num_cases=4, num_test=1, shape=SHAPE, spacing=(1.5, 1.5, 4.5), seed=5)
    return root


@pytest.fixture
def msd(msd_source, tmp_path) -> str:
    """A private copy that a test may break."""
    return shutil.copytree(msd_source, tmp_path / "Task01_Synthetic")


def _spec(root) -> dict:
    with open(os.path.join(root, "dataset.json")) as f:
        return json.load(f)


def _write_spec(root, spec: dict) -> None:
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(spec, f)


def test_msd_layout_gives_a_datalist_relative_to_the_dataset(msd, tmp_path):
    output = prepare_msd(msd, output=str(tmp_path / "datalist.json"), seed=1, val_fraction=0.25)
    datalist = json.load(open(output))
    assert datalist["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert datalist["modality"] == {"0": "CT"} and datalist["dataset_dir"] == str(msd)
    assert (len(datalist["training"]), len(datalist["validation"])) == (3, 1)
    assert datalist["testing"] == [{"image": "imagesTs/case_005.nii.gz"}]
    cases = datalist["training"] + datalist["validation"]
    assert sorted(c["image"] for c in cases) == [f"imagesTr/case_00{i}.nii.gz" for i in range(1, 5)]
    assert all(c["label"] == c["image"].replace("imagesTr", "labelsTr") for c in cases)
    assert all(os.path.isfile(os.path.join(msd, c["image"])) for c in cases)


def test_nnunet_layout_pairs_channel_files_with_labels(tmp_path):
    root = tmp_path / "Dataset001_Synthetic"
    generate_msd(str(root), num_cases=3, shape=SHAPE, seed=2, nnunet=True)
    spec = _spec(root)
    assert spec["labels"] == {"background": 0, "liver": 1, "spleen": 2} and "training" not in spec
    datalist = json.load(
        open(prepare_msd(str(root), output=str(tmp_path / "d.json"), split="kfold", num_folds=3, fold=2))
    )
    items = datalist["training"] + datalist["validation"]
    assert len(datalist["validation"]) == 1 and len(items) == 3
    assert sorted((i["image"], i["label"]) for i in items) == [
        (f"imagesTr/case_00{c}_0000.nii.gz", f"labelsTr/case_00{c}.nii.gz") for c in (1, 2, 3)
    ]


def test_glob_patterns_pair_files_by_their_wildcards(msd, tmp_path):
    data = tmp_path / "plain"
    for sub in ("ct", "seg"):
        (data / sub).mkdir(parents=True)
    for case in (1, 2, 3):
        shutil.copy(os.path.join(msd, "imagesTr", f"case_00{case}.nii.gz"), data / "ct" / f"p{case}_img.nii.gz")
        shutil.copy(os.path.join(msd, "labelsTr", f"case_00{case}.nii.gz"), data / "seg" / f"p{case}_mask.nii.gz")
    pairs, problems = match_pairs(str(data / "ct" / "*_img.nii.gz"), str(data / "seg" / "*_mask.nii.gz"))
    assert problems == [] and sorted(pairs) == [("p1",), ("p2",), ("p3",)]
    assert pairs[("p2",)] == (str(data / "ct" / "p2_img.nii.gz"), str(data / "seg" / "p2_mask.nii.gz"))

    output = prepare_folder(
        str(data / "ct" / "*_img.nii.gz"),
        str(data / "seg" / "*_mask.nii.gz"),
        ["background", "liver", "spleen"],
        output=str(tmp_path / "datalist.json"),
    )
    datalist = json.load(open(output))
    assert datalist["dataset_dir"] == str(data) and datalist["labels"]["2"] == "spleen"
    assert {i["image"]: i["label"] for i in datalist["training"] + datalist["validation"]} == {
        f"ct/p{c}_img.nii.gz": f"seg/p{c}_mask.nii.gz" for c in (1, 2, 3)
    }

    shutil.copy(data / "ct" / "p1_img.nii.gz", data / "ct" / "p9_img.nii.gz")  # no label
    _, problems = match_pairs(str(data / "ct" / "*_img.nii.gz"), str(data / "seg" / "*_mask.nii.gz"))
    assert problems == [
        f"{data / 'ct' / 'p9_img.nii.gz'}: image without a label matching '{data / 'seg' / '*_mask.nii.gz'}'"
    ]
    with pytest.raises(ValueError, match="same wildcards"):
        match_pairs(str(data / "ct" / "*_img.nii.gz"), str(data / "seg" / "labels.nii.gz"))


def test_cli_writes_the_datalist(msd, tmp_path):
    output = tmp_path / "datalist.json"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.data.prepare_dataset", "msd", "--data_dir", str(msd), "--output", str(output)],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {output}: training 3, validation 1, testing 1 cases" in result.stdout
    assert json.load(open(output))["labels"]["1"] == "liver"


def test_cli_reports_bad_data_without_a_traceback(msd, tmp_path):
    spec = _spec(msd)
    spec["labels"] = {"0": "background", "1": "liver"}  # the files also hold 2 (spleen)
    _write_spec(msd, spec)
    output = tmp_path / "datalist.json"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.data.prepare_dataset", "msd", "--data_dir", str(msd), "--output", str(output)],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        f"{os.path.join(msd, 'labelsTr', 'case_001.nii.gz')}: label values outside [0, 1] (2 classes): 2"
        in result.stderr
    )
    assert not output.exists()


def test_label_maps_of_both_layouts_and_their_errors():
    assert parse_msd_labels({"0": "background", "1": "liver"}, "d.json") == {0: "background", 1: "liver"}
    assert parse_msd_labels({"background": 0, "tumour": 2, "liver": 1}, "d.json") == {
        0: "background",
        1: "liver",
        2: "tumour",
    }
    with pytest.raises(
        DataValidationError, match=r"d.json: label values \[0, 1, 5\] have gaps \(missing \[2, 3, 4\]\)"
    ):
        parse_msd_labels({"0": "background", "1": "liver", "5": "tumour"}, "d.json")
    with pytest.raises(DataValidationError, match="region-based labels"):
        parse_msd_labels({"background": 0, "whole": [1, 2]}, "d.json")
    with pytest.raises(DataValidationError, match="no background value 0"):
        parse_msd_labels({"1": "liver", "2": "tumour"}, "d.json")


def _fails(root, tmp_path, *expected: str, **kwargs) -> DataValidationError:
    """prepare_msd fails naming every expected fragment, and writes nothing."""
    output = tmp_path / "datalist.json"
    with pytest.raises(DataValidationError) as caught:
        prepare_msd(str(root), output=str(output), **kwargs)
    for fragment in expected:
        assert fragment in str(caught.value), str(caught.value)
    assert not output.exists()
    return caught.value


def test_label_value_not_declared_names_the_file(msd, tmp_path):
    path = os.path.join(msd, "labelsTr", "case_002.nii.gz")
    label = nib.load(path)
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(values, label.affine, label.header), path)
    error = _fails(
        msd, tmp_path, f"{path}: label values outside [0, 2] (3 classes): 7", "declares in 'labels' (0, 1, 2)"
    )
    assert len(error.problems) == 1


def test_declared_labels_with_gaps_are_refused(msd, tmp_path):
    spec = _spec(msd)
    spec["labels"] = {"0": "background", "1": "liver", "5": "spleen"}
    _write_spec(msd, spec)
    _fails(msd, tmp_path, "dataset.json: label values [0, 1, 5] have gaps", "renumber the classes consecutively")


def test_file_list_that_disagrees_with_the_folder(msd, tmp_path):
    os.remove(os.path.join(msd, "labelsTr", "case_003.nii.gz"))
    shutil.copy(os.path.join(msd, "imagesTr", "case_001.nii.gz"), os.path.join(msd, "imagesTr", "extra.nii.gz"))
    spec = _spec(msd)
    spec["numTraining"] = 9
    _write_spec(msd, spec)
    _fails(
        msd,
        tmp_path,
        f"{os.path.join(msd, 'labelsTr/case_003.nii.gz')}: listed in {os.path.join(msd, 'dataset.json')} but not found",
        f"{os.path.join(msd, 'imagesTr', 'extra.nii.gz')}: in imagesTr but not listed",
        "numTraining is 9 but 4 labelled case(s) were found",
    )


def test_multichannel_cases_for_a_one_channel_network(tmp_path):
    root = tmp_path / "Dataset002_TwoChannels"
    generate_msd(str(root), num_cases=3, shape=SHAPE, seed=2, nnunet=True)
    extra = root / "imagesTr" / "case_002_0001.nii.gz"
    shutil.copy(root / "imagesTr" / "case_002_0000.nii.gz", extra)
    _fails(
        root,
        tmp_path,
        f"{root / 'imagesTr' / 'case_002'}_*: 2 channel files (case_002_0000.nii.gz, case_002_0001.nii.gz)",
        "the network takes 1 channel(s)",
    )
    spec = _spec(root)
    spec["channel_names"] = {"0": "CT", "1": "PET"}
    _write_spec(root, spec)
    _fails(root, tmp_path, "2 input channel(s) declared (CT, PET) but the network takes 1")


def test_a_single_case_cannot_be_trained_on(tmp_path):
    root = tmp_path / "Task03_One"
    generate_msd(str(root), num_cases=1, shape=SHAPE, seed=4)
    _fails(root, tmp_path, "1 labelled case(s); training needs at least 2")


def test_mixed_modalities_are_reported_by_file(msd, tmp_path):
    odd = os.path.join(msd, "imagesTr", "case_004.nii.gz")
    image = nib.load(odd)
    mr_like = (np.asarray(image.dataobj, np.float32) + 1024.0) * 0.5  # positive, no air at -1000
    nib.save(nib.Nifti1Image(mr_like, image.affine), odd)
    _fails(msd, tmp_path, f"{odd}: the dataset is declared CT but this image is not in Hounsfield units")

    spec = _spec(msd)
    spec["modality"] = {"0": "MR"}  # declared MR: one MR image among three CT images is a mix
    _write_spec(msd, spec)
    error = _fails(msd, tmp_path, f"{odd}: mixed modalities: this image does not look like CT, unlike 4 other image(s)")
    assert len(error.problems) == 1
