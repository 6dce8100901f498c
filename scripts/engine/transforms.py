"""Transforms the bundle's configs use in place of MONAI's where MONAI's do not fit."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import Spacingd as _MonaiSpacingd

__all__ = ["Spacingd"]


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
