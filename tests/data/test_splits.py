"""Tests of ``scripts/data/splits.py``: the paper, random and k-fold splits."""

from __future__ import annotations

import pytest

from scripts.data.splits import PAPER_TRAIN_CASES, PAPER_VAL_CASES, split_cases

BTCV_CASES = list(range(1, 11)) + list(range(21, 41))


def test_paper_split():
    train, val = split_cases(BTCV_CASES[::-1], split="paper")
    assert train == list(range(1, 11)) + list(range(21, 32))
    assert val == list(range(32, 41))
    assert (len(train), len(val)) == (21, 9)
    assert tuple(train) == PAPER_TRAIN_CASES and tuple(val) == PAPER_VAL_CASES


@pytest.mark.parametrize("cases", [BTCV_CASES[:-1], BTCV_CASES + [11], list(range(1, 13))])
def test_paper_split_needs_btcv_cases(cases):
    with pytest.raises(ValueError, match="split='random'"):
        split_cases(cases, split="paper")


def test_random_split_seeded_and_disjoint():
    cases = list(range(1, 21))
    train, val = split_cases(cases, split="random", seed=3, val_fraction=0.3)
    assert (train, val) == split_cases(cases[::-1], split="random", seed=3, val_fraction=0.3)
    assert len(val) == 6 and len(train) == 14
    assert not set(train) & set(val) and sorted(train + val) == cases
    assert train == sorted(train) and val == sorted(val)
    others = {tuple(split_cases(cases, split="random", seed=s, val_fraction=0.3)[1]) for s in range(5)}
    assert len(others) > 1
    # at least one case on each side, even for extreme fractions
    assert [len(x) for x in split_cases([1, 2], split="random", val_fraction=0.01)] == [1, 1]
    assert [len(x) for x in split_cases([1, 2, 3], split="random", val_fraction=0.99)] == [1, 2]


@pytest.mark.parametrize("num_cases, num_folds", [(30, 5), (12, 5), (7, 7), (13, 2)])
def test_kfold_partitions(num_cases, num_folds):
    cases = list(range(100, 100 + num_cases))
    vals = []
    for fold in range(num_folds):
        train, val = split_cases(cases, split="kfold", seed=1, num_folds=num_folds, fold=fold)
        assert not set(train) & set(val) and sorted(train + val) == cases
        assert (train, val) == split_cases(cases, split="kfold", seed=1, num_folds=num_folds, fold=fold)
        vals.append(val)
    flat = [c for v in vals for c in v]
    assert sorted(flat) == cases  # every case held out exactly once
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "loo"}, "split must be one of"),
        ({"split": "random", "val_fraction": 0.0}, "val_fraction"),
        ({"split": "random", "val_fraction": 1.0}, "val_fraction"),
        ({"split": "kfold", "num_folds": 1}, "num_folds"),
        ({"split": "kfold", "num_folds": 11}, "num_folds"),
        ({"split": "kfold", "fold": 5}, "fold must be"),
        ({"split": "kfold", "fold": -1}, "fold must be"),
    ],
)
def test_split_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_cases(range(10), **kwargs)


def test_split_rejects_duplicates_and_single_case():
    with pytest.raises(ValueError, match="unique"):
        split_cases([1, 2, 2, 3], split="random")
    with pytest.raises(ValueError, match="at least 2"):
        split_cases([1], split="kfold")
