"""Organ measurements from a segmentation in its original image geometry: volume and intensity statistics."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np

from scripts.report import SavedSegmentationTransform, case_name, write_csv_atomic
from scripts.visualize import load_volume

__all__ = ["MEASUREMENT_COLUMNS", "organ_measurements", "write_rows_csv", "SaveMeasurementsd"]

MEASUREMENT_COLUMNS = ("case", "label", "name", "voxels", "volume_ml", "mean", "median", "p5", "p95")


def organ_measurements(
    image_path: str, segmentation_path: str, label_names: Mapping[int, str]
) -> list[dict[str, Any]]:
    """
    One row per label of ``label_names`` (background excluded): voxel count, volume in mL (voxel count times the
    voxel volume |det| of the affine's 3x3 part) and the mean, median, 5th and 95th percentile of the image
    (HU for CT) inside the label; NaN statistics for an absent label. Both files are read as stored, so the
    segmentation must be in the image's geometry (as inference writes it). The image is a NIfTI file or a DICOM
    series (:func:`scripts.visualize.load_volume`).

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
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    rows = []
    for label, name in sorted(label_names.items()):
        if int(label) == 0:
            continue
        inside = intensities[labels == int(label)].astype(np.float64)  # the organ only: memory stays small
        stats = np.percentile(inside, [50, 5, 95]) if inside.size else [np.nan] * 3
        rows.append(
            {
                "case": case_name(image_path),
                "label": int(label),
                "name": name,
                "voxels": int(inside.size),
                "volume_ml": inside.size * voxel_ml,
                "mean": float(inside.mean()) if inside.size else np.nan,
                "median": float(stats[0]),
                "p5": float(stats[1]),
                "p95": float(stats[2]),
            }
        )
    return rows


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: str) -> str:
    """Write ``rows`` (columns :data:`MEASUREMENT_COLUMNS`) as CSV, atomically."""
    return write_csv_atomic(path, [MEASUREMENT_COLUMNS] + [[row[c] for c in MEASUREMENT_COLUMNS] for row in rows])


class SaveMeasurementsd(SavedSegmentationTransform):
    """
    Inference postprocessing after ``SaveImaged``: writes ``output_dir/<case>_measurements.csv`` with
    :func:`organ_measurements` of the saved segmentation, and rewrites ``output_dir/measurements_summary.csv``
    with the rows of every case measured so far. Arguments as :class:`scripts.report.SavedSegmentationTransform`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.summary: list[dict[str, Any]] = []

    def write_case(self, case: str, source: str, segmentation: str) -> None:
        rows = [{**row, "case": case} for row in organ_measurements(source, segmentation, self.label_names)]
        write_rows_csv(rows, os.path.join(self.output_dir, f"{case}_measurements.csv"))
        self.summary += rows
        write_rows_csv(self.summary, os.path.join(self.output_dir, "measurements_summary.csv"))
