"""
DICOM Segmentation output: the label map of a DICOM series input written as a DICOM SEG object that references
the source series, so that a viewer or PACS shows the organs over the images they came from.

:func:`write_dicom_seg` writes one binary SEG (highdicom ``Segmentation``, SEG Storage) per case, with one
segment per organ of the label table it is given (all organs, or those chosen with config id ``organs``),
numbered 1, 2, ... in label order: with the full table the segment number is the NIfTI output's label value. An
organ that was not found is an empty segment, so that "searched, not found" stays visible. Each segment has the
organ's name (SegmentLabel), its picture colour (:func:`scripts.reports.overlays.organ_colour`, as
RecommendedDisplayCIELabValue) and SNOMED CT codes (:data:`ORGAN_CODES`); there is one frame per source slice and
organ present there. Each frame is taken from the label map where the source file's own pixels lie (its
ImagePositionPatient, ImageOrientationPatient and PixelSpacing mapped through the label map's affine), never by
assuming an axis order; every label voxel must be covered exactly once.

:class:`SaveDicomSegd` is the inference postprocessing transform (config id ``save_dicom_seg``) and
:func:`draw_dicom_seg` reads a SEG back and draws it over its source slices::

    python -m scripts.reports.dicom_seg draw --seg_file out/case1_seg.dcm --series /data/dicom/case1 \\
        --output_png case1.png

highdicom is imported when a SEG is written or read, so that the module (and ``configs/inference.json``) loads in
environments without it, such as MONAI Label's.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pydicom
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from scripts.data.dicom import LPS_TO_RAS, DicomSeries, header_floats, resolve_series
from scripts.engine.atomic import atomic_output
from scripts.engine.infer_folder import is_nifti, item_case_name, output_path
from scripts.reports.overlays import organ_colour, organ_name

__all__ = [
    "ORGAN_CODES",
    "GENERIC_CODE",
    "GRID_TOLERANCE_VOXELS",
    "SEG_EXTENSION",
    "SEG_BYTES_PER_VOXEL",
    "bundle_version",
    "frame_grid",
    "source_frames",
    "read_source_headers",
    "check_source_series",
    "segment_descriptions",
    "write_dicom_seg",
    "SaveDicomSegd",
    "draw_dicom_seg",
    "example_figure",
]

logger = logging.getLogger(__name__)


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


# SNOMED CT codes written out (not looked up by keyword: pydicom 2's dictionary has several values for some
# keywords); tests/reports/test_dicom_seg.py checks every value against the meanings of pydicom's dictionary.
_KIDNEY, _ADRENAL_GLAND = _sct("64033007", "Kidney"), _sct("23451007", "Adrenal gland")
_RIGHT, _LEFT = _sct("24028007", "Right"), _sct("7771000", "Left")
#: organ name of the label table (lower case, ``_`` between words) -> (segmented property type, laterality
#: modifier or None, primary anatomic structures); the category of every segment is "Anatomical Structure".
#: The portal and splenic veins are one BTCV label with no single SNOMED CT concept: type "Vein", both veins named.
ORGAN_CODES: dict[str, tuple[Code, Code | None, tuple[Code, ...]]] = {
    "spleen": (_sct("78961009", "Spleen"), None, ()),
    "right_kidney": (_KIDNEY, _RIGHT, ()),
    "left_kidney": (_KIDNEY, _LEFT, ()),
    "kidney": (_KIDNEY, None, ()),
    "gallbladder": (_sct("28231008", "Gallbladder"), None, ()),
    "esophagus": (_sct("32849002", "Esophagus"), None, ()),
    "liver": (_sct("10200004", "Liver"), None, ()),
    "stomach": (_sct("69695003", "Stomach"), None, ()),
    "aorta": (_sct("15825003", "Aorta"), None, ()),
    "inferior_vena_cava": (_sct("64131007", "Inferior vena cava"), None, ()),
    "portal_and_splenic_veins": (
        _sct("29092000", "Vein"),
        None,
        (_sct("32764006", "Portal vein"), _sct("35819009", "Splenic vein")),
    ),
    "pancreas": (_sct("15776009", "Pancreas"), None, ()),
    "right_adrenal_gland": (_ADRENAL_GLAND, _RIGHT, ()),
    "left_adrenal_gland": (_ADRENAL_GLAND, _LEFT, ()),
    "adrenal_gland": (_ADRENAL_GLAND, None, ()),
}
#: category of every segment, and the type of a label whose name is not in ORGAN_CODES
GENERIC_CODE = _sct("91723000", "Anatomical Structure")
#: the segments' algorithm family (DICOM CID 7162)
_AI_FAMILY = Code("123110", "DCM", "Artificial Intelligence")
#: a source pixel centre may lie at most this far (in label voxels, along each axis) from a label voxel centre
GRID_TOLERANCE_VOXELS = 0.25
SEG_EXTENSION = ".dcm"
#: free space to reserve per voxel of a DICOM case: a binary SEG stores 1 bit per pixel for each organ present on
#: a slice, at most 13 bits for the 13 BTCV organs (a 512 x 512 x 120 series of the synthetic phantom took 1.15)
SEG_BYTES_PER_VOXEL = 13 / 8
#: the SEG's SeriesNumber is its source's plus this, so that it sorts next to the source in a viewer
SERIES_NUMBER_OFFSET = 1000
#: source attributes a SEG must carry (type 1), and those it copies that may be empty (type 2: absent ones are
#: written empty; the source files are not changed)
_REQUIRED_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
_EMPTY_ALLOWED_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                       "StudyDate", "StudyTime")  # fmt: skip
_ALGORITHM = "CoTr"
_MANUFACTURER = "CoTr MONAI bundle"
_METADATA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "metadata.json"
)


def bundle_version(metadata_file: str = _METADATA) -> str:
    """The bundle's ``version`` from its ``configs/metadata.json``; ``"unknown"`` when it cannot be read."""
    try:
        with open(metadata_file) as f:
            return str(json.load(f)["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def _floats(ds: Dataset, keyword: str, path: str, size: int) -> np.ndarray:
    value = header_floats(ds, keyword)
    if value is None or value.size != size:
        raise ValueError(f"{path}: {keyword} missing or not {size} numbers: cannot place its frame")
    return value


def frame_grid(ds: Dataset, affine: np.ndarray, path: str = "source file") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Where one single-frame source image's pixels lie in the label map.

    Args:
        ds: the image's header (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, Rows, Columns).
        affine: 4x4 voxel-to-RAS affine of the label map.
        path: how errors name the file.

    Returns:
        int64 (3,) label voxels: that of pixel (0, 0), the step to the next row and the step to the next column
        (each +-1 along one axis), so that pixel (r, c) lies on voxel ``origin + r * row_step + c * column_step``.

    Raises:
        ValueError: a pixel centre lies more than GRID_TOLERANCE_VOXELS off the label map's voxel grid, or the
            image's rows and columns do not run along two of the label map's axes.
    """
    position = _floats(ds, "ImagePositionPatient", path, 3)
    orientation = _floats(ds, "ImageOrientationPatient", path, 6)
    pixel_spacing = _floats(ds, "PixelSpacing", path, 2)  # (between rows, between columns)
    # DICOM: pixel (r, c) lies at position + c * column spacing * row direction + r * row spacing * column direction
    patient = np.eye(4)
    patient[:3, 0] = orientation[3:] * pixel_spacing[0]
    patient[:3, 1] = orientation[:3] * pixel_spacing[1]
    patient[:3, 3] = position
    pixel_to_voxel = np.linalg.solve(np.asarray(affine, dtype=float), LPS_TO_RAS @ patient)
    origin, row_step, column_step = pixel_to_voxel[:3, 3], pixel_to_voxel[:3, 0], pixel_to_voxel[:3, 1]
    grid = [np.rint(v) for v in (origin, row_step, column_step)]
    # the map is affine: the farthest pixel from the grid is a corner, at most this far off along each axis
    off = float((np.abs(origin - grid[0]) + (int(ds.Rows) - 1) * np.abs(row_step - grid[1])
                 + (int(ds.Columns) - 1) * np.abs(column_step - grid[2])).max())  # fmt: skip
    if off > GRID_TOLERANCE_VOXELS:
        raise ValueError(
            f"{path}: its pixels lie up to {off:.2f} voxels off the label map's grid (tolerance "
            f"{GRID_TOLERANCE_VOXELS}): the segmentation is not on this image's grid"
        )
    steps = np.abs(np.stack(grid[1:]))
    if not ((steps.sum(axis=1) == 1).all() and (steps.max(axis=0) <= 1).all()):
        raise ValueError(f"{path}: its rows and columns do not run along the label map's axes")
    return tuple(v.astype(np.int64) for v in grid)


def source_frames(
    labels: np.ndarray, affine: np.ndarray, headers: Sequence[Dataset], files: Sequence[str]
) -> np.ndarray:
    """
    The label map on the source images' pixel grids, one frame per file.

    Args:
        labels: (X, Y, Z) label map.
        affine: its 4x4 voxel-to-RAS affine.
        headers: the single-frame source images' headers, ``files`` their paths (for errors).

    Returns:
        (len(headers), Rows, Columns) frames of ``labels``' dtype, ``frames[n]`` on ``headers[n]``'s pixels.

    Raises:
        ValueError: an image is not a whole plane of the label map (:func:`frame_grid`), or the images do not
            cover each plane exactly once: the label map and the series are not on the same grid.
    """
    labels = np.asarray(labels)
    frames, planes = [], {}
    for ds, path in zip(headers, files):
        origin, row_step, column_step = frame_grid(ds, affine, path)
        row_axis, column_axis = int(np.argmax(np.abs(row_step))), int(np.argmax(np.abs(column_step)))
        normal_axis = 3 - row_axis - column_axis
        sizes = {row_axis: (int(ds.Rows), row_step), column_axis: (int(ds.Columns), column_step)}
        for axis, (size, step) in sizes.items():
            first = origin[axis]
            last = first + step[axis] * (size - 1)
            if size != labels.shape[axis] or min(first, last) != 0:
                raise ValueError(
                    f"{path}: its {size} {'rows' if axis == row_axis else 'columns'} do not span the label map's "
                    f"axis {axis} of {labels.shape[axis]} voxels"
                )
        if not 0 <= origin[normal_axis] < labels.shape[normal_axis]:
            raise ValueError(f"{path}: it lies outside the label map of shape {labels.shape}")
        planes.setdefault(normal_axis, []).append(int(origin[normal_axis]))
        plane = np.take(labels, origin[normal_axis], axis=normal_axis)  # its axes: the other two, in order
        if row_step[row_axis] < 0:
            plane = np.flip(plane, axis=int(row_axis > column_axis))
        if column_step[column_axis] < 0:
            plane = np.flip(plane, axis=int(column_axis > row_axis))
        frames.append(plane if row_axis < column_axis else plane.T)
    (normal_axis, taken), *others = planes.items()
    if others or sorted(taken) != list(range(labels.shape[normal_axis])):
        raise ValueError(
            f"the {len(files)} source images do not cover the label map of shape {labels.shape} one plane each "
            "(planes missing, repeated or across different axes): it is not on the grid of this series"
        )
    return np.stack(frames)


def read_source_headers(files: Sequence[str]) -> list[Dataset]:
    """
    The headers (no pixel data) of a SEG's source images, checked: one series, the attributes a SEG references
    present; absent patient and study attributes that may be empty are set empty in the returned headers.

    Raises:
        ValueError: naming the file and the problem.
    """
    headers = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        missing = [k for k in _REQUIRED_TAGS if not ds.get(k)]
        if missing:
            raise ValueError(f"{path}: no {', '.join(missing)}: a DICOM-SEG cannot reference this image")
        for keyword in _EMPTY_ALLOWED_TAGS:
            if keyword not in ds:
                setattr(ds, keyword, "")
        headers.append(ds)
    series = sorted({str(ds.SeriesInstanceUID) for ds in headers})
    if len(series) != 1:
        raise ValueError(f"the {len(files)} source files belong to {len(series)} series ({', '.join(series)}), not one")
    return headers


def check_source_series(series: DicomSeries) -> list[str]:
    """
    Why no DICOM-SEG can be written for a checked :class:`scripts.data.dicom.DicomSeries` (empty: it can): its headers
    (:func:`read_source_headers`) and its pixel grids against its affine (:func:`source_frames`), before any label
    map exists.
    """
    try:
        headers = read_source_headers(series.files)
        source_frames(np.zeros(series.shape, bool), series.affine, headers, series.files)
    except (ValueError, OSError) as e:
        return [f"{series.shown}: no DICOM-SEG possible: {e}"]
    return []


def segment_descriptions(label_names: Mapping[int, str], software_version: str) -> list:
    """
    highdicom ``SegmentDescription`` of every positive label of ``label_names``, in label order: segment numbers
    1, 2, ... (the label values themselves for a full label table 0..N-1).
    """
    import highdicom as hd

    algorithm = hd.AlgorithmIdentificationSequence(name=_ALGORITHM, family=_AI_FAMILY, version=software_version)
    descriptions = []
    for number, label in enumerate(sorted(int(k) for k in label_names if int(k) > 0), start=1):
        key = str(label_names[label]).strip().lower().replace(" ", "_").replace("-", "_")
        kind, laterality, structures = ORGAN_CODES.get(key, (GENERIC_CODE, None, ()))
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=organ_name(label, label_names),
            segmented_property_category=GENERIC_CODE,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            primary_anatomic_structures=list(structures) or None,
            display_color=hd.color.CIELabColor.from_rgb(*(round(255 * v) for v in organ_colour(label))),
        )
        if laterality is not None:  # the type's modifier (0062,0011), as DICOM codes "right kidney"
            type_item = description.SegmentedPropertyTypeCodeSequence[0]
            type_item.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(laterality)]
        descriptions.append(description)
    return descriptions


def write_dicom_seg(
    labels: np.ndarray,
    affine: np.ndarray,
    source_files: Sequence[str],
    output_file: str,
    label_names: Mapping[int, str],
    software_version: str | None = None,
) -> str:
    """
    Write ``labels`` as a binary DICOM Segmentation of the single-frame image series ``source_files``.

    Args:
        labels: (X, Y, Z) integer label map, values in ``label_names``.
        affine: its 4x4 voxel-to-RAS affine (e.g. the reader's ``affine`` of the series).
        source_files: the series' files (any order).
        output_file: the SEG file, written atomically; never one of ``source_files``.
        label_names: label value -> organ name, 0 the background (config id ``label_names``).
        software_version: the algorithm's version in the SEG; default the bundle's (:func:`bundle_version`).

    Returns:
        ``output_file``.

    Raises:
        ValueError: labels outside ``label_names``, source files that are not one series, or a label map that is
            not on the series' grid (:func:`source_frames`).
    """
    import highdicom as hd

    names = {int(k): v for k, v in label_names.items()}
    organs = sorted(k for k in names if k > 0)
    if not organs:
        raise ValueError(f"label_names {names} has no organ (positive label) to write as a segment")
    values = np.unique(np.asarray(labels))
    unknown = [int(v) for v in values if int(v) != 0 and int(v) not in organs]
    if unknown:
        raise ValueError(f"label value(s) {unknown} are not among the organs {organs} of the label table")
    segment_of = np.zeros(max(organs) + 1, np.min_scalar_type(len(organs)))
    segment_of[organs] = np.arange(1, len(organs) + 1)
    output_real = os.path.realpath(output_file)
    if any(os.path.realpath(f) == output_real for f in source_files):
        raise ValueError(f"{output_file} is one of the source images: a DICOM-SEG never replaces its input")
    headers = read_source_headers(source_files)
    frames = segment_of[source_frames(labels, affine, headers, source_files)]
    version = software_version or bundle_version()
    try:
        number = int(headers[0].get("SeriesNumber")) + SERIES_NUMBER_OFFSET
    except (TypeError, ValueError):  # missing or not a number
        number = SERIES_NUMBER_OFFSET
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=frames,  # label-map style: the pixel value is the segment number
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(names, version),
        series_instance_uid=hd.UID(),
        series_number=number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=_ALGORITHM,
        software_versions=version,
        device_serial_number="none",
        series_description=f"{_ALGORITHM} segmentation",
        content_label="ORGANS",
        content_description=f"{_ALGORITHM} organ segmentation",
        omit_empty_frames=bool(frames.any()),  # a SEG needs one frame: with no organ found, all (empty) frames
    )
    with atomic_output(output_file, suffix=f".tmp{SEG_EXTENSION}") as temporary:
        seg.save_as(temporary)
    return output_file


class SaveDicomSegd(MapTransform):
    """
    Inference postprocessing: for a case read from a DICOM series, writes the label map as
    ``output_dir/<case>_<output_postfix>.dcm`` (:func:`write_dicom_seg`), next to the NIfTI output of the same
    name. A case read from NIfTI is passed through (``InferenceInputs`` warned about it before the run). A failure
    raises, so that the inference run records the case as failed with the reason.

    Args:
        keys: the label map key(s): uint8 MetaTensor (1, X, Y, Z) with the source image's affine and its
            ``filename_or_obj`` (the series reference), as the inferer returns it.
        output_dir: where the SEG files go (config id ``output_dir``).
        label_names: label value -> organ name (config id ``label_names``).
        output_postfix: the file name's postfix, as ``SaveImaged``'s.
        enabled: False makes the transform a no-op (config id ``save_dicom_seg``).
        software_version: the algorithm's version written into the SEG; default the bundle's.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str = "./outputs",
        label_names: Mapping[int, str] | None = None,
        output_postfix: str = "seg",
        enabled: bool = True,
        software_version: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if enabled and not label_names:
            raise ValueError("SaveDicomSegd needs label_names (label value -> organ name) to describe the segments.")
        self.output_dir = output_dir
        self.label_names = {int(k): v for k, v in (label_names or {}).items()}
        self.output_postfix = output_postfix
        self.enabled = bool(enabled)
        self.software_version = software_version

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            label = d[key]
            source = str(label.meta.get("filename_or_obj") or "") if isinstance(label, MetaTensor) else ""
            if not source:
                raise ValueError(f"{key!r} is not a MetaTensor with the filename_or_obj of its source image")
            if is_nifti(source):
                continue
            series = resolve_series(source)
            if series is None:
                raise ValueError(f"{source}: not a DICOM series reference: no DICOM-SEG can reference it")
            case = item_case_name(d, source)
            array = label.detach().cpu().numpy()
            if array.ndim != 4 or array.shape[0] != 1:
                raise ValueError(f"{case}: {key!r} must be a one-channel label map (1, X, Y, Z), got {array.shape}")
            output = output_path(case, self.output_dir, self.output_postfix, SEG_EXTENSION)
            affine = label.affine.detach().cpu().numpy().astype(float)
            write_dicom_seg(array[0], affine, series.files, output, self.label_names, self.software_version)
            logger.info(f"writing: {output}")
        return d


def draw_dicom_seg(
    seg_file: str,
    series: str,
    output_png: str,
    num_slices: int = 3,
    window: tuple[float, float] = (40.0, 400.0),
) -> str:
    """
    Read a DICOM-SEG back (highdicom) and draw it over source slices of the series it references: ``num_slices``
    evenly spaced among the slices with a segment, each with the frames that reference its SOPInstanceUID, in the
    segments' RecommendedDisplayCIELabValue, with their SegmentLabel in the legend.

    Args:
        seg_file: the SEG file.
        series: the source series (a folder or series reference, see :mod:`scripts.data.dicom`).
        output_png: the picture (written atomically).
        num_slices: how many slices to draw.
        window: CT window (level, width) in HU.

    Returns:
        ``output_png``.
    """
    import highdicom as hd
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from scripts.reports.overlays import save_figure_atomic

    found = resolve_series(series)
    if found is None:
        raise ValueError(f"{series}: not a DICOM series folder or reference")
    seg = hd.seg.segread(seg_file)
    images = [pydicom.dcmread(f) for f in found.files]
    uids = [str(ds.SOPInstanceUID) for ds in images]
    masks = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    candidates = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    if candidates.size == 0:
        raise ValueError(f"{seg_file}: no segment has a pixel on the source images of {series}")
    chosen = sorted({int(candidates[round(q)]) for q in np.linspace(0, candidates.size - 1, num_slices + 2)[1:-1]})
    colours = {}
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        lab = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue)
        colours[number] = (description.SegmentLabel, np.asarray(lab.to_rgb(clip=True)) / 255.0)
    level, width = window
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.0 * len(chosen), 4.6), facecolor="black", squeeze=False)
    for ax, k in zip(axes[0], chosen):
        ds = images[k]
        hu = ds.pixel_array * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
        ax.imshow(hu, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, interpolation="antialiased")
        rgba = np.zeros(masks[k].shape + (4,))
        for number in np.unique(masks[k])[1:]:
            rgba[masks[k] == number] = (*colours[int(number)][1], 0.45)
        ax.imshow(rgba, interpolation="nearest")
        z = float(np.asarray(ds.ImagePositionPatient, dtype=float)[2])
        ax.set_title(f"instance {ds.get('InstanceNumber', '?')}, z = {z:g} mm", color="white", fontsize=10)
        ax.axis("off")
    present = sorted({int(v) for k in chosen for v in np.unique(masks[k])[1:]})
    handles = [Patch(facecolor=colours[n][1], label=colours[n][0]) for n in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(7, len(handles)), fontsize=9, frameon=False,
               labelcolor="white")  # fmt: skip
    fig.suptitle(f"{os.path.basename(seg_file)}: DICOM-SEG read back over its source slices", color="white")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.14, wspace=0.03)
    return save_figure_atomic(fig, output_png, 100)


def _write_ct_series(hu: np.ndarray, affine: np.ndarray, folder: str) -> None:
    """An axial CT series of int16 ``hu`` (X=columns, Y=rows, Z=slices; ``affine`` its RAS affine, LPS-ordered)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    os.makedirs(folder, exist_ok=True)
    for k in range(hu.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.Modality = "Synthetic^Phantom", "synthetic", "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 2, k + 1, "synthetic abdomen"
        ds.ImagePositionPatient = [float(v) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.ImageOrientationPatient = [float(v) for v in (*(lps[:3, 0] / spacing[0]), *(lps[:3, 1] / spacing[1]))]
        ds.PixelSpacing, ds.SliceThickness = [float(spacing[1]), float(spacing[0])], float(spacing[2])
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T).astype("<i2").tobytes()
        ds.save_as(os.path.join(folder, f"IM{k + 1:04d}.dcm"), enforce_file_format=True)


def example_figure(
    output_png: str = "docs/dicom_seg_overlay.png",
    work_dir: str | None = None,
    shape: Sequence[int] = (160, 128, 40),
    spacing: Sequence[float] = (2.2, 2.2, 5.0),
    seed: int = 3,
) -> str:
    """
    The model card's picture, from synthetic data: a phantom of :mod:`scripts.data.synthetic` (``shape`` voxels of
    ``spacing`` mm, ``seed``) written as an axial CT series, its label map (standing in for a prediction) written as
    DICOM-SEG by :func:`write_dicom_seg`, read back and drawn by :func:`draw_dicom_seg`. ``work_dir`` keeps the
    series and the SEG (default: a temporary folder, removed).
    """
    import tempfile

    from scripts.data.dicom import find_series
    from scripts.data.labels import BTCV_LABELS
    from scripts.data.synthetic import make_phantom, phantom_to_nifti

    image, label = make_phantom(shape, spacing, seed=seed)
    image_nifti, label_nifti = phantom_to_nifti(image, label, spacing, "LPS")  # DICOM's axial order
    with tempfile.TemporaryDirectory() as temporary:
        folder = work_dir or temporary
        series_dir = os.path.join(folder, "phantom")
        _write_ct_series(np.asarray(image_nifti.dataobj), image_nifti.affine, series_dir)
        (series,), _ = find_series(series_dir)
        seg_file = os.path.join(folder, "phantom_seg.dcm")
        write_dicom_seg(np.asarray(label_nifti.dataobj), series.affine, series.files, seg_file, BTCV_LABELS)
        return draw_dicom_seg(seg_file, series_dir, output_png)


if __name__ == "__main__":
    import fire

    fire.Fire({"draw": draw_dicom_seg, "example": example_figure})
