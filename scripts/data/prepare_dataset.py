"""
Write the datalist JSON of a labelled dataset, from one of three layouts:

- ``btcv``: the "RawData" folder of the Synapse BTCV download::

      RawData/Training/img/img0001.nii.gz     RawData/Training/label/label0001.nii.gz   (30 labelled cases)
      RawData/Testing/img/img0061.nii.gz      (optional, unlabelled)

  with BTCV's label table (:data:`scripts.data.labels.BTCV_LABELS`) and its fixed ``paper`` split by default;
  ``python -m scripts.data.prepare_btcv`` is the same command.

- ``msd``: a Medical Segmentation Decathlon or nnU-Net raw dataset folder::

      Task09_Spleen/dataset.json            "labels" (and "modality" / "channel_names", "training", "numTraining")
      Task09_Spleen/imagesTr/spleen_2.nii.gz        (nnU-Net: spleen_2_0000.nii.gz, one file per channel)
      Task09_Spleen/labelsTr/spleen_2.nii.gz
      Task09_Spleen/imagesTs/spleen_1.nii.gz        (optional, unlabelled)

- ``folder``: image/label pairs found by two glob patterns; the parts matched by the wildcards name the case,
  so ``--images "ct/*_img.nii.gz" --labels "seg/*_mask.nii.gz"`` pairs ``ct/007_img.nii.gz`` with
  ``seg/007_mask.nii.gz``.

Every file is checked with :func:`scripts.data.checks.check_image_label_pair`, plus, for ``msd`` and ``folder``,
what a foreign dataset gets wrong: label values that
``dataset.json`` does not declare, declared labels with gaps, a file list that disagrees with the folder,
several image channels for a one-channel network, a single case, and images of mixed modality. All problems
are reported together, by file, before anything is written. The datalist's paths are relative to the dataset
folder, its ``labels`` and ``modality`` are what :mod:`scripts.data.fingerprint` turns into a config overlay.

Usage::

    python -m scripts.data.prepare_dataset btcv --data_dir /data/RawData --output /data/RawData/datalist.json
    python -m scripts.data.prepare_dataset msd --data_dir /data/Task09_Spleen --output /data/Task09_Spleen/datalist.json
    python -m scripts.data.prepare_dataset folder --images "/data/ct/*_img.nii.gz" --labels "/data/ct/*_seg.nii.gz" \\
        --label_names "['background','liver','tumour']" --output datalist.json --split kfold --fold 0
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from scripts.data.checks import DataValidationError, NonHUIntensityWarning, check_image_label_pair, run_data_cli
from scripts.data.datalist import make_datalist
from scripts.data.labels import BTCV_LABELS
from scripts.data.splits import SPLITS, describe_split, split_cases
from scripts.engine.atomic import write_json_atomic

__all__ = ["prepare_btcv", "prepare_msd", "prepare_folder", "find_btcv_cases", "parse_msd_labels", "match_pairs"]

#: the splits a dataset other than BTCV can use (BTCV's fixed "paper" split needs its case numbers)
DATASET_SPLITS = ("random", "kfold")
_NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_IMG_RE = re.compile(r"^img(\d+)(\.nii(?:\.gz)?)$")
_LABEL_RE = re.compile(r"^label(\d+)(\.nii(?:\.gz)?)$")


def _strip_ending(name: str, ending: str | None = None) -> str | None:
    """The file name without its NIfTI ending (``ending`` when given), or None when it has another ending."""
    for end in (ending,) if ending else _NIFTI_ENDINGS:
        if name.endswith(end):
            return name[: -len(end)]
    return None


def _list_nifti(folder: str, ending: str | None = None) -> dict[str, str]:
    """Stem -> file name of the NIfTI files of ``folder`` (hidden files such as macOS ``._x.nii.gz`` skipped)."""
    if not os.path.isdir(folder):
        return {}
    stems = {}
    for name in sorted(os.listdir(folder)):
        stem = _strip_ending(name, ending)
        if stem and not name.startswith("."):
            stems[stem] = name
    return stems


def parse_msd_labels(labels: Any, source: str) -> dict[int, str]:
    """
    Label value -> name from a ``dataset.json`` ``labels`` entry: MSD's ``{"0": "background", "1": "spleen"}``
    or nnU-Net v2's ``{"background": 0, "spleen": 1}``.

    Raises:
        DataValidationError: the entry is missing or malformed (e.g. nnU-Net region labels), has no background
            0, or its values have gaps (0, 1, 5): the network's output channels are the values 0..N-1.
    """
    if not isinstance(labels, Mapping) or not labels:
        raise DataValidationError([f"{source}: 'labels' is missing or empty; it must map label values to names"])
    try:
        if all(isinstance(v, str) for v in labels.values()):
            names = {int(k): str(v) for k, v in labels.items()}
        else:
            names = {int(v): str(k) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise DataValidationError(
            [
                f"{source}: 'labels' {dict(labels)!r} is not a value -> name map (MSD) or a name -> value map "
                "(nnU-Net); region-based labels (lists of values) are not supported, write one value per class"
            ]
        ) from None
    values = sorted(names)
    if values[0] != 0:
        raise DataValidationError([f"{source}: 'labels' has no background value 0 (values {values})"])
    if values != list(range(len(values))):
        gaps = sorted(set(range(values[-1] + 1)) - set(values))
        raise DataValidationError(
            [
                f"{source}: label values {values} have gaps (missing {gaps}); the network predicts the values "
                f"0..N-1, so renumber the classes consecutively in the label files and in 'labels' (for example "
                f"with monai.transforms.MapLabelValue, orig_labels={values}, target_labels={list(range(len(values)))})"
            ]
        )
    if len(values) < 2:
        raise DataValidationError([f"{source}: 'labels' declares only the background; add at least one class"])
    return names


def _msd_channels(spec: Mapping, source: str) -> list[str]:
    """The modality of each input channel from ``modality`` (MSD) or ``channel_names`` (nnU-Net v2)."""
    channels = spec.get("channel_names", spec.get("modality"))
    if not isinstance(channels, Mapping) or not channels:
        return ["CT"]
    try:
        return [str(channels[k]) for k in sorted(channels, key=int)]
    except ValueError:
        raise DataValidationError([f"{source}: channel keys {list(channels)} are not 0, 1, ..."]) from None


def _msd_cases(data_dir: str, spec: Mapping, source: str, problems: list[str]) -> dict[str, tuple[str, str]]:
    """
    Case -> (image, label) paths relative to ``data_dir``, from the ``training`` list (MSD) or from ``labelsTr``
    (nnU-Net v2, images ``<case>_0000``); files listed but absent, and files present but not listed, are
    problems.
    """
    ending = spec.get("file_ending")
    images = _list_nifti(os.path.join(data_dir, "imagesTr"), ending)
    labels = _list_nifti(os.path.join(data_dir, "labelsTr"), ending)
    cases: dict[str, tuple[str, str]] = {}
    listed = spec.get("training")
    if isinstance(listed, list) and listed:  # MSD: the file list is in dataset.json
        for i, item in enumerate(listed):
            if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
                problems.append(f"{source}: training[{i}] needs 'image' and 'label' entries, got {item!r}")
                continue
            image, label = (os.path.normpath(str(item[k])) for k in ("image", "label"))
            for path in (image, label):
                if not os.path.isfile(os.path.join(data_dir, path)):
                    problems.append(f"{os.path.join(data_dir, path)}: listed in {source} but not found")
            cases[_strip_ending(os.path.basename(image)) or image] = (image, label)
        listed_images = {os.path.basename(image) for image, _ in cases.values()}
        for name in sorted(set(images.values()) - listed_images):
            problems.append(
                f"{os.path.join(data_dir, 'imagesTr', name)}: in imagesTr but not listed in {source} 'training'; "
                "add it to the list or move it out of imagesTr"
            )
    else:  # nnU-Net v2: labelsTr names the cases, images carry the channel suffix
        for case, label in labels.items():
            image = images.get(f"{case}_0000")
            if image is None:
                problems.append(
                    f"{os.path.join(data_dir, 'labelsTr', label)}: no image imagesTr/{case}_0000{ending or '.nii.gz'}"
                )
                continue
            cases[case] = (f"imagesTr/{image}", f"labelsTr/{label}")
        orphans = {_CHANNEL_RE.match(s).group("case") if _CHANNEL_RE.match(s) else s for s in images}
        for case in sorted(orphans - set(labels)):
            problems.append(f"{os.path.join(data_dir, 'imagesTr', case)}*: image without a label in labelsTr")
    declared = spec.get("numTraining")
    if isinstance(declared, int) and declared != len(cases):
        problems.append(
            f"{source}: numTraining is {declared} but {len(cases)} labelled case(s) were found in "
            f"{os.path.join(data_dir, 'labelsTr')}; fix numTraining or the folder"
        )
    return cases


def _extra_channel_files(data_dir: str, cases: Mapping[str, tuple[str, str]], in_channels: int) -> list[str]:
    """Problems for cases that have more ``_000X`` channel files than the network's ``in_channels``."""
    problems = []
    for image, _ in cases.values():
        folder, name = os.path.split(os.path.join(data_dir, image))
        stem = _strip_ending(name) or name
        match = _CHANNEL_RE.match(stem)
        if not match:
            continue
        channels = sorted(
            glob.glob(os.path.join(folder, f"{glob.escape(match.group('case'))}_[0-9][0-9][0-9][0-9].nii*"))
        )
        if len(channels) > in_channels:
            problems.append(
                f"{os.path.join(folder, match.group('case'))}_*: {len(channels)} channel files "
                f"({', '.join(os.path.basename(c) for c in channels)}) "
                f"but the network takes {in_channels} channel(s) (network_def#in_channels); keep one channel per case "
                "or build the network with more input channels"
            )
    return problems


def _check_pairs(
    data_dir: str, pairs: Sequence[tuple[str, str | None]], num_classes: int, modality: str | None
) -> list[str]:
    """
    Validate every (image, label) pair (paths relative to ``data_dir``) and the modality of the images: a CT
    dataset whose image does not look like Hounsfield units, or a dataset whose images are a mix of HU-like and
    non-HU images, is a problem naming the files. ``modality`` None (BTCV, raw CT by construction): the pairs are
    checked one by one and a non-HU image is only a warning.
    """
    if modality is None:
        return [
            p
            for image, label in pairs
            for p in check_image_label_pair(
                os.path.join(data_dir, image), None if label is None else os.path.join(data_dir, label), num_classes
            )
        ]
    problems: list[str] = []
    hu_like, not_hu = [], []
    for image, label in pairs:
        image_path = os.path.join(data_dir, image)
        label_path = None if label is None else os.path.join(data_dir, label)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NonHUIntensityWarning)
            problems += check_image_label_pair(image_path, label_path, num_classes)
        (not_hu if any(issubclass(w.category, NonHUIntensityWarning) for w in caught) else hu_like).append(image_path)
        for w in caught:  # the others (e.g. a header nibabel repaired, named by scripts.data.geometry) reach the user
            if not issubclass(w.category, NonHUIntensityWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if modality.upper() == "CT":
        problems += [
            f"{p}: the dataset is declared CT but this image is not in Hounsfield units (no air near -1000 HU); "
            "use raw CT, or declare the modality (dataset.json 'modality'/'channel_names', or --modality) if it is "
            "not CT"
            for p in not_hu
        ]
    elif hu_like and not_hu:
        minority, majority = (hu_like, not_hu) if len(hu_like) <= len(not_hu) else (not_hu, hu_like)
        kind = "looks like CT in Hounsfield units" if minority is hu_like else "does not look like CT"
        problems += [
            f"{p}: mixed modalities: this image {kind}, unlike {len(majority)} other image(s) of this "
            f"{modality} dataset; one network input channel must hold one modality"
            for p in minority
        ]
    return problems


def _split(
    cases: Mapping[Any, tuple[str, str | None]], split: str, seed: int, val_fraction: float, num_folds: int, fold: int
) -> tuple[list[Any], list[Any]]:
    """
    The training and validation cases (keys of ``cases``) of :func:`scripts.data.splits.split_cases`: BTCV's
    integer case numbers are split as they are (its ``paper`` split names them), other cases by their position
    in name order.
    """
    names = sorted(cases)
    ids = names if all(isinstance(n, int) for n in names) else list(range(len(names)))
    train, val = split_cases(ids, split=split, seed=seed, val_fraction=val_fraction, num_folds=num_folds, fold=fold)
    by_id = dict(zip(ids, names))
    return [by_id[i] for i in train], [by_id[i] for i in val]


def _write(
    data_dir: str,
    cases: Mapping[Any, tuple[str, str | None]],
    split_cases_: tuple[list[Any], list[Any]],
    testing: Sequence[str],
    label_names: Mapping[int, str],
    modality: str,
    description: str,
    output: str,
    how: str,
    overwrite: bool,
) -> str:
    """Write the datalist of the split cases atomically and print a summary; returns the datalist path."""

    def items(selected: list[Any]) -> list[dict]:
        return [{"image": cases[c][0], "label": cases[c][1]} for c in selected]

    train, val = split_cases_
    datalist = make_datalist(
        items(train), items(val), [{"image": t} for t in testing], label_names, description, how, modality
    )
    datalist["dataset_dir"] = data_dir  # where the relative paths start, for scripts.data.fingerprint
    write_json_atomic(datalist, output, overwrite=overwrite)
    counts = ", ".join(f"{k} {len(datalist[k])}" for k in ("training", "validation", "testing"))
    classes = ", ".join(f"{k} {v}" for k, v in sorted(label_names.items()))
    print(f"wrote {output}: {counts} cases; split {how}; {modality}; labels {classes}")
    return output


def _check_common(
    source: str,
    num_cases: int,
    split: str,
    output: str,
    overwrite: bool,
    in_channels: int,
    channels: Sequence[str],
    splits: Sequence[str] = DATASET_SPLITS,
) -> None:
    """The checks made before reading any image: output, split (one of ``splits``), channels, number of cases."""
    if split not in splits:
        other = "" if "paper" in splits else " for a dataset other than BTCV"
        raise ValueError(f"split must be one of {tuple(splits)}{other}, got {split!r}.")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite True to replace it.")
    problems = []
    if len(channels) != in_channels:
        problems.append(
            f"{source}: {len(channels)} input channel(s) declared ({', '.join(channels)}) but the network takes "
            f"{in_channels} (network_def#in_channels); keep one channel per case or build the network with more "
            "input channels"
        )
    if num_cases < 2:
        problems.append(
            f"{source}: {num_cases} labelled case(s); training needs at least 2, one to train on and one to validate on"
        )
    if problems:
        raise DataValidationError(problems, header=f"{source} cannot be trained on")


def _scan(folder: str, pattern: re.Pattern) -> dict[int, str]:
    """case number -> file name for the files of ``folder`` matching ``pattern``."""
    found: dict[int, str] = {}
    if not os.path.isdir(folder):
        return found
    for name in sorted(os.listdir(folder)):
        m = pattern.match(name)
        if m:
            found[int(m.group(1))] = name
    return found


def find_btcv_cases(data_dir: str) -> tuple[dict[int, tuple[str, str | None]], dict[int, str], list[str]]:
    """
    Find the BTCV cases of a RawData folder.

    Args:
        data_dir: the RawData folder.

    Returns:
        ``(training, testing, problems)``: case number -> (image, label) paths relative to ``data_dir``
        (label None when missing), case number -> test image path, and layout problems (missing labels,
        labels without an image), each ``"<file path>: <problem>"``.

    Raises:
        FileNotFoundError: when ``data_dir/Training/img`` does not exist or holds no ``img*.nii[.gz]``.
    """
    img_dir = os.path.join(data_dir, "Training", "img")
    images = _scan(img_dir, _IMG_RE)
    if not images:
        hint = ""
        if os.path.isdir(os.path.join(data_dir, "RawData")):
            hint = f" Did you mean --data_dir {os.path.join(data_dir, 'RawData')}?"
        raise FileNotFoundError(
            f"no BTCV training images (Training/img/img*.nii.gz) found in {data_dir}; expected the Synapse "
            f"'RawData' layout Training/img, Training/label and optionally Testing/img.{hint}"
        )
    labels = _scan(os.path.join(data_dir, "Training", "label"), _LABEL_RE)
    problems: list[str] = []
    training: dict[int, tuple[str, str | None]] = {}
    for case, name in images.items():
        image = f"Training/img/{name}"
        label = labels.get(case)
        if label is None:
            problems.append(f"{os.path.join(data_dir, image)}: no label file Training/label/label{case:04d}.nii.gz")
        training[case] = (image, None if label is None else f"Training/label/{label}")
    for case in sorted(set(labels) - set(images)):
        problems.append(f"{os.path.join(data_dir, 'Training', 'label', labels[case])}: label without an image")
    testing = {c: f"Testing/img/{n}" for c, n in _scan(os.path.join(data_dir, "Testing", "img"), _IMG_RE).items()}
    return training, testing, problems


def prepare_btcv(
    data_dir: str,
    output: str | None = None,
    split: str = "paper",
    seed: int = 0,
    val_fraction: float = 0.3,
    num_folds: int = 5,
    fold: int = 0,
    overwrite: bool = False,
) -> str:
    """
    Validate a BTCV RawData folder and write its datalist JSON (paths relative to ``data_dir``).

    Args:
        data_dir: the Synapse BTCV "RawData" folder (``Training/img``, ``Training/label``, optional ``Testing/img``).
        output: datalist JSON to write; default ``./datalist_btcv.json`` in the current directory (nothing is
            written into ``data_dir`` unless asked for).
        split: ``"paper"`` (train 1-10 and 21-31, validation 32-40), ``"random"`` or ``"kfold"``;
            see :func:`scripts.data.splits.split_cases`.
        seed: random seed of the ``"random"`` and ``"kfold"`` splits.
        val_fraction: held-out fraction of the ``"random"`` split.
        num_folds: number of folds of the ``"kfold"`` split.
        fold: held-out fold of the ``"kfold"`` split.
        overwrite: replace an existing ``output``.

    Returns:
        the absolute path of the datalist written.

    Raises:
        DataValidationError: listing every problem of every file; nothing is written then.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
    """
    data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    output = os.path.abspath(os.path.expanduser(str(output or os.path.join(os.getcwd(), "datalist_btcv.json"))))
    training, testing, problems = find_btcv_cases(data_dir)
    _check_common(data_dir, len(training), split, output, overwrite, 1, ["CT"], SPLITS)
    train_val = _split(training, split, seed, val_fraction, num_folds, fold)
    labelled = [pair for pair in training.values() if pair[1] is not None]
    problems += _check_pairs(data_dir, labelled + [(t, None) for t in testing.values()], len(BTCV_LABELS), None)
    if problems:
        raise DataValidationError(problems, header=f"BTCV data in {data_dir} failed validation")
    description = "BTCV multi-organ CT (Synapse RawData); paths relative to the dataset folder"
    how = describe_split(split, seed, val_fraction, num_folds, fold)
    tests = [testing[c] for c in sorted(testing)]
    return _write(data_dir, training, train_val, tests, BTCV_LABELS, "CT", description, output, how, overwrite)


def prepare_msd(
    data_dir: str,
    output: str | None = None,
    split: str = "random",
    seed: int = 0,
    val_fraction: float = 0.2,
    num_folds: int = 5,
    fold: int = 0,
    in_channels: int = 1,
    overwrite: bool = False,
) -> str:
    """
    Validate a Medical Segmentation Decathlon / nnU-Net raw dataset folder and write its datalist JSON.

    Args:
        data_dir: the folder holding ``dataset.json``, ``imagesTr``, ``labelsTr`` and optionally ``imagesTs``.
        output: datalist JSON to write; default ``./datalist_<folder name>.json`` in the current directory
            (nothing is written into ``data_dir`` unless asked for).
        split: ``"random"`` or ``"kfold"``; see :func:`scripts.data.splits.split_cases`.
        seed: random seed of the split.
        val_fraction: held-out fraction of the ``"random"`` split.
        num_folds: number of folds of the ``"kfold"`` split.
        fold: held-out fold of the ``"kfold"`` split.
        in_channels: input channels of the network (``network_def#in_channels``).
        overwrite: replace an existing ``output``.

    Returns:
        the absolute path of the datalist written.

    Raises:
        DataValidationError: listing every problem of every file; nothing is written then.
    """
    data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    source = os.path.join(data_dir, "dataset.json")
    if not os.path.isfile(source):
        raise DataValidationError(
            [
                f"{source}: not found; an MSD / nnU-Net raw dataset folder has dataset.json, imagesTr and labelsTr "
                "(for other folders use: python -m scripts.data.prepare_dataset folder --images ... --labels ...)"
            ]
        )
    try:
        with open(source) as f:
            spec = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataValidationError([f"{source}: not valid JSON ({e})"]) from None
    label_names = parse_msd_labels(spec.get("labels"), source)
    channels = _msd_channels(spec, source)
    name = os.path.basename(data_dir.rstrip(os.sep))
    output = os.path.abspath(os.path.expanduser(str(output or os.path.join(os.getcwd(), f"datalist_{name}.json"))))

    problems: list[str] = []
    cases = _msd_cases(data_dir, spec, source, problems)
    _check_common(source, len(cases), split, output, overwrite, in_channels, channels)
    train_val = _split(cases, split, seed, val_fraction, num_folds, fold)
    problems += _extra_channel_files(data_dir, cases, in_channels)
    testing = [
        f"imagesTs/{n}" for n in _list_nifti(os.path.join(data_dir, "imagesTs"), spec.get("file_ending")).values()
    ]
    pairs = [(image, label) for image, label in cases.values() if os.path.isfile(os.path.join(data_dir, image))]
    problems += _check_pairs(data_dir, pairs + [(t, None) for t in testing], len(label_names), channels[0])
    if problems:
        raise DataValidationError(
            problems,
            header=f"dataset {data_dir} failed validation",
            footer=f"Label values must be the ones {source} declares in 'labels' "
            f"({', '.join(str(v) for v in sorted(label_names))}). Fix the files listed above, then run this again.",
        )
    description = str(spec.get("description") or spec.get("name") or name)
    how = describe_split(split, seed, val_fraction, num_folds, fold)
    return _write(data_dir, cases, train_val, testing, label_names, channels[0], description, output, how, overwrite)


def _pattern_regex(pattern: str) -> re.Pattern:
    """A regex matching what ``glob`` matches for ``pattern`` (``*``, ``?``), one capture group per wildcard."""
    parts = re.split(r"(\*|\?)", pattern)
    regex = "".join("([^/]*)" if p == "*" else "([^/])" if p == "?" else re.escape(p) for p in parts)
    return re.compile(regex)


def match_pairs(images: str, labels: str) -> tuple[dict[tuple[str, ...], tuple[str, str]], list[str]]:
    """
    Pair the files of two glob patterns by what their wildcards match.

    Args:
        images: glob of the image files, e.g. ``"/data/ct/*_img.nii.gz"``.
        labels: glob of the label files with the same wildcards, e.g. ``"/data/seg/*_mask.nii.gz"``.

    Returns:
        ``(pairs, problems)``: wildcard values -> (image path, label path), and a problem for every image
        without a label and every label without an image.
    """
    patterns = {}
    for kind, pattern in (("images", images), ("labels", labels)):
        if "[" in pattern or "**" in pattern:
            raise ValueError(f"--{kind} {pattern!r}: only the wildcards * and ? are supported.")
        patterns[kind] = os.path.abspath(os.path.expanduser(pattern))
    if len(re.findall(r"\*|\?", patterns["images"])) != len(re.findall(r"\*|\?", patterns["labels"])):
        raise ValueError(
            f"--images {images!r} and --labels {labels!r} must have the same wildcards: the parts they match "
            "name the case that pairs an image with its label."
        )
    found: dict[str, dict[tuple[str, ...], str]] = {}
    for kind, pattern in patterns.items():
        regex = _pattern_regex(pattern)
        found[kind] = {}
        for path in sorted(glob.glob(pattern)):
            match = regex.fullmatch(path)
            if match and not os.path.basename(path).startswith("."):
                found[kind][match.groups()] = path
        if not found[kind]:
            raise FileNotFoundError(f"--{kind} {pattern!r} matches no file.")
    problems = [
        f"{p}: image without a label matching {labels!r}"
        for k, p in found["images"].items()
        if k not in found["labels"]
    ]
    problems += [
        f"{p}: label without an image matching {images!r}"
        for k, p in found["labels"].items()
        if k not in found["images"]
    ]
    pairs = {k: (p, found["labels"][k]) for k, p in found["images"].items() if k in found["labels"]}
    return pairs, problems


def prepare_folder(
    images: str,
    labels: str,
    label_names: Sequence[str] | Mapping[Any, str],
    modality: str = "CT",
    output: str | None = None,
    split: str = "random",
    seed: int = 0,
    val_fraction: float = 0.2,
    num_folds: int = 5,
    fold: int = 0,
    overwrite: bool = False,
) -> str:
    """
    Validate the image/label pairs matched by two glob patterns and write their datalist JSON; paths are
    relative to the folder that holds all of them.

    Args:
        images: glob of the images, e.g. ``"/data/ct/*_img.nii.gz"``; the wildcard parts name the case.
        labels: glob of the labels with the same wildcards, e.g. ``"/data/seg/*_mask.nii.gz"``.
        label_names: class names in label-value order (``['background', 'liver']``) or a value -> name map.
        modality: modality of the images, e.g. ``"CT"`` or ``"MR"``.
        output: datalist JSON to write; default ``./datalist.json`` in the current directory.
        split, seed, val_fraction, num_folds, fold, overwrite: as for :func:`prepare_msd`.

    Returns:
        the absolute path of the datalist written.

    Raises:
        DataValidationError: listing every problem of every file; nothing is written then.
    """
    if isinstance(label_names, str) or not isinstance(label_names, (Sequence, Mapping)):
        raise ValueError(f"label_names must be a list of class names or a value -> name map, got {label_names!r}.")
    names_map = dict(label_names) if isinstance(label_names, Mapping) else {i: n for i, n in enumerate(label_names)}
    names = parse_msd_labels({str(k): str(v) for k, v in names_map.items()}, "--label_names")
    output = os.path.abspath(os.path.expanduser(str(output or os.path.join(os.getcwd(), "datalist.json"))))
    pairs, problems = match_pairs(images, labels)
    _check_common(f"--images {images!r}", len(pairs), split, output, overwrite, 1, [modality])
    data_dir = os.path.commonpath([os.path.dirname(p) for pair in pairs.values() for p in pair])
    cases = {"_".join(k): tuple(os.path.relpath(p, data_dir) for p in pair) for k, pair in pairs.items()}
    train_val = _split(cases, split, seed, val_fraction, num_folds, fold)
    problems += _check_pairs(data_dir, list(cases.values()), len(names), modality)
    if problems:
        raise DataValidationError(
            problems,
            header=f"image/label pairs of {images!r} and {labels!r} failed validation",
            footer=f"Label values must be those of --label_names ({', '.join(str(v) for v in sorted(names))}). "
            "Fix the files listed above, then run this again.",
        )
    how = describe_split(split, seed, val_fraction, num_folds, fold)
    description = f"image/label pairs {images} and {labels}"
    return _write(data_dir, cases, train_val, [], names, modality, description, output, how, overwrite)


if __name__ == "__main__":
    run_data_cli(  # the commands print a summary
        {"btcv": prepare_btcv, "msd": prepare_msd, "folder": prepare_folder}, serialize=lambda path: None
    )
