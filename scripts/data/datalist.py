"""
The datalist file: read it, load its items, check all its files at once, and assemble a new one.

A datalist is a MONAI decathlon-style JSON file whose paths are relative to the dataset folder, so that
``monai.data.load_decathlon_datalist(path, data_list_key="training", base_dir=dataset_dir)`` resolves them::

    {
        "description": "...",
        "labels": {"0": "background", "1": "spleen", ...},
        "split": "paper",
        "training": [{"image": "Training/img/img0001.nii.gz", "label": "Training/label/label0001.nii.gz"}, ...],
        "validation": [...],
        "testing": [{"image": "Testing/img/img0061.nii.gz"}, ...]
    }
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from scripts.data.checks import DataValidationError, check_image_label_pair
from scripts.data.labels import BTCV_LABELS

__all__ = [
    "LABELLED_KEYS",
    "read_datalist",
    "load_datalist",
    "validate_datalist",
    "make_datalist",
]

#: datalist keys whose items are image/label pairs; items under other keys (``testing``) are images only
LABELLED_KEYS = ("training", "validation")


def _resolve(path: str, base_dir: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def validate_datalist(
    datalist: Mapping | str,
    base_dir: str,
    keys: Sequence[str] = ("training", "validation"),
    num_classes: int = 14,
) -> None:
    """
    Check every file of a datalist with :func:`check_image_label_pair` and raise once with all problems.

    Items under :data:`LABELLED_KEYS` (``training``, ``validation``) are image/label pairs: one without a
    ``"label"`` is a problem (its image is still checked). Items under other keys (``testing``) are checked as
    images only. A missing, unreadable or empty datalist file, a key that is missing, empty or not a list, an
    item that is not a dict or has no ``"image"``, and an image listed under two keys (train/validation
    leakage) are problems too.

    Args:
        datalist: the datalist dict, or the path of a datalist JSON file.
        base_dir: folder that relative paths in the datalist are relative to.
        keys: datalist keys to check.
        num_classes: number of label classes including background.

    Raises:
        DataValidationError: listing every problem found.
    """
    source = base_dir
    if isinstance(datalist, (str, os.PathLike)):
        source = os.fspath(datalist)
        datalist = read_datalist(source)
    if isinstance(keys, str):
        keys = (keys,)
    problems: list[str] = []
    if not isinstance(datalist, Mapping) or not datalist:
        raise DataValidationError([f"{source}: datalist is empty or not a dict"])
    seen: dict[str, str] = {}
    for key in keys:
        items = datalist.get(key)
        if not isinstance(items, (list, tuple)) and items:  # a dict or a string would be iterated item by item
            problems.append(
                f"{source}: datalist['{key}'] must be a list of {{'image': ..., 'label': ...}} items, got a "
                f"{type(items).__name__}"
            )
            continue
        if not items:
            problems.append(f"{source}: datalist key '{key}' is missing or empty")
            continue
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                problems.append(f"{source}: datalist['{key}'][{i}] is not an {{'image': ...}} dict: {item!r}")
                continue
            if "image" not in item:
                problems.append(f"{source}: datalist['{key}'][{i}] has no 'image' entry: {item!r}")
                continue
            image = _resolve(str(item["image"]), base_dir)
            norm = os.path.normpath(os.path.abspath(image))
            if norm in seen and seen[norm] != key:
                problems.append(f"{image}: listed under both '{seen[norm]}' and '{key}'")
            seen.setdefault(norm, key)
            label = item.get("label")
            if label is None and key in LABELLED_KEYS:
                problems.append(
                    f"{source}: datalist['{key}'][{i}] (image {image}) has no 'label' entry; {key} items are "
                    "image/label pairs"
                )
            label = None if label is None else _resolve(str(label), base_dir)
            problems += check_image_label_pair(image, label, num_classes)
    if problems:
        raise DataValidationError(problems)


def read_datalist(path: str) -> Any:
    """
    Read a datalist JSON file, raising :class:`DataValidationError` naming the file when it is missing, is a
    folder, or is not valid JSON.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataValidationError(
            [
                f"{path}: datalist file not found (config ids 'data_list_file_path' and 'dataset_dir'; write one with "
                "python -m scripts.data.prepare_btcv, python -m scripts.data.prepare_dataset or "
                "python -m scripts.data.synthetic)"
            ]
        )
    if os.path.isdir(path):
        raise DataValidationError([f"{path}: is a folder, not a datalist JSON file (config id 'data_list_file_path')"])
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataValidationError([f"{path}: datalist is not valid JSON ({e})"]) from None


def load_datalist(path: str, key: str, base_dir: str) -> list[dict]:
    """
    The items under ``key`` of the datalist file ``path`` with absolute paths, as
    ``monai.data.load_decathlon_datalist(path, True, key, base_dir)`` gives them, raising
    :class:`DataValidationError` naming the file when it is missing, not JSON, empty or has no items under ``key``.

    The training config reads its data lists with this and checks the items in ``initialize``, so that lists given
    directly (``train#dataset#data``, as MONAI Label does) are checked the same way and need no datalist file.
    """
    from monai.data import load_decathlon_datalist

    datalist = read_datalist(path)
    if not isinstance(datalist, Mapping) or not datalist:
        raise DataValidationError([f"{path}: datalist is empty or not a dict"])
    if not datalist.get(key):
        raise DataValidationError([f"{path}: datalist key '{key}' is missing or empty"])
    return load_decathlon_datalist(path, True, key, base_dir=base_dir)


def make_datalist(
    training: Sequence[Mapping],
    validation: Sequence[Mapping],
    testing: Sequence[Mapping] = (),
    labels: Mapping[int, str] = BTCV_LABELS,
    description: str = "",
    split: str = "",
    modality: str = "CT",
) -> dict:
    """
    Assemble a decathlon-style datalist dict (paths as given; keep them relative to the dataset folder).

    Args:
        training: ``{"image": ..., "label": ...}`` items to train on.
        validation: held-out labelled items.
        testing: ``{"image": ...}`` items without labels.
        labels: label index -> name; written with string keys.
        description: free text.
        split: how training/validation were split, e.g. ``"paper"`` or ``"random (seed=0, val_fraction=0.3)"``.
        modality: the imaging modality of the single input channel, e.g. ``"CT"`` or ``"MR"``.
    """
    return {
        "description": description,
        "modality": {"0": modality},
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "split": split,
        "training": [dict(d) for d in training],
        "validation": [dict(d) for d in validation],
        "testing": [dict(d) for d in testing],
    }
