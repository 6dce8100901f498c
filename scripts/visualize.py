"""Pictures: segmentation overlays on CT slices."""

from __future__ import annotations

import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

__all__ = ["organ_colour", "save_overlay_png"]


def organ_colour(label: int) -> tuple[float, float, float]:
    """Fixed RGB colour of a label value, the same in every picture (tab20, background excluded)."""
    return tuple(plt.get_cmap("tab20")((label - 1) % 20)[:3])


def _canonical(path: str) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.load(path))
    return np.asarray(image.dataobj), np.asarray(image.header.get_zooms()[:3], dtype=float)


def save_overlay_png(
    image_path: str,
    prediction_path: str,
    output_png: str,
    label_path: str | None = None,
    label_names: Mapping[int, str] | None = None,
    window: tuple[float, float] = (40.0, 400.0),
) -> str:
    """
    Axial, coronal and sagittal CT slices through the centre of the predicted organs, in a soft-tissue window
    (level, width in HU), with prediction contours (solid) and, if ``label_path`` is given, ground-truth
    contours (dashed), one colour per organ, and a legend. Slices are shown in radiological convention
    (patient right on the left of the picture) with the true voxel aspect ratio.

    Returns the written PNG path (written atomically).
    """
    image, zooms = _canonical(image_path)
    prediction, _ = _canonical(prediction_path)
    truth = _canonical(label_path)[0] if label_path else None
    if prediction.shape != image.shape or (truth is not None and truth.shape != image.shape):
        raise ValueError(f"{prediction_path}: shape {prediction.shape} does not match image {image_path} {image.shape}.")
    reference = prediction if prediction.any() else (truth if truth is not None and truth.any() else None)
    centre = (
        np.round(np.argwhere(reference > 0).mean(0)).astype(int) if reference is not None else np.array(image.shape) // 2
    )
    level, width = window
    views = [  # (title, 2D slicer, aspect = row spacing / column spacing of the displayed (rows, cols) array)
        ("axial", lambda v: v[:, :, centre[2]].T[::-1, ::-1], zooms[1] / zooms[0]),
        ("coronal", lambda v: v[:, centre[1], :].T[::-1, ::-1], zooms[2] / zooms[0]),
        ("sagittal", lambda v: v[centre[0], :, :].T[::-1, :], zooms[2] / zooms[1]),
    ]
    present = sorted(set(np.unique(prediction)) | (set(np.unique(truth)) if truth is not None else set()))
    present = [int(v) for v in present if v > 0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6))
    for ax, (title, cut, aspect) in zip(axes, views):
        ax.imshow(cut(image), cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=aspect)
        for value in present:
            colour = organ_colour(value)
            for volume, style in ((prediction, "solid"), (truth, "dashed")):
                if volume is None:
                    continue
                mask = cut(volume) == value
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2, linestyles=style)
        ax.set_title(title)
        ax.axis("off")
    names = label_names or {}
    handles = [Patch(color=organ_colour(v), label=names.get(v, str(v))) for v in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(7, len(handles)), fontsize=9, frameon=False)
    subtitle = "prediction: solid" + (", ground truth: dashed" if truth is not None else "")
    fig.suptitle(f"{os.path.basename(image_path)} ({subtitle})")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    os.makedirs(os.path.dirname(os.path.abspath(output_png)), exist_ok=True)
    temporary = output_png + ".tmp.png"
    fig.savefig(temporary, dpi=80)
    plt.close(fig)
    os.replace(temporary, output_png)
    return output_png
