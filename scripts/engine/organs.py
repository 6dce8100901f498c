"""
Organ subsets: the labels a user asks for by name (``--organs "['liver','spleen']"``), checked against the label
table of the config, and a transform that keeps only those labels in a segmentation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["select_organs", "KeepOrgansd"]


def select_organs(label_names: Mapping[Any, str], organs: Sequence[str] | str | None = None) -> dict[int, str]:
    """
    label -> name of the organs named in ``organs`` (a list of names, or one comma-separated string), in label order;
    every foreground label of ``label_names`` (label -> name, keys int or str as in the configs) when ``organs`` is
    ``None`` or empty. Label 0 (background) is never selected.

    Raises:
        ValueError: listing the valid names, when a name is not in ``label_names`` or is the background.
    """
    foreground = {int(label): name for label, name in label_names.items() if int(label) != 0}
    if organs is None or len(organs) == 0:
        return dict(sorted(foreground.items()))
    requested = [o.strip() for o in organs.split(",")] if isinstance(organs, str) else [str(o).strip() for o in organs]
    by_name = {name: label for label, name in foreground.items()}
    unknown = [name for name in requested if name not in by_name]
    if unknown:
        raise ValueError(
            f"config id 'organs': {unknown} not in the label table (config id 'label_names'); "
            f"valid names: {', '.join(by_name)}."
        )
    chosen = sorted({by_name[name] for name in requested})
    return {label: foreground[label] for label in chosen}


class KeepOrgansd(MapTransform):
    """
    Sets to background (0) every label of ``keys`` that is not one of ``organs``; the dtype, shape and metadata of each
    label map are kept. With ``organs`` ``None`` or empty it returns the data unchanged.

    Args:
        keys: label maps to filter (any shape, integer labels).
        label_names: label -> name, as in the configs.
        organs: names to keep, see :func:`select_organs`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_names: Mapping[Any, str],
        organs: Sequence[str] | str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.all_organs = organs is None or len(organs) == 0
        self.labels = sorted(select_organs(label_names, organs))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.all_organs:
            return d
        for key in self.key_iterator(d):
            labels = d[key]
            if isinstance(labels, torch.Tensor):
                keep = torch.isin(labels, torch.as_tensor(self.labels, dtype=labels.dtype, device=labels.device))
                d[key] = labels * keep.to(labels.dtype)
            else:
                d[key] = np.where(np.isin(labels, self.labels), labels, 0).astype(np.asarray(labels).dtype)
        return d
