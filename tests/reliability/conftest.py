"""Helpers of the reliability tests: small NIfTI studies, in-process config workflows and CLI runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(BUNDLE_ROOT, "configs")

if BUNDLE_ROOT not in sys.path:  # monai.bundle puts the bundle root on sys.path only inside run()
    sys.path.insert(0, BUNDLE_ROOT)

#: a few iterations of the CPU demo overlay
SHORT = ["--max_epochs", "2", "--epoch_length", "2", "--val_interval", "1", "--num_workers", "0"]

AFFINE = np.array([[-2.0, 0, 0, 90.0], [0, -2.0, 0, 70.0], [0, 0, 4.5, -300.0], [0, 0, 0, 1]])
SMALL_SHAPE = (24, 24, 8)


def config_paths(*names: str) -> list[str]:
    return [os.path.join(CONFIGS, name) for name in names]


def run_bundle(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ...`` as a user runs it; the caller checks the exit status."""
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=timeout
    )


def write_nifti(path, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def ct_image(shape=SMALL_SHAPE, seed: int = 0) -> np.ndarray:
    """int16 HU: air (-1000) around a soft-tissue block (~40 HU) with noise."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000, np.int16)
    sx, sy, sz = (max(1, s // 4) for s in shape)
    image[sx:-sx, sy:-sy, :] = 40
    return (image + rng.integers(-20, 20, size=shape)).astype(np.int16)


def organ_label(shape=SMALL_SHAPE, value: int = 6) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    sx, sy = max(1, shape[0] // 3), max(1, shape[1] // 3)
    label[sx:-sx, sy:-sy, :] = value
    return label


def write_small_study(root, num_train: int = 2, num_val: int = 1) -> dict:
    """A tiny valid study (relative paths, ``datalist.json``); returns the datalist."""
    datalist = {"training": [], "validation": []}
    for i in range(num_train + num_val):
        key = "training" if i < num_train else "validation"
        image = f"img/img{i:02d}.nii.gz"
        label = f"label/label{i:02d}.nii.gz"
        write_nifti(os.path.join(root, image), ct_image(seed=i))
        write_nifti(os.path.join(root, label), organ_label())
        datalist[key].append({"image": image, "label": label})
    with open(os.path.join(root, "datalist.json"), "w") as f:
        json.dump(datalist, f)
    return datalist


def workflow(files: list[str], workflow_type: str = "train", **overrides):
    """An in-process ``ConfigWorkflow`` of ``configs/<files>`` with ``overrides`` (ids as keyword arguments)."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=config_paths(*files),
        meta_file=os.path.join(CONFIGS, "metadata.json"),
        logging_file=os.path.join(CONFIGS, "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )


def root_cause(error: BaseException) -> BaseException:
    """The original exception under MONAI's "Failed to evaluate" wrappers."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


@pytest.fixture
def demo_network():
    """The demo overlay's (small) CoTr, built from the configs."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_paths("inference.json", "demo.json"))
    return parser.get_parsed_content("network_def")
