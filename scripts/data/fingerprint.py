"""
Dataset fingerprint: derive the recipe's data-dependent numbers from a labelled dataset and write them as a
config overlay, so that training, evaluation and inference on a new dataset need no code change.

From the labelled cases of a datalist (written by :mod:`scripts.data.prepare_dataset` or
:mod:`scripts.data.prepare_btcv`) it computes, nnU-Net style:

- the target spacing: the median spacing per axis; for strongly anisotropic data (coarse axis > 3x the finer
  ones and < 1/3 as many voxels) the coarse axis takes the 10th percentile of its spacings instead (but not
  finer than the other axes), so that thick-slice cases are not upsampled needlessly;
- for CT, the intensity window and normalisation from the voxels inside the labels, pooled over all cases:
  0.5 / 99.5 percentiles (``hu_min`` / ``hu_max``), mean and standard deviation; for any other modality, per-image
  z-score normalisation instead, and a foreground crop above the darkest value;
- the patch size: the median image size at the target spacing, rounded down to a multiple of the network's
  total stride (the ``size_divisor`` of ``network_def`` in ``configs/train.json``), at least twice that stride and
  at most the paper's patch;
- the classes: ``label_names`` from the datalist (the configs derive ``num_classes`` from it).

Per-case spacing, shape and intensity range come from MONAI's :class:`monai.apps.auto3dseg.DataAnalyzer`
(images in RAS orientation, the axis order of the training transforms). The foreground statistics are pooled
over voxels, which DataAnalyzer cannot do (its summary averages per-case percentiles), so they are computed
here. For BTCV this reproduces the paper's values (-958, 327, 82.92, 136.97; ``configs/datasets/btcv.json``).

Writes ``<output_dir>/<name>.json`` (the config overlay) and ``<output_dir>/<name>_metadata.json`` (the bundle
metadata with this dataset's classes, for ``--meta_file``)::

    python -m scripts.data.fingerprint --datalist /data/Task09_Spleen/datalist.json --name spleen
    python -m monai.bundle run training --meta_file configs/datasets/spleen_metadata.json \\
        --config_file "['configs/train.json','configs/datasets/spleen.json']"
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.apps.auto3dseg import DataAnalyzer
from monai.bundle import ConfigParser
from monai.utils.enums import DataStatsKeys, ImageStatsKeys

from scripts.data.checks import run_data_cli
from scripts.data.datalist import read_datalist
from scripts.engine.atomic import write_json_atomic

__all__ = [
    "BUNDLE_ROOT",
    "anisotropic_target_spacing",
    "foreground_intensity_statistics",
    "fit_patch_size",
    "network_size_divisor",
    "dataset_metadata",
    "fingerprint",
]

logger = logging.getLogger(__name__)

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: nnU-Net's anisotropy rule: an axis counts as coarse when its spacing exceeds this many times the others'
ANISOTROPY_RATIO = 3.0
#: the percentile of the coarse axis' spacings used as its target on anisotropic data
COARSE_AXIS_PERCENTILE = 10.0
#: the 0.5 and 99.5 foreground percentiles clip the CT intensities
CLIP_PERCENTILES = (0.5, 99.5)
#: the paper's training patch, MONAI (x, y, z) order
DEFAULT_MAX_PATCH = (192, 192, 48)


def anisotropic_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> list[float]:
    """
    Target spacing of a dataset, nnU-Net's rule.

    Args:
        spacings: (cases, 3) voxel spacings in mm.
        shapes: (cases, 3) image sizes in voxels, same axis order.

    Returns:
        the median spacing per axis, except that when the coarsest axis' median spacing is more than
        ``ANISOTROPY_RATIO`` times the other axes' and its median size at the target spacing is less than a
        third of theirs, that axis takes the ``COARSE_AXIS_PERCENTILE`` percentile of its spacings (but not less
        than the other axes' largest median spacing).
    """
    spacings, shapes = np.asarray(spacings, float), np.asarray(shapes, float)
    target = np.median(spacings, axis=0)
    sizes = np.median(spacings * shapes, axis=0) / target
    coarse = int(np.argmax(target))
    others = [a for a in range(3) if a != coarse]
    if target[coarse] > ANISOTROPY_RATIO * max(target[others]) and sizes[coarse] * ANISOTROPY_RATIO < min(
        sizes[others]
    ):
        target[coarse] = max(np.percentile(spacings[:, coarse], COARSE_AXIS_PERCENTILE), max(target[others]))
    return [float(s) for s in target]


def foreground_intensity_statistics(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """
    Intensity statistics of the voxels inside the labels (label > 0), pooled over all cases.

    Args:
        pairs: (image path, label path) of each case.

    Returns:
        ``{"percentile_00_5", "percentile_99_5", "mean", "std", "voxels"}`` (population std).
    """
    values = []
    for image, label in pairs:
        img = nib.load(image)
        data = np.asanyarray(img.dataobj, dtype=np.float64).reshape(img.shape[:3])
        mask = np.asanyarray(nib.load(label).dataobj).reshape(data.shape) > 0
        values.append(data[mask])
    pooled = np.concatenate(values) if values else np.empty(0)
    if pooled.size == 0:
        raise ValueError("no labelled voxels in any case: the foreground intensity statistics need labels > 0.")
    low, high = np.percentile(pooled, CLIP_PERCENTILES)
    return {
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
        "mean": float(pooled.mean()),
        "std": float(pooled.std()),
        "voxels": int(pooled.size),
    }


def network_size_divisor(config_file: str = os.path.join(BUNDLE_ROOT, "configs", "train.json")) -> list[int]:
    """The total stride (x, y, z) of the config's ``network_def``: its ``size_divisor``, built without weights."""
    parser = ConfigParser()
    parser.read_config(config_file)
    with torch.device("meta"):  # the structure only: no weights are allocated or initialised
        network = parser.get_parsed_content("network_def")
    return [int(d) for d in network.size_divisor]


def fit_patch_size(
    median_shape: Sequence[float], network_stride: Sequence[int], max_patch: Sequence[int] = DEFAULT_MAX_PATCH
) -> list[int]:
    """
    The largest patch, per axis, that fits the median image, is a multiple of the network's total stride, is at
    least twice that stride (the deepest feature map must not be a single voxel) and at most ``max_patch``.
    """
    patch = []
    for size, stride, largest in zip(median_shape, network_stride, max_patch):
        fitted = int(math.floor(size / stride)) * stride
        patch.append(int(min(max(fitted, 2 * stride), max(largest // stride * stride, 2 * stride))))
    return patch


def dataset_metadata(
    base: Mapping[str, Any],
    name: str,
    label_names: Mapping[int, str],
    modality: str,
    patch_size: Sequence[int],
    value_range: Sequence[float],
) -> dict[str, Any]:
    """The bundle metadata ``base`` with this dataset's name, classes, modality and patch size."""
    meta = json.loads(json.dumps(base))
    classes = ", ".join(f"{k} {v}" for k, v in sorted(label_names.items()))
    meta["name"] = f"CoTr segmentation of {name}"
    meta["task"] = f"Segmentation of {modality} ({name}, {len(label_names) - 1} classes)"
    meta["data_source"] = f"user dataset '{name}' (see its datalist)"
    meta["image_classes"] = f"single channel {modality}" + (" in Hounsfield units" if modality.upper() == "CT" else "")
    meta["label_classes"] = classes
    meta["pred_classes"] = f"{len(label_names)} channels, one per label class above"
    meta["eval_metrics"] = {}
    image = meta["network_data_format"]["inputs"]["image"]
    image.update(
        modality=modality,
        format="hounsfield" if modality.upper() == "CT" else "magnitude",
        spatial_shape=list(patch_size),
        value_range=[round(float(v), 4) for v in value_range],
    )
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred.update(
        num_channels=len(label_names),
        spatial_shape=list(patch_size),
        channel_def={str(k): v for k, v in sorted(label_names.items())},
    )
    return meta


def _case_stats(pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """DataAnalyzer's per-case statistics (RAS orientation) of the (image, label) pairs."""
    datalist = {"training": [{"image": image, "label": label} for image, label in pairs]}
    analyzer = DataAnalyzer(datalist, dataroot="", output_path="", device="cpu", worker=0)
    return list(analyzer.get_all_case_stats(key="training")[DataStatsKeys.BY_CASE])


def fingerprint(
    datalist: str,
    dataset_dir: str | None = None,
    name: str | None = None,
    output_dir: str | None = None,
    keys: Sequence[str] = ("training", "validation"),
    max_patch: Sequence[int] = DEFAULT_MAX_PATCH,
    network_stride: Sequence[int] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """
    Fingerprint the labelled cases of a datalist and write the config overlay and metadata of the dataset.

    Args:
        datalist: datalist JSON (its ``labels`` and ``modality`` are used; ``modality`` defaults to CT).
        dataset_dir: folder the datalist paths are relative to; default the datalist's ``dataset_dir`` entry,
            else its folder.
        name: dataset name, the overlay's file name; default the datalist file name without ``datalist_``.
        output_dir: folder of the overlay; default ``configs/datasets`` of this bundle.
        keys: datalist keys whose labelled cases are fingerprinted.
        max_patch: largest patch size (x, y, z).
        network_stride: the network's total stride (x, y, z); patch sizes are multiples of it. Default: the
            ``size_divisor`` of ``network_def`` in ``configs/train.json`` (:func:`network_size_divisor`).
        overwrite: replace existing overlay and metadata files.

    Returns:
        the overlay written (config id -> value).
    """
    datalist = os.path.abspath(os.path.expanduser(str(datalist)))
    content = read_datalist(datalist)
    base = dataset_dir or content.get("dataset_dir") or os.path.dirname(datalist)
    base = os.path.abspath(os.path.expanduser(str(base)))
    if name is None:
        name = (
            os.path.splitext(os.path.basename(datalist))[0].removeprefix("datalist_").removeprefix("datalist")
            or "dataset"
        )
    output_dir = os.path.abspath(output_dir or os.path.join(BUNDLE_ROOT, "configs", "datasets"))
    overlay_path = os.path.join(output_dir, f"{name}.json")
    meta_path = os.path.join(output_dir, f"{name}_metadata.json")
    for path in (overlay_path, meta_path):
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} already exists; pass --overwrite True to replace it.")
    if "labels" not in content:
        raise ValueError(
            f"{datalist}: no 'labels' entry; write the datalist with python -m scripts.data.prepare_dataset."
        )
    label_names = {int(k): str(v) for k, v in content["labels"].items()}
    modality = str((content.get("modality") or {}).get("0", "CT"))
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    pairs = [
        (os.path.join(base, item["image"]), os.path.join(base, item["label"]))
        for key in keys
        for item in content.get(key, [])
        if item.get("label")
    ]
    if not pairs:
        raise ValueError(f"{datalist}: no labelled cases under {list(keys)}.")

    logger.info(f"fingerprinting {len(pairs)} labelled case(s) of {datalist}")
    cases = _case_stats(pairs)
    spacings = np.array([c[DataStatsKeys.IMAGE_STATS][ImageStatsKeys.SPACING] for c in cases], float)
    shapes = np.array([c[DataStatsKeys.IMAGE_STATS][ImageStatsKeys.SHAPE][0] for c in cases], float)
    spacing = anisotropic_target_spacing(spacings, shapes)
    median_shape = np.median(shapes * spacings / np.asarray(spacing), axis=0)
    patch = fit_patch_size(median_shape, network_stride or network_size_divisor(), max_patch)

    names_by_value = {str(k): v for k, v in sorted(label_names.items())}  # the config ids' string keys
    overlay: dict[str, Any] = {
        "dataset_dir": base,
        "data_list_file_path": datalist,
        "label_names": names_by_value,
        "merged_label_map": list(range(len(label_names))),
        "merged_label_names": names_by_value,
        "target_spacing": [round(s, 4) for s in spacing],
        "patch_size": patch,
    }
    if modality.upper() == "CT":
        stats = foreground_intensity_statistics(pairs)
        overlay.update(
            hu_min=stats["percentile_00_5"],
            hu_max=stats["percentile_99_5"],
            intensity_mean=stats["mean"],
            intensity_std=stats["std"],
        )
        value_range = [(overlay[k] - stats["mean"]) / stats["std"] for k in ("hu_min", "hu_max")]
        normalisation = (
            f"clip to [{stats['percentile_00_5']:.2f}, {stats['percentile_99_5']:.2f}] HU, "
            f"z-score with mean {stats['mean']:.2f}, std {stats['std']:.2f}"
        )
    else:
        darkest = min(float(c[DataStatsKeys.IMAGE_STATS][ImageStatsKeys.INTENSITY][0]["min"]) for c in cases)
        overlay["foreground_crop_hu"] = darkest
        overlay["normalize_intensity"] = {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True}
        value_range, stats = [], {}
        normalisation = f"per-image z-score ({modality}); foreground crop above {darkest:g}"
    overlay["dataset_fingerprint"] = {
        "cases": len(pairs),
        "modality": modality,
        "median_spacing": [float(s) for s in np.median(spacings, axis=0)],
        "median_shape_at_target_spacing": [float(s) for s in median_shape],
        "foreground_intensity": stats,
    }

    with open(os.path.join(BUNDLE_ROOT, "configs", "metadata.json")) as f:
        base_meta = json.load(f)
    write_json_atomic(
        dataset_metadata(base_meta, name, label_names, modality, patch, value_range), meta_path, overwrite=overwrite
    )
    write_json_atomic(overlay, overlay_path, overwrite=overwrite)
    print(
        f"wrote {overlay_path} and {meta_path}: {len(pairs)} cases, {len(label_names)} classes, spacing "
        f"{'x'.join(f'{s:.3g}' for s in spacing)} mm, patch {'x'.join(map(str, patch))}, {normalisation}"
    )
    return overlay


if __name__ == "__main__":
    run_data_cli(fingerprint, serialize=lambda overlay: None)  # fingerprint prints its own summary
