"""Organ subsets: names checked against the label table, other labels set to background."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.data.labels import BTCV_LABELS
from scripts.engine.organs import KeepOrgansd, select_organs

CONFIG_LABELS = {str(k): v for k, v in BTCV_LABELS.items()}  # the configs' JSON keys are strings


def test_select_organs_all_by_default():
    assert select_organs(CONFIG_LABELS) == {k: v for k, v in BTCV_LABELS.items() if k}
    assert select_organs(CONFIG_LABELS, []) == select_organs(CONFIG_LABELS, None)


def test_select_organs_by_name_in_label_order():
    assert select_organs(CONFIG_LABELS, ["liver", "spleen"]) == {1: "spleen", 6: "liver"}
    assert select_organs(CONFIG_LABELS, "liver, spleen") == {1: "spleen", 6: "liver"}


@pytest.mark.parametrize("organs", [["livr"], ["background"], ["liver", "Liver"]])
def test_select_organs_refuses_unknown_names_listing_valid_ones(organs):
    with pytest.raises(ValueError, match="valid names: spleen, right_kidney") as error:
        select_organs(CONFIG_LABELS, organs)
    assert organs[-1] in str(error.value)


def test_keep_organs_zeroes_other_labels_keeping_dtype_and_meta():
    labels = np.arange(14, dtype=np.uint8).reshape(1, 14, 1, 1)
    tensor = MetaTensor(torch.as_tensor(labels), affine=torch.diag(torch.tensor([2.0, 1.0, 3.0, 1.0])))
    out = KeepOrgansd(["pred", "array"], CONFIG_LABELS, ["liver", "spleen"])({"pred": tensor, "array": labels})
    expected = np.where(np.isin(labels, [1, 6]), labels, 0)
    np.testing.assert_array_equal(out["pred"].numpy(), expected)
    np.testing.assert_array_equal(out["array"], expected)
    assert out["pred"].dtype == torch.uint8 and out["array"].dtype == np.uint8
    assert torch.equal(out["pred"].affine, tensor.affine)


def test_keep_organs_without_subset_is_identity():
    labels = torch.arange(14, dtype=torch.uint8)
    assert KeepOrgansd("pred", CONFIG_LABELS)({"pred": labels})["pred"] is labels


# ---------------------------------------------------------------------------------------------------------------
# configs/inference.json: organs
# ---------------------------------------------------------------------------------------------------------------


def test_inference_writes_measures_and_draws_only_the_selected_organs():
    from monai.bundle import ConfigParser

    from scripts.reports.measurements import SaveMeasurementsd
    from scripts.reports.overlays import SaveOverlayd
    from tests.reliability.conftest import config_paths

    parser = ConfigParser()
    parser.read_config(config_paths("inference.json"))
    parser["organs"] = ["liver", "spleen"]
    transforms = parser.get_parsed_content("postprocessing").transforms
    assert type(transforms[0]) is KeepOrgansd and transforms[0].keys == ("pred",) and transforms[0].labels == [1, 6]
    assert type(transforms[1]).__name__ == "SaveImaged"  # the label map is filtered before it is written
    drawn = [t for t in transforms if isinstance(t, (SaveOverlayd, SaveMeasurementsd))]
    assert len(drawn) == 2 and all(t.label_names == {1: "spleen", 6: "liver"} for t in drawn)
    parser["organs"] = None
    transforms = parser.get_parsed_content("postprocessing", lazy=False).transforms
    drawn = [t for t in transforms if isinstance(t, (SaveOverlayd, SaveMeasurementsd))]
    assert transforms[0].all_organs and all(t.label_names == {k: v for k, v in BTCV_LABELS.items() if k} for t in drawn)


def test_inference_refuses_unknown_organs_before_the_network_runs(tmp_path):
    from tests.reliability.conftest import ct_image, root_cause, workflow, write_nifti

    write_nifti(tmp_path / "in" / "a.nii.gz", ct_image())
    flow = workflow(
        ["inference.json", "demo.json"],
        "infer",
        organs=["liver", "livr"],
        dataset_dir=str(tmp_path / "in"),
        output_dir=str(tmp_path / "out"),
        ckpt_path=str(tmp_path / "missing.pt"),
    )
    with pytest.raises(Exception) as error:
        flow.initialize()  # refused before the checkpoint (missing here) is even looked at
    message = str(root_cause(error.value))
    assert "config id 'organs': ['livr'] not in the label table" in message
    assert message.endswith("valid names: " + ", ".join(v for k, v in BTCV_LABELS.items() if k) + ".")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "organs, valid",
    [
        (None, True),
        ([], True),
        (["liver"], True),
        ("liver, spleen", True),
        ("liver", True),
        (5, False),
        ([""], False),
        (["liver", 6], False),
    ],
)
def test_config_check_of_organs(organs, valid):
    from scripts.engine.config_check import ConfigValueError, check_config

    if valid:
        check_config({"organs": organs})
    else:
        with pytest.raises(ConfigValueError, match="config id 'organs' must be null"):
            check_config({"organs": organs})
