"""Fine-tuning from a checkpoint trained on another label set (config id ``pretrained``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts.engine.checkpoint import CheckpointError, load_matching_weights
from scripts.networks import CoTr
from tests.conftest import BUNDLE_ROOT

SMALL = dict(blocks=(1, 1, 1), channels=(8, 16, 48, 48), d_model=48, num_heads=4, num_layers=1, mlp_dim=64)
HEADS = {f"decoder.heads.{i}.{p}" for i in range(3) for p in ("weight", "bias")} | {
    "decoder.final_head.weight",
    "decoder.final_head.bias",
}


def test_loads_every_matching_tensor_and_reinitialises_the_heads(tmp_path):
    torch.manual_seed(0)
    source = CoTr(out_channels=14, **SMALL)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    torch.manual_seed(1)
    target = CoTr(out_channels=3, **SMALL)
    initial = {k: v.clone() for k, v in target.state_dict().items()}
    loaded, skipped = load_matching_weights(target, str(tmp_path / "model.pt"))
    assert set(skipped) == HEADS and set(loaded) == set(source.state_dict()) - HEADS
    for name, value in target.state_dict().items():
        expected = initial[name] if name in HEADS else source.state_dict()[name]
        assert torch.equal(value, expected), name


def test_empty_path_loads_nothing_and_a_foreign_checkpoint_is_refused(tmp_path):
    target = CoTr(out_channels=3, **SMALL)
    assert load_matching_weights(target, "") == ([], [])
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt"):
        load_matching_weights(target, str(tmp_path / "foreign.pt"))


@pytest.mark.slow
def test_three_class_training_starts_from_a_fourteen_class_checkpoint(synthetic_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(synthetic_study, study)
    datalist = json.load(open(study / "datalist.json"))
    for item in datalist["training"] + datalist["validation"]:  # keep liver (1) and spleen (2) only
        label = nib.load(study / item["label"])
        values = np.asarray(label.dataobj)
        nib.save(
            nib.Nifti1Image(((values == 6) * 1 + (values == 1) * 2).astype(np.uint8), label.affine),
            study / item["label"],
        )
    parser = ConfigParser()
    parser.read_config([os.path.join(BUNDLE_ROOT, "configs", f) for f in ("train.json", "demo.json")])
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "btcv.pt")
    configs = str([os.path.join(BUNDLE_ROOT, "configs", f) for f in ("train.json", "demo.json")])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            configs,
            "--dataset_dir",
            str(study),
            "--ckpt_dir",
            str(tmp_path / "models"),
            "--output_dir",
            str(tmp_path / "eval"),
            "--num_classes",
            "3",
            "--label_names",
            str({"0": "background", "1": "liver", "2": "spleen"}),
            "--pretrained",
            str(tmp_path / "btcv.pt"),
            "--max_epochs",
            "1",
            "--epoch_length",
            "2",
            "--val_interval",
            "1",
            "--num_workers",
            "0",
            "--logging_file",
            os.path.join(BUNDLE_ROOT, "configs", "logging.conf"),
        ],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    log = result.stdout + result.stderr
    assert f"pretrained {tmp_path / 'btcv.pt'}: loaded" in log and f"re-initialised {len(HEADS)}" in log
    state = torch.load(tmp_path / "models" / "model_final.pt", map_location="cpu", weights_only=True)
    assert state["decoder.final_head.weight"].shape[0] == 3
