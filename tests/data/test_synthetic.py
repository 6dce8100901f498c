"""Tests of ``scripts/data/synthetic.py``: phantom content, NIfTI geometry on disk and loading through MONAI."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from scripts.data.datalist import validate_datalist
from scripts.data.labels import BTCV_LABELS
from scripts.data.synthetic import CASE_AXCODES, ORGAN_HU, generate, make_phantom, phantom_to_nifti

SMALL = (48, 48, 24)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[str, str]:
    """(output_dir, datalist path) of 5 small training cases and 1 test image."""
    out = str(tmp_path_factory.mktemp("synth") / "data")
    return out, generate(out, num_cases=5, num_test=1, shape=SMALL, seed=7, val_fraction=0.4)


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(0)


def test_default_phantom():
    make_phantom(seed=1)  # warm-up
    start = time.perf_counter()
    image, label = make_phantom(seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"one 160x160x64 phantom took {elapsed:.2f} s"
    assert image.shape == label.shape == (160, 160, 64)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert set(np.unique(label)) == set(range(14))
    assert image.min() >= -1024 and image.max() <= 3071
    assert image[:3, :3, :].mean() < -950  # air outside the body
    assert 300 < image.max() < 1200  # bone
    means = {v: float(image[label == v].mean()) for v in range(1, 14)}
    for value, nominal in ORGAN_HU.items():  # labels overlay the right intensities
        assert abs(means[value] - nominal) < 80, (BTCV_LABELS[value], means[value])
    assert 30 < means[6] < 90  # liver
    assert means[8] > means[6] + 60  # contrast-filled aorta brighter than liver
    assert 8 < float(image[label == 6].std()) < 50  # noisy, not a flat plateau
    # organ sizes: liver the largest, adrenal glands small but present
    counts = np.bincount(label.ravel(), minlength=14)
    assert counts[6] == counts[1:].max() and 20 < counts[12] < counts[1] and 20 < counts[13] < counts[1]


def test_phantom_anatomy_in_ras_order():
    image, label = make_phantom(SMALL, seed=3)
    nx, ny, nz = SMALL
    liver, spleen, aorta, ivc = (centroid(label == v) for v in (6, 1, 8, 9))
    assert liver[0] > nx / 2 > spleen[0]  # axis 0 increases toward the patient's right
    assert liver[2] > nz / 2  # upper abdomen (axis 2 -> superior)
    assert ivc[0] > aorta[0]  # IVC right of the aorta
    assert centroid(label == 2)[0] > nx / 2 > centroid(label == 3)[0]  # right / left kidney
    assert centroid(label == 7)[1] > spleen[1]  # stomach anterior to the spleen
    assert (label == 8).any(axis=(0, 1)).all()  # aorta runs through every slice


def test_phantom_seeded_and_all_labels_on_small_grids():
    a = make_phantom(SMALL, seed=5)
    b = make_phantom(SMALL, seed=5)
    c = make_phantom(SMALL, seed=6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    for shape in [(32, 32, 16), (16, 24, 8)]:
        _, label = make_phantom(shape, seed=2)
        assert set(np.unique(label)) == set(range(14)), shape


@pytest.mark.parametrize(
    "kwargs", [{"shape": (160, 160)}, {"shape": (4, 160, 64)}, {"spacing": (1.5, 0.0, 3.0)}, {"shape": "abc"}]
)
def test_phantom_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_phantom(**kwargs)


@pytest.mark.parametrize("axcodes", sorted(set(CASE_AXCODES)) + ["RAS", "SAR"])
def test_phantom_to_nifti_keeps_world_positions(axcodes):
    image, label = make_phantom((24, 20, 12), seed=1)
    spacing = (1.4, 1.4, 3.1)
    origin = (-20.0, 35.0, -500.0)
    img, lbl = phantom_to_nifti(image, label, spacing, axcodes=axcodes, origin=origin)
    assert nib.aff2axcodes(img.affine) == tuple(axcodes)
    assert np.array_equal(img.affine, lbl.affine)
    canonical = nib.as_closest_canonical(img)
    assert np.allclose(canonical.affine[:3, :3], np.diag(spacing)) and np.allclose(canonical.affine[:3, 3], origin)
    assert np.array_equal(np.asanyarray(canonical.dataobj), image)
    assert np.array_equal(np.asanyarray(nib.as_closest_canonical(lbl).dataobj), label)


def test_files_on_disk(dataset):
    out, datalist_path = dataset
    assert datalist_path == os.path.join(out, "datalist.json")
    names = sorted(os.listdir(os.path.join(out, "Training", "img")))
    assert names == [f"img{c:04d}.nii.gz" for c in range(1, 6)]
    assert os.listdir(os.path.join(out, "Testing", "img")) == ["img0006.nii.gz"]
    axcodes, zooms = set(), []
    for c in range(1, 6):
        img = nib.load(os.path.join(out, "Training", "img", f"img{c:04d}.nii.gz"))
        lbl = nib.load(os.path.join(out, "Training", "label", f"label{c:04d}.nii.gz"))
        assert img.get_data_dtype() == np.int16 and lbl.get_data_dtype() == np.uint8
        assert np.asanyarray(img.dataobj).dtype == np.int16
        assert np.array_equal(img.affine, lbl.affine)
        assert not np.allclose(img.affine, np.eye(4)) and np.abs(img.affine[:3, 3]).max() > 50
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        with gzip.open(img.get_filename()) as f:  # raw header: no intensity scaling
            raw = nib.Nifti1Header.from_fileobj(f)
        assert float(raw["scl_slope"]) == 1.0 and float(raw["scl_inter"]) == 0.0
        z = np.asarray(img.header.get_zooms()[:3])
        assert z.max() / z.min() > 1.5  # anisotropic
        assert nib.aff2axcodes(img.affine) == tuple(CASE_AXCODES[(c - 1) % len(CASE_AXCODES)])
        axcodes.add(nib.aff2axcodes(img.affine))
        zooms.append(tuple(np.round(z, 4)))
        assert set(np.unique(np.asanyarray(lbl.dataobj))) == set(range(14))
    assert len(axcodes) >= 3 and ("R", "A", "S") not in axcodes
    assert len(set(zooms)) == 5  # spacing varies per case


def test_datalist_resolves_and_validates(dataset):
    out, datalist_path = dataset
    with open(datalist_path) as f:
        datalist = json.load(f)
    assert datalist["split"].startswith("random")
    assert (len(datalist["training"]), len(datalist["validation"]), len(datalist["testing"])) == (3, 2, 1)
    train = {d["image"] for d in datalist["training"]}
    assert not train & {d["image"] for d in datalist["validation"]}
    validate_datalist(datalist, out, keys=("training", "validation", "testing"))
    for key in ("training", "validation", "testing"):
        for item in load_decathlon_datalist(datalist_path, data_list_key=key, base_dir=out):
            assert all(os.path.isfile(item[k]) for k in ("image", "label") if k in item)


def test_monai_ras_loading_overlays_label(dataset):
    out, datalist_path = dataset
    keys = ["image", "label"]
    load = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS")])
    items = load_decathlon_datalist(datalist_path, data_list_key="training", base_dir=out)
    items += load_decathlon_datalist(datalist_path, data_list_key="validation", base_dir=out)
    for item in items:
        data = load(item)
        image, label = data["image"][0].numpy(), data["label"][0].numpy()
        assert image.shape == label.shape == SMALL, item["image"]
        assert np.allclose(data["image"].affine, data["label"].affine)
        assert (np.diag(data["image"].affine.numpy())[:3] > 0).all()  # RAS after orientation
        nx, _, nz = image.shape
        liver, spleen = centroid(label == 6), centroid(label == 1)
        assert liver[0] > nx / 2 > spleen[0], item["image"]  # liver on the patient's right
        assert liver[2] > nz / 2, item["image"]  # upper abdomen
        # the label overlays the image: organ intensities where the label says so
        assert 20 < image[label == 6].mean() < 100 and image[label == 8].mean() > 100, item["image"]
        assert image[:2, :2, :].mean() < -900  # corners are air


def test_generate_refuses_non_empty_and_overwrite_replaces(tmp_path):
    out = tmp_path / "data"
    generate(str(out), num_cases=3, shape=(16, 16, 8))
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(str(out), num_cases=2, shape=(16, 16, 8))
    (out / "notes.txt").write_text("keep me")
    path = generate(str(out), num_cases=2, shape=(16, 16, 8), overwrite=True)
    datalist = json.loads(open(path).read())
    assert len(datalist["training"]) + len(datalist["validation"]) == 2
    assert sorted(os.listdir(out / "Training" / "img")) == ["img0001.nii.gz", "img0002.nii.gz"]
    assert (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="num_cases"):
        generate(str(tmp_path / "other"), num_cases=1)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "scripts.data.synthetic", "btcv", "--output_dir", str(out), "--num_cases", "2"]
    result = subprocess.run(cmd + ["--shape", "[16,16,8]"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "[2/2] Training/img/img0002.nii.gz" in result.stdout
    assert nib.load(out / "Training" / "img" / "img0002.nii.gz").shape == (16, 16, 8)
    assert (out / "datalist.json").is_file()
