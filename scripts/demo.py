"""
The bundle's main job on its bundled default: generate a synthetic abdominal CT study, train a small CoTr on
the CPU, evaluate it on held-out cases, run inference on unlabelled cases and draw overlay pictures.

Every step runs the real bundle CLI (``python -m monai.bundle run ...``), printed before it runs.

Usage::

    python -m scripts.demo                     # everything under ./demo
    python -m scripts.demo --max_epochs 10     # shorter
"""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
import time

from scripts.datalist import BTCV_LABELS
from scripts.synthetic import generate
from scripts.visualize import save_overlay_png

__all__ = ["run_bundle", "run_demo"]

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bundle(run_id: str, config_files: list[str], **overrides: object) -> None:
    """Run ``python -m monai.bundle run <run_id>`` on ``configs/<file>`` overlays with ``--key value`` overrides."""
    configs = [os.path.join(BUNDLE_ROOT, "configs", name) for name in config_files]
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(configs)]
    command += ["--logging_file", os.path.join(BUNDLE_ROOT, "configs", "logging.conf")]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    print("\n$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=BUNDLE_ROOT)


def _mean_dice(metrics_csv: str) -> float:
    with open(metrics_csv) as f:
        return {row[0]: float(row[1]) for row in csv.reader(f)}["val_mean_dice"]


def run_demo(
    workdir: str = os.path.join(BUNDLE_ROOT, "demo"),
    num_cases: int = 16,
    num_test: int = 2,
    max_epochs: int | None = None,
    seed: int = 0,
) -> float:
    """
    Run the synthetic CT demo end to end in ``workdir`` and return the held-out mean Dice (13 organs).

    Args:
        workdir: folder for the data, models, metrics and pictures (created; existing data is reused).
        num_cases: labelled synthetic cases (split into training and held-out validation).
        num_test: unlabelled cases for inference.
        max_epochs: override the demo overlay's number of epochs.
        seed: seed of the synthetic data.
    """
    start = time.time()
    workdir = os.path.abspath(workdir)
    data_dir, models, evaluation = (os.path.join(workdir, d) for d in ("data", "models", "eval"))
    if not os.path.exists(os.path.join(data_dir, "datalist.json")):
        generate(data_dir, num_cases=num_cases, num_test=num_test, seed=seed)
    paths = {"bundle_root": BUNDLE_ROOT, "dataset_dir": data_dir, "ckpt_dir": models}
    epochs = {} if max_epochs is None else {"max_epochs": max_epochs}
    run_bundle("training", ["train.json", "demo.json"], output_dir=evaluation, **paths, **epochs)
    run_bundle("evaluating", ["train.json", "evaluate.json", "demo.json"], output_dir=evaluation, **paths)
    inference_dir = os.path.join(workdir, "inference")
    paths["dataset_dir"] = os.path.join(data_dir, "Testing", "img")
    run_bundle("inference", ["inference.json", "demo.json"], output_dir=inference_dir, **paths)

    pictures = os.path.join(workdir, "pictures")
    for segmentation in sorted(glob.glob(os.path.join(evaluation, "segmentations", "*_seg.nii.gz"))):
        case = os.path.basename(segmentation)[: -len("_seg.nii.gz")]
        image = os.path.join(data_dir, "Training", "img", case + ".nii.gz")
        label = os.path.join(data_dir, "Training", "label", case.replace("img", "label") + ".nii.gz")
        save_overlay_png(image, segmentation, os.path.join(pictures, case + ".png"), label, BTCV_LABELS)
    for segmentation in sorted(glob.glob(os.path.join(inference_dir, "*_seg.nii.gz"))):
        case = os.path.basename(segmentation)[: -len("_seg.nii.gz")]
        image = os.path.join(paths["dataset_dir"], case + ".nii.gz")
        save_overlay_png(image, segmentation, os.path.join(pictures, case + "_inference.png"), None, BTCV_LABELS)

    dice = _mean_dice(os.path.join(evaluation, "metrics.csv"))
    print(f"\nSynthetic demo finished in {time.time() - start:.0f} s.")
    print(f"Held-out mean Dice over the 13 organs (synthetic data): {dice:.3f}")
    print(f"Metrics: {evaluation}\nSegmentations: {inference_dir}\nPictures: {pictures}")
    return dice


if __name__ == "__main__":
    import fire

    fire.Fire(run_demo)
