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
from matplotlib.colors import to_rgb
from monai.metrics.utils import do_metric_reduction

import scripts.reports.evaluation as report
from scripts.data.labels import BTCV_LABELS, BTCV_MERGED_LABELS
from scripts.reports.evaluation import AVERAGES, FIGURE_DPI, STATUS_PANEL_FIGSIZE, write_evaluation_report
from scripts.reports.overlays import organ_colour
from tests.reports.test_overlays import ORGANS, OVERLAY_SIZE, count_colour, make_case, write_nifti

BOXPLOT_SIZE = (550, 1200)
STATUS_SIZE = (2 * round(STATUS_PANEL_FIGSIZE[1] * FIGURE_DPI), round(STATUS_PANEL_FIGSIZE[0] * FIGURE_DPI))  # 2 panels
BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAW = {  # table -> MetricsSaver name
    "dice": "val_mean_dice",
    "hd": "val_hd95",
    "nsd": "val_nsd",
    "missed": "val_missed",
    "fp": "val_false_positive",
}
#: case -> protocol -> organ (column index, label - 1) -> status; every other pair is detected
DESIGN = {
    "0035": {"all": {3: "missed", 4: "absent", 12: "false positive"}, "merged": {2: "missed", 10: "false positive"}},
    "0036": {"all": {4: "absent", 10: "missed"}, "merged": {3: "absent"}},
}


def _write_raw_csv(path: str, rows: dict[str, list[float]]) -> None:
    """A MetricsSaver-style raw CSV: filename, class0..classK, mean (nanmean), 4 decimals, 'nan' for NaN."""
    with open(path, "w") as f:
        width = len(next(iter(rows.values())))
        f.write("filename," + ",".join(f"class{i}" for i in range(width)) + ",mean\n")
        for name, values in rows.items():
            mean = np.nanmean(values) if not np.isnan(values).all() else math.nan
            cells = [f"{v:.4f}" for v in values] + [f"{mean:.4f}"]
            f.write(name + "," + ",".join(cells) + "\n")


def _tables(statuses: dict[int, str], width: int, rng: np.random.Generator) -> dict[str, list[float]]:
    """One case's raw values of every table for ``width`` organs with the given statuses (else detected)."""
    status = [statuses.get(i, "detected") for i in range(width)]
    detected = np.array([s == "detected" for s in status])
    absent = np.array([s == "absent" for s in status])
    dice = np.where(detected, np.round(rng.uniform(0.3, 0.95, width), 4), np.where(absent, math.nan, 0.0))
    nsd = np.where(detected, np.round(rng.uniform(0.2, 0.99, width), 4), np.where(absent, math.nan, 0.0))
    hd = np.where(detected, np.round(rng.uniform(1, 40, width), 4), math.nan)
    reference = np.array([s in ("detected", "missed") for s in status])
    missed = np.where(reference, [float(s == "missed") for s in status], math.nan)
    fp = np.where(reference, math.nan, [float(s == "false positive") for s in status])
    return {"dice": list(dice), "hd": list(hd), "nsd": list(nsd), "missed": list(missed), "fp": list(fp)}


@pytest.fixture
def evaluation(tmp_path):
    """Two cases in a dataset folder with a datalist, their segmentations and the ten raw metric CSVs of DESIGN."""
    dataset, eval_dir = tmp_path / "data", tmp_path / "eval"
    for folder in (dataset / "Training" / "img", dataset / "Training" / "label", eval_dir / "segmentations"):
        folder.mkdir(parents=True)
    image, label = make_case({**ORGANS, 4: (slice(22, 25), slice(24, 27), slice(3, 5))})  # + gallbladder
    prediction = np.where(label == 4, 0, label)  # the gallbladder is missed
    rng = np.random.default_rng(0)
    validation, tables = [], {(t, p): {} for t in RAW for p in ("all", "merged")}
    for case, design in DESIGN.items():
        image_path = write_nifti(image, str(dataset / "Training" / "img" / f"img{case}.nii.gz"))
        write_nifti(label, str(dataset / "Training" / "label" / f"label{case}.nii.gz"))
        write_nifti(prediction, str(eval_dir / "segmentations" / f"img{case}_seg.nii.gz"))
        validation.append({"image": f"Training/img/img{case}.nii.gz", "label": f"Training/label/label{case}.nii.gz"})
        for protocol, width in (("all", 13), ("merged", 11)):
            for table, values in _tables(design[protocol], width, rng).items():
                tables[(table, protocol)][image_path] = values
    for (table, protocol), rows in tables.items():
        _write_raw_csv(str(eval_dir / f"{RAW[table]}{'_merged' if protocol == 'merged' else ''}_raw.csv"), rows)
    datalist = dataset / "datalist.json"
    datalist.write_text(json.dumps({"training": [], "validation": validation}))
    return {"eval_dir": str(eval_dir), "dataset_dir": str(dataset), "datalist": str(datalist), "tables": tables}


def _readable(name: str) -> str:
    return name.replace("_", " ")


PROTOCOLS = {13: ("all", BTCV_LABELS), 11: ("merged", BTCV_MERGED_LABELS)}
METRICS = {"dice": "dice", "hd95": "hd", "nsd": "nsd"}


def _rows(path: str) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_csv_has_organ_names_the_raw_values_and_each_organ_status(evaluation):
    eval_dir = evaluation["eval_dir"]
    written = write_evaluation_report(eval_dir, dataset_dir=evaluation["dataset_dir"], datalist=evaluation["datalist"])
    names = ("per_case_metrics.csv", "summary.csv", "dice_boxplot.png", "organ_status.png")
    names += ("img0035.png", "img0036.png")
    assert written == [os.path.join(eval_dir, "report", f) for f in names]
    rows = _rows(written[0])
    assert [r["case"] for r in rows] == ["img0035", "img0036"]
    assert "dice_13/right kidney" in rows[0] and "hd95_11/adrenal glands" in rows[0] and "nsd_11/kidneys" in rows[0]
    for row, (case, design) in zip(rows, DESIGN.items()):
        for n, (protocol, names) in PROTOCOLS.items():
            for prefix, table in METRICS.items():
                values = evaluation["tables"][(table, protocol)][row["image"]]
                for index, value in enumerate(values):  # classN is label N + 1
                    got = float(row[f"{prefix}_{n}/{_readable(names[index + 1])}"])
                    assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-9)
                mean = float(row[f"{prefix}_{n}/mean"])
                assert mean == pytest.approx(np.nanmean(values), abs=1e-4)
            for index in range(n):
                expected = design[protocol].get(index, "detected")
                assert row[f"status_{n}/{_readable(names[index + 1])}"] == expected
        assert row["dice_13/esophagus"] == "nan" and row["status_13/esophagus"] == "absent"
        assert len(row) == 2 + 3 * 14 + 13 + 3 * 12 + 11


def test_summary_names_each_average_and_its_counts(evaluation, caplog):
    eval_dir = evaluation["eval_dir"]
    with caplog.at_level(logging.INFO, logger="scripts.reports.evaluation"):
        written = write_evaluation_report(eval_dir)
    summary = _rows(written[1])
    for n, (protocol, names) in PROTOCOLS.items():
        statuses = [DESIGN[c][protocol].get(i, "detected") for c in DESIGN for i in range(n)]
        for prefix, table in METRICS.items():
            values = np.array(list(evaluation["tables"][(table, protocol)].values()), float)  # (cases, organs)
            selected = [r for r in summary if r["protocol"] == f"{n} organs" and r["metric"] == prefix]
            rows = {(r["organ"], r["average"]): r for r in selected}
            # the three averages, each by a plain loop
            case_means = [np.mean([v for v in case if not math.isnan(v)]) for case in values]
            organ_means = [np.mean([v for v in o if not math.isnan(v)]) for o in values.T if not np.isnan(o).all()]
            pooled = [v for v in values.ravel() if not math.isnan(v)]
            for average, expected in zip(AVERAGES, (np.mean(case_means), np.mean(organ_means), np.mean(pooled))):
                row = rows[("all", average)]
                assert float(row["value"]) == pytest.approx(expected, abs=1e-4), (n, prefix, average)
                assert int(row["pairs"]) == len(pooled) and int(row["cases"]) == 2
                assert int(row["organs"]) == len(organ_means)
                counts = [int(row[k]) for k in ("detected", "missed", "false_positive", "absent")]
                assert counts == [statuses.count(s) for s in ("detected", "missed", "false positive", "absent")]
            # MONAI's "mean" reduction, which MetricsSaver writes to metrics.csv, is the first average
            monai_mean = do_metric_reduction(torch.tensor(values), "mean")[0].item()  # a copy: it writes 0 over nan
            assert float(rows[("all", AVERAGES[0])]["value"]) == pytest.approx(monai_mean, abs=1e-4)
            for index in range(n):
                row = rows[(_readable(names[index + 1]), "mean over cases")]
                column = [v for v in values[:, index] if not math.isnan(v)]
                assert int(row["cases"]) == len(column)
                expected = np.mean(column) if column else math.nan
                assert float(row["value"]) == pytest.approx(expected, abs=1e-4, nan_ok=True)
            scored = "detected only" if prefix == "hd95" else "detected, missed, false positive"
            assert rows[("all", AVERAGES[0])]["scored"] == scored
    assert "13 organs: Dice" in caplog.text and AVERAGES[0] in caplog.text
    assert "13 organs: 2 cases x 13 organs: 21 detected, 2 missed, 1 false positive" in caplog.text


def test_report_pictures_with_and_without_ground_truth(evaluation):
    eval_dir = evaluation["eval_dir"]
    written = write_evaluation_report(eval_dir, dataset_dir=evaluation["dataset_dir"], datalist=evaluation["datalist"])
    boxplot = mpimg.imread(written[2])
    assert boxplot.shape[:2] == BOXPLOT_SIZE and boxplot[..., :3].var() > 0.003
    status = mpimg.imread(written[3])
    assert status.shape[:2] == STATUS_SIZE
    for colour, present in (("tab:green", True), ("tab:red", True), ("tab:orange", True)):
        assert (count_colour(status, to_rgb(colour)) > 200) == present, colour
    overlay = mpimg.imread(written[4])
    assert overlay.shape[:2] == OVERLAY_SIZE and overlay[..., :3].var() > 0.01
    gallbladder = organ_colour(4)  # in the ground truth only
    assert count_colour(overlay, gallbladder) > 5 and count_colour(overlay, organ_colour(6)) > 20

    written = write_evaluation_report(eval_dir)  # no datalist: predictions only
    overlay = mpimg.imread(written[4])
    assert count_colour(overlay, gallbladder) == 0 and count_colour(overlay, organ_colour(6)) > 20


def test_status_chart_counts_each_organ(tmp_path):
    """The bars' heights in pixels follow the counts: one organ detected in 3 cases, another missed in 1 of 3."""
    status = {f"case{i}": {1: "detected", 2: "missed" if i == 0 else "detected"} for i in range(3)}
    png = mpimg.imread(report.plot_organ_status([("test", {1: "spleen", 2: "liver"}, status)], str(tmp_path / "s.png")))
    green, red = (np.all(np.abs(png[..., :3] - to_rgb(c)) <= 0.02, axis=-1) for c in ("tab:green", "tab:red"))
    columns = np.nonzero(green.any(0))[0]
    left, right = columns[columns < png.shape[1] / 2], columns[columns >= png.shape[1] / 2]
    spleen_green = green[:, left].any(1).sum()
    liver_green, liver_red = green[:, right].any(1).sum(), red[:, right[right < png.shape[1] * 0.8]].any(1).sum()
    assert liver_green == pytest.approx(spleen_green * 2 / 3, rel=0.05)
    assert liver_red == pytest.approx(spleen_green / 3, rel=0.1)


def test_report_restricted_to_organs(evaluation):
    eval_dir = evaluation["eval_dir"]
    written = write_evaluation_report(eval_dir, organs=["left_kidney", "liver"])
    header = list(_rows(written[0])[0])
    assert header == ["case", "image"] + [
        f"{m}_{n}/{o}"
        for n, organs in ((13, ("left kidney", "liver")), (11, ("kidneys", "liver")))
        for m in ("dice", "hd95", "nsd", "status")
        for o in (*organs, *(("mean",) if m != "status" else ()))
    ]
    row = _rows(written[0])[0]
    dice = evaluation["tables"][("dice", "all")][row["image"]]
    assert float(row["dice_13/mean"]) == pytest.approx(np.mean([dice[2], dice[5]]), abs=1e-4)
    organs = {(r["protocol"], r["organ"]) for r in _rows(written[1])}
    assert organs == {(p, o) for p in ("13 organs", "11 organs") for o in ("all", "liver")} | {
        ("13 organs", "left kidney"),
        ("11 organs", "kidneys"),
    }
    with pytest.raises(ValueError, match=r"\['liver_'\].*valid names: spleen"):
        write_evaluation_report(eval_dir, organs=["liver_"])


def test_report_handles_absent_organs_and_missing_files(evaluation, caplog):
    eval_dir = evaluation["eval_dir"]
    for name in ("val_hd95_merged_raw.csv", "val_missed_merged_raw.csv"):
        os.remove(os.path.join(eval_dir, name))
    os.remove(os.path.join(eval_dir, "segmentations", "img0036_seg.nii.gz"))
    with caplog.at_level(logging.WARNING, logger="scripts.reports.evaluation"):
        written = write_evaluation_report(eval_dir, None, None, evaluation["dataset_dir"], evaluation["datalist"])
    names = ["per_case_metrics.csv", "summary.csv", "dice_boxplot.png", "organ_status.png", "img0035.png"]
    assert [os.path.basename(p) for p in written] == names
    assert "img0036_seg.nii.gz" in caplog.text and "val_hd95_merged_raw.csv" in caplog.text
    with open(written[0]) as f:
        header = next(csv.reader(f))
    assert not [c for c in header if c.startswith(("hd95_11/", "status_11/"))] and "dice_11/mean" in header
    assert "status_13/liver" in header
    assert mpimg.imread(written[3]).shape[:2] == (STATUS_SIZE[0] // 2, STATUS_SIZE[1])  # one protocol with statuses

    os.remove(os.path.join(eval_dir, "val_mean_dice_raw.csv"))
    with pytest.raises(FileNotFoundError, match=eval_dir):
        write_evaluation_report(eval_dir)


@pytest.mark.slow
def test_cli(evaluation):
    command = [sys.executable, "-m", "scripts.reports.evaluation", "--eval_dir", evaluation["eval_dir"]]
    command += ["--dataset_dir", evaluation["dataset_dir"], "--datalist", evaluation["datalist"]]
    subprocess.run(command, check=True, cwd=BUNDLE_ROOT, capture_output=True)
    assert os.path.isfile(os.path.join(evaluation["eval_dir"], "report", "img0036.png"))
