"""Tests of ``scripts/data/labels.py``: one label table for the configs, the metadata and the reports."""

from __future__ import annotations

import json
import os

import pytest
from monai.bundle import ConfigParser

from scripts.data.labels import BTCV_LABELS, BTCV_MERGED_LABEL_MAP, BTCV_MERGED_LABELS, config_labels
from tests.conftest import BUNDLE_ROOT

CONFIGS = os.path.join(BUNDLE_ROOT, "configs")
#: the organs the paper's 11-organ protocol merges, by the merged name
MERGED_PAIRS = {
    "kidneys": ("right_kidney", "left_kidney"),
    "adrenal_glands": ("right_adrenal_gland", "left_adrenal_gland"),
}


def _parsed(*configs: str, overlay: dict | None = None) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, c) for c in configs])
    for key, value in (overlay or {}).items():
        parser[key] = value
    return parser


def test_config_labels_has_string_keys_in_label_order():
    assert config_labels({2: "b", 0: "a"}) == {"0": "a", "2": "b"}


def test_labels_constant():
    assert list(BTCV_LABELS) == list(range(14))
    assert BTCV_LABELS[0] == "background" and BTCV_LABELS[1] == "spleen" and BTCV_LABELS[6] == "liver"
    assert BTCV_LABELS[10] == "portal_and_splenic_veins" and BTCV_LABELS[13] == "left_adrenal_gland"
    assert all(name == name.lower() and " " not in name for name in BTCV_LABELS.values())


def test_merge_map_follows_the_names():
    """Every organ maps to the merged class of its own name, or of the pair it belongs to."""
    assert len(BTCV_MERGED_LABEL_MAP) == len(BTCV_LABELS)
    assert sorted(set(BTCV_MERGED_LABEL_MAP)) == list(BTCV_MERGED_LABELS)
    member_of = {organ: merged for merged, pair in MERGED_PAIRS.items() for organ in pair}
    for label, name in BTCV_LABELS.items():
        assert BTCV_MERGED_LABELS[BTCV_MERGED_LABEL_MAP[label]] == member_of.get(name, name), name


@pytest.mark.parametrize("configs", [["train.json"], ["inference.json"], ["train.json", "evaluate.json"]])
def test_configs_read_the_tables_and_derive_num_classes(configs):
    parser = _parsed(*configs)
    assert parser.get_parsed_content("label_names") == {str(k): v for k, v in BTCV_LABELS.items()}
    assert parser.get_parsed_content("num_classes") == 14
    assert parser.get_parsed_content("network_def").decoder.final_head.out_channels == 14
    if "evaluate.json" in configs:
        assert parser.get_parsed_content("merged_label_names") == {str(k): v for k, v in BTCV_MERGED_LABELS.items()}
        assert parser.get_parsed_content("merged_label_map") == list(BTCV_MERGED_LABEL_MAP)


def test_an_overlay_of_label_names_sets_num_classes():
    """Own datasets replace ``label_names`` (configs/datasets/<name>.json); ``num_classes`` follows it."""
    names = {"0": "background", "1": "liver", "2": "tumour"}
    for configs in (["train.json"], ["inference.json"]):
        parser = _parsed(*configs, overlay={"label_names": names})
        assert parser.get_parsed_content("num_classes") == 3
        assert parser.get_parsed_content("network_def").decoder.final_head.out_channels == 3


def test_metadata_and_btcv_overlay_spell_the_names_of_the_table():
    metadata = json.load(open(os.path.join(CONFIGS, "metadata.json")))
    pred = metadata["network_data_format"]["outputs"]["pred"]
    names = {str(k): v for k, v in BTCV_LABELS.items()}
    assert pred["channel_def"] == names and pred["num_channels"] == len(BTCV_LABELS)
    assert metadata["label_classes"] == ", ".join(f"{k} {v}" for k, v in BTCV_LABELS.items())
    parser = _parsed("train.json", "evaluate.json", "datasets/btcv.json")
    assert parser.get_parsed_content("label_names") == {str(k): v for k, v in BTCV_LABELS.items()}
    assert parser.get_parsed_content("merged_label_names") == {str(k): v for k, v in BTCV_MERGED_LABELS.items()}
