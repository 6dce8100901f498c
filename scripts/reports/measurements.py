"""
Organ measurements from a segmentation in its original image geometry: volume and intensity statistics, and flags
for the organs whose measurements are not to be trusted as they are: cut by the scan's field of view (their volume
is a lower bound) or smaller than a real organ (a fragment, or an organ mostly missed).
"""

from __future__ import annotations

import csv
import glob
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from scripts.engine.atomic import write_csv_atomic
from scripts.engine.infer_folder import case_name
from scripts.engine.transforms import SavedSegmentationTransform
from scripts.reports.overlays import load_volume

__all__ = [
    "MEASUREMENT_COLUMNS",
    "MIN_ORGAN_ML",
    "BORDERS",
    "scan_axis",
    "touched_borders",
    "organ_measurements",
    "write_rows_csv",
    "read_case_tables",
    "write_measurement_summary",
    "SaveMeasurementsd",
]

logger = logging.getLogger(__name__)

#: the per-case measurement files in an output folder, and the summary built from them
CASE_SUFFIX, SUMMARY_FILE = "_measurements.csv", "measurements_summary.csv"

MEASUREMENT_COLUMNS = (
    "case",
    "label",
    "name",
    "voxels",
    "volume_ml",
    "mean",
    "median",
    "p5",
    "p95",
    "touches_border",
    "components",
    "largest_component_ml",
    "small",
)
#: default of config id ``min_organ_ml``: an organ whose largest connected part is smaller is flagged ``small``
#: (well below the smallest BTCV organs, the adrenal glands, which hold a few mL)
MIN_ORGAN_ML = 1.0
#: the borders of the scan an organ can touch, in the order ``touches_border`` lists them
BORDERS = ("inferior", "superior", "in_plane")
# 26-connectivity: voxels sharing a face, an edge or a corner belong to one component (as MONAI's
# KeepLargestConnectedComponent with its default connectivity)
_STRUCTURE = ndimage.generate_binary_structure(3, 3)


def scan_axis(affine: np.ndarray) -> int:
    """
    The voxel axis closest to the patient's head-feet (world z) direction in the (4, 4) voxel-to-world ``affine``:
    the slice axis of an axial CT, along which the scanned range ends.
    """
    directions = np.asarray(affine, dtype=float)[:3, :3]
    return int(np.argmax(np.abs(directions[2]) / np.linalg.norm(directions, axis=0)))


def touched_borders(box: Sequence[slice], shape: Sequence[int], affine: np.ndarray) -> list[str]:
    """
    The borders of a scan of ``shape`` (3 axes) that an organ with bounding ``box`` (3 slices) touches, among
    :data:`BORDERS`: the first and last slice along :func:`scan_axis` named by their anatomical side (``affine``
    says which end is superior), and ``"in_plane"`` for the edges of the other two axes.
    """
    axis = scan_axis(affine)
    first, last = box[axis].start == 0, box[axis].stop == shape[axis]
    superior_is_last = affine[2, axis] > 0
    touched = {
        "inferior": first if superior_is_last else last,
        "superior": last if superior_is_last else first,
        "in_plane": any(box[a].start == 0 or box[a].stop == shape[a] for a in range(3) if a != axis),
    }
    return [border for border in BORDERS if touched[border]]


def organ_measurements(
    image_path: str, segmentation_path: str, label_names: Mapping[int, str], min_organ_ml: float = MIN_ORGAN_ML
) -> list[dict[str, Any]]:
    """
    One row per label of ``label_names`` (background excluded), columns :data:`MEASUREMENT_COLUMNS`:

    - ``voxels``, ``volume_ml`` (voxel count times the voxel volume |det| of the affine's 3x3 part) and the mean,
      median, 5th and 95th percentile of the image (HU for CT) inside the label; NaN statistics for an absent label;
    - ``touches_border``: :func:`touched_borders` joined by ``;`` (empty when none): the organ reaches the scan's
      first or last slice or its in-plane edge, so its volume is a lower bound;
    - ``components`` (26-connected), ``largest_component_ml`` and ``small``: the largest component is below
      ``min_organ_ml`` mL. The largest component, not the total, decides: scattered false-positive fragments add
      up to any volume without forming an organ. An absent label is not ``small`` (``voxels`` is 0).

    Both files are read as stored, so the segmentation must be in the image's geometry (as inference writes it).
    The image is a NIfTI file or a DICOM series (:func:`scripts.reports.overlays.load_volume`).

    Raises:
        ValueError: naming both files, when their shapes or affines differ.
    """
    intensities, affine = load_volume(image_path)
    segmentation = nib.load(segmentation_path)
    if intensities.shape[:3] != segmentation.shape[:3] or not np.allclose(affine, segmentation.affine, atol=1e-3):
        raise ValueError(
            f"{segmentation_path}: shape {segmentation.shape} / affine differ from the image {image_path} "
            f"{intensities.shape}; measurements need the segmentation in the image's geometry."
        )
    labels = np.asarray(segmentation.dataobj).reshape(segmentation.shape[:3])
    if not np.issubdtype(labels.dtype, np.integer):  # find_objects takes integer labels only
        labels = np.rint(labels).astype(np.int32)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    foreground = sorted((int(label), name) for label, name in label_names.items() if int(label) != 0)
    boxes = ndimage.find_objects(labels, max_label=max((label for label, _ in foreground), default=0))
    rows = []
    for label, name in foreground:
        box = boxes[label - 1]
        if box is None:  # absent
            inside, count, largest_ml, borders = np.zeros(0), 0, 0.0, []
        else:
            # everything inside the organ's bounding box: memory and time follow the organ, not the scan
            mask = labels[box] == label
            inside = intensities[box][mask].astype(np.float64)
            components, count = ndimage.label(mask, structure=_STRUCTURE)
            largest_ml = int(np.bincount(components.ravel())[1:].max()) * voxel_ml
            borders = touched_borders(box, labels.shape, affine)
        stats = np.percentile(inside, [50, 5, 95]) if inside.size else [np.nan] * 3
        rows.append(
            {
                "case": case_name(image_path),
                "label": label,
                "name": name,
                "voxels": int(inside.size),
                "volume_ml": inside.size * voxel_ml,
                "mean": float(inside.mean()) if inside.size else np.nan,
                "median": float(stats[0]),
                "p5": float(stats[1]),
                "p95": float(stats[2]),
                "touches_border": ";".join(borders),
                "components": int(count),
                "largest_component_ml": largest_ml,
                "small": bool(count) and largest_ml < min_organ_ml,
            }
        )
    return rows


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: str) -> str:
    """Write ``rows`` (columns :data:`MEASUREMENT_COLUMNS`) as CSV, atomically."""
    return write_csv_atomic(path, [MEASUREMENT_COLUMNS] + [[row[c] for c in MEASUREMENT_COLUMNS] for row in rows])


def _read_case_table(path: str) -> list[list[str]] | None:
    """The data rows of a per-case measurement CSV; None (with a warning naming it) when its columns are others."""
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    if not table or tuple(table[0]) != MEASUREMENT_COLUMNS:
        logger.warning("%s: not in the summary, its columns are not %s", path, ", ".join(MEASUREMENT_COLUMNS))
        return None
    return table[1:]


def read_case_tables(output_dir: str) -> dict[str, list[list[str]]]:
    """Per-case file name -> data rows, of every ``<case>_measurements.csv`` in ``output_dir`` with our columns."""
    tables = {}
    for path in glob.glob(os.path.join(glob.escape(output_dir), "*" + CASE_SUFFIX)):
        table = _read_case_table(path)
        if table is not None:
            tables[os.path.basename(path)] = table
    return tables


def write_measurement_summary(output_dir: str, tables: Mapping[str, list[list[str]]] | None = None) -> str:
    """
    Rebuild ``output_dir/measurements_summary.csv`` from every ``<case>_measurements.csv`` there, in case order, so
    that it covers the cases of every process of a sharded run and of the runs a ``--skip_existing`` run continues.
    A per-case file with other columns (another bundle version) is left out with a warning naming it. ``tables``
    (:func:`read_case_tables`, kept up to date by the caller) spares reading the folder again.
    """
    tables = read_case_tables(output_dir) if tables is None else tables
    rows = [MEASUREMENT_COLUMNS] + [row for name in sorted(tables) for row in tables[name]]
    return write_csv_atomic(os.path.join(output_dir, SUMMARY_FILE), rows)


class SaveMeasurementsd(SavedSegmentationTransform):
    """
    Inference postprocessing after ``SaveImaged``: writes ``output_dir/<case>_measurements.csv`` with
    :func:`organ_measurements` of the saved segmentation, and rewrites ``output_dir/measurements_summary.csv``
    (:func:`write_measurement_summary`). Arguments as :class:`scripts.engine.transforms.SavedSegmentationTransform`,
    plus ``min_organ_ml`` (config id ``min_organ_ml``): the size in mL below which an organ's largest connected
    component is flagged ``small``.
    """

    def __init__(self, *args: Any, min_organ_ml: float = MIN_ORGAN_ML, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not min_organ_ml >= 0:
            raise ValueError(f"min_organ_ml must be a number of mL >= 0, got {min_organ_ml!r}.")
        self.min_organ_ml = float(min_organ_ml)
        self._tables: dict[str, list[list[str]]] | None = None  # the folder's per-case files, read once

    def write_case(self, case: str, source: str, segmentation: str) -> None:
        rows = organ_measurements(source, segmentation, self.label_names, self.min_organ_ml)
        rows = [{**row, "case": case} for row in rows]
        path = write_rows_csv(rows, os.path.join(self.output_dir, case + CASE_SUFFIX))
        if self._tables is None:  # the first case: the files earlier runs (or other processes so far) wrote
            self._tables = read_case_tables(self.output_dir)
        else:  # one file read per case, not the whole folder: a cohort's summary stays linear in its cases
            self._tables[os.path.basename(path)] = _read_case_table(path) or []
        write_measurement_summary(self.output_dir, self._tables)
