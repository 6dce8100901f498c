"""
Checked DICOM series: scan the headers of a folder's files, group them into image series, check each series'
geometry and read a checked series as a volume with its RAS affine, as MONAI's readers give it.

MONAI's ``LoadImage`` reads a DICOM folder with ITK/GDCM, which resamples a series with a missing slice onto a
uniform grid, picks one of several series without saying which and prints to the console. Here a series with a
gap, a tilt, duplicate or mixed slices is refused with a message naming the folder, the series UID and the
files, and every file that is not used is reported with the reason.

A folder is scanned without its subfolders (they are reported as unused): one folder per series, or per study,
is the common export, and a folder is then one case.

A series reference, the string a dataset item gives as its image, is either

    - ``"<folder>"``: the folder's only image series (refused when it holds none or several), or
    - ``"<folder>/<series name>"`` or ``"<folder>/<SeriesInstanceUID>"``: one of several series, ``name`` as
      :py:func:`find_series` gives it (``DicomSeries.reference`` is the reference to use).

A reference is a path (``LoadImage`` passes it through ``pathlib.Path``), and MONAI's ``SaveImage`` names
outputs after its last part: the folder's name, or the series name such as ``case1_series3``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys, ensure_tuple
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, MediaStorageDirectoryStorage

__all__ = [
    "DicomSeries",
    "DicomSeriesError",
    "DicomSeriesReader",
    "is_dicom_file",
    "find_series",
    "resolve_series",
    "read_series",
    "read_series_reference",
    "header_floats",
    "LPS_TO_RAS",
]

logger = logging.getLogger(__name__)

#: a slice step may differ from the median step by this fraction of it, or by SLICE_STEP_TOLERANCE_MM if larger
SLICE_STEP_TOLERANCE_FRACTION = 0.01
SLICE_STEP_TOLERANCE_MM = 0.01
#: largest angle between a slice's offset from the first slice and the row x column normal (gantry tilt)
TILT_TOLERANCE_DEGREES = 0.05
#: ImageOrientationPatient: unit length and orthogonality, and equality between files, within this
ORIENTATION_TOLERANCE = 1e-3
#: PixelSpacing equality between files (mm)
PIXEL_SPACING_TOLERANCE_MM = 1e-4
#: a voxel spacing outside this range (mm) is a broken header, not a CT
SPACING_RANGE_MM = (0.01, 50.0)
#: a 3D volume needs at least this many slices
MIN_SLICES = 2
#: at most this many unused files are listed in an error message
MAX_LISTED = 5
#: a DICOM file (PS3.10) starts with a 128-byte preamble and these 4 bytes
_PREAMBLE_SIZE, _MAGIC = 128, b"DICM"

#: the tags a slice's place in the volume is computed from, with their number of values
_GEOMETRY_TAGS = {"Rows": 1, "Columns": 1, "PixelSpacing": 2, "ImageOrientationPatient": 6, "ImagePositionPatient": 3}
#: tags that must be equal in all files of a series, with the tolerance of the comparison
_UNIFORM_TAGS = {"Rows": 0.0, "Columns": 0.0, "PixelSpacing": PIXEL_SPACING_TOLERANCE_MM,
                 "ImageOrientationPatient": ORIENTATION_TOLERANCE}  # fmt: skip
#: DICOM patient coordinates are LPS, MONAI's are RAS
#: DICOM patient coordinates (LPS) to RAS
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class DicomSeriesError(ValueError):
    """A DICOM series that is refused or cannot be read; the problems, one a line, are also ``problems``."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class DicomSeries:
    """
    One image series of a folder, checked. ``problems`` lists why it is refused (empty: it can be read),
    ``warnings`` what is worth knowing but does not stop it. ``shape`` (columns, rows, slices), ``spacing`` (mm,
    same order) and the 4x4 RAS ``affine`` of the (X=columns, Y=rows, Z=slices) volume are set when there
    are no problems. ``files`` are sorted along the slice normal (row x column direction).
    """

    folder: str
    series_uid: str
    name: str
    reference: str
    description: str
    files: list[str]
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def shown(self) -> str:
        """How messages name the series; each of ``problems`` starts with it and ``": "``."""
        return f"DICOM series {self.series_uid} in {self.folder}"


def is_dicom_file(path: str) -> bool:
    """Whether ``path`` is a file with the DICOM preamble, as ``dcmread(force=False)`` needs (132 bytes read)."""
    try:
        with open(path, "rb") as f:
            return f.read(_PREAMBLE_SIZE + len(_MAGIC))[_PREAMBLE_SIZE:] == _MAGIC
    except OSError:
        return False


def header_floats(ds: Dataset, keyword: str) -> np.ndarray | None:
    """The numeric value(s) of ``keyword`` as a flat float array; None when missing, empty or not numbers."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        return None


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _instance(ds: Dataset) -> str:
    return str(ds.get("InstanceNumber", "?"))


def _read_header(path: str) -> tuple[Dataset | None, str, list[str]]:
    """``(header, reason it is not used or "", pydicom's warnings)`` of one file, pixel data not read."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # pydicom warns about odd values: kept as series warnings, not printed
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
        except InvalidDicomError:
            return None, "not a DICOM file (no DICOM file preamble and meta information)", []
        except Exception as error:  # noqa: BLE001 - any unreadable file is reported, not raised
            return None, f"unreadable DICOM header ({type(error).__name__}: {error})", []
    notes = [f"{path}: pydicom: {w.message}" for w in caught]
    sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if sop_class == MediaStorageDirectoryStorage or os.path.basename(path).upper() == "DICOMDIR":
        return None, "a DICOMDIR (the index of a DICOM medium), not an image", notes
    if not sop_class:
        return None, "no SOPClassUID (0008,0016): cannot tell what kind of object it is", notes
    kind = UID(sop_class).name  # the UID itself when pydicom does not know it
    if "Image Storage" not in kind:
        kind = "an unknown SOP class" if kind == str(sop_class) else kind
        return None, f"not an image: {kind} ({sop_class}); SEG, RTSTRUCT, SR and other non-images are not read", notes
    if not ds.get("SeriesInstanceUID"):
        return None, "no SeriesInstanceUID (0020,000E): cannot tell which series it belongs to", notes
    image_type = "\\".join(str(v).upper() for v in ensure_tuple(ds.get("ImageType", ())))
    if "LOCALIZER" in image_type.split("\\"):
        return None, f"a localizer/scout image (ImageType {image_type})", notes
    return ds, "", notes


def _normal(ds: Dataset) -> np.ndarray | None:
    iop = header_floats(ds, "ImageOrientationPatient")
    return None if iop is None or iop.size != 6 else np.cross(iop[:3], iop[3:])


def _check_series(series: DicomSeries, headers: list[Dataset]) -> None:
    """Fill ``series``' problems, warnings and, when there are no problems, its files' order and geometry."""
    where, n = series.shown, len(headers)
    multi_frame = [
        (p, ds) for p, ds in zip(series.files, headers)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "Enhanced" in UID(ds.SOPClassUID).name
    ]  # fmt: skip
    if multi_frame:
        path, ds = multi_frame[0]
        series.problems.append(
            f"{where}: multi-frame (enhanced) objects are not supported: {len(multi_frame)} of {n} files, e.g. "
            f"{path} ({UID(ds.SOPClassUID).name}, NumberOfFrames {ds.get('NumberOfFrames', 1)}); "
            "export the series as one file per slice"
        )
        return
    values = {keyword: [header_floats(ds, keyword) for ds in headers] for keyword in _GEOMETRY_TAGS}
    for keyword, size in _GEOMETRY_TAGS.items():
        bad = [p for p, v in zip(series.files, values[keyword]) if v is None or v.size != size]
        if bad:
            series.problems.append(
                f"{where}: {keyword} missing or not {size} number(s) in {len(bad)} of {n} files, e.g. {bad[0]}"
            )
    samples = {int(ds.get("SamplesPerPixel", 1) or 1) for ds in headers}
    if samples != {1}:
        series.problems.append(f"{where}: SamplesPerPixel {sorted(samples)}: only grayscale images are read")
    if series.problems:
        return
    for keyword, tolerance in _UNIFORM_TAGS.items():
        first = values[keyword][0]
        odd = [
            (p, v) for p, v in zip(series.files, values[keyword]) if not np.allclose(v, first, rtol=0, atol=tolerance)
        ]
        if odd:
            series.problems.append(
                f"{where}: mixed {keyword} within the series: {_fmt(first)} in {series.files[0]} but "
                f"{_fmt(odd[0][1])} in {odd[0][0]} ({len(odd)} of {n} files differ from the first)"
            )
    if series.problems:
        return
    iop = values["ImageOrientationPatient"][0]
    row, column = iop[:3], iop[3:]
    if max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(column) - 1), abs(row @ column)) > ORIENTATION_TOLERANCE:
        series.problems.append(f"{where}: ImageOrientationPatient {_fmt(iop)} is not two orthogonal unit vectors")
        return
    if n < MIN_SLICES:
        series.problems.append(f"{where}: {n} slice(s); a 3D volume needs at least {MIN_SLICES}")
        return
    normal = np.cross(row, column)
    positions = np.stack(values["ImagePositionPatient"])
    order = np.argsort(positions @ normal, kind="stable")
    series.files = [series.files[i] for i in order]
    headers, positions = [headers[i] for i in order], positions[order]
    along = positions @ normal
    steps = np.diff(along)

    duplicates = np.flatnonzero(steps < SLICE_STEP_TOLERANCE_MM)
    if duplicates.size:
        k = duplicates[0]
        series.problems.append(
            f"{where}: duplicate slice positions: {duplicates.size} pair(s) of files at the same position along the "
            f"slice normal, e.g. {series.files[k]} and {series.files[k + 1]} (instance numbers {_instance(headers[k])}"
            f" and {_instance(headers[k + 1])}) at {along[k]:g} mm; several acquisitions or phases in one series "
            "must be split first"
        )
        return
    offsets = positions[1:] - positions[0]
    in_plane = np.linalg.norm(offsets - np.outer(along[1:] - along[0], normal), axis=1)
    tilt = float(np.degrees(np.arctan2(in_plane, along[1:] - along[0])).max())
    if tilt > TILT_TOLERANCE_DEGREES:
        series.problems.append(
            f"{where}: the slice positions advance {tilt:.2f} degrees off the row x column normal (gantry tilt or "
            f"a sheared stack, tolerance {TILT_TOLERANCE_DEGREES} degrees); resample the series onto an orthogonal "
            "grid first (e.g. a DICOM converter's gantry tilt correction)"
        )
    median = float(np.median(steps))
    tolerance = max(SLICE_STEP_TOLERANCE_FRACTION * median, SLICE_STEP_TOLERANCE_MM)
    deviation = np.abs(steps - median)
    if deviation.max() > tolerance:
        k = int(np.argmax(deviation))
        missing = round(steps[k] / median) - 1
        kind = "missing slice(s)" if missing >= 1 else "non-uniform slice spacing"
        series.problems.append(
            f"{where}: {kind}: the slice step is {median:g} mm (median) but {int((deviation > tolerance).sum())} of "
            f"{len(steps)} steps differ from it by more than {tolerance:g} mm; the largest "
            f"{'gap' if steps[k] > median else 'deviation'} is a {steps[k]:g} mm step between positions "
            f"{along[k]:g} and {along[k + 1]:g} mm along the slice normal (instance numbers {_instance(headers[k])} "
            f"and {_instance(headers[k + 1])}: {series.files[k]}, {series.files[k + 1]})"
            + (f", about {missing} slice(s) missing there" if missing >= 1 else "")
            + "; a gapped series is refused, not resampled"
        )
    pixel_spacing = values["PixelSpacing"][0]
    step = float((along[-1] - along[0]) / (n - 1))
    spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), step)  # PixelSpacing is (between rows, columns)
    low, high = SPACING_RANGE_MM
    if not all(low <= s <= high for s in spacing):
        series.problems.append(
            f"{where}: implausible voxel spacing {_fmt(np.asarray(spacing))} mm (x, y, slice step): each must lie in "
            f"[{low:g}, {high:g}] mm"
        )
    if series.problems:
        return

    thickness = header_floats(headers[0], "SliceThickness")
    if thickness is not None and abs(thickness[0] - step) > tolerance:
        series.warnings.append(
            f"{where}: SliceThickness {thickness[0]:g} mm differs from the {step:g} mm step between slice positions "
            "(overlapping or spaced slices); the step is the z spacing"
        )
    unscaled = [p for p, ds in zip(series.files, headers) if "RescaleIntercept" not in ds]
    if unscaled and headers[0].get("Modality") == "CT":
        series.warnings.append(
            f"{where}: no RescaleIntercept in {len(unscaled)} of {n} files (e.g. {unscaled[0]}): their stored values "
            "are used as they are and may not be HU"
        )
    rows, columns = int(values["Rows"][0][0]), int(values["Columns"][0][0])
    lps = np.eye(4)
    lps[:3, :3] = np.stack([row, column, normal], axis=1) * spacing
    lps[:3, 3] = positions[0]
    series.shape, series.spacing, series.affine = (columns, rows, n), spacing, LPS_TO_RAS @ lps


def _series_number(ds: Dataset) -> int | None:
    try:
        return int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):  # missing, empty or not a number: the series is named by its index
        return None


def _is_lone_localizer(members: list[tuple[str, Dataset]], stack_normals: list[np.ndarray | None]) -> bool:
    """A single-slice series whose plane crosses those of all the folder's stacks: a scout ImageType does not name."""
    normal = _normal(members[0][1])
    return (
        len(members) == 1
        and normal is not None
        and bool(stack_normals)
        and all(other is None or abs(normal @ other) < 1 - ORIENTATION_TOLERANCE for other in stack_normals)
    )


def find_series(folder: str, files: Sequence[str] | None = None) -> tuple[list[DicomSeries], list[tuple[str, str]]]:
    """
    Scan the files of ``folder`` (not its subfolders) and group the DICOM images into checked series.

    Args:
        folder: the folder to scan.
        files: scan only these files of ``folder`` (e.g. the DICOM files among a folder's NIfTI files).

    Returns:
        the image series, ordered by SeriesNumber then UID, each with its problems and warnings; and
        ``(file, reason)`` for every entry of the folder that is in no series, so nothing is dropped silently.
    """
    folder = os.path.normpath(folder)
    groups: dict[str, list[tuple[str, Dataset]]] = defaultdict(list)
    notes: dict[str, list[str]] = defaultdict(list)
    unused: list[tuple[str, str]] = []
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder)) if files is None else sorted(files)
    for path in paths:
        if os.path.isdir(path):
            unused.append((path, "a folder: subfolders are not scanned"))
            continue
        ds, reason, file_notes = _read_header(path)
        if ds is None:
            unused.append((path, reason))
            continue
        groups[str(ds.SeriesInstanceUID)].append((path, ds))
        notes[str(ds.SeriesInstanceUID)] += file_notes
    stack_normals = [_normal(members[0][1]) for members in groups.values() if len(members) >= MIN_SLICES]
    for uid in [u for u, members in groups.items() if _is_lone_localizer(members, stack_normals)]:
        path = groups.pop(uid)[0][0]
        unused.append((path, f"a single-slice series ({uid}) across the folder's other series: a localizer"))

    numbers = {uid: _series_number(members[0][1]) for uid, members in groups.items()}
    uids = sorted(groups, key=lambda u: (numbers[u] is None, numbers[u] or 0, u))
    by_number = None not in numbers.values() and len(set(numbers.values())) == len(numbers)
    base = os.path.basename(os.path.abspath(folder))
    series = []
    for index, uid in enumerate(uids):
        first = groups[uid][0][1]
        name = base if len(uids) == 1 else f"{base}_series{numbers[uid] if by_number else index + 1}"
        number = f"series {numbers[uid]}" if numbers[uid] is not None else ""
        description = f"'{first.SeriesDescription}'" if first.get("SeriesDescription") else ""
        one = DicomSeries(
            folder=folder,
            series_uid=uid,
            name=name,
            reference=folder if len(uids) == 1 else os.path.join(folder, name),
            description=" ".join(p for p in (str(first.get("Modality", "")), number, description) if p),
            files=[path for path, _ in groups[uid]],
            warnings=list(dict.fromkeys(notes[uid])),
        )
        _check_series(one, [ds for _, ds in groups[uid]])
        series.append(one)
    return series, sorted(unused)


def _describe(series: list[DicomSeries]) -> str:
    return ", ".join(f"{s.reference!r} ({s.description}, {len(s.files)} files)" for s in series)


def resolve_series(reference: str) -> DicomSeries | None:
    """
    The series a reference (see the module docstring) names; None when it does not point into a DICOM folder:
    an existing file, or a missing path whose folder holds no DICOM image series.

    Raises:
        DicomSeriesError: when the folder holds no image series, or the reference names none or several of them.
    """
    path = os.path.normpath(os.fspath(reference))
    if os.path.isdir(path):
        folder, selector = path, ""
    else:
        folder, selector = os.path.split(path)
        if os.path.exists(path) or not os.path.isdir(folder or os.curdir):
            return None
    series, unused = find_series(folder or os.curdir)
    if selector and not series:
        return None  # e.g. a mistyped NIfTI path: other readers give the error
    if not series:
        listed = "; ".join(f"{p}: {r}" for p, r in unused[:MAX_LISTED])
        raise DicomSeriesError([f"{folder}: no DICOM image series among its {len(unused)} entries ({listed}"
                                + (", ..." if len(unused) > MAX_LISTED else "") + ")"])  # fmt: skip
    if not selector:
        if len(series) > 1:
            raise DicomSeriesError(
                [f"{folder} holds {len(series)} DICOM image series; refer to one of them: {_describe(series)}"]
            )
        return series[0]
    for one in series:
        if selector in (one.name, one.series_uid):
            return one
    raise DicomSeriesError([f"{path}: {folder} has no series named {selector!r}; it holds {_describe(series)}"])


def read_series(series: DicomSeries) -> tuple[np.ndarray, np.ndarray]:
    """
    The float32 volume (X=columns, Y=rows, Z=slices), RescaleSlope and RescaleIntercept applied per slice, and its
    4x4 RAS affine.

    Raises:
        DicomSeriesError: when the series has problems, or a file's pixel data cannot be decoded.
    """
    if series.problems or series.shape is None or series.affine is None:
        raise DicomSeriesError(series.problems or [f"{series.shown}: not checked"])
    columns, rows, _ = series.shape
    volume = np.empty(series.shape, np.float32)
    for k, path in enumerate(series.files):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # pydicom's warnings go to the log, not the console
            ds = pydicom.dcmread(path, force=False)
            try:
                pixels = ds.pixel_array
            except Exception as error:  # noqa: BLE001 - pydicom raises several types for undecodable pixel data
                syntax = ds.file_meta.get("TransferSyntaxUID", UID("1.2.840.10008.1.2"))
                raise DicomSeriesError([
                    f"{path}: cannot decode the pixel data of transfer syntax {syntax.name} ({syntax}): {error}; "
                    "install a pydicom pixel data plugin for it (e.g. pylibjpeg) or decompress the series"
                ]) from error  # fmt: skip
        for warning in caught:
            logger.warning(f"{path}: pydicom: {warning.message}")
        if pixels.shape != (rows, columns):
            raise DicomSeriesError([f"{path}: pixel data of shape {pixels.shape}, Rows x Columns is {(rows, columns)}"])
        slope, intercept = header_floats(ds, "RescaleSlope"), header_floats(ds, "RescaleIntercept")
        volume[:, :, k] = pixels.T * (1.0 if slope is None else slope[0]) + (0.0 if intercept is None else intercept[0])
    return volume, series.affine.copy()


def read_series_reference(reference: str) -> tuple[np.ndarray, np.ndarray]:
    """The volume (X, Y, Z) and 4x4 RAS affine of the checked series ``reference`` names (:py:func:`read_series`)."""
    series = resolve_series(reference)
    if series is None:
        raise DicomSeriesError([f"{reference}: not a DICOM folder or DICOM series reference"])
    return read_series(series)


class DicomSeriesReader(ImageReader):
    """
    A MONAI ``ImageReader`` of one checked DICOM series per item, given as a series reference (module docstring).
    With ``LoadImaged(keys, reader=DicomSeriesReader)`` it is tried first; for anything that is not a DICOM
    folder or series reference (a NIfTI file) ``read`` raises and ``LoadImage`` falls back to its default readers.

    ``read`` does not raise for a refused DICOM reference: ``LoadImage`` would catch that and try ITK next, which
    reads the series unchecked. It returns the error instead and ``get_data``, which ``LoadImage`` does not
    guard, raises it. A series' warnings are logged (logger ``scripts.data.dicom``).
    """

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        """Whether every one of ``filename`` is a folder, or a missing path in a folder (cheap, nothing read)."""
        return all(
            os.path.isdir(f) or (not os.path.exists(f) and os.path.isdir(os.path.dirname(os.path.normpath(f)) or "."))
            for f in ensure_tuple(filename)
        )

    def read(self, data: Sequence[str] | str, **kwargs) -> DicomSeries | DicomSeriesError:
        """The checked series ``data`` refers to, or the error to raise from ``get_data``."""
        references = ensure_tuple(data)
        try:
            found = [resolve_series(str(r)) for r in references]
        except DicomSeriesError as error:
            return error
        if all(s is None for s in found):
            raise ValueError(f"{references}: not a DICOM folder or DICOM series reference")
        if len(found) > 1:
            return DicomSeriesError([f"{references}: DICOM series are read one per item, not stacked as channels"])
        return found[0]

    def get_data(self, img: DicomSeries | DicomSeriesError) -> tuple[np.ndarray, dict]:
        """The (X, Y, Z) volume and the metadata MONAI readers give: RAS ``affine``, ``spatial_shape``, ..."""
        if isinstance(img, DicomSeriesError):
            raise img
        volume, affine = read_series(img)
        for message in img.warnings:
            logger.warning(message)
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(volume.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),  # no channel, as NibabelReader says it
            ImageMetaKey.FILENAME_OR_OBJ: img.reference,  # LoadImage overwrites it with the reference it was given
            "series_uid": img.series_uid,
        }
        return volume, meta
