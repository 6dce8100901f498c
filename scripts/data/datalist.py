"""
Datalist helpers shared by dataset preparation, training and evaluation: BTCV label names, checks of
image/label NIfTI pairs, case splits and atomic JSON writing.

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
import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from scripts.engine.atomic import atomic_output
from scripts.data.geometry import check_affine, check_nifti_geometry, nibabel_messages_named

__all__ = [
    "BTCV_LABELS",
    "PAPER_TRAIN_CASES",
    "PAPER_VAL_CASES",
    "SPLITS",
    "LABELLED_KEYS",
    "DataValidationError",
    "NonHUIntensityWarning",
    "check_image_values",
    "check_image_label_pair",
    "read_datalist",
    "load_datalist",
    "validate_datalist",
    "write_json_atomic",
    "split_cases",
    "describe_split",
    "make_datalist",
    "run_data_cli",
]

#: BTCV label index -> organ name (SPEC.md section 3). The single source of truth for label names.
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

#: The reference code's fixed BTCV split: train on cases 1-10 and 21-31, test on 32-40.
PAPER_TRAIN_CASES: tuple[int, ...] = tuple(range(1, 11)) + tuple(range(21, 32))
PAPER_VAL_CASES: tuple[int, ...] = tuple(range(32, 41))

SPLITS = ("paper", "random", "kfold")
#: datalist keys whose items are image/label pairs; items under other keys (``testing``) are images only
LABELLED_KEYS = ("training", "validation")

AFFINE_ATOL = 1e-3
#: an image counts as CT in Hounsfield units when its minimum is at most this (air is about -1000 HU; an
#: abdominal CT always shows air around the body and in the bowel) and its range spans at least HU_MIN_SPAN
HU_AIR_MAX = -500.0
HU_MIN_SPAN = 500.0
_MAX_LISTED_VALUES = 20
# what nibabel raises for missing, truncated or corrupt files
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError, MemoryError)


class DataValidationError(ValueError):
    """
    Raised when dataset files fail validation. The message lists every problem, one per line, each line
    starting with the file it concerns; the problems are also available as the list ``problems``.
    """

    def __init__(self, problems: Sequence[str], header: str = "dataset validation failed", footer: str = ""):
        self.problems = list(problems)
        files = {p.split(": ", 1)[0] for p in self.problems}
        lines = [f"{header}: {len(self.problems)} problem(s) in {len(files)} file(s):"]
        lines += [f"  {p}" for p in self.problems]
        if footer:
            lines.append(footer)
        super().__init__("\n".join(lines))


class NonHUIntensityWarning(UserWarning):
    """An image whose intensities do not look like CT in Hounsfield units (e.g. normalised to 0-1, or MR)."""


def _spatial_shape(shape: Sequence[int]) -> tuple[int, ...] | None:
    """The 3D shape of a NIfTI image, allowing a trailing singleton 4th dimension; None if not 3D."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    return shape if len(shape) == 3 else None


def _load_header(path: str, problems: list[str]) -> Any | None:
    """
    nibabel image (header only, data not read) or None, appending a problem when it cannot be opened. What
    nibabel reports while reading the header is re-issued as a warning naming the file.
    """
    if not os.path.isfile(path):
        problems.append(f"{path}: file not found")
        return None
    try:
        with nibabel_messages_named(path):
            return nib.load(path)
    except _READ_ERRORS as e:
        problems.append(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})")
        return None


def _check_geometry(img: Any, path: str) -> list[str]:
    """Problems of the header's voxel geometry (:mod:`scripts.data.geometry`); the voxel data is not read."""
    if isinstance(img, nib.Nifti1Pair):  # NIfTI-1 and NIfTI-2, single file or pair
        return check_nifti_geometry(img, path)
    if isinstance(img, nib.AnalyzeImage):  # Analyze 7.5 (.hdr/.img) stores voxel sizes but no orientation
        return [
            f"{path}: an Analyze 7.5 header defines no orientation or position of the voxels; convert it to NIfTI "
            "with the scanner geometry"
        ]
    return check_affine(img.affine, path)  # other formats nibabel reads: their affine is all there is to check


def _load_data(img: Any, path: str, problems: list[str]) -> np.ndarray | None:
    """The image's data array (scaling applied) or None, appending a problem for truncated/corrupt data."""
    try:
        return np.asanyarray(img.dataobj)
    except _READ_ERRORS as e:
        problems.append(f"{path}: unreadable or truncated data ({type(e).__name__}: {e})")
        return None


def _format_values(values: np.ndarray) -> str:
    listed = ", ".join(f"{v:g}" for v in values[:_MAX_LISTED_VALUES])
    more = len(values) - _MAX_LISTED_VALUES
    return listed + (f" (and {more} more)" if more > 0 else "")


def check_image_values(data: Any, path: str) -> list[str]:
    """
    Check the voxel values of an image: no NaN/Inf, not one constant value (e.g. all zeros), not empty. Warns
    (:class:`NonHUIntensityWarning`) when the values do not look like CT in Hounsfield units: the preprocessing
    clips to [hu_min, hu_max] and an image normalised to 0-1 would become one constant value.

    Args:
        data: the image array (any shape).
        path: the image file, for the messages.

    Returns:
        problem strings ``"<path>: <problem>"``; empty when the values are fine.
    """
    data = np.asanyarray(data)
    if data.size == 0:
        return [f"{path}: image is empty (shape {tuple(data.shape)})"]
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            return [f"{path}: image contains {n_bad} NaN/Inf voxel(s)"]
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        return [f"{path}: image is one constant value ({lo:g})"]
    if lo > HU_AIR_MAX or hi - lo < HU_MIN_SPAN:
        warnings.warn(
            f"{path}: intensities span [{lo:g}, {hi:g}], which does not look like CT in Hounsfield units (air is "
            "about -1000 HU, soft tissue 0-100 HU). The preprocessing clips HU to [hu_min, hu_max] and expects raw "
            "CT: check that this image is not normalised, rescaled or another modality.",
            NonHUIntensityWarning,
            stacklevel=2,
        )
    return []


def check_image_label_pair(image: str, label: str | None, num_classes: int) -> list[str]:
    """
    Check one image (and optionally its label) NIfTI file.

    Checks: the files exist and can be read completely (missing, truncated or corrupt files are reported,
    never raised); both headers define the voxel geometry (:func:`scripts.data.geometry.check_nifti_geometry`: voxel
    size, orientation and position; the voxel data of a file whose header fails is not read); both are 3D (a
    trailing singleton 4th dimension is allowed); image and label have the same shape and affine
    (``np.allclose``, ``atol=1e-3``); label values are integers in ``[0, num_classes - 1]``; the image has no
    NaN/Inf and is not one constant value; and a warning when the image does not look like CT in Hounsfield
    units (:func:`check_image_values`).

    Args:
        image: path of the image file.
        label: path of the label file, or None for an unlabelled (test) image.
        num_classes: number of label classes including background.

    Returns:
        problem strings, each ``"<file path>: <problem>"``; empty when the pair is fine.

    Examples::

        problems = check_image_label_pair("img0001.nii.gz", "label0001.nii.gz", num_classes=14)
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    problems: list[str] = []

    img = _load_header(image, problems)
    img_shape = None
    img_geometry: list[str] = []
    if img is not None:
        img_geometry = _check_geometry(img, image)
        problems += img_geometry
        img_shape = _spatial_shape(img.shape)
        if img_shape is None:
            problems.append(f"{image}: image is not 3D (shape {tuple(img.shape)}, {len(img.shape)}D)")
        data = None if img_geometry else _load_data(img, image, problems)
        if data is not None and img_shape is not None:
            problems += check_image_values(data, image)
        del data

    if label is None:
        return problems

    lbl = _load_header(label, problems)
    if lbl is None:
        return problems
    lbl_geometry = _check_geometry(lbl, label)
    problems += lbl_geometry
    lbl_shape = _spatial_shape(lbl.shape)
    if lbl_shape is None:
        problems.append(f"{label}: label is not 3D (shape {tuple(lbl.shape)}, {len(lbl.shape)}D)")
    if img is not None and img_shape is not None and lbl_shape is not None:
        # the affine of a refused header may be nibabel's fallback, comparing it would only add noise
        geometry_ok = not (img_geometry or lbl_geometry)
        if img_shape != lbl_shape:
            problems.append(f"{label}: label shape {lbl_shape} differs from image shape {img_shape} ({image})")
        elif geometry_ok and not np.allclose(img.affine, lbl.affine, atol=AFFINE_ATOL):
            diff = float(np.max(np.abs(np.asarray(img.affine) - np.asarray(lbl.affine))))
            problems.append(
                f"{label}: label affine differs from image affine (max abs difference {diff:.4g}) ({image})"
            )
    values = None if lbl_geometry else _load_data(lbl, label, problems)
    if values is not None and lbl_shape is not None:
        values = np.unique(values)
        if np.issubdtype(values.dtype, np.floating):
            not_int = values[~np.isfinite(values) | (values != np.round(values))]
            if not_int.size:
                problems.append(f"{label}: label has non-integer values: {_format_values(not_int)}")
            values = values[np.isfinite(values) & (values == np.round(values))]
        out = values[(values < 0) | (values > num_classes - 1)]
        if out.size:
            problems.append(
                f"{label}: label values outside [0, {num_classes - 1}] ({num_classes} classes): "
                f"{_format_values(out)}"
            )
    return problems


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
                "python -m scripts.data.prepare_btcv, python -m scripts.data.prepare_dataset or python -m scripts.data.synthetic)"
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


def write_json_atomic(data: Any, path: str, overwrite: bool = False, indent: int = 4) -> str:
    """
    Write ``data`` as JSON to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.
    A reader never sees a half-written file, and an interrupted write leaves any old file intact.

    Args:
        data: JSON-serialisable object.
        path: destination file; its folder is created if needed.
        overwrite: replace an existing file; otherwise an existing ``path`` raises ``FileExistsError``.
        indent: JSON indentation.

    Returns:
        the absolute path written.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; give the path of the JSON file to write.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite True) to replace it.")
    text = json.dumps(data, indent=indent) + "\n"  # serialise before creating any file
    with atomic_output(path) as temporary, open(temporary, "w") as f:
        f.write(text)
    return path


def split_cases(
    case_ids: Sequence[int],
    split: str = "paper",
    seed: int = 0,
    val_fraction: float = 0.3,
    num_folds: int = 5,
    fold: int = 0,
) -> tuple[list[int], list[int]]:
    """
    Split case ids into training and validation ids.

    Args:
        case_ids: unique case ids (BTCV case numbers for ``"paper"``).
        split: ``"paper"`` - the reference code's fixed BTCV split, train 1-10 and 21-31, validation
            (the paper's test set) 32-40; needs exactly these 30 case numbers.
            ``"random"`` - a seeded shuffle, ``round(val_fraction * n)`` (at least 1) cases held out.
            ``"kfold"`` - a seeded shuffle cut into ``num_folds`` near-equal folds; fold ``fold`` is held out.
        seed: random seed of ``"random"`` and ``"kfold"``.
        val_fraction: held-out fraction for ``"random"``, in (0, 1).
        num_folds: number of folds for ``"kfold"``, 2 <= num_folds <= number of cases.
        fold: held-out fold for ``"kfold"``, in [0, num_folds).

    Returns:
        (train_ids, val_ids), each sorted.

    Examples::

        train, val = split_cases(range(1, 13), split="kfold", num_folds=4, fold=1)
    """
    ids = [int(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        raise ValueError(f"case_ids must be unique, duplicated: {dup}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if split == "paper":
        missing = sorted(set(PAPER_TRAIN_CASES + PAPER_VAL_CASES) - set(ids))
        extra = sorted(set(ids) - set(PAPER_TRAIN_CASES + PAPER_VAL_CASES))
        if missing or extra:
            raise ValueError(
                "split='paper' is the fixed BTCV split (train cases 1-10 and 21-31, validation 32-40) and "
                f"needs exactly those 30 case numbers; missing: {missing}, unexpected: {extra}. "
                "Use split='random' or split='kfold' for other data."
            )
        return list(PAPER_TRAIN_CASES), list(PAPER_VAL_CASES)

    if len(ids) < 2:
        raise ValueError(f"split={split!r} needs at least 2 cases, got {len(ids)}.")
    order = sorted(ids)
    np.random.default_rng(int(seed)).shuffle(order)
    if split == "random":
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
        n_val = min(max(1, int(round(val_fraction * len(ids)))), len(ids) - 1)
        return sorted(order[n_val:]), sorted(order[:n_val])
    # kfold
    if int(num_folds) != num_folds or not 2 <= num_folds <= len(ids):
        raise ValueError(f"num_folds must be an integer in [2, {len(ids)}] (the number of cases), got {num_folds}.")
    if int(fold) != fold or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be an integer in [0, {int(num_folds) - 1}], got {fold}.")
    folds = np.array_split(np.asarray(order), int(num_folds))
    val = folds[int(fold)].tolist()
    held_out = set(val)
    train = [c for c in order if c not in held_out]
    return sorted(train), sorted(val)


def describe_split(split: str, seed: int, val_fraction: float, num_folds: int, fold: int) -> str:
    """How :func:`split_cases` split the cases, as the datalist's ``split`` entry records it."""
    if split == "paper":
        return "paper (train 1-10 and 21-31, validation 32-40)"
    if split == "random":
        return f"random (seed={seed}, val_fraction={val_fraction})"
    return f"kfold (seed={seed}, fold={fold} of {num_folds})"


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


def run_data_cli(component: Any, serialize: Any = None) -> None:
    """
    ``fire.Fire(component)`` for the data preparation commands: a problem with the user's data or files
    (:class:`DataValidationError`, an existing output, a missing input) is printed without a traceback and
    exits with status 2.
    """
    import sys

    import fire

    try:
        fire.Fire(component, serialize=serialize)
    except (DataValidationError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
