"""Organ subsets: names checked against the label table, other labels set to background."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.datalist import BTCV_LABELS
from scripts.organs import KeepOrgansd, select_organs

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
