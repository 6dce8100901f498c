"""
Transforms of the bundle's configs: MONAI's ``Spacingd`` adapted where it does not fit, and the base of the
inference postprocessing that writes a file per case next to the saved segmentation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.transforms import Spacingd as _MonaiSpacingd

from scripts.data.labels import BTCV_LABELS
from scripts.engine.infer_folder import item_case_name

__all__ = ["Spacingd", "SavedSegmentationTransform", "source_filename"]

logger = logging.getLogger(__name__)


class Spacingd(_MonaiSpacingd):
    """
    MONAI's ``Spacingd`` that leaves alone the items named ``<key>_*`` that are not metadata dicts.

    After resampling a NIfTI image, MONAI 1.6's ``Spacingd`` updates every item whose name starts with ``<key>_``
    with the image's metadata, and fails on any that is not a dict. MONAI Label puts the input's file name in
    ``image_path``, so with MONAI's transform every MONAI Label inference request fails; this one sets such
    items aside while resampling. Arguments and inverse are MONAI's; ``train.json`` uses it too, so that
    training and inference preprocess alike.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: v for k, v in data.items() if isinstance(k, str) and k.startswith(prefixes) and not isinstance(v, dict)
        }
        d = super().__call__({k: v for k, v in data.items() if k not in aside}, lazy)
        d.update(aside)
        return d


def source_filename(data: Mapping[Hashable, Any], key: Hashable) -> str | None:
    """
    The file ``data[key]`` was loaded from: ``filename_or_obj`` of its MetaTensor meta or of ``<key>_meta_dict``;
    None when there is none, or when it names several files (a batch of more than one).
    """
    meta = getattr(data.get(key), "meta", None) or data.get(f"{key}_meta_dict") or {}
    source = meta.get("filename_or_obj")
    if isinstance(source, (list, tuple)):  # a batch of one
        source = source[0] if len(source) == 1 else None
    return str(source) if source else None


class SavedSegmentationTransform(MapTransform):
    """
    Base of inference postprocessing placed after ``SaveImaged``: for every case, :meth:`write_case` gets the case
    name (the item's ``"case"`` entry, else :func:`case_name` of the source), the original image (the
    ``filename_or_obj`` of the key's MetaTensor meta, or of ``<key>_meta_dict``: a NIfTI file or a DICOM series)
    and the saved segmentation ``seg_dir/<case>_<output_postfix><output_ext>``, as inference names it. A failure is
    logged as a warning naming the case; the data passes through unchanged.

    Args:
        keys: the image key(s) whose file names identify the cases.
        output_dir: folder of what is written.
        seg_dir: folder of the saved segmentations; default ``output_dir``.
        output_postfix: ``SaveImaged``'s ``output_postfix``.
        output_ext: ``SaveImaged``'s ``output_ext``.
        label_names: label value -> class name (int or string keys, as config id ``label_names``); default
            ``BTCV_LABELS``.
        enabled: False makes the transform a no-op (so that a config can switch it off).
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        output_dir: str = "./outputs",
        seg_dir: str | None = None,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        label_names: Mapping[int, str] | None = None,
        enabled: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = output_dir
        self.seg_dir = seg_dir if seg_dir is not None else output_dir
        self.output_postfix = output_postfix
        self.output_ext = output_ext
        self.label_names = {int(k): v for k, v in (BTCV_LABELS if label_names is None else label_names).items()}
        self.enabled = bool(enabled)

    def write_case(self, case: str, source: str, segmentation: str) -> None:
        """Write this transform's output for one case: its name, ``source`` image, ``segmentation`` file."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        name = type(self).__name__
        for key in self.key_iterator(d):
            source = source_filename(d, key)
            if source is None:
                logger.warning(f"{name}: {key!r} has no filename_or_obj; case skipped.")
                continue
            case = item_case_name(d, source)
            postfix = f"_{self.output_postfix}" if self.output_postfix else ""
            segmentation = os.path.join(self.seg_dir, f"{case}{postfix}{self.output_ext}")
            try:
                self.write_case(case, source, segmentation)
            except Exception as e:
                logger.warning(f"{name}: {case} ({source}) skipped ({type(e).__name__}: {e}).")
        return d
