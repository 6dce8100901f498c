"""Splits of a dataset's cases into training and validation: BTCV's fixed paper split, seeded random and k-fold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "PAPER_TRAIN_CASES",
    "PAPER_VAL_CASES",
    "SPLITS",
    "split_cases",
    "describe_split",
]

#: The reference code's fixed BTCV split: train on cases 1-10 and 21-31, test on 32-40.
PAPER_TRAIN_CASES: tuple[int, ...] = tuple(range(1, 11)) + tuple(range(21, 32))
PAPER_VAL_CASES: tuple[int, ...] = tuple(range(32, 41))

SPLITS = ("paper", "random", "kfold")


def split_cases(
    case_ids: Sequence[int],
    split: str = "paper",
    seed: int = 0,
    val_fraction: float = 0.3,
    num_folds: int = 5,
    fold: int = 0,
) -> tuple[list[int], list[int]]:
    """
    Split case ids into training and validation ids.

    Args:
        case_ids: unique case ids (BTCV case numbers for ``"paper"``).
        split: ``"paper"`` - the reference code's fixed BTCV split, train 1-10 and 21-31, validation
            (the paper's test set) 32-40; needs exactly these 30 case numbers.
            ``"random"`` - a seeded shuffle, ``round(val_fraction * n)`` (at least 1) cases held out.
            ``"kfold"`` - a seeded shuffle cut into ``num_folds`` near-equal folds; fold ``fold`` is held out.
        seed: random seed of ``"random"`` and ``"kfold"``.
        val_fraction: held-out fraction for ``"random"``, in (0, 1).
        num_folds: number of folds for ``"kfold"``, 2 <= num_folds <= number of cases.
        fold: held-out fold for ``"kfold"``, in [0, num_folds).

    Returns:
        (train_ids, val_ids), each sorted.

    Examples::

        train, val = split_cases(range(1, 13), split="kfold", num_folds=4, fold=1)
    """
    ids = [int(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        raise ValueError(f"case_ids must be unique, duplicated: {dup}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if split == "paper":
        missing = sorted(set(PAPER_TRAIN_CASES + PAPER_VAL_CASES) - set(ids))
        extra = sorted(set(ids) - set(PAPER_TRAIN_CASES + PAPER_VAL_CASES))
        if missing or extra:
            raise ValueError(
                "split='paper' is the fixed BTCV split (train cases 1-10 and 21-31, validation 32-40) and "
                f"needs exactly those 30 case numbers; missing: {missing}, unexpected: {extra}. "
                "Use split='random' or split='kfold' for other data."
            )
        return list(PAPER_TRAIN_CASES), list(PAPER_VAL_CASES)

    if len(ids) < 2:
        raise ValueError(f"split={split!r} needs at least 2 cases, got {len(ids)}.")
    order = sorted(ids)
    np.random.default_rng(int(seed)).shuffle(order)
    if split == "random":
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
        n_val = min(max(1, int(round(val_fraction * len(ids)))), len(ids) - 1)
        return sorted(order[n_val:]), sorted(order[:n_val])
    # kfold
    if int(num_folds) != num_folds or not 2 <= num_folds <= len(ids):
        raise ValueError(f"num_folds must be an integer in [2, {len(ids)}] (the number of cases), got {num_folds}.")
    if int(fold) != fold or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be an integer in [0, {int(num_folds) - 1}], got {fold}.")
    folds = np.array_split(np.asarray(order), int(num_folds))
    val = folds[int(fold)].tolist()
    held_out = set(val)
    train = [c for c in order if c not in held_out]
    return sorted(train), sorted(val)


def describe_split(split: str, seed: int, val_fraction: float, num_folds: int, fold: int) -> str:
    """How :func:`split_cases` split the cases, as the datalist's ``split`` entry records it."""
    if split == "paper":
        return "paper (train 1-10 and 21-31, validation 32-40)"
    if split == "random":
        return f"random (seed={seed}, val_fraction={val_fraction})"
    return f"kfold (seed={seed}, fold={fold} of {num_folds})"
