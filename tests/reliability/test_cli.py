"""
Through the real CLI: a training killed with SIGKILL resumes where it stopped, two seeded trainings are identical,
inference over a folder skips unreadable cases and never overwrites, a wrong override fails at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.engine.checkpoint import load_checkpoint

from .conftest import BUNDLE_ROOT, config_paths, run_bundle, workflow, write_nifti

pytestmark = pytest.mark.slow

TRAIN = ["train.json", "demo.json"]


def _train_args(study: str, work, *extra: str) -> list[str]:
    return [
        "run",
        "training",
        "--config_file",
        str(config_paths(*TRAIN)),
        "--dataset_dir",
        study,
        "--ckpt_dir",
        str(work / "models"),
        "--output_dir",
        str(work / "eval"),
        "--num_workers",
        "0",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------------------------
# nothing lost: SIGKILL, then resume
# ---------------------------------------------------------------------------------------------------------------


def test_training_killed_with_sigkill_resumes_from_its_checkpoint(synthetic_study, tmp_path):
    from ignite.engine import Events

    models = tmp_path / "models"
    latest = models / "checkpoint_latest.pt"
    schedule = ["--max_epochs", "4", "--epoch_length", "2", "--val_interval", "4", "--checkpoint_interval", "1"]
    log = open(tmp_path / "first_run.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "monai.bundle", *_train_args(synthetic_study, tmp_path, *schedule)],
        cwd=BUNDLE_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 300
    while not latest.exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(
                "no resumable checkpoint before the run ended:\n" + open(tmp_path / "first_run.log").read()[-4000:]
            )
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (models / "model_final.pt").exists()  # it was interrupted, not finished

    saved = load_checkpoint(latest)  # complete despite the kill; weights_only=True
    assert set(saved) == {"model", "optimizer", "lr_scheduler", "best_model_saver", "validator", "trainer"}
    epoch = saved["trainer"]["iteration"] // 2
    assert 1 <= epoch < 4

    flow = workflow(
        TRAIN,
        dataset_dir=synthetic_study,
        ckpt_dir=str(models),
        output_dir=str(tmp_path / "eval"),
        num_workers=0,
        max_epochs=4,
        epoch_length=2,
        val_interval=4,
        checkpoint_interval=1,
        resume=True,
    )
    flow.initialize()
    trainer = flow.parser.get_parsed_content("train#trainer")
    optimizer = flow.parser.get_parsed_content("optimizer")
    network = flow.parser.get_parsed_content("network")
    scheduler = flow.parser.get_parsed_content("lr_scheduler")
    flow.parser.get_parsed_content("train#handlers#0")(trainer)  # what runs when the trainer starts

    assert (trainer.state.epoch, trainer.state.iteration) == (epoch, 2 * epoch)
    assert scheduler.last_epoch == saved["lr_scheduler"]["last_epoch"] == epoch
    restored, expected = optimizer.state_dict()["state"], saved["optimizer"]["state"]
    assert len(restored) == len(expected) == len(list(network.parameters()))
    for index, buffers in expected.items():  # every per-parameter buffer (momentum, Adam moments, step)
        assert set(restored[index]) == set(buffers)
        for key, value in buffers.items():
            assert torch.equal(torch.as_tensor(restored[index][key]), torch.as_tensor(value)), (index, key)
    assert any(v.abs().sum() > 0 for b in expected.values() for v in b.values() if torch.is_tensor(v) and v.ndim)
    for name, value in network.state_dict().items():
        assert torch.equal(value, saved["model"][name]), name

    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
    flow.run()
    assert epochs == list(range(epoch + 1, 5))  # continued, not started over
    final = load_checkpoint(models / "model_final.pt")
    assert set(final) == set(network.state_dict())
    last = load_checkpoint(latest)
    assert last["trainer"]["iteration"] == 8 and last["validator"]["best_metric_epoch"] == 4


# ---------------------------------------------------------------------------------------------------------------
# determinism, on a study that also holds cases smaller than the training patch
# ---------------------------------------------------------------------------------------------------------------


def _add_small_cases(study: str) -> None:
    """Crop one training and one validation case to 60x60x36 mm, smaller than the 64x64x32 demo patch at 3x3x6 mm."""
    listing = os.path.join(study, "datalist.json")
    datalist = json.load(open(listing))
    for key in ("training", "validation"):
        case = datalist[key][0]
        image, label = (nib.load(os.path.join(study, case[k])) for k in ("image", "label"))
        offset = np.array([30, 30, 10])
        affine = image.affine.copy()
        affine[:3, 3] = image.affine[:3, :3] @ offset + image.affine[:3, 3]
        crop = tuple(slice(o, o + n) for o, n in zip(offset, (30, 30, 8)))
        small = {"image": f"Small/img_{key}.nii.gz", "label": f"Small/label_{key}.nii.gz"}
        write_nifti(os.path.join(study, small["image"]), np.asarray(image.dataobj)[crop], affine)
        write_nifti(os.path.join(study, small["label"]), np.asarray(label.dataobj)[crop], affine)
        datalist[key].append(small)
    json.dump(datalist, open(listing, "w"))


def _losses(output: str) -> list[float]:
    return [float(v) for v in re.findall(r"Iter: \d+/\d+ -- train_loss: ([0-9.]+)", output)]


def test_two_seeded_trainings_are_identical(synthetic_study, tmp_path):
    study = str(tmp_path / "study")
    shutil.copytree(synthetic_study, study)
    _add_small_cases(study)
    runs = []
    for name in ("first", "second"):
        work = tmp_path / name
        result = run_bundle(
            *_train_args(study, work, "--max_epochs", "1", "--epoch_length", "3", "--val_interval", "1")
        )
        assert result.returncode == 0, result.stderr[-6000:]
        runs.append((_losses(result.stdout + result.stderr), load_checkpoint(work / "models" / "checkpoint_latest.pt")))
    (losses_a, state_a), (losses_b, state_b) = runs
    assert len(losses_a) == 3 and losses_a == losses_b
    for name, value in state_a["model"].items():
        assert torch.equal(value, state_b["model"][name]), name
    for index, buffers in state_a["optimizer"]["state"].items():
        for key, value in buffers.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b["optimizer"]["state"][index][key]))
    assert state_a["validator"] == state_b["validator"] and state_a["validator"]["best_metric_epoch"] == 1


# ---------------------------------------------------------------------------------------------------------------
# inference over a folder
# ---------------------------------------------------------------------------------------------------------------


def test_inference_skips_unreadable_cases_and_never_overwrites(synthetic_study, tmp_path, demo_network):
    images = tmp_path / "images"
    shutil.copytree(os.path.join(synthetic_study, "Testing", "img"), images)
    good = sorted(str(p) for p in images.iterdir())
    source = nib.load(good[0])
    broken = images / "broken.nii.gz"
    broken.write_bytes(open(good[0], "rb").read()[:5000])
    with_nan = np.asarray(source.dataobj).astype(np.float32)
    with_nan[10, 10, 10] = np.nan
    nan_image = write_nifti(images / "with_nan.nii.gz", with_nan, source.affine)
    inputs_before = sorted(os.listdir(images))
    models = tmp_path / "models"
    models.mkdir()
    torch.save(demo_network.state_dict(), models / "model.pt")
    output = tmp_path / "segmentations"
    args = [
        "run",
        "inference",
        "--config_file",
        str(config_paths("inference.json", "demo.json")),
        "--dataset_dir",
        str(images),
        "--ckpt_dir",
        str(models),
        "--output_dir",
        str(output),
    ]

    first = run_bundle(*args)
    assert first.returncode == 1, first.stderr[-6000:]
    assert f"inference: wrote 2 of 4 segmentation(s) to {output}" in first.stderr
    assert f"  {broken}: unreadable or truncated data" in first.stderr
    assert f"  {nan_image}: image contains 1 NaN/Inf voxel(s)" in first.stderr
    written = sorted(os.listdir(output))
    assert written == sorted(os.path.basename(p).replace(".nii.gz", "_seg.nii.gz") for p in good)
    for path in good:
        segmentation = nib.load(output / os.path.basename(path).replace(".nii.gz", "_seg.nii.gz"))
        assert segmentation.shape == nib.load(path).shape
    assert sorted(os.listdir(images)) == inputs_before  # nothing written into the input folder

    stamps = {name: os.stat(output / name).st_mtime_ns for name in written}
    second = run_bundle(*args)
    assert second.returncode != 0
    assert "output file(s) already exist and overwrite is off" in second.stderr
    assert str(output / written[0]) in second.stderr and "Restored all variables" not in second.stdout
    assert {name: os.stat(output / name).st_mtime_ns for name in written} == stamps

    third = run_bundle(*args, "--overwrite", "True")
    assert third.returncode == 1 and "wrote 2 of 4" in third.stderr  # the broken cases still fail the run
    assert all(os.stat(output / name).st_mtime_ns > stamps[name] for name in written)


# ---------------------------------------------------------------------------------------------------------------
# a wrong override
# ---------------------------------------------------------------------------------------------------------------


def test_wrong_override_fails_before_anything_runs(synthetic_study, tmp_path):
    result = run_bundle(*_train_args(synthetic_study, tmp_path, "--max_epochs", "ten", "--check_data", "false"))
    assert result.returncode != 0
    assert "config id 'max_epochs' must be a positive integer, got 'ten' (str)" in result.stderr
    assert "write --check_data False" in result.stderr
    assert "Epoch" not in result.stdout + result.stderr and not (tmp_path / "models").exists()
