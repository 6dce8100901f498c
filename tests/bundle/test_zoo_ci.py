"""
The MONAI model zoo's own checks of a bundle, run the way its CI runs them: the files and version keys that
``ci/verify_bundle.py`` requires, TorchScript export by scripting (``ckpt_export`` without ``--use_trace``) from a
random-weights checkpoint, and the ``ci/unit_tests`` pattern: small random NIfTI files, overrides by id,
``ConfigWorkflow`` train / evaluate / infer with ``check_properties``, and the 2-process ``torchrun`` training from an
exported, overridden config.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from .conftest import BUNDLE_ROOT, CONFIGS, SMALL_COTR, config_paths, run_cli

META = os.path.join(CONFIGS, "metadata.json")
LOGGING = os.path.join(CONFIGS, "logging.conf")
#: the zoo's "necessary" and "preferred" files (models/model.pt aside: the zoo CI makes a random one), and the
#: data terms of BTCV
BUNDLE_FILES = ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md", "docs/data_license.txt")

NETWORK = SMALL_COTR
SMALL = {
    **NETWORK,
    "patch_size": [32, 32, 16],
    "target_spacing": [2.0, 2.0, 4.0],
    "num_workers": 0,
    "sw_batch_size": 2,
    "tta_flip_axes": [],
    "device": "$torch.device('cpu')",
}
TRAIN = {**SMALL, "max_epochs": 1, "epoch_length": 2, "val_interval": 1, "cache_rate": 0.0, "batch_size": 1}
#: voxel axes pointing P, L, S (permuted and flipped against RAS), 1.6 x 1.4 x 3.2 mm voxels
AFFINE = np.array([[0.0, -1.4, 0.0, 40.0], [-1.6, 0.0, 0.0, 60.0], [0.0, 0.0, 3.2, -120.0], [0.0, 0.0, 0.0, 1.0]])
SHAPE = (40, 36, 20)


def _run_workflow(files: list[str], workflow_type: str, override: dict) -> None:
    """What the zoo's unit tests do with each config: initialize, check the properties, run, finalize."""
    workflow = ConfigWorkflow(
        workflow_type=workflow_type, config_file=config_paths(*files), logging_file=LOGGING, meta_file=META, **override
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()


@pytest.fixture(scope="module")
def random_study(tmp_path_factory) -> str:
    """6 random int16 CT volumes with random labels 0-13 (4 train, 2 validation) and their ``datalist.json``."""
    root = tmp_path_factory.mktemp("zoo_study")
    rng = np.random.default_rng(0)
    datalist: dict[str, list] = {"training": [], "validation": []}
    for case in range(6):
        image, label = f"imagesTr/img_{case}.nii.gz", f"labelsTr/label_{case}.nii.gz"
        for name, data in (
            (image, rng.integers(-1000, 1000, size=SHAPE).astype(np.int16)),
            (label, rng.integers(0, 14, size=SHAPE).astype(np.uint8)),
        ):
            (root / name).parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, AFFINE), str(root / name))
        datalist["training" if case < 4 else "validation"].append({"image": image, "label": label})
    (root / "datalist.json").write_text(json.dumps(datalist))
    return str(root)


@pytest.fixture(scope="module")
def trained(random_study, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("zoo_work")
    override = {
        **TRAIN,
        "dataset_dir": random_study,
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "eval"),
    }
    _run_workflow(["train.json"], "train", override)
    return override


def test_bundle_files_version_and_changelog():
    for name in BUNDLE_FILES:
        assert os.path.isfile(os.path.join(BUNDLE_ROOT, name)), name
    metadata = json.load(open(META))
    assert metadata["version"] in metadata["changelog"]
    versions = sorted(tuple(int(p) for p in v.split(".")) for v in metadata["changelog"])
    assert versions[-1] == tuple(int(p) for p in metadata["version"].split("."))  # the newest entry is this version


@pytest.mark.slow
def test_train_config(trained):
    state = torch.load(os.path.join(trained["ckpt_dir"], "model.pt"), map_location="cpu", weights_only=True)
    assert state["decoder.final_head.weight"].shape[:2] == (14, 8)  # the overridden widths were used


@pytest.mark.slow
def test_eval_config(trained):
    # evaluate.json overrides train.json, so the zoo runs it as a "train" workflow
    _run_workflow(["train.json", "evaluate.json"], "train", trained)
    with open(os.path.join(trained["output_dir"], "val_mean_dice_raw.csv")) as f:
        assert len(f.read().splitlines()) == 1 + 2  # header and the 2 validation cases


@pytest.mark.slow
def test_infer_config(trained, random_study, tmp_path):
    images = os.path.join(random_study, "imagesTr")
    override = {**SMALL, "dataset_dir": images, "ckpt_dir": trained["ckpt_dir"], "output_dir": str(tmp_path / "seg")}
    _run_workflow(["inference.json"], "infer", override)
    for path in sorted(glob.glob(os.path.join(images, "*.nii.gz"))):
        segmentation = nib.load(str(tmp_path / "seg" / os.path.basename(path).replace(".nii.gz", "_seg.nii.gz")))
        assert segmentation.shape == SHAPE and np.allclose(segmentation.affine, AFFINE, atol=1e-4)


@pytest.mark.slow
def test_train_two_processes(random_study, tmp_path):
    """The zoo's multi-GPU unit test: export train.json + multi_gpu_train.json with the overrides, torchrun it."""
    override = {
        **TRAIN,
        "dataset_dir": random_study,
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"),
    }
    parser = ConfigParser()
    parser.read_config(config_paths("train.json", "multi_gpu_train.json"))
    parser.update(pairs=override)
    exported = str(tmp_path / "train_override.json")
    ConfigParser.export_config_file(parser.config, exported, indent=4)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        exported,
        "--meta_file",
        META,
        "--logging_file",
        LOGGING,
    ]
    env = {**os.environ, "PYTHONPATH": BUNDLE_ROOT}  # the bundle's scripts package, as the zoo sets it
    result = subprocess.run(command, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    state = torch.load(tmp_path / "models" / "model_final.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped, loadable without DDP


@pytest.mark.slow
def test_torchscript_export_by_scripting(tmp_path):
    """``verify_torchscript``: ``ckpt_export`` without ``--use_trace`` from random weights; equal to eager at the
    metadata's patch size and at another valid size."""
    parser = ConfigParser()
    parser.read_config(config_paths("inference.json"))
    parser.update(pairs=NETWORK)
    network = parser.get_parsed_content("network_def").eval()
    torch.manual_seed(0)
    with torch.no_grad():  # random weights everywhere, the DeTrans offsets and attention logits included
        for tensor in network.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn_like(tensor))
    checkpoint = tmp_path / "model.pt"
    torch.save(network.state_dict(), checkpoint)
    exported = tmp_path / "model.ts"
    overrides = [arg for key, value in NETWORK.items() for arg in (f"--{key}", json.dumps(value))]
    run_cli(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(checkpoint),
        "--meta_file",
        META,
        "--config_file",
        config_paths("inference.json")[0],
        "--bundle_root",
        BUNDLE_ROOT,
        *overrides,
    )
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(exported), _extra_files=extra)
    metadata, saved = json.load(open(META)), json.loads(extra["metadata.json"])
    for key in ("version", "required_packages_version"):
        assert saved[key] == metadata[key], key
    patch = metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    with torch.no_grad():
        for shape in (patch, [96, 64, 40]):
            x = torch.randn(1, 1, *shape)
            torch.testing.assert_close(scripted(x), network(x), atol=1e-5, rtol=1e-5)
