"""
Type and range checks of the bundle's tunable config ids, run first in every config's ``initialize``.

A command-line override has no declared type: ``--max_epochs ten`` arrives as the string ``"ten"`` and
``--check_data false`` as the string ``"false"`` (which is true in Python). Without a check such a value fails
hours later deep inside ignite or MONAI, or silently does the opposite of what was asked. The configs collect
the ids they use in a ``checked_config`` dict and call :func:`check_config` on it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from scripts.engine.inferers import PRECISIONS

__all__ = ["ConfigValueError", "RULES", "check_config", "check_patch_size"]


class ConfigValueError(ValueError):
    """Config values of the wrong type or range; the message lists each id, the value and what it must be."""


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _int(low: int | None = None) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and (low is None or v >= low)


def _number(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False):
    def check(v: Any) -> bool:
        if not _is_number(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)

    return check


def _triple(item: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 3 and all(item(x) for x in v)


def _range(item: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(map(item, v)) and v[0] <= v[1]

    return check


def _is_path(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _is_resume(v: Any) -> bool:
    return v is None or isinstance(v, bool) or _is_path(v)


def _is_label_names(v: Any) -> bool:
    if not isinstance(v, Mapping) or not all(isinstance(name, str) and name for name in v.values()):
        return False
    try:
        return sorted(int(k) for k in v) == list(range(len(v)))
    except (TypeError, ValueError):
        return False


def _is_label_map(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0 and v[0] == 0 and all(map(_int(0), v))


def _is_organs(v: Any) -> bool:
    names = v.split(",") if isinstance(v, str) else v
    return v is None or (isinstance(names, Sequence) and all(isinstance(n, str) and n.strip() for n in names))


def _is_tolerance_mm(v: Any) -> bool:
    values = v.values() if isinstance(v, Mapping) else [v]
    return all(_number(0)(x) for x in values) and (not isinstance(v, Mapping) or all(isinstance(k, str) for k in v))


def _is_flip_axes(v: Any) -> bool:
    return (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and all(_is_int(a) and a in (0, 1, 2) for a in v)
        and len(set(v)) == len(v)
    )


_POSITIVE_INT = ("a positive integer", _int(1))
_BOOL = ("a boolean (True or False)", _is_bool)
_NUMBER = ("a number", _number())
_PATH = ("a non-empty path string", _is_path)
_PROBABILITY = ("a probability, a number in [0, 1]", _number(0, 1))
_POSITIVE = ("a positive number", _number(0, low_open=True))

#: config id -> (what it must be, check)
RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "seed": ("an integer", _int()),
    "check_data": _BOOL,
    "num_classes": ("an integer >= 2 (classes including background)", _int(2)),
    "label_names": (
        "a map of label value -> class name for the values 0..N-1, e.g. {'0': 'background', '1': 'liver'}",
        _is_label_names,
    ),
    "patch_size": ("a list of 3 positive integers (x, y, z), e.g. [192, 192, 48]", _triple(_int(1))),
    "target_spacing": (
        "a list of 3 positive numbers in mm (x, y, z), e.g. [0.76, 0.76, 3.0]",
        _triple(_number(0, low_open=True)),
    ),
    "hu_min": _NUMBER,
    "hu_max": _NUMBER,
    "intensity_mean": _NUMBER,
    "intensity_std": ("a positive number", _number(0, low_open=True)),
    "foreground_crop_hu": _NUMBER,
    "batch_size": _POSITIVE_INT,
    "foreground_oversampling": ("a number in [0, 1]", _number(0, 1)),
    "num_workers": ("an integer >= 0", _int(0)),
    "cache_rate": ("a number in [0, 1]", _number(0, 1)),
    "max_epochs": _POSITIVE_INT,
    "epoch_length": ("a positive integer, or null for one pass over the data", lambda v: v is None or _int(1)(v)),
    "val_interval": _POSITIVE_INT,
    "learning_rate": ("a positive number", _number(0, low_open=True)),
    "momentum": ("a number in [0, 1)", _number(0, 1, high_open=True)),
    "weight_decay": ("a number >= 0", _number(0)),
    "poly_power": ("a positive number", _number(0, low_open=True)),
    "grad_clip_norm": ("a positive number", _number(0, low_open=True)),
    "dice_smooth": _POSITIVE,
    "rotate_range": ("a list of 3 angles >= 0 in radians (x, y, z), e.g. [0.0, 0.0, 3.1416]", _triple(_number(0))),
    "rotate_prob": _PROBABILITY,
    "scale_range": ("a list [min, max] of positive zoom factors, e.g. [0.7, 1.4]", _range(_number(0, low_open=True))),
    "scale_prob": _PROBABILITY,
    "flip_prob": _PROBABILITY,
    "noise_std": ("a number >= 0 (normalised intensity)", _number(0)),
    "noise_prob": _PROBABILITY,
    "blur_sigma": ("a list [min, max] of Gaussian sigmas >= 0 in voxels, e.g. [0.5, 1.0]", _range(_number(0))),
    "blur_prob": _PROBABILITY,
    "brightness_factor": ("a number in [0, 1) (the intensity scales by 1 +- factor)", _number(0, 1, high_open=True)),
    "brightness_prob": _PROBABILITY,
    "contrast_factor": ("a number in [0, 1) (the contrast scales by 1 +- factor)", _number(0, 1, high_open=True)),
    "contrast_prob": _PROBABILITY,
    "low_resolution_zoom": (
        "a list [min, max] of zoom factors in (0, 1], e.g. [0.5, 1.0]",
        _range(_number(0, 1, low_open=True)),
    ),
    "low_resolution_prob": _PROBABILITY,
    "gamma_range": ("a list [min, max] of positive gammas, e.g. [0.7, 1.5]", _range(_number(0, low_open=True))),
    "gamma_prob": _PROBABILITY,
    "inverted_gamma_prob": _PROBABILITY,
    "sw_batch_size": _POSITIVE_INT,
    "sw_overlap": ("a number in [0, 1)", _number(0, 1, high_open=True)),
    "checkpoint_interval": ("an integer >= 0 (epochs; 0 saves only at the end)", _int(0)),
    "resume": ("True, False or the path of a resumable checkpoint", _is_resume),
    "pretrained": ("an empty string or the path of a checkpoint to fine-tune from", lambda v: isinstance(v, str)),
    "overwrite": _BOOL,
    "skip_existing": _BOOL,
    "save_overlays": _BOOL,
    "save_measurements": _BOOL,
    "save_dicom_seg": _BOOL,
    "min_organ_ml": ("a number >= 0 (mL)", _number(0)),
    "merged_label_map": (
        "a list of merged class values >= 0, one per label value 0..N-1 and starting with 0 (background)",
        _is_label_map,
    ),
    "merged_label_names": (
        "a map of merged class value -> name for the values 0..M-1, e.g. {'0': 'background', '1': 'kidneys'}",
        _is_label_names,
    ),
    "organs": (
        "null (every organ) or a list of organ names of the label table, e.g. ['liver', 'spleen']",
        _is_organs,
    ),
    "sw_progress": _BOOL,
    "amp": _BOOL,
    "compile_network": _BOOL,
    "inference_precision": (f"one of {', '.join(map(repr, PRECISIONS))}", lambda v: v in PRECISIONS),
    "tta_flip_axes": ("a list of distinct spatial axes among 0, 1, 2 (may be empty)", _is_flip_axes),
    "hd_percentile": ("a number in (0, 100] (95 for HD95)", _number(0, 100, low_open=True)),
    "surface_dice_tolerance_mm": (
        "a number of mm >= 0, or a map organ name -> mm with an optional 'default', e.g. {'default': 3, 'liver': 5}",
        _is_tolerance_mm,
    ),
    "bundle_root": _PATH,
    "dataset_dir": _PATH,
    "data_list_file_path": _PATH,
    "output_dir": _PATH,
    "ckpt_dir": _PATH,
    "ckpt_path": _PATH,
    "ckpt_files": (
        "null (the one checkpoint ckpt_path) or a non-empty list of checkpoint paths, one per ensemble member",
        lambda v: v is None or (isinstance(v, Sequence) and not isinstance(v, str) and v and all(map(_is_path, v))),
    ),
    "image_readers": (
        "a non-empty list of MONAI image reader names, tried in order, e.g. ['NibabelReader']",
        lambda v: isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0 and all(map(_is_path, v)),
    ),
    "image_pattern": (
        "a glob pattern string that input folder entries must match, e.g. '*.nii.gz', or '' for every entry",
        lambda v: isinstance(v, str),
    ),
    "datalist": (
        "null (every NIfTI file and DICOM series of dataset_dir) or a list of image paths",
        lambda v: v is None or (isinstance(v, Sequence) and not isinstance(v, str) and all(_is_path(p) for p in v)),
    ),
    "debug": _BOOL,
}


def _problem(key: str, value: Any, expected: str) -> str:
    text = f"config id '{key}' must be {expected}, got {value!r} ({type(value).__name__})"
    if expected == _BOOL[0] and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        literal = value.strip().capitalize()
        text += (
            f". On the command line write --{key} {literal}: the CLI reads Python literals, "
            f"so '{value}' arrives as a string (and any non-empty string counts as true)"
        )
    return text


def check_config(values: Mapping[str, Any]) -> None:
    """
    Check config values against :data:`RULES` and raise once, listing every wrong value.

    Args:
        values: config id -> resolved value (``"checked_config"`` in the configs).

    Raises:
        ConfigValueError: some values have the wrong type or range (also ``hu_min >= hu_max``).
        KeyError: ``values`` holds an id without a rule (a mistake in the config).

    Examples::

        check_config({"max_epochs": 1000, "patch_size": [192, 192, 48]})
    """
    unknown = sorted(k for k in values if k not in RULES)
    if unknown:
        raise KeyError(f"no check defined for config id(s) {unknown}; add them to scripts.engine.config_check.RULES.")
    problems = [_problem(k, v, RULES[k][0]) for k, v in values.items() if not RULES[k][1](v)]
    lo, hi = values.get("hu_min"), values.get("hu_max")
    if _is_number(lo) and _is_number(hi) and lo >= hi:
        problems.append(f"config id 'hu_min' ({lo}) must be smaller than 'hu_max' ({hi})")
    names, num_classes = values.get("label_names"), values.get("num_classes")
    if _is_label_names(names) and _is_int(num_classes) and len(names) != num_classes:
        problems.append(
            f"config id 'label_names' names {len(names)} classes but 'num_classes' is {num_classes}: set both "
            "(e.g. --label_names \"{'0': 'background', '1': 'liver'}\"), or use the dataset overlay written by "
            "python -m scripts.data.fingerprint"
        )
    merged_map, merged_names = values.get("merged_label_map"), values.get("merged_label_names")
    if _is_label_map(merged_map) and _is_int(num_classes) and len(merged_map) != num_classes:
        problems.append(
            f"config id 'merged_label_map' maps {len(merged_map)} label values but 'num_classes' is {num_classes}"
        )
    if _is_label_map(merged_map) and _is_label_names(merged_names) and max(merged_map) + 1 != len(merged_names):
        problems.append(
            f"config id 'merged_label_names' names {len(merged_names)} merged classes but 'merged_label_map' "
            f"maps to {max(merged_map) + 1}"
        )
    if problems:
        raise ConfigValueError(f"{len(problems)} invalid config value(s):\n" + "\n".join(f"  {p}" for p in problems))


def check_patch_size(patch_size: Sequence[int], network: torch.nn.Module) -> None:
    """
    Check that ``patch_size`` (x, y, z) fits ``network``, run in ``initialize`` before any data is cached.

    A network with a ``size_divisor`` (its total stride per axis, e.g. CoTr's) decides with its
    ``check_input_size``; other networks (the MONAI baselines) are not checked here.

    Raises:
        ConfigValueError: the network refuses a patch of that size; the message names ``patch_size`` and the
            divisor.
    """
    check = getattr(network, "check_input_size", None)
    if getattr(network, "size_divisor", None) is None or check is None:
        return
    try:
        check(tuple(patch_size))
    except ValueError as e:
        raise ConfigValueError(
            f"config id 'patch_size' {list(patch_size)} does not fit network_def: {e} Choose a multiple of "
            f'{list(network.size_divisor)} per axis (e.g. --patch_size "{[2 * d for d in network.size_divisor]}").'
        ) from e
