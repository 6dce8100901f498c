from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from torch.utils.tensorboard import SummaryWriter

import scripts.report as report
from scripts.datalist import BTCV_LABELS
from scripts.report import (
    BTCV_MERGED_LABELS,
    SaveOverlayd,
    TrainingCurvesHandler,
    plot_training_curves,
    read_scalars,
    write_evaluation_report,
)
from scripts.visualize import organ_colour
from tests.test_visualize import ORGANS, OVERLAY_SIZE, count_colour, make_case, write_nifti

CURVES_SIZE = (450, 1200)
BOXPLOT_SIZE = (550, 1200)
BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_raw_csv(path: str, rows: dict[str, list[float]]) -> None:
    """A MetricsSaver-style raw CSV: filename, class0..classK, mean (nanmean), 4 decimals, 'nan' for NaN."""
    with open(path, "w") as f:
        width = len(next(iter(rows.values())))
        f.write("filename," + ",".join(f"class{i}" for i in range(width)) + ",mean\n")
        for name, values in rows.items():
            cells = [f"{v:.4f}" for v in values] + [f"{np.nanmean(values):.4f}"]
            f.write(name + "," + ",".join(cells) + "\n")


@pytest.fixture
def evaluation(tmp_path):
    """Two cases in a dataset folder with a datalist, their segmentations and the four raw metric CSVs."""
    dataset, eval_dir = tmp_path / "data", tmp_path / "eval"
    for folder in (dataset / "Training" / "img", dataset / "Training" / "label", eval_dir / "segmentations"):
        folder.mkdir(parents=True)
    image, label = make_case({**ORGANS, 4: (slice(22, 25), slice(24, 27), slice(3, 5))})  # + gallbladder
    prediction = np.where(label == 4, 0, label)  # the gallbladder is missed
    rng = np.random.default_rng(0)
    validation, tables = [], {"dice": {}, "hd": {}, "dice_merged": {}, "hd_merged": {}}
    for case in ("0035", "0036"):
        image_path = write_nifti(image, str(dataset / "Training" / "img" / f"img{case}.nii.gz"))
        write_nifti(label, str(dataset / "Training" / "label" / f"label{case}.nii.gz"))
        write_nifti(prediction, str(eval_dir / "segmentations" / f"img{case}_seg.nii.gz"))
        validation.append({"image": f"Training/img/img{case}.nii.gz", "label": f"Training/label/label{case}.nii.gz"})
        dice = np.round(rng.uniform(0.3, 0.95, 13), 4)
        dice[4] = math.nan  # esophagus absent in every case
        tables["dice"][image_path] = list(dice)
        tables["hd"][image_path] = list(np.round(rng.uniform(1, 40, 13), 4))
        tables["dice_merged"][image_path] = list(np.round(rng.uniform(0.3, 0.95, 11), 4))
        tables["hd_merged"][image_path] = list(np.round(rng.uniform(1, 40, 11), 4))
    files = {"dice": "val_mean_dice", "hd": "val_hd95", "dice_merged": "val_mean_dice_merged", "hd_merged": "val_hd95_merged"}
    for key, name in files.items():
        _write_raw_csv(str(eval_dir / f"{name}_raw.csv"), tables[key])
    datalist = dataset / "datalist.json"
    datalist.write_text(json.dumps({"training": [], "validation": validation}))
    return {"eval_dir": str(eval_dir), "dataset_dir": str(dataset), "datalist": str(datalist), "tables": tables}


def _readable(name: str) -> str:
    return name.replace("_", " ")


def test_report_csv_has_organ_names_and_the_raw_values(evaluation):
    eval_dir = evaluation["eval_dir"]
    written = write_evaluation_report(eval_dir, dataset_dir=evaluation["dataset_dir"], datalist=evaluation["datalist"])
    names = ("per_case_metrics.csv", "dice_boxplot.png", "img0035.png", "img0036.png")
    assert written == [os.path.join(eval_dir, "report", f) for f in names]
    with open(written[0]) as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["img0035", "img0036"]
    assert "dice_13/right kidney" in rows[0] and "hd95_11/adrenal glands" in rows[0] and "dice_11/kidneys" in rows[0]
    protocols = {
        "dice_13": ("dice", BTCV_LABELS),
        "hd95_13": ("hd", BTCV_LABELS),
        "dice_11": ("dice_merged", BTCV_MERGED_LABELS),
        "hd95_11": ("hd_merged", BTCV_MERGED_LABELS),
    }
    for row in rows:
        for prefix, (table, names) in protocols.items():
            values = evaluation["tables"][table][row["image"]]
            for index, value in enumerate(values):  # classN is label N + 1
                got = float(row[f"{prefix}/{_readable(names[index + 1])}"])
                assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-9)
            assert float(row[f"{prefix}/mean"]) == pytest.approx(np.nanmean(values), abs=1e-4)
        assert row["dice_13/esophagus"] == "nan"
        assert len(row) == 2 + 2 * 14 + 2 * 12


def test_report_pictures_with_and_without_ground_truth(evaluation):
    eval_dir = evaluation["eval_dir"]
    written = write_evaluation_report(eval_dir, dataset_dir=evaluation["dataset_dir"], datalist=evaluation["datalist"])
    boxplot = mpimg.imread(written[1])
    assert boxplot.shape[:2] == BOXPLOT_SIZE and boxplot[..., :3].var() > 0.003
    overlay = mpimg.imread(written[2])
    assert overlay.shape[:2] == OVERLAY_SIZE and overlay[..., :3].var() > 0.01
    gallbladder = organ_colour(4)  # in the ground truth only
    assert count_colour(overlay, gallbladder) > 5 and count_colour(overlay, organ_colour(6)) > 20

    written = write_evaluation_report(eval_dir)  # no datalist: predictions only
    overlay = mpimg.imread(written[2])
    assert count_colour(overlay, gallbladder) == 0 and count_colour(overlay, organ_colour(6)) > 20


def test_report_handles_absent_organs_and_missing_files(evaluation, caplog):
    eval_dir = evaluation["eval_dir"]
    os.remove(os.path.join(eval_dir, "val_hd95_merged_raw.csv"))
    os.remove(os.path.join(eval_dir, "segmentations", "img0036_seg.nii.gz"))
    with caplog.at_level(logging.WARNING, logger="scripts.report"):
        written = write_evaluation_report(eval_dir, dataset_dir=evaluation["dataset_dir"], datalist=evaluation["datalist"])
    assert [os.path.basename(p) for p in written] == ["per_case_metrics.csv", "dice_boxplot.png", "img0035.png"]
    assert "img0036_seg.nii.gz" in caplog.text and "val_hd95_merged_raw.csv" in caplog.text
    with open(written[0]) as f:
        header = next(csv.reader(f))
    assert not [c for c in header if c.startswith("hd95_11/")] and "dice_11/mean" in header

    os.remove(os.path.join(eval_dir, "val_mean_dice_raw.csv"))
    with pytest.raises(FileNotFoundError, match=eval_dir):
        write_evaluation_report(eval_dir)


def _write_log(log_dir: str, iterations: int = 60, epochs=(2, 4, 6)) -> tuple[dict, dict]:
    loss = {i: 1.0 / (1 + i) + 0.01 * (i % 3) for i in range(1, iterations + 1)}
    dice = {e: 0.1 * e for e in epochs}
    writer = SummaryWriter(log_dir)
    for step, value in loss.items():
        writer.add_scalar("train_loss", value, step)
    for step, value in dice.items():
        writer.add_scalar("val_mean_dice", value, step)
    writer.close()
    return loss, dice


def test_training_curves_from_tensorboard_events(tmp_path):
    loss, dice = _write_log(str(tmp_path))
    scalars = read_scalars(str(tmp_path), ["train_loss", "val_mean_dice"])
    np.testing.assert_array_equal(scalars["train_loss"][0], list(loss))
    np.testing.assert_allclose(scalars["train_loss"][1], list(loss.values()), rtol=1e-6)
    np.testing.assert_allclose(scalars["val_mean_dice"][1], list(dice.values()), rtol=1e-6)
    png_path = plot_training_curves(str(tmp_path), str(tmp_path / "curves" / "training_curves.png"))
    png = mpimg.imread(png_path)
    assert png.shape[:2] == CURVES_SIZE and png[..., :3].var() > 0.003
    assert os.listdir(tmp_path / "curves") == ["training_curves.png"]  # written atomically

    with pytest.raises(FileNotFoundError, match="empty"):
        plot_training_curves(str(tmp_path / "empty"), str(tmp_path / "x.png"))


@pytest.mark.slow
def test_cli_curves_and_report(tmp_path, evaluation):
    _write_log(str(tmp_path))
    out = tmp_path / "cli.png"
    command = [sys.executable, "-m", "scripts.report", "curves", "--log_dir", str(tmp_path), "--output_png", str(out)]
    subprocess.run(command, check=True, cwd=BUNDLE_ROOT, capture_output=True)
    assert mpimg.imread(str(out)).shape[:2] == CURVES_SIZE
    command = [sys.executable, "-m", "scripts.report", "report", "--eval_dir", evaluation["eval_dir"]]
    command += ["--dataset_dir", evaluation["dataset_dir"], "--datalist", evaluation["datalist"]]
    subprocess.run(command, check=True, cwd=BUNDLE_ROOT, capture_output=True)
    assert os.path.isfile(os.path.join(evaluation["eval_dir"], "report", "img0036.png"))


def test_handler_plots_every_interval_and_at_the_end(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(report, "plot_training_curves", lambda log_dir, png: calls.append((log_dir, png)) or png)
    engine = Engine(lambda engine, batch: None)
    TrainingCurvesHandler(str(tmp_path), interval=2).attach(engine)
    engine.run([0, 1], max_epochs=5)
    assert calls == [(str(tmp_path), str(tmp_path / "training_curves.png"))] * 3  # epochs 2 and 4, completed


def test_handler_flushes_writers_and_survives_a_bad_log_dir(tmp_path, caplog):
    writer = SummaryWriter(str(tmp_path), max_queue=1000, flush_secs=10000)  # nothing reaches the disk by itself
    for step in range(1, 20):
        writer.add_scalar("train_loss", 1.0 / step, step)
    handler = TrainingCurvesHandler(str(tmp_path), str(tmp_path / "curves.png"), writers=[writer])
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    writer.close()
    assert mpimg.imread(str(tmp_path / "curves.png")).shape[:2] == CURVES_SIZE

    missing = str(tmp_path / "no_such_dir")
    engine = Engine(lambda engine, batch: None)
    TrainingCurvesHandler(missing, interval=1).attach(engine)
    with caplog.at_level(logging.WARNING, logger="scripts.report"):
        engine.run([0], max_epochs=2)  # does not raise
    assert engine.state.epoch == 2 and missing in caplog.text
    assert not os.path.exists(os.path.join(missing, "training_curves.png"))
    with pytest.raises(ValueError, match="interval"):
        TrainingCurvesHandler(missing, interval=-1)


def test_save_overlayd_draws_the_saved_segmentation(tmp_path, caplog):
    image, label = make_case(ORGANS)
    source = write_nifti(image, str(tmp_path / "img0061.nii.gz"))
    out_dir = tmp_path / "inference"
    out_dir.mkdir()
    write_nifti(label, str(out_dir / "img0061_seg.nii.gz"))
    data = {"image": MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": source}), "pred": torch.ones(1)}

    assert SaveOverlayd("image", output_dir=str(out_dir), enabled=False)(data).keys() == data.keys()
    assert not (out_dir / "img0061.png").exists()

    result = SaveOverlayd("image", output_dir=str(out_dir), output_postfix="seg")(data)
    assert result["pred"] is data["pred"] and result["image"] is data["image"]
    png = mpimg.imread(str(out_dir / "img0061.png"))
    assert png.shape[:2] == OVERLAY_SIZE and count_colour(png, organ_colour(8)) > 10

    with caplog.at_level(logging.WARNING, logger="scripts.report"):
        SaveOverlayd("image", output_dir=str(tmp_path / "elsewhere"))(data)  # no segmentation there: a warning
    assert "img0061" in caplog.text and not (tmp_path / "elsewhere" / "img0061.png").exists()
