"""
End to end through a real MONAI Label server: the ``monaibundle`` app serving a tiny CoTr trained with this bundle
answers model info, infers, takes labels, fine-tunes for one epoch and turns bad requests into error responses.

The MONAI Label environment is built by ``setup_monailabel.sh`` when missing (3-5 minutes, about 8 GB) and reused
afterwards: ``$COTR_MONAILABEL_VENV``, default ``~/.cache/cotr-bundle/monailabel-venv``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from scripts.apps.monailabel_server import (
    BUNDLE_NAME,
    BUNDLE_ROOT,
    build_environment,
    install_app,
    start_server,
    stop_server,
    wait_until_ready,
)

pytestmark = pytest.mark.slow

CONFIGS = os.path.join(BUNDLE_ROOT, "configs")
# a CoTr small enough to train and infer in seconds on a CPU: 32x32x16 patches give a 2x2x2 deepest map
TINY_NETWORK = {
    "patch_size": [32, 32, 16],
    "target_spacing": [4.0, 4.0, 8.0],
    "network_def#blocks": [1, 1, 1],
    "network_def#channels": [12, 24, 24, 24],
    "network_def#d_model": 24,
    "network_def#num_heads": 2,
    "network_def#num_layers": 1,
    "network_def#mlp_dim": 48,
}
TINY_INFERENCE = {**TINY_NETWORK, "tta_flip_axes": [], "sw_batch_size": 4}
# validation every epoch, so that a one-epoch run of MONAI Label also writes models/model.pt
TINY_TRAINING = {
    **TINY_NETWORK,
    "epoch_length": 2,
    "val_interval": 1,
    "batch_size": 1,
    "cache_rate": 0.0,
    "num_workers": 0,
}
TRAINING_IMAGES = ("img0001", "img0002", "img0003", "img0004")  # labelled through the server (3 train, 1 validation)
TEST_IMAGE = "img0007"  # one of the synthetic study's unlabelled test images
TRAINING_FINISHED = "Train completed, saved final checkpoint"  # logged once per training run


class Server(NamedTuple):
    """A running server: its URL and log, the studies folder it serves and the bundle it links to."""

    url: str
    log_file: Path
    studies: Path
    bundle: Path


def _request(method: str, url: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]:
    """Status and body of an HTTP request; error statuses are returned, not raised."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _upload(method: str, url: str, field: str, filename: str, content: bytes) -> tuple[int, bytes]:
    """``method`` ``url`` with one file as multipart form data, as 3D Slicer sends it."""
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n\r\n'
    body = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return _request(method, url, body, f"multipart/form-data; boundary={boundary}")


def _put_label(server: Server, image_id: str, content: bytes) -> tuple[int, bytes]:
    """Save ``content`` as the final label of ``image_id``, as 3D Slicer's *Submit Label* does."""
    return _upload("PUT", f"{server.url}/datastore/label?image={image_id}&tag=final", "label", "label.nii.gz", content)


def _get_json(url: str) -> Any:
    status, body = _request("GET", url)
    assert status == 200, (url, status, body[:2000])
    return json.loads(body)


def _train(server: Server, **params: Any) -> dict:
    """
    Run ``POST /train/<model>`` with the trainer's options as 3D Slicer sends them (the first choice of each list,
    ``run_id`` empty) updated by ``params``, and wait for the task to end; returns it (``status`` DONE or ERROR).
    """
    options = _get_json(f"{server.url}/info/")["trainers"][BUNDLE_NAME]["config"]
    request = {key: value[0] if isinstance(value, list) else value for key, value in options.items()}
    request.update(params)
    url = f"{server.url}/train/{BUNDLE_NAME}"
    status, body = _request("POST", url, json.dumps(request).encode(), "application/json")
    assert status == 200, body[:2000]
    task_id = json.loads(body)["id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        task = next(t for t in _get_json(f"{server.url}/train/?all=true") if t["id"] == task_id)
        if task["status"] not in ("SUBMITTED", "RUNNING"):
            return task
        time.sleep(2)
    pytest.fail(f"training task {task_id} still running after 600 s")


def _write_config(name: str, overrides: dict[str, Any], bundle: Path) -> None:
    """``configs/<name>`` of this bundle with ``overrides`` (ids as keys), as one file in ``bundle``: MONAI Label
    reads only ``configs/inference.json`` and ``configs/train.json``."""
    parser = ConfigParser()
    parser.read_config(os.path.join(CONFIGS, name))
    parser.update(overrides)
    ConfigParser.export_config_file(parser.get(), str(bundle / "configs" / name), indent=4)


@pytest.fixture(scope="module")
def monailabel_venv() -> str:
    return build_environment()


@pytest.fixture(scope="module")
def tiny_bundle(synthetic_study: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this bundle with a tiny network, and its ``models/model.pt`` trained through the bundle CLI."""
    bundle = tmp_path_factory.mktemp("bundle") / BUNDLE_NAME
    scripts = os.path.join(BUNDLE_ROOT, "scripts")
    shutil.copytree(scripts, bundle / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(CONFIGS, bundle / "configs")
    _write_config("inference.json", TINY_INFERENCE, bundle)
    _write_config("train.json", TINY_TRAINING, bundle)
    config = bundle / "configs" / "train.json"
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(config)]
    command += ["--bundle_root", str(bundle), "--dataset_dir", synthetic_study, "--max_epochs", "1"]
    result = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    assert (bundle / "models" / "model.pt").is_file()
    return bundle


@pytest.fixture(scope="module")
def server(monailabel_venv: str, tiny_bundle: Path, synthetic_study: str, tmp_path_factory: pytest.TempPathFactory):
    """A MONAI Label server on 127.0.0.1 and a free port over the study's images; stopped by PID at the end."""
    work = tmp_path_factory.mktemp("monailabel")
    studies = work / "studies"
    studies.mkdir()
    for folder in ("Training/img", "Testing/img"):
        for image in sorted(Path(synthetic_study, folder).glob("*.nii.gz")):
            shutil.copy(image, studies / image.name)
    app = install_app(str(work / "apps"), monailabel_venv, str(tiny_bundle))
    log_file = work / "server.log"
    process, url = start_server(app, str(studies), monailabel_venv, log_file=str(log_file))
    try:
        try:
            wait_until_ready(url, process)
        except RuntimeError as e:
            pytest.fail(f"{e}\n{log_file.read_text()[-6000:]}")
        yield Server(url, log_file, studies, tiny_bundle)
    finally:
        stop_server(process)
        assert process.poll() is not None


def test_info_lists_the_model_with_the_13_organs(server: Server):
    info = _get_json(f"{server.url}/info/")
    metadata = json.load(open(os.path.join(CONFIGS, "metadata.json")))
    channels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    organs = {name.lower(): int(index) for index, name in channels.items() if int(index) > 0}
    assert len(organs) == 13
    assert info["models"][BUNDLE_NAME]["labels"] == organs
    assert info["models"][BUNDLE_NAME]["type"] == "segmentation"
    assert BUNDLE_NAME in info["trainers"]


def _infer(server: Server, image_id: str, output: Path) -> nib.Nifti1Image:
    status, body = _request("POST", f"{server.url}/infer/{BUNDLE_NAME}?image={image_id}&output=image")
    assert status == 200, body[:2000]
    output.write_bytes(body)
    return nib.load(output)


def _check_label_map(segmentation: nib.Nifti1Image, image_path: Path) -> None:
    image = nib.load(image_path)
    assert segmentation.shape == image.shape
    assert np.allclose(segmentation.affine, image.affine, atol=1e-3)
    labels = np.unique(np.asarray(segmentation.dataobj))
    assert np.array_equal(labels, np.round(labels)) and set(labels.astype(int)) <= set(range(14)), labels


def test_inference_returns_a_label_map_in_the_input_geometry(server: Server, tmp_path: Path):
    segmentation = _infer(server, TEST_IMAGE, tmp_path / "label.nii.gz")
    _check_label_map(segmentation, server.studies / f"{TEST_IMAGE}.nii.gz")


def test_bad_requests_get_error_responses_and_the_server_stays_up(server: Server):
    status, _ = _request("POST", f"{server.url}/infer/{BUNDLE_NAME}?image=no_such_image")
    assert status >= 400
    status, _ = _request("POST", f"{server.url}/infer/no_such_model?image={TEST_IMAGE}")
    assert status >= 400
    status, _ = _upload("POST", f"{server.url}/infer/{BUNDLE_NAME}", "file", "broken.nii.gz", b"not a NIfTI file")
    assert status >= 400
    label = (server.studies / f"{TEST_IMAGE}.nii.gz").read_bytes()
    status, _ = _put_label(server, "no_such_image", label)
    assert status >= 400
    assert _get_json(f"{server.url}/info/")["models"][BUNDLE_NAME]


def test_fine_tuning_on_uploaded_labels(server: Server, synthetic_study: str, tmp_path: Path):
    for image_id in TRAINING_IMAGES:
        label = Path(synthetic_study, "Training", "label", image_id.replace("img", "label") + ".nii.gz").read_bytes()
        status, body = _put_label(server, image_id, label)
        assert status == 200 and json.loads(body)["label"] == image_id, body[:2000]
    labelled = _get_json(f"{server.url}/datastore/?output=all")["objects"]
    assert all("final" in labelled[image_id]["labels"] for image_id in TRAINING_IMAGES)

    models = server.bundle / "models"
    started, log_before = time.time(), server.log_file.read_text()
    task = _train(server, max_epochs=1, val_split=0.25)
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    # one run of one epoch, validated: the best and the final weights are new
    assert server.log_file.read_text().count(TRAINING_FINISHED) == log_before.count(TRAINING_FINISHED) + 1
    assert os.path.getmtime(models / "model_final.pt") >= started
    assert os.path.getmtime(models / "model.pt") >= started
    # the next inference reloads models/model.pt: it runs on the fine-tuned weights
    _check_label_map(_infer(server, TEST_IMAGE, tmp_path / "label.nii.gz"), server.studies / f"{TEST_IMAGE}.nii.gz")
    assert server.log_file.read_text()[len(log_before) :].count("Reload model from cache") == 1


def test_training_on_a_corrupt_label_fails_naming_it(server: Server):
    image_id = "img0005"
    # MONAI Label stores an upload as it is; the bundle's data check refuses it when training starts
    status, body = _put_label(server, image_id, b"junk")
    assert status == 200, body[:2000]
    try:
        task = _train(server, max_epochs=1, val_split=0.25)
        assert task["status"] == "ERROR"
        corrupt = os.path.realpath(server.studies / "labels" / "final" / f"{image_id}.nii.gz")
        assert f"{corrupt}: unreadable NIfTI" in server.log_file.read_text()
    finally:
        _request("DELETE", f"{server.url}/datastore/label?id={image_id}&tag=final")
    assert _get_json(f"{server.url}/info/")["trainers"][BUNDLE_NAME]
