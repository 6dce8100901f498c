"""
A user's own dataset end to end through the real CLI: an MSD-layout dataset with 3 labels and anisotropic
spacing is prepared, fingerprinted, fine-tuned from a 14-class checkpoint, evaluated, and segmented with
organ measurements.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts.data.synthetic import generate_msd

from .conftest import BUNDLE_ROOT, config_paths, run_cli

pytestmark = pytest.mark.slow

NAMES = {"0": "background", "1": "liver", "2": "spleen"}
SHORT = ["--max_epochs", "2", "--epoch_length", "2", "--val_interval", "1", "--num_workers", "0"]


def _script(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", *args], cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


def test_prepare_fingerprint_finetune_evaluate_and_measure(tmp_path):
    data = tmp_path / "Task05_Synthetic"
    generate_msd(str(data), num_cases=4, num_test=1, shape=(64, 64, 24), spacing=(1.2, 1.2, 4.5), seed=11)
    datalist = tmp_path / "datalist.json"
    out = _script("scripts.data.prepare_dataset", "msd", "--data_dir", str(data), "--output", str(datalist))
    assert "training 3, validation 1, testing 1 cases" in out
    datasets = tmp_path / "datasets"
    out = _script(
        "scripts.data.fingerprint", "--datalist", str(datalist), "--name", "synthetic", "--output_dir", str(datasets)
    )
    overlay, meta = datasets / "synthetic.json", datasets / "synthetic_metadata.json"
    assert f"wrote {overlay} and {meta}: 4 cases, 3 classes" in out
    fingerprint = json.load(open(overlay))
    assert fingerprint["label_names"] == NAMES and fingerprint["patch_size"] == [64, 64, 24]

    small = config_paths("train.json", "demo.json")  # the demo's small CoTr, with the dataset overlay on top
    parser = ConfigParser()
    parser.read_config(small)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "btcv14.pt")
    models, evaluation = tmp_path / "models", tmp_path / "eval"
    paths = ["--meta_file", str(meta), "--ckpt_dir", str(models), "--output_dir", str(evaluation)]
    result = run_cli(
        "run",
        "training",
        "--config_file",
        str([*small, str(overlay)]),
        *paths,
        "--pretrained",
        str(tmp_path / "btcv14.pt"),
        *SHORT,
        "--logging_file",
        os.path.join(BUNDLE_ROOT, "configs", "logging.conf"),
    )
    log = result.stdout + result.stderr
    assert f"pretrained {tmp_path / 'btcv14.pt'}: loaded" in log and "re-initialised 8" in log
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert state["decoder.final_head.weight"].shape[0] == 3

    run_cli(
        "run",
        "evaluating",
        "--config_file",
        str([*config_paths("train.json", "demo.json", "evaluate.json"), str(overlay)]),
        *paths,
        "--num_workers",
        "0",
    )
    with open(evaluation / "report" / "per_case_metrics.csv") as f:
        header = next(csv.reader(f))
    assert header == ["case", "image"] + [
        f"{metric}_2/{column}" for metric in ("dice", "hd95", "nsd") for column in ("liver", "spleen", "mean")
    ] + ["status_2/liver", "status_2/spleen"]

    inference = tmp_path / "inference"
    run_cli(
        "run",
        "inference",
        "--config_file",
        str([*config_paths("inference.json", "demo.json"), str(overlay)]),
        "--meta_file",
        str(meta),
        "--dataset_dir",
        str(data / "imagesTs"),
        "--ckpt_dir",
        str(models),
        "--output_dir",
        str(inference),
        "--save_measurements",
        "True",
    )
    (source,) = glob.glob(str(data / "imagesTs" / "*.nii.gz"))
    image = nib.load(source)
    segmentation = nib.load(inference / os.path.basename(source).replace(".nii.gz", "_seg.nii.gz"))
    assert segmentation.shape == image.shape and np.allclose(segmentation.affine, image.affine, atol=1e-4)
    seg = np.asarray(segmentation.dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2}
    with open(inference / "case_005_measurements.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["label"], r["name"]) for r in rows] == [("1", "liver"), ("2", "spleen")]
    voxel_ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000.0
    hu = np.asarray(image.dataobj, np.float64)
    for row in rows:
        inside = seg == int(row["label"])
        assert int(row["voxels"]) == int(inside.sum())
        assert float(row["volume_ml"]) == pytest.approx(inside.sum() * voxel_ml, rel=1e-4)
        if inside.any():
            assert float(row["mean"]) == pytest.approx(hu[inside].mean(), abs=1e-3)
