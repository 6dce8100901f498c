"""
Pictures: segmentation overlays on orthogonal CT slices, and the inference transform that draws them
(:class:`SaveOverlayd`).

Every picture uses the same colour for an organ (:func:`organ_colour`, following the label table
``scripts.data.labels.BTCV_LABELS``), shows CT in a soft-tissue window, the prediction as a solid contour over a
light fill and the ground truth, when there is one, as a dashed contour. Slices are drawn in radiological
convention (patient right on the left of the picture, anterior/superior at the top, sagittal slices facing
left) with the aspect ratio of the voxel spacing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from monai.config import KeysCollection  # noqa: E402

from scripts.engine.atomic import atomic_output  # noqa: E402
from scripts.engine.transforms import SavedSegmentationTransform  # noqa: E402

__all__ = [
    "BTCV_COLOURS",
    "OVERLAY_FIGSIZE",
    "OVERLAY_DPI",
    "organ_colour",
    "organ_name",
    "legend_entries",
    "load_canonical",
    "load_volume",
    "choose_slices",
    "orthogonal_slices",
    "save_figure_atomic",
    "SaveOverlayd",
    "save_overlay_png",
]

#: Contour colour of every BTCV label (keys of ``BTCV_LABELS`` without the background): distinct hues that
#: stay visible on a grey soft-tissue window and on the black figure background.
BTCV_COLOURS: dict[int, str] = {
    1: "#e040fb",  # spleen: magenta
    2: "#00c853",  # right kidney: green
    3: "#00e5ff",  # left kidney: cyan
    4: "#c6ff00",  # gallbladder: lime
    5: "#ff80ab",  # esophagus: pink
    6: "#ff1744",  # liver: red
    7: "#ff9100",  # stomach: orange
    8: "#ffea00",  # aorta: yellow
    9: "#2979ff",  # inferior vena cava: blue
    10: "#b388ff",  # portal and splenic veins: lavender
    11: "#ffd180",  # pancreas: peach
    12: "#1de9b6",  # right adrenal gland: teal
    13: "#ffffff",  # left adrenal gland: white
}

#: Size (inches) and resolution of an overlay picture: 1200 x 500 pixels.
OVERLAY_FIGSIZE: tuple[float, float] = (12.0, 5.0)
OVERLAY_DPI = 100

# (view, axis sliced, letters at the picture's (left, right, top, bottom))
_VIEWS = (
    ("axial", 2, ("R", "L", "A", "P")),
    ("coronal", 1, ("R", "L", "S", "I")),
    ("sagittal", 0, ("A", "P", "S", "I")),
)
_BACKGROUND = "black"
_TEXT = "white"


def organ_colour(label: int) -> tuple[float, float, float]:
    """
    RGB colour (floats in [0, 1]) of a label value, the same in every picture: :data:`BTCV_COLOURS` for the
    13 BTCV organs, ``tab20`` for any other positive label.
    """
    label = int(label)
    if label in BTCV_COLOURS:
        return to_rgb(BTCV_COLOURS[label])
    return tuple(float(c) for c in plt.get_cmap("tab20")((label - 1) % 20)[:3])


def organ_name(label: int, label_names: Mapping[int, str] | None = None) -> str:
    """Human-readable name of a label (``"right_kidney"`` -> ``"right kidney"``), ``"label N"`` if unnamed."""
    names = {int(k): v for k, v in (label_names or {}).items()}
    return names[int(label)].replace("_", " ") if int(label) in names else f"label {int(label)}"


def legend_entries(
    labels: Sequence[int],
    label_names: Mapping[int, str] | None = None,
    scores: Mapping[int, float] | None = None,
) -> list[tuple[str, tuple[float, float, float]]]:
    """
    ``(text, colour)`` of each legend entry, in increasing label order: the organ's readable name, followed by
    its score (e.g. Dice) when ``scores`` has a finite value for it.
    """
    entries = []
    for label in sorted({int(v) for v in labels if int(v) > 0}):
        text = organ_name(label, label_names)
        score = (scores or {}).get(label)
        if score is not None and np.isfinite(score):
            text += f" {score:.2f}"
        entries.append((text, organ_colour(label)))
    return entries


def load_volume(source: str) -> tuple[np.ndarray, np.ndarray]:
    """
    The voxels and voxel-to-RAS affine of an image as inference reads it: a NIfTI file (as stored), or a DICOM
    series (a folder or a series reference, :func:`scripts.data.dicom.read_series_reference`).

    Returns:
        the voxel array (X, Y, Z) (a trailing singleton 4th dimension dropped) and the (4, 4) affine.
    """
    if not source.lower().endswith((".nii", ".nii.gz")):
        from scripts.data.dicom import read_series_reference

        return read_series_reference(source)
    image = nib.load(source)
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data, np.asarray(image.affine, dtype=float)


def load_canonical(path: str) -> tuple[np.ndarray, np.ndarray]:
    """
    Load a 3D image (:func:`load_volume`) reoriented to the closest RAS+ orientation: indices grow towards the
    patient's Right, Anterior and Superior along axes 0, 1 and 2.

    Returns:
        the voxel array (X, Y, Z) and the voxel spacing (3,) in mm, both in RAS+ axis order.
    """
    data, affine = load_volume(path)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {data.shape}.")
    orientation = nib.orientations.io_orientation(affine)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zooms = np.empty(3)
    zooms[orientation[:, 0].astype(int)] = spacing  # input axis i becomes output axis orientation[i, 0]
    return nib.orientations.apply_orientation(data, orientation), zooms


def choose_slices(segmentation: np.ndarray) -> tuple[int, int, int]:
    """
    Index along each axis of the slice showing the most distinct labels of ``segmentation`` (X, Y, Z), ties
    broken by the largest foreground area; the centre of the volume along an axis without foreground.
    """
    labels = [int(v) for v in np.unique(segmentation) if v > 0]
    foreground = segmentation > 0
    centre = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        area = foreground.sum(axis=others)
        if not area.any():
            centre.append(segmentation.shape[axis] // 2)
            continue
        distinct = sum((segmentation == label).any(axis=others).astype(float) for label in labels)
        centre.append(int(np.argmax(distinct + area / (area.max() + 1.0))))
    return tuple(centre)


def _cut(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice of a RAS+ volume as a 2D (rows, columns) picture in radiological display orientation."""
    plane = np.take(volume, index, axis=axis).T  # rows: the later axis (A or S), columns: the earlier (R or A)
    return plane[::-1, ::-1]  # anterior/superior to the top; patient right (or anterior) to the left


def orthogonal_slices(volume: np.ndarray, centre: Sequence[int]) -> dict[str, np.ndarray]:
    """
    Axial, coronal and sagittal slices of a RAS+ volume through ``centre`` (voxel indices), as 2D arrays ready
    for ``imshow``: axial rows run anterior -> posterior and columns patient right -> left; coronal rows
    superior -> inferior and columns right -> left; sagittal rows superior -> inferior and columns
    anterior -> posterior.
    """
    return {view: _cut(volume, axis, int(centre[axis])) for view, axis, _ in _VIEWS}


def _aspects(zooms: Sequence[float]) -> dict[str, float]:
    """``imshow`` aspect (row spacing / column spacing) of each view of a RAS+ volume with spacing ``zooms``."""
    x, y, z = (float(v) for v in zooms)
    return {"axial": y / x, "coronal": z / x, "sagittal": z / y}


def save_figure_atomic(fig: Figure, output_png: str, dpi: int) -> str:
    """Save ``fig`` as PNG through a temporary file and ``os.replace`` (readers never see half a file); closes it."""
    try:
        with atomic_output(output_png, suffix=".tmp.png") as temporary:
            fig.savefig(temporary, dpi=dpi, facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return output_png


def save_overlay_png(
    image_path: str,
    prediction_path: str,
    output_png: str,
    label_path: str | None = None,
    label_names: Mapping[int, str] | None = None,
    window: tuple[float, float] = (40.0, 400.0),
    title: str | None = None,
    scores: Mapping[int, float] | None = None,
) -> str:
    """
    Draw axial, coronal and sagittal CT slices through the organs with segmentation contours.

    The slices are chosen to show the most organs (:func:`choose_slices` on the prediction, or on the ground
    truth where the prediction is empty there). CT is shown in a window of (level, width) HU; the prediction
    is a solid contour over a light fill and the ground truth a dashed contour, in the colour of each organ
    (:func:`organ_colour`), with a legend of the organs present. The picture is ``OVERLAY_FIGSIZE`` at
    ``OVERLAY_DPI`` (1200 x 500 pixels).

    Args:
        image_path: CT NIfTI file (HU).
        prediction_path: label NIfTI file of the same grid (any orientation: both are reoriented to RAS+).
        output_png: PNG to write (atomically; folders are created).
        label_path: ground-truth label NIfTI file, or None (inference).
        label_names: label value -> organ name, e.g. ``BTCV_LABELS``; underscores are shown as spaces.
        window: soft-tissue window (level, width) in HU.
        title: picture title; default the image file name.
        scores: label value -> score (e.g. Dice) shown after the organ's name in the legend.

    Returns:
        ``output_png``.

    Example::

        save_overlay_png("img0035.nii.gz", "img0035_seg.nii.gz", "img0035.png", "label0035.nii.gz", BTCV_LABELS)
    """
    image, zooms = load_canonical(image_path)
    prediction = load_canonical(prediction_path)[0].astype(np.int64, copy=False)
    truth = load_canonical(label_path)[0].astype(np.int64, copy=False) if label_path else None
    for path, volume in ((prediction_path, prediction), (label_path, truth)):
        if volume is not None and volume.shape != image.shape:
            raise ValueError(f"{path}: shape {volume.shape} does not match image {image_path} {image.shape}.")
    union = prediction if truth is None else np.where(prediction > 0, prediction, truth)
    centre = choose_slices(union)
    present = [int(v) for v in np.unique(union) if v > 0]
    level, width = window
    aspects = _aspects(zooms)
    ct_slices = orthogonal_slices(image, centre)
    overlays = [(orthogonal_slices(prediction, centre), "solid", 1.5, True)]
    if truth is not None:
        overlays.append((orthogonal_slices(truth, centre), "dashed", 1.2, False))

    fig, axes = plt.subplots(1, 3, figsize=OVERLAY_FIGSIZE, facecolor=_BACKGROUND)
    for ax, (view, axis, letters) in zip(axes, _VIEWS):
        ax.set_facecolor(_BACKGROUND)
        ax.imshow(
            ct_slices[view],
            cmap="gray",
            vmin=level - width / 2,
            vmax=level + width / 2,
            aspect=aspects[view],
            interpolation="antialiased",
        )
        for slices, style, linewidth, fill in overlays:
            plane = slices[view]
            for value in present:
                mask = plane == value
                if not mask.any() or mask.all():
                    continue
                colour = organ_colour(value)
                if fill:
                    rgba = np.zeros(mask.shape + (4,))
                    rgba[mask] = (*colour, 0.22)
                    ax.imshow(rgba, aspect=aspects[view], interpolation="nearest")
                ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=linewidth, linestyles=style)
        rows, cols = ct_slices[view].shape
        ax.set_title(f"{view}  ({'xyz'[axis]} = {centre[axis]})", color=_TEXT, fontsize=11)
        for text, xy, align in zip(
            letters,
            ((0.01, 0.5), (0.99, 0.5), (0.5, 0.99), (0.5, 0.01)),
            (("left", "center"), ("right", "center"), ("center", "top"), ("center", "bottom")),
        ):
            ax.text(
                *xy,
                text,
                transform=ax.transAxes,
                color="#ffcc00",
                fontsize=10,
                fontweight="bold",
                ha=align[0],
                va=align[1],
                path_effects=[patheffects.withStroke(linewidth=2.5, foreground="black")],
            )
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        ax.axis("off")

    entries = legend_entries(present, label_names, scores)
    if entries:
        handles = [Patch(facecolor=colour, edgecolor=colour, label=text) for text, colour in entries]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(7, len(handles)),
            fontsize=9,
            frameon=False,
            labelcolor=_TEXT,
            handlelength=1.2,
            columnspacing=1.2,
        )
    key = "prediction: solid" + (", ground truth: dashed" if truth is not None else "")
    heading = title if title is not None else os.path.basename(image_path)
    fig.suptitle(f"{heading}    ({key}; window L {level:g} / W {width:g} HU)", color=_TEXT, fontsize=12)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.15 if len(entries) > 7 else 0.1, wspace=0.04)
    return save_figure_atomic(fig, output_png, OVERLAY_DPI)


class SaveOverlayd(SavedSegmentationTransform):
    """
    Draws the overlay of the saved segmentation on the original image
    (:func:`scripts.reports.overlays.save_overlay_png`) into ``output_dir/<case>.png``. Arguments as
    :class:`SavedSegmentationTransform`, plus ``window``: the CT window (level, width) in HU.

    Example::

        SaveOverlayd("image", output_dir="eval/inference", enabled=True)(data)
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        output_dir: str = "./overlays",
        seg_dir: str | None = None,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        label_names: Mapping[int, str] | None = None,
        window: Sequence[float] = (40.0, 400.0),
        enabled: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys, output_dir, seg_dir, output_postfix, output_ext, label_names, enabled, allow_missing_keys
        )
        if len(window) != 2 or window[1] <= 0:
            raise ValueError(f"window must be (level, width) with width > 0, got {window}.")
        self.window = (float(window[0]), float(window[1]))

    def write_case(self, case: str, source: str, segmentation: str) -> None:
        output_png = os.path.join(self.output_dir, f"{case}.png")
        save_overlay_png(source, segmentation, output_png, None, self.label_names, self.window, title=case)
