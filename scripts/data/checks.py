"""
Checks of image/label NIfTI pairs (readable, 3D, matching geometry, integer labels in range, CT in Hounsfield units)
and how their problems reach the user: :class:`DataValidationError` lists every problem by file, and
:func:`run_data_cli` prints it without a traceback.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from scripts.data.geometry import check_affine, check_nifti_geometry, nibabel_messages_named

__all__ = [
    "AFFINE_ATOL",
    "HU_AIR_MAX",
    "HU_MIN_SPAN",
    "DataValidationError",
    "NonHUIntensityWarning",
    "check_image_values",
    "check_image_label_pair",
    "run_data_cli",
]

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
                f"{label}: label values outside [0, {num_classes - 1}] ({num_classes} classes): {_format_values(out)}"
            )
    return problems


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
