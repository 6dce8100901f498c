"""Tests of ``scripts/data/prepare_btcv.py`` on fake BTCV RawData folders of tiny files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from scripts.data.checks import DataValidationError
from scripts.data.labels import BTCV_LABELS
from scripts.data.prepare_dataset import find_btcv_cases, prepare_btcv
from tests.data.test_checks import write_nifti

BTCV_CASES = list(range(1, 11)) + list(range(21, 41))
TINY = (8, 8, 4)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fake_rawdata(root, cases=BTCV_CASES, test_cases=(), shape=TINY) -> str:
    """A BTCV RawData folder with tiny valid images and labels."""
    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        return rng.integers(-500, 500, shape, np.int16)

    for c in cases:
        write_nifti(os.path.join(root, "Training", "img", f"img{c:04d}.nii.gz"), image())
        label = rng.integers(0, 14, shape, np.uint8)
        write_nifti(os.path.join(root, "Training", "label", f"label{c:04d}.nii.gz"), label)
    for c in test_cases:
        write_nifti(os.path.join(root, "Testing", "img", f"img{c:04d}.nii.gz"), image())
    return str(root)


def case_numbers(items: list[dict]) -> list[int]:
    return [int(os.path.basename(d["image"])[3:7]) for d in items]


def test_paper_split_relative_paths_resolve(tmp_path):
    data_dir = fake_rawdata(tmp_path / "RawData", test_cases=(61, 62))
    out = prepare_btcv(data_dir, output=str(tmp_path / "out" / "datalist.json"))
    assert out == str(tmp_path / "out" / "datalist.json")
    with open(out) as f:
        datalist = json.load(f)
    assert case_numbers(datalist["training"]) == list(range(1, 11)) + list(range(21, 32))
    assert case_numbers(datalist["validation"]) == list(range(32, 41))
    assert case_numbers(datalist["testing"]) == [61, 62]
    assert datalist["labels"] == {str(k): v for k, v in BTCV_LABELS.items()}
    assert datalist["split"].startswith("paper")
    first = {"image": "Training/img/img0001.nii.gz", "label": "Training/label/label0001.nii.gz"}
    assert datalist["training"][0] == first
    assert all(not os.path.isabs(d[k]) for key in ("training", "validation") for d in datalist[key] for k in d)
    for key in ("training", "validation", "testing"):
        items = load_decathlon_datalist(out, is_segmentation=True, data_list_key=key, base_dir=data_dir)
        assert len(items) == len(datalist[key])
        for item in items:
            assert os.path.isfile(item["image"]), item
            assert key == "testing" or os.path.isfile(item["label"]), item
            assert key == "testing" or os.path.basename(item["label"])[5:] == os.path.basename(item["image"])[3:]


def test_default_output_is_cwd_not_data_dir(tmp_path, monkeypatch, capsys):
    data_dir = fake_rawdata(tmp_path / "RawData")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = prepare_btcv(data_dir)
    assert out == str(work / "datalist_btcv.json") and os.path.isfile(out)
    assert sorted(os.listdir(data_dir)) == ["Training"]
    assert "training 21, validation 9, testing 0" in capsys.readouterr().out


def test_refuses_to_overwrite(tmp_path):
    data_dir = fake_rawdata(tmp_path / "RawData")
    out = tmp_path / "datalist.json"
    out.write_text("{}")
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_btcv(data_dir, output=str(out))
    assert out.read_text() == "{}"
    prepare_btcv(data_dir, output=str(out), overwrite=True)
    assert len(json.loads(out.read_text())["training"]) == 21


def test_all_problems_reported_before_writing(tmp_path):
    data_dir = fake_rawdata(tmp_path / "RawData", test_cases=(61,))
    bad_img = os.path.join(data_dir, "Training", "img", "img0003.nii.gz")
    bad_lbl = os.path.join(data_dir, "Training", "label", "label0035.nii.gz")
    no_lbl = os.path.join(data_dir, "Training", "label", "label0022.nii.gz")
    bad_test = os.path.join(data_dir, "Testing", "img", "img0061.nii.gz")
    write_nifti(bad_img, np.full(TINY, 7, np.int16))
    lbl = np.zeros(TINY, np.uint8)
    lbl[0, 0, 0] = 20
    write_nifti(bad_lbl, lbl)
    os.remove(no_lbl)
    with open(bad_test, "wb") as f:
        f.write(b"garbage")
    out = tmp_path / "datalist.json"
    with pytest.raises(DataValidationError) as info:
        prepare_btcv(data_dir, output=str(out))
    message = str(info.value)
    assert len(info.value.problems) == 4, message
    assert f"{bad_img}: image is one constant value (7)" in message
    assert f"{bad_lbl}: label values outside [0, 13]" in message
    assert "img0022.nii.gz: no label file Training/label/label0022.nii.gz" in message
    assert f"{bad_test}: unreadable" in message
    assert not out.exists()


def test_label_without_image_is_a_problem(tmp_path):
    data_dir = fake_rawdata(tmp_path / "RawData", cases=[1, 2, 3])
    os.remove(os.path.join(data_dir, "Training", "img", "img0002.nii.gz"))
    training, testing, problems = find_btcv_cases(data_dir)
    assert sorted(training) == [1, 3] and testing == {}
    assert len(problems) == 1 and "label0002.nii.gz: label without an image" in problems[0]


def test_paper_split_needs_all_btcv_cases(tmp_path):
    data_dir = fake_rawdata(tmp_path / "RawData", cases=range(1, 13))
    with pytest.raises(ValueError, match="split='random'"):
        prepare_btcv(data_dir, output=str(tmp_path / "dl.json"))
    assert not (tmp_path / "dl.json").exists()


@pytest.mark.parametrize(
    "split, kwargs, n_val", [("random", {"val_fraction": 0.25}, 3), ("kfold", {"num_folds": 4, "fold": 1}, 3)]
)
def test_random_and_kfold(tmp_path, split, kwargs, n_val):
    data_dir = fake_rawdata(tmp_path / "RawData", cases=range(1, 13))
    a = json.loads(open(prepare_btcv(data_dir, output=str(tmp_path / "a.json"), split=split, seed=5, **kwargs)).read())
    b = json.loads(open(prepare_btcv(data_dir, output=str(tmp_path / "b.json"), split=split, seed=5, **kwargs)).read())
    assert a == b
    train, val = case_numbers(a["training"]), case_numbers(a["validation"])
    assert len(val) == n_val and sorted(train + val) == list(range(1, 13))
    assert a["split"].startswith(split) and "seed=5" in a["split"]


def test_missing_layout_gives_hint(tmp_path):
    fake_rawdata(tmp_path / "RawData", cases=[1, 2])
    with pytest.raises(FileNotFoundError, match="Did you mean --data_dir .*RawData"):
        prepare_btcv(str(tmp_path), output=str(tmp_path / "dl.json"))


def test_cli(tmp_path):
    data_dir = fake_rawdata(tmp_path / "RawData", cases=range(1, 7))
    out = tmp_path / "dl.json"
    cmd = [sys.executable, "-m", "scripts.data.prepare_btcv", "--data_dir", data_dir, "--output", str(out)]
    result = subprocess.run(cmd + ["--split", "kfold", "--num_folds", "3"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(out.read_text())["validation"]) == 2
