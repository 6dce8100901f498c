"""
Write the datalist JSON of the BTCV (Synapse multi-organ) dataset.

Input: the "RawData" folder of the Synapse BTCV download::

    RawData/Training/img/img0001.nii.gz     RawData/Training/label/label0001.nii.gz   (30 labelled cases)
    RawData/Testing/img/img0061.nii.gz      (optional, unlabelled)

Every file is validated first (see :func:`scripts.data.datalist.check_image_label_pair`); all problems are
reported together, by file, before anything is written. The datalist's paths are relative to ``data_dir``.

Usage::

    python -m scripts.data.prepare_btcv --data_dir /data/RawData --output /data/RawData/datalist.json
    python -m scripts.data.prepare_btcv --data_dir /data/RawData --output datalist.json --split kfold --fold 2
"""

from __future__ import annotations

import os
import re

from scripts.data.datalist import (
    BTCV_LABELS,
    SPLITS,
    DataValidationError,
    check_image_label_pair,
    describe_split,
    make_datalist,
    run_data_cli,
    split_cases,
    write_json_atomic,
)

__all__ = ["prepare_btcv", "find_btcv_cases"]

_IMG_RE = re.compile(r"^img(\d+)(\.nii(?:\.gz)?)$")
_LABEL_RE = re.compile(r"^label(\d+)(\.nii(?:\.gz)?)$")


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
            see :func:`scripts.data.datalist.split_cases`.
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
    if output is None:
        output = os.path.join(os.getcwd(), "datalist_btcv.json")
    output = os.path.abspath(os.path.expanduser(str(output)))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if os.path.exists(output) and not overwrite:  # fail before the (slow) validation
        raise FileExistsError(f"{output} already exists; pass --overwrite True to replace it.")

    training, testing, problems = find_btcv_cases(data_dir)
    train_ids, val_ids = split_cases(
        sorted(training), split=split, seed=seed, val_fraction=val_fraction, num_folds=num_folds, fold=fold
    )
    num_classes = len(BTCV_LABELS)
    for case in sorted(training):
        image, label = training[case]
        if label is not None:
            problems += check_image_label_pair(
                os.path.join(data_dir, image), os.path.join(data_dir, label), num_classes
            )
    for case in sorted(testing):
        problems += check_image_label_pair(os.path.join(data_dir, testing[case]), None, num_classes)
    if problems:
        raise DataValidationError(problems, header=f"BTCV data in {data_dir} failed validation")

    def items(ids: list[int]) -> list[dict]:
        return [{"image": training[c][0], "label": training[c][1]} for c in ids]

    datalist = make_datalist(
        training=items(train_ids),
        validation=items(val_ids),
        testing=[{"image": testing[c]} for c in sorted(testing)],
        labels=BTCV_LABELS,
        description="BTCV multi-organ CT (Synapse RawData); paths relative to the dataset folder",
        split=describe_split(split, seed, val_fraction, num_folds, fold),
    )
    write_json_atomic(datalist, output, overwrite=overwrite)
    counts = ", ".join(f"{k} {len(datalist[k])}" for k in ("training", "validation", "testing"))
    print(f"wrote {output}: {counts} cases; split {datalist['split']}")
    return output


if __name__ == "__main__":
    run_data_cli(prepare_btcv, serialize=lambda path: None)  # prepare_btcv prints a summary
