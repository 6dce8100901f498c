"""End to end through the real CLI: train, evaluate, infer, multi-process training, checks and export."""

from __future__ import annotations

import csv
import glob
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from .conftest import CONFIGS, config_paths, run_cli

pytestmark = pytest.mark.slow

# a few iterations of the CPU demo overlay: the point is that every piece runs, not that it learns
SHORT = ["--max_epochs", "2", "--epoch_length", "2", "--val_interval", "1", "--num_workers", "0"]


def _configs(*names: str) -> str:
    return str(config_paths(*names))


@pytest.fixture(scope="module")
def trained(synthetic_study, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    paths = ["--dataset_dir", synthetic_study, "--ckpt_dir", str(work / "models"), "--output_dir", str(work / "eval")]
    run_cli("run", "training", "--config_file", _configs("train.json", "demo.json"), *paths, *SHORT)
    return {"study": synthetic_study, "work": work, "paths": paths}


def test_training_writes_model(trained):
    models = trained["work"] / "models"
    for name in ("model.pt", "model_final.pt"):
        state = torch.load(models / name, map_location="cpu", weights_only=True)
        assert state["decoder.final_head.weight"].shape[0] == 14


def _dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    p, t = prediction == label, truth == label
    return float("nan") if not t.any() else 2.0 * (p & t).sum() / (p.sum() + t.sum())


def test_evaluation_metrics_match_saved_segmentations(trained):
    run_cli(
        "run", "evaluating", "--config_file", _configs("train.json", "evaluate.json", "demo.json"), *trained["paths"]
    )
    evaluation = trained["work"] / "eval"
    datalist = json.load(open(os.path.join(trained["study"], "datalist.json")))
    with open(evaluation / "val_mean_dice_raw.csv") as f:
        rows = {os.path.basename(r["filename"]): r for r in csv.DictReader(f)}
    assert len(rows) == len(datalist["validation"])
    for case in datalist["validation"]:
        image = nib.load(os.path.join(trained["study"], case["image"]))
        segmentation = nib.load(
            evaluation / "segmentations" / os.path.basename(case["image"]).replace(".nii.gz", "_seg.nii.gz")
        )
        assert segmentation.shape == image.shape and np.allclose(segmentation.affine, image.affine, atol=1e-4)
        prediction = np.asarray(segmentation.dataobj)
        truth = np.asarray(nib.load(os.path.join(trained["study"], case["label"])).dataobj)
        row = rows[os.path.basename(case["image"])]
        for label in range(1, 14):
            expected, reported = _dice(prediction, truth, label), float(row[f"class{label - 1}"])
            if np.isnan(expected):
                continue
            assert reported == pytest.approx(expected, abs=1e-4), (case["image"], label)
    for name in ("val_mean_dice_merged_raw.csv", "val_hd95_raw.csv", "val_hd95_merged_raw.csv", "metrics.csv"):
        assert (evaluation / name).exists(), name
    header = next(csv.reader(open(evaluation / "val_mean_dice_merged_raw.csv")))
    assert header[1:-1] == [f"class{i}" for i in range(11)]  # the paper's 11 organs


def test_inference_keeps_input_geometry(trained, tmp_path):
    images = os.path.join(trained["study"], "Testing", "img")
    output = tmp_path / "segmentations"
    run_cli(
        "run",
        "inference",
        "--config_file",
        _configs("inference.json", "demo.json"),
        "--dataset_dir",
        images,
        "--ckpt_dir",
        str(trained["work"] / "models"),
        "--output_dir",
        str(output),
        "--save_measurements",
        "True",
    )
    inputs = sorted(glob.glob(os.path.join(images, "*.nii.gz")))
    with open(output / "measurements_summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 13 * len(inputs)  # one row per organ and case
    assert inputs
    for path in inputs:
        image = nib.load(path)
        segmentation = nib.load(output / os.path.basename(path).replace(".nii.gz", "_seg.nii.gz"))
        assert segmentation.shape == image.shape
        assert np.allclose(segmentation.affine, image.affine, atol=1e-4)
        assert nib.aff2axcodes(segmentation.affine) == nib.aff2axcodes(image.affine)
        assert segmentation.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(segmentation.dataobj))) <= set(range(14))
    assert sorted(os.listdir(images)) == [os.path.basename(p) for p in inputs]  # nothing written next to the input


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    overlay = _configs("inference.json", "demo.json")
    meta = os.path.join(CONFIGS, "metadata.json")
    run_cli("verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", overlay, "--p", "1", "--n", "1")
    exported = tmp_path / "model.ts"
    run_cli(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(trained["work"] / "models" / "model.pt"),
        "--meta_file",
        meta,
        "--config_file",
        overlay,
        "--use_trace",
        "True",
        "--input_shape",
        "[1,1,64,64,32]",
    )
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_paths("inference.json", "demo.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(trained["work"] / "models" / "model.pt", map_location="cpu", weights_only=True))
    x = torch.randn(1, 1, 64, 64, 32)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(exported))(x), network.eval()(x), atol=1e-4)


def _write_dicom_series(volume_xyz: np.ndarray, folder: str) -> None:
    """A CT series of ``volume_xyz`` (HU, X=columns, Y=rows, Z=slices): axial, 0.8 x 0.8 mm, 2.5 mm slices."""
    from pydicom.uid import generate_uid

    from tests.reliability.test_dicom import INTERCEPT, write_slice

    series_uid = generate_uid()
    for k in range(volume_xyz.shape[2]):
        pixels = (volume_xyz[:, :, k].T - INTERCEPT).astype(np.int16)  # rows x columns, stored values
        write_slice(
            os.path.join(folder, f"slice{k:03d}.dcm"),
            pixels,
            series_uid,
            (-20.0, -30.0, 100.0 + 2.5 * k),
            ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            PixelSpacing=[0.8, 0.8],
            SliceThickness=2.5,
            InstanceNumber=k + 1,
        )


def test_inference_reads_a_dicom_series(trained, tmp_path):
    from scripts.data.dicom import read_series_reference

    series = tmp_path / "dicom" / "case01"
    series.mkdir(parents=True)
    hu = np.asarray(
        nib.load(
            os.path.join(
                trained["study"], "Testing", "img", os.listdir(os.path.join(trained["study"], "Testing", "img"))[0]
            )
        ).dataobj
    )
    _write_dicom_series(np.ascontiguousarray(hu[:64, :64, :32]).astype(np.int16), str(series))
    output = tmp_path / "out"
    run_cli(
        "run",
        "inference",
        "--config_file",
        _configs("inference.json", "demo.json"),
        "--dataset_dir",
        str(tmp_path / "dicom"),
        "--ckpt_dir",
        str(trained["work"] / "models"),
        "--output_dir",
        str(output),
    )
    volume, affine = read_series_reference(str(series))
    segmentation = nib.load(output / "case01_seg.nii.gz")
    assert segmentation.shape == volume.shape == (64, 64, 32)
    assert np.allclose(segmentation.affine, affine, atol=1e-4)
    assert np.allclose(affine[:3, :3], np.diag([-0.8, -0.8, 2.5]))  # LPS rows and columns as RAS
