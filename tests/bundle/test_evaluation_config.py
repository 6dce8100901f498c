"""Evaluation ids checked before any data, checkpoint or network is touched; the real CLI with an organ subset."""

from __future__ import annotations

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts.engine.config_check import ConfigValueError
from tests.engine.test_metrics import _reference_dice, _reference_hd95, _reference_nsd
from tests.reliability.conftest import config_paths, root_cause, run_bundle, workflow

EVALUATE = ["train.json", "evaluate.json", "demo.json"]


def _refusal(tmp_path, **overrides) -> BaseException:
    nothing = str(tmp_path / "nothing")  # no data, no checkpoint: the refusal must come first
    paths = {"dataset_dir": nothing, "ckpt_dir": nothing, "output_dir": str(tmp_path / "eval")}
    flow = workflow(EVALUATE, "eval", **paths, **overrides)
    with pytest.raises(Exception) as raised:
        flow.initialize()
    assert not (tmp_path / "eval").exists()
    return root_cause(raised.value)


def test_unknown_organ_is_refused_with_the_valid_names(tmp_path):
    error = _refusal(tmp_path, organs=["livr", "spleen"])
    assert isinstance(error, ValueError) and "config id 'organs': ['livr']" in str(error)
    assert "valid names: spleen, right_kidney, left_kidney" in str(error) and "kidneys, adrenal_glands" in str(error)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"surface_dice_tolerance_mm": {"default": 2.0, "pancreass": 5.0}}, "['pancreass'], not in the label table"),
        ({"surface_dice_tolerance_mm": {"liver": 2.0}}, "no tolerance for ['spleen', 'right_kidney'"),
    ],
)
def test_surface_dice_tolerances_are_checked_per_organ(tmp_path, overrides, expected):
    error = _refusal(tmp_path, **overrides)
    assert isinstance(error, ValueError) and expected in str(error)


@pytest.mark.parametrize(
    "key, value",
    [
        ("hd_percentile", 0),
        ("hd_percentile", 101),
        ("surface_dice_tolerance_mm", "3 mm"),
        ("surface_dice_tolerance_mm", {"liver": -1.0}),
        ("organs", [3]),
    ],
)
def test_config_check_names_the_bad_evaluation_id(tmp_path, key, value):
    error = _refusal(tmp_path, **{key: value})
    assert isinstance(error, ConfigValueError) and f"config id '{key}'" in str(error)


@pytest.mark.slow
def test_cli_evaluation_of_an_organ_subset(synthetic_study, tmp_path):
    """``--organs`` through ``python -m monai.bundle run evaluating`` (random demo weights: the values are checked,
    not the model): only the chosen organs are reported, each value as numpy computes it from the saved files."""
    parser = ConfigParser()
    parser.read_config(config_paths("train.json", "demo.json"))
    torch.manual_seed(0)
    os.makedirs(tmp_path / "models")
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    output = tmp_path / "eval"
    result = run_bundle(
        "run",
        "evaluating",
        "--config_file",
        str(config_paths(*EVALUATE)),
        "--dataset_dir",
        synthetic_study,
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(output),
        "--organs",
        "['liver','kidneys']",
        "--surface_dice_tolerance_mm#liver",
        "4.0",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "13 organs: Dice" in result.stdout + result.stderr
    with open(output / "report" / "per_case_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    organs = {2: "right kidney", 3: "left kidney", 6: "liver"}
    assert [c for c in rows[0] if c.startswith("status_")] == [f"status_13/{o}" for o in organs.values()] + [
        "status_11/kidneys",
        "status_11/liver",
    ]
    validation = json.load(open(os.path.join(synthetic_study, "datalist.json")))["validation"]
    assert len(rows) == len(validation)
    for row, case in zip(rows, validation):
        label = nib.load(os.path.join(synthetic_study, case["label"]))
        reference, spacing = np.asarray(label.dataobj), np.array(label.header.get_zooms()[:3])
        prediction = np.asarray(nib.load(output / "segmentations" / f"{row['case']}_seg.nii.gz").dataobj)
        for value, name in organs.items():
            p, t = prediction == value, reference == value
            tolerance = 4.0 if name == "liver" else 3.0
            assert float(row[f"dice_13/{name}"]) == pytest.approx(_reference_dice(p, t), abs=1e-4, nan_ok=True)
            assert float(row[f"hd95_13/{name}"]) == pytest.approx(_reference_hd95(p, t, spacing), abs=1e-3, nan_ok=True)
            nsd = _reference_nsd(p, t, spacing, tolerance)
            assert float(row[f"nsd_13/{name}"]) == pytest.approx(nsd, abs=1e-4, nan_ok=True)
