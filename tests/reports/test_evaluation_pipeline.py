"""
``configs/evaluate.json``'s postprocessing, metrics, MetricsSaver and report on cases built for each organ status,
without the network: the evaluator's per-case step is replayed on designed predictions, and every number of the
report is recomputed from the saved segmentation and the label file by the slow numpy references of test_metrics.
"""

from __future__ import annotations

import csv
import math
import os

import nibabel as nib
import numpy as np
import pytest
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from scripts.data.labels import BTCV_LABELS, BTCV_MERGED_LABEL_MAP, BTCV_MERGED_LABELS
from scripts.reports.evaluation import write_evaluation_report
from tests.conftest import BUNDLE_ROOT
from tests.engine.test_metrics import _reference_dice, _reference_hd95, _reference_nsd

CONFIGS = [os.path.join(BUNDLE_ROOT, "configs", f) for f in ("train.json", "evaluate.json", "demo.json")]
SHAPE = (30, 26, 12)
#: per case: affine (LPS-like flips, one with swapped in-plane axes; anisotropic) and label -> (reference, prediction)
#: boxes ((x0, x1), (y0, y1), (z0, z1)) or None; disjoint within each label map
CASES = {
    "img0001": (
        np.array([[-0.9, 0, 0, 40.0], [0, -0.8, 0, 30.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]]),
        {
            6: (((2, 12), (2, 12), (2, 9)), ((4, 13), (3, 12), (3, 9))),  # liver: detected
            1: (((15, 20), (2, 7), (2, 6)), None),  # spleen: missed
            2: (None, ((22, 27), (2, 7), (3, 7))),  # right kidney: false positive
            3: (((15, 21), (14, 20), (4, 8)), ((16, 21), (15, 21), (3, 8))),  # left kidney: detected
            4: (((3, 4), (20, 21), (5, 6)), ((4, 5), (22, 23), (6, 7))),  # gallbladder: one voxel each, apart
        },
    ),
    "img0002": (
        np.array([[0, -1.2, 0, 20.0], [-1.1, 0, 0, 25.0], [0, 0, 4.0, -80.0], [0, 0, 0, 1]]),
        {
            6: (((3, 14), (4, 14), (1, 10)), ((3, 13), (5, 14), (2, 10))),  # liver: detected
            1: (((16, 22), (3, 8), (2, 7)), ((17, 22), (3, 9), (2, 7))),  # spleen: detected
            3: (((16, 22), (15, 21), (3, 9)), None),  # left kidney: missed
            5: (None, ((24, 27), (18, 22), (1, 11))),  # esophagus: false positive
            12: (((5, 8), (18, 21), (4, 6)), ((5, 8), (18, 21), (4, 6))),  # right adrenal gland: identical
        },
    ),
}
TOLERANCE = {"default": 2.0, "liver": 4.0, "kidneys": 3.0}


def _label_map(boxes: dict[int, tuple | None]) -> np.ndarray:
    volume = np.zeros(SHAPE, np.uint8)
    for label, box in boxes.items():
        if box is not None:
            volume[tuple(slice(*b) for b in box)] = label
    return volume


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The two cases on disk (int16 HU image, uint8 label, real NIfTI headers) and their prediction arrays."""
    root = tmp_path_factory.mktemp("evaluation_study")
    cases = {}
    rng = np.random.default_rng(0)
    for case, (affine, organs) in CASES.items():
        image = (rng.integers(-100, 100, SHAPE) + 40).astype(np.int16)
        reference = _label_map({k: v[0] for k, v in organs.items()})
        prediction = _label_map({k: v[1] for k, v in organs.items()})
        paths = {}
        for name, array in (("image", image), ("label", reference)):
            paths[name] = str(root / f"{case if name == 'image' else case.replace('img', 'label')}.nii.gz")
            nib.save(nib.Nifti1Image(array, affine), paths[name])
        cases[case] = {"affine": affine, "reference": reference, "prediction": prediction, **paths}
    return cases


def _evaluate(study: dict, output_dir: str, **overrides) -> dict:
    """Replay the evaluator's step and handlers of the configs on the study; returns the parsed config."""
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update({"output_dir": output_dir, "surface_dice_tolerance_mm": TOLERANCE, **overrides})
    postprocessing = parser.get_parsed_content("validate#postprocessing")
    metrics = parser.get_parsed_content("validate#key_metric")
    metrics.update(parser.get_parsed_content("validate#additional_metrics"))
    (saver,) = [i for i, h in enumerate(parser["validate#handlers"]) if h["_target_"].endswith("MetricsSaver")]
    saver = parser.get_parsed_content(f"validate#handlers#{saver}")
    engine = Engine(lambda engine, batch: [postprocessing(dict(item)) for item in batch])
    for name, metric in metrics.items():
        metric.attach(engine, name)
    saver.attach(engine)
    batches = []
    for case in study.values():
        meta = {"filename_or_obj": case["image"]}
        pred = MetaTensor(case["prediction"][None].astype(np.float32), affine=case["affine"], meta=dict(meta))
        label = MetaTensor(np.zeros((1, 4, 4, 4), np.float32), meta={"filename_or_obj": case["label"]})  # reloaded
        batches.append([{"image": MetaTensor(np.zeros((1, 4, 4, 4)), meta=dict(meta)), "pred": pred, "label": label}])
    engine.run(batches, max_epochs=1)
    assert sorted(metrics) == sorted(parser.get_parsed_content("metric_names"))
    write_evaluation_report(
        output_dir,
        parser.get_parsed_content("label_names"),
        parser.get_parsed_content("merged_label_names"),
        organs=parser.get_parsed_content("organs"),
        merged_label_map=parser.get_parsed_content("merged_label_map"),
    )
    return {"metrics": engine.state.metrics}


def _status(p: np.ndarray, t: np.ndarray) -> str:
    return {(True, True): "detected", (False, True): "missed", (True, False): "false positive"}.get(
        (bool(p.any()), bool(t.any())), "absent"
    )


def _check_case(
    row: dict,
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: np.ndarray,
    n: int,
    organs: dict[int, str],
    tolerances: dict[int, float],
) -> None:
    for label, name in organs.items():
        p, t = prediction == label, reference == label
        column = name.replace("_", " ")
        assert row[f"status_{n}/{column}"] == _status(p, t), (n, name)
        for metric, expected in (
            ("dice", _reference_dice(p, t)),
            ("hd95", _reference_hd95(p, t, spacing)),
            ("nsd", _reference_nsd(p, t, spacing, tolerances[label])),
        ):
            got = float(row[f"{metric}_{n}/{column}"])
            assert got == pytest.approx(expected, abs=1e-3, nan_ok=True), (n, name, metric)


def _tolerances(names: dict[int, str]) -> dict[int, float]:
    return {label: TOLERANCE.get(name, TOLERANCE["default"]) for label, name in names.items()}


def test_every_status_and_metric_matches_numpy_on_the_saved_files(study, tmp_path):
    result = _evaluate(study, str(tmp_path))
    with open(tmp_path / "report" / "per_case_metrics.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    merge = np.asarray(BTCV_MERGED_LABEL_MAP)
    all_organs = {k: v for k, v in BTCV_LABELS.items() if k}
    merged_organs = {k: v for k, v in BTCV_MERGED_LABELS.items() if k}
    statuses = []
    for case, data in study.items():
        saved = nib.load(str(tmp_path / "segmentations" / f"{case}_seg.nii.gz"))
        np.testing.assert_allclose(saved.affine, data["affine"], atol=1e-5)
        prediction = np.asarray(saved.dataobj)
        np.testing.assert_array_equal(prediction, data["prediction"])
        label = nib.load(data["label"])
        reference, spacing = np.asarray(label.dataobj), np.array(label.header.get_zooms()[:3])
        _check_case(rows[case], prediction, reference, spacing, 13, all_organs, _tolerances(all_organs))
        merged = (merge[prediction], merge[reference])
        _check_case(rows[case], *merged, spacing, 11, merged_organs, _tolerances(merged_organs))
        statuses += [_status(prediction == k, reference == k) for k in all_organs]
    # the StatsHandler / metrics.csv numbers: MONAI's mean over cases of per-case means, and counts
    assert result["metrics"]["val_missed"] == statuses.count("missed") == 2
    assert result["metrics"]["val_false_positive"] == statuses.count("false positive") == 2
    columns = [f"dice_13/{name.replace('_', ' ')}" for name in all_organs.values()]
    case_means = [np.nanmean([float(row[c]) for c in columns]) for row in rows.values()]
    assert result["metrics"]["val_mean_dice"] == pytest.approx(np.mean(case_means), abs=1e-4)


def test_organ_subset_scores_the_merged_organ_in_full(study, tmp_path):
    _evaluate(study, str(tmp_path), organs=["left_kidney", "liver"])
    with open(tmp_path / "report" / "per_case_metrics.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    header = list(rows["img0001"])
    assert [c for c in header if c.startswith("status_")] == [
        "status_13/left kidney",
        "status_13/liver",
        "status_11/kidneys",
        "status_11/liver",
    ]
    merge = np.asarray(BTCV_MERGED_LABEL_MAP)
    for case, data in study.items():
        label = nib.load(data["label"])
        spacing = np.array(label.header.get_zooms()[:3])
        prediction, reference = data["prediction"], np.asarray(label.dataobj)
        organs = {3: "left_kidney", 6: "liver"}
        _check_case(rows[case], prediction, reference, spacing, 13, organs, _tolerances(organs))
        merged = {2: "kidneys", 5: "liver"}  # the right kidney's false positive of img0001 is in the kidneys' score
        _check_case(rows[case], merge[prediction], merge[reference], spacing, 11, merged, _tolerances(merged))
        dice = [_reference_dice(prediction == k, reference == k) for k in organs]
        assert float(rows[case]["dice_13/mean"]) == pytest.approx(np.nanmean(dice), abs=1e-4)
    with open(tmp_path / "val_mean_dice_raw.csv") as f:
        raw = list(csv.reader(f))
    assert all(math.isnan(float(v)) for v in raw[1][1:2])  # spleen (class0) was not scored
