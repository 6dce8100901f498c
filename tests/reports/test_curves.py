"""Tests of ``scripts/reports/curves.py``: training curves from TensorBoard events and their handler."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
from ignite.engine import Engine
from torch.utils.tensorboard import SummaryWriter

import scripts.reports.curves as curves
from scripts.reports.curves import TrainingCurvesHandler, plot_training_curves, read_scalars
from tests.conftest import BUNDLE_ROOT

CURVES_SIZE = (450, 1200)


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
def test_cli(tmp_path):
    _write_log(str(tmp_path))
    out = tmp_path / "cli.png"
    command = [sys.executable, "-m", "scripts.reports.curves", "--log_dir", str(tmp_path), "--output_png", str(out)]
    subprocess.run(command, check=True, cwd=BUNDLE_ROOT, capture_output=True)
    assert mpimg.imread(str(out)).shape[:2] == CURVES_SIZE


def test_handler_plots_every_interval_and_at_the_end(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(curves, "plot_training_curves", lambda log_dir, png: calls.append((log_dir, png)) or png)
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
    with caplog.at_level(logging.WARNING, logger="scripts.reports.curves"):
        engine.run([0], max_epochs=2)  # does not raise
    assert engine.state.epoch == 2 and missing in caplog.text
    assert not os.path.exists(os.path.join(missing, "training_curves.png"))
    with pytest.raises(ValueError, match="interval"):
        TrainingCurvesHandler(missing, interval=-1)
