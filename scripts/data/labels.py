"""
The label tables of BTCV: the 14 classes of its labels (background and 13 organs) and the paper's 11-organ protocol,
which merges the kidneys and the adrenal glands. The single source of truth for these names: the configs read them
from here (config ids ``label_names``, ``merged_label_names``, ``merged_label_map``; ``num_classes`` is the length of
``label_names``), and ``configs/metadata.json`` spells them the same (a test compares them).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BTCV_LABELS",
    "BTCV_MERGED_LABELS",
    "BTCV_MERGED_LABEL_MAP",
    "config_labels",
]

#: BTCV label value -> organ name: the 13 organs of the Synapse multi-atlas labels, in their label order
BTCV_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right_kidney",
    3: "left_kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "portal_and_splenic_veins",
    11: "pancreas",
    12: "right_adrenal_gland",
    13: "left_adrenal_gland",
}

#: The paper's 11-organ protocol (kidneys and adrenal glands merged): merged label -> name, the order of the
#: ``classN`` columns (label N + 1) of the ``*_merged_raw.csv`` files written by ``configs/evaluate.json``.
BTCV_MERGED_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "kidneys",
    3: "gallbladder",
    4: "esophagus",
    5: "liver",
    6: "stomach",
    7: "aorta",
    8: "inferior_vena_cava",
    9: "portal_and_splenic_veins",
    10: "pancreas",
    11: "adrenal_glands",
}
#: label of ``BTCV_LABELS`` -> label of ``BTCV_MERGED_LABELS`` (config id ``merged_label_map``)
BTCV_MERGED_LABEL_MAP: tuple[int, ...] = (0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11)


def config_labels(table: Mapping[int, str]) -> dict[str, str]:
    """
    A label table as the configs hold it (ids ``label_names``, ``merged_label_names``): label value as a string ->
    name, the form of a JSON overlay such as ``configs/datasets/<name>.json``, which replaces it for another dataset.
    """
    return {str(value): name for value, name in sorted(table.items())}
