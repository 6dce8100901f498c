"""
Checks that an image header defines its voxel geometry: the voxel size, orientation and position that resampling
(``Spacingd``, ``Orientationd``) and the saved segmentations rely on. A header that leaves any of them undefined
or contradictory is refused with a message naming the file and the header field, never repaired by a guess.

nibabel repairs some header fields while reading a file (a zero voxel size becomes 1, a negative one its absolute
value, an invalid ``qform_code``/``sform_code`` becomes 0) and only logs that it did, unnamed, to stderr.
:func:`check_nifti_geometry` therefore checks the header as stored in the file, and :func:`nibabel_messages_named`
turns nibabel's messages into :class:`NiftiHeaderWarning` warnings that name the file.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

__all__ = [
    "MIN_SPACING_MM",
    "MAX_SPACING_MM",
    "ORTHOGONALITY_TOL_RAD",
    "SINGULAR_TOL",
    "XFORM_AXIS_RTOL",
    "XFORM_ORIGIN_ATOL_MM",
    "NiftiHeaderWarning",
    "nibabel_messages_named",
    "check_affine",
    "check_nifti_geometry",
]

#: accepted voxel size range in mm: CT and MR voxels are 0.1-10 mm; a size outside this range is a unit or
#: header error (micrometres or metres written as mm, a placeholder value)
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 50.0
#: largest deviation from 90 degrees between two voxel axes; rounding in DICOM-to-NIfTI conversion stays far
#: below it, a gantry tilt of even 0.1 degrees exceeds it
ORTHOGONALITY_TOL_RAD = 1e-3
#: an affine whose unit-length axes span less than this volume (|det|) is treated as singular
SINGULAR_TOL = 1e-6
#: qform and sform disagree when a voxel axis (a column, voxel size included) differs by more than this relative
#: amount, or the origins by more than XFORM_ORIGIN_ATOL_MM; the qform is stored as float32 quaternions
#: (about 1e-7 relative), so agreeing forms stay well within both
XFORM_AXIS_RTOL = 1e-3
XFORM_ORIGIN_ATOL_MM = 0.01

# NIfTI spatial units (the low 3 bits of xyzt_units); "unknown" is what most writers leave and is read as mm
_SPATIAL_UNITS = {0: "unknown", 1: "meter", 2: "mm", 3: "micron"}
_MM_UNITS = ("unknown", "mm")
_VALID_XFORM_CODES = tuple(nib.nifti1.xform_codes.value_set("code"))
# what re-reading a header that nibabel has just read can still raise
_HEADER_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, HeaderDataError)


class NiftiHeaderWarning(UserWarning):
    """A message nibabel gave while reading a header (e.g. a field it repaired), re-issued naming the file."""


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def nibabel_messages_named(path: str) -> Iterator[None]:
    """
    Collect what nibabel logs (its header repairs go to the ``nibabel.global`` logger and on to stderr) and the
    warnings it raises inside the block, and re-issue each as a :class:`NiftiHeaderWarning` ``"<path>: nibabel:
    <message>"`` when the block ends without an error; an error names the file through its caller.

    Examples::

        with nibabel_messages_named(path):
            img = nib.load(path)
    """
    logger = nib.imageglobals.logger
    collector = _Collector()
    handlers, propagate = list(logger.handlers), logger.propagate
    for handler in handlers:
        logger.removeHandler(handler)
    logger.addHandler(collector)
    logger.propagate = False  # a configured root logger would print the message unnamed too
    try:
        with warnings.catch_warnings(record=True) as caught:  # the filters in force still apply
            yield
    finally:
        logger.removeHandler(collector)
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = propagate
    for message in collector.messages + [str(w.message) for w in caught]:
        warnings.warn(f"{path}: nibabel: {message}", NiftiHeaderWarning, stacklevel=3)


def check_affine(
    affine: np.ndarray,
    path: str,
    source: str = "affine",
    spacing_range: tuple[float, float] | None = (MIN_SPACING_MM, MAX_SPACING_MM),
) -> list[str]:
    """
    Check a voxel-to-world affine from any reader: 4x4 with bottom row ``[0, 0, 0, 1]``, finite, no zero-length
    column, voxel sizes (the column lengths) within ``spacing_range`` mm, invertible, and orthogonal voxel axes
    (within :data:`ORTHOGONALITY_TOL_RAD`).

    Args:
        affine: the 4x4 voxel-to-world matrix (mm).
        path: the image file or DICOM series folder, for the messages.
        source: the header field the affine comes from, for the messages, e.g. ``"sform"``.
        spacing_range: accepted (min, max) voxel size in mm; None skips this check.

    Returns:
        problem strings ``"<path>: <problem>"``; empty when the affine defines a usable grid.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        return [f"{path}: {source} is not a 4x4 matrix (shape {affine.shape})"]
    if not np.all(np.isfinite(affine)):
        return [f"{path}: {source} has NaN/Inf entries, so the voxel positions are undefined"]
    if not np.allclose(affine[3], (0.0, 0.0, 0.0, 1.0)):
        return [f"{path}: {source} bottom row is {affine[3].tolist()}, not [0, 0, 0, 1]"]
    axes = affine[:3, :3]
    sizes = np.linalg.norm(axes, axis=0)
    zero = [i for i in range(3) if sizes[i] == 0]
    if zero:
        return [
            f"{path}: {source} column {i} has zero length: voxel axis {i} has no extent (degenerate affine)"
            for i in zero
        ]
    problems = []
    if spacing_range is not None:
        low, high = spacing_range
        problems += [
            f"{path}: {source} voxel size along axis {i} is {sizes[i]:g} mm, outside the accepted {low:g}..{high:g} mm"
            for i in range(3)
            if not low <= sizes[i] <= high
        ]
    directions = axes / sizes
    det = abs(float(np.linalg.det(directions)))
    if det < SINGULAR_TOL:
        return problems + [
            f"{path}: {source} is singular (not invertible): its voxel axes are (nearly) parallel "
            f"(|det| of the unit axes {det:.3g})"
        ]
    cosines = np.abs(directions.T @ directions)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        deviation = float(np.arcsin(min(1.0, cosines[i, j])))
        if deviation > ORTHOGONALITY_TOL_RAD:
            problems.append(
                f"{path}: {source} voxel axes {i} and {j} are not orthogonal ({90 - np.degrees(deviation):.3f} "
                f"degrees apart, tolerance {np.degrees(ORTHOGONALITY_TOL_RAD):.3f}): the grid is sheared, e.g. by "
                "CT gantry tilt; resample the image to an orthogonal grid first"
            )
    return problems


def _header_as_stored(img: nib.Nifti1Pair, path: str, problems: list[str]) -> nib.Nifti1Header | None:
    """The header as the file stores it (before nibabel's repairs), ``img.header`` for an image not read from a file."""
    holder = img.file_map.get("header", img.file_map.get("image"))
    if holder is None or (holder.filename is None and holder.fileobj is None):
        return img.header
    try:
        with holder.get_prepare_fileobj(mode="rb") as f:
            return type(img.header).from_fileobj(f, check=False)
    except _HEADER_READ_ERRORS as e:
        problems.append(f"{path}: unreadable NIfTI header ({type(e).__name__}: {e})")
        return None


def _check_xform_agreement(img: nib.Nifti1Pair, path: str) -> list[str]:
    """The qform and sform (both coded) must describe the same grid: nibabel uses the sform, other tools the qform."""
    try:
        qform = img.get_qform()
    except (HeaderDataError, ValueError) as e:  # nibabel refuses quaternions that are not a rotation
        return [f"{path}: qform (quatern_b/c/d) is not a valid rotation ({e})"]
    if not np.all(np.isfinite(qform)):
        return [f"{path}: qform has NaN/Inf entries (quatern_b/c/d or qoffset_x/y/z), so it defines no grid"]
    sform = img.get_sform()
    if not np.all(np.isfinite(sform)):
        return []  # check_affine has refused the sform
    axis_diff = np.linalg.norm(qform[:3, :3] - sform[:3, :3], axis=0) / np.linalg.norm(sform[:3, :3], axis=0)
    origin_diff = float(np.linalg.norm(qform[:3, 3] - sform[:3, 3]))
    if np.all(axis_diff <= XFORM_AXIS_RTOL) and origin_diff <= XFORM_ORIGIN_ATOL_MM:
        return []
    codes = f"qform_code {int(img.header['qform_code'])}, sform_code {int(img.header['sform_code'])}"
    return [
        f"{path}: qform and sform ({codes}) disagree: voxel axes differ by up to {float(np.max(axis_diff)):.3g} "
        f"(relative, tolerance {XFORM_AXIS_RTOL:g}) and origins by {origin_diff:.3g} mm (tolerance "
        f"{XFORM_ORIGIN_ATOL_MM:g} mm); nibabel and MONAI use the sform, other tools may use the qform. Make them "
        "agree, or set the code of the wrong one to 0"
    ]


def check_nifti_geometry(img: nib.Nifti1Image | nib.Nifti2Image, path: str) -> list[str]:
    """
    Check that a NIfTI header defines the voxel geometry, as the file stores it (nibabel's repairs on reading are
    not trusted). Refused, each naming the field: a ``qform_code``/``sform_code`` that is not a NIfTI code, both
    codes 0 (orientation unknown), a voxel size ``pixdim[1..3]`` that is not finite, not positive or outside
    [:data:`MIN_SPACING_MM`, :data:`MAX_SPACING_MM`], a spatial unit (``xyzt_units``) other than mm or unknown, a
    complex or structured (RGB) ``datatype``, an affine that :func:`check_affine` refuses, and a qform and sform
    that describe different grids. The header is read only, never the voxel data.

    Args:
        img: the image as ``nib.load`` returns it (a ``Nifti1Pair`` or ``Nifti2Pair`` works too).
        path: the image file, for the messages.

    Returns:
        problem strings ``"<path>: <problem>"``; empty when the geometry is defined.

    Examples::

        with nibabel_messages_named(path):
            img = nib.load(path)
        problems = check_nifti_geometry(img, path)
    """
    problems: list[str] = []
    stored = _header_as_stored(img, path, problems)
    if stored is None:
        return problems

    codes = {}
    for field in ("qform_code", "sform_code"):
        code = int(stored[field])
        if code not in _VALID_XFORM_CODES:
            form = field.split("_")[0]
            problems.append(
                f"{path}: {field} {code} is not a NIfTI xform code {list(_VALID_XFORM_CODES)}; nibabel ignores the "
                f"{form} then"
            )
            code = 0
        codes[field] = code
    if codes["qform_code"] == 0 and codes["sform_code"] == 0:
        problems.append(
            f"{path}: qform_code and sform_code are both 0 (unknown): the header does not define the orientation "
            "or position of the voxels (nibabel would fall back to an affine from pixdim alone); write the file "
            "with its scanner geometry (sform/qform code 1)"
        )

    unit = _SPATIAL_UNITS.get(int(stored["xyzt_units"]) & 0x07, f"code {int(stored['xyzt_units']) & 0x07}")
    if unit not in _MM_UNITS:
        problems.append(
            f"{path}: xyzt_units gives the spatial unit as '{unit}', not mm; voxel sizes and positions are read as "
            "mm: convert pixdim and the sform/qform to mm and set xyzt_units to mm"
        )

    pixdim_ok = True
    for axis, size in enumerate(np.asarray(stored["pixdim"][1:4], dtype=np.float64)):
        field = f"pixdim[{axis + 1}] (voxel size along axis {axis})"
        if not np.isfinite(size) or size <= 0:
            pixdim_ok = False
            problems.append(
                f"{path}: {field} is {size:g}; voxel sizes must be finite and positive (nibabel would silently "
                "read 0 as 1 and a negative size as its absolute value)"
            )
        elif unit in _MM_UNITS and not MIN_SPACING_MM <= size <= MAX_SPACING_MM:
            problems.append(
                f"{path}: {field} is {size:g} mm, outside the accepted {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm"
            )

    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf":
        kind = {"c": "complex", "V": "structured, e.g. RGB"}.get(dtype.kind, f"numpy kind {dtype.kind!r}")
        problems.append(
            f"{path}: datatype {img.header.get_value_label('datatype')!r} ({kind}) cannot be an intensity image or "
            "label; store real values (e.g. int16 HU, uint8 labels)"
        )

    if codes["qform_code"] == 0 and codes["sform_code"] == 0:
        return problems
    # the affine nibabel (and MONAI) use: the sform when coded, else the qform, whose voxel sizes pixdim holds
    affine = img.affine if img.affine is not None else img.header.get_best_affine()
    if codes["sform_code"] > 0:
        spacing_range = (MIN_SPACING_MM, MAX_SPACING_MM) if unit in _MM_UNITS else None  # else xyzt_units says why
        problems += check_affine(affine, path, "sform", spacing_range)
    elif pixdim_ok:  # the qform's voxel sizes are pixdim, refused above when bad
        problems += check_affine(affine, path, "qform", spacing_range=None)
    if codes["qform_code"] > 0 and codes["sform_code"] > 0 and pixdim_ok:
        problems += _check_xform_agreement(img, path)
    return problems
