"""The evaluation metrics against slow, obvious numpy/scipy computations on cases built for each convention."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from scripts.data.labels import BTCV_LABELS, BTCV_MERGED_LABEL_MAP, BTCV_MERGED_LABELS
from scripts.engine.metrics import (
    ABSENT,
    DETECTED,
    FALSE_POSITIVE,
    MISSED,
    OrganDetectionErrors,
    OrganDice,
    OrganDiceMetric,
    PhysicalHausdorffDistance,
    PhysicalSurfaceDice,
    organ_status,
    protocol_organs,
    surface_dice_tolerances,
    voxel_spacing,
)
from tests.conftest import BUNDLE_ROOT

SHAPE = (20, 18, 10)
# a rotated, flipped affine (axes swapped in-plane) with anisotropic voxels: column norms 0.7, 0.8, 3.0 mm
AFFINE = np.array([[0, -0.8, 0, 10], [-0.7, 0, 0, 5], [0, 0, 3.0, -40], [0, 0, 0, 1]], dtype=float)
SPACING = np.array([0.7, 0.8, 3.0])


def _box(x: slice, y: slice, z: slice) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[x, y, z] = True
    return mask


def _voxel(x: int, y: int, z: int) -> np.ndarray:
    return _box(slice(x, x + 1), slice(y, y + 1), slice(z, z + 1))


EMPTY = np.zeros(SHAPE, bool)
#: organ -> (prediction, reference): one case built for each convention, as channels 1..6 of one label map
CASE = {
    "detected": (_box(slice(4, 11), slice(5, 13), slice(2, 6)), _box(slice(6, 14), slice(4, 12), slice(3, 8))),
    "missed": (EMPTY, _box(slice(2, 6), slice(2, 5), slice(6, 9))),
    "false positive": (_box(slice(14, 18), slice(13, 16), slice(1, 3)), EMPTY),
    "absent": (EMPTY, EMPTY),
    "one voxel": (_voxel(16, 4, 7), _voxel(17, 6, 8)),  # 0.7, 1.6, 3.0 mm apart along x, y, z
    "voxel in a box": (_voxel(3, 14, 4), _box(slice(2, 5), slice(13, 17), slice(3, 6))),
    "at the edges": (_box(slice(0, 3), slice(15, 18), slice(7, 10)), _box(slice(0, 2), slice(14, 18), slice(8, 10))),
}
STATUS = {
    "detected": DETECTED,
    "missed": MISSED,
    "false positive": FALSE_POSITIVE,
    "absent": ABSENT,
    "one voxel": DETECTED,
    "voxel in a box": DETECTED,
    "at the edges": DETECTED,
}


def _onehot(masks: list[np.ndarray], affine: np.ndarray = AFFINE) -> MetaTensor:
    """One-hot (C, X, Y, Z) MetaTensor: background then one channel per mask (masks may overlap: scored one-vs-rest)."""
    stack = np.stack(masks).astype(np.float32)
    background = 1.0 - stack.max(0, keepdims=True)
    return MetaTensor(torch.as_tensor(np.concatenate([background, stack])), affine=torch.as_tensor(affine))


def _surface_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    return np.argwhere(mask & ~binary_erosion(mask)) * spacing


def _reference_dice(p: np.ndarray, t: np.ndarray) -> float:
    if not p.any() and not t.any():
        return math.nan
    return 2.0 * (p & t).sum() / (p.sum() + t.sum())


def _distances(p: np.ndarray, t: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = cdist(_surface_mm(p, spacing), _surface_mm(t, spacing))
    return d.min(1), d.min(0)


def _reference_hd95(p: np.ndarray, t: np.ndarray, spacing: np.ndarray) -> float:
    if not (p.any() and t.any()):
        return math.nan  # missed or false positive: counted apart, never a distance
    to_t, to_p = _distances(p, t, spacing)
    return max(np.percentile(to_t, 95), np.percentile(to_p, 95))


def _reference_nsd(p: np.ndarray, t: np.ndarray, spacing: np.ndarray, tolerance: float) -> float:
    if not p.any() and not t.any():
        return math.nan
    if not (p.any() and t.any()):
        return 0.0
    to_t, to_p = _distances(p, t, spacing)
    return ((to_t <= tolerance).sum() + (to_p <= tolerance).sum()) / (to_t.size + to_p.size)


def _case_tensors(affine: np.ndarray = AFFINE) -> tuple[MetaTensor, MetaTensor]:
    return _onehot([p for p, _ in CASE.values()], affine), _onehot([t for _, t in CASE.values()], affine)


def _assert_values(got: torch.Tensor, expected: list[float]) -> None:
    np.testing.assert_allclose(got.numpy().reshape(-1), np.array(expected), rtol=1e-5, atol=1e-6, equal_nan=True)


def test_voxel_spacing_reads_a_rotated_affine():
    image = MetaTensor(torch.zeros(1, 2, 2, 2), affine=torch.as_tensor(AFFINE))
    assert voxel_spacing(image) == pytest.approx(SPACING.tolist())
    assert voxel_spacing(torch.zeros(1, 2, 2, 2)) == [1.0, 1.0, 1.0]


def test_dice_counts_false_positives_and_leaves_out_only_absent_organs():
    prediction, reference = _case_tensors()
    got = OrganDiceMetric()(prediction[None], reference[None])
    _assert_values(got, [_reference_dice(p, t) for p, t in CASE.values()])
    assert got[0, 2].item() == 0.0 and math.isnan(got[0, 3].item())  # false positive 0, absent nan


def test_hd95_in_mm_over_detected_organs_only():
    prediction, reference = _case_tensors()
    handler = PhysicalHausdorffDistance(percentile=95, save_details=False)
    handler.reset()
    handler.update(([prediction], [reference]))
    got = handler.metric_fn.get_buffer()
    expected = [_reference_hd95(p, t, SPACING) for p, t in CASE.values()]
    _assert_values(got, expected)
    assert expected[4] == pytest.approx(np.linalg.norm([0.7, 1.6, 3.0]))  # one voxel to one voxel
    voxels = [_reference_hd95(p, t, np.ones(3)) for p, t in CASE.values()]
    assert not np.allclose(np.nan_to_num(voxels), np.nan_to_num(expected))  # the spacing matters on these cases
    assert handler.compute() == pytest.approx(np.nanmean(expected), rel=1e-5)


def test_surface_dice_per_organ_tolerance_in_mm():
    prediction, reference = _case_tensors()
    tolerances = [1.0, 2.0, 2.0, 2.0, 3.3, 0.75, 1.0]
    handler = PhysicalSurfaceDice(tolerances, save_details=False)
    handler.reset()
    handler.update(([prediction], [reference]))
    got = handler.metric_fn.get_buffer()
    expected = [_reference_nsd(p, t, SPACING, tol) for (p, t), tol in zip(CASE.values(), tolerances)]
    _assert_values(got, expected)
    assert expected[4] == pytest.approx(0.0) and 0 < expected[5] < 1 and 0 < expected[0] < 1
    # the one-voxel organ's voxels are 3.47 mm apart: inside 3.6 mm
    looser = PhysicalSurfaceDice([*tolerances[:4], 3.6, *tolerances[5:]], save_details=False)
    looser.reset()
    looser.update(([prediction], [reference]))
    assert looser.metric_fn.get_buffer()[0, 4].item() == 1.0
    with pytest.raises(ValueError, match="class_thresholds"):
        PhysicalSurfaceDice([1.0, 2.0], save_details=False).update(([prediction], [reference]))


def test_detection_errors_and_status():
    prediction, reference = _case_tensors()
    missed = OrganDetectionErrors("missed", save_details=False)
    false_positive = OrganDetectionErrors("false_positive", save_details=False)
    for handler in (missed, false_positive):
        handler.reset()
        handler.update(([prediction], [reference]))
    m, fp = missed.metric_fn.get_buffer()[0].tolist(), false_positive.metric_fn.get_buffer()[0].tolist()
    assert [organ_status(a, b) for a, b in zip(m, fp)] == list(STATUS.values())
    assert missed.compute() == 1 and false_positive.compute() == 1  # counts of (case, organ) pairs
    with pytest.raises(ValueError, match="error"):
        OrganDetectionErrors("wrong")


def test_handlers_take_each_case_spacing_from_its_own_affine():
    """Two cases of different voxel sizes in one evaluation run, through ignite as the evaluator runs them."""
    coarse = np.diag([1.5, 1.5, 5.0, 1.0])
    cases = [_case_tensors(AFFINE), _case_tensors(coarse)]
    engine = Engine(lambda engine, batch: {"pred": [batch[0]], "label": [batch[1]]})
    handlers = {
        "dice": OrganDice(output_transform=lambda o: (o["pred"], o["label"])),
        "hd95": PhysicalHausdorffDistance(percentile=95, output_transform=lambda o: (o["pred"], o["label"])),
        "nsd": PhysicalSurfaceDice([2.0] * len(CASE), output_transform=lambda o: (o["pred"], o["label"])),
        "missed": OrganDetectionErrors("missed", output_transform=lambda o: (o["pred"], o["label"])),
    }
    for name, handler in handlers.items():
        handler.attach(engine, name)
    engine.run(cases, max_epochs=1)
    details = engine.state.metric_details
    for i, spacing in enumerate((SPACING, np.array([1.5, 1.5, 5.0]))):
        _assert_values(details["hd95"][i], [_reference_hd95(p, t, spacing) for p, t in CASE.values()])
        _assert_values(details["nsd"][i], [_reference_nsd(p, t, spacing, 2.0) for p, t in CASE.values()])
    dice = np.array([_reference_dice(p, t) for p, t in CASE.values()])
    assert engine.state.metrics["dice"] == pytest.approx(np.nanmean(dice), rel=1e-5)  # both cases have equal Dice
    assert engine.state.metrics["missed"] == 2


def test_protocol_organs_maps_names_through_the_merged_table():
    def select(organs):
        return protocol_organs(organs, BTCV_LABELS, BTCV_MERGED_LABELS, BTCV_MERGED_LABEL_MAP)

    everything = select(None)
    assert list(everything["all"]) == list(range(1, 14)) and list(everything["merged"]) == list(range(1, 12))
    assert select([]) == everything
    chosen = select(["left_kidney", "liver"])
    assert chosen["all"] == {3: "left_kidney", 6: "liver"} and chosen["merged"] == {2: "kidneys", 5: "liver"}
    chosen = select("adrenal_glands, spleen")
    assert chosen["all"] == {1: "spleen", 12: "right_adrenal_gland", 13: "left_adrenal_gland"}
    assert chosen["merged"] == {1: "spleen", 11: "adrenal_glands"}
    with pytest.raises(ValueError, match=r"\['livr'\].*valid names: spleen, right_kidney.*kidneys, adrenal_glands"):
        select(["livr", "spleen"])
    with pytest.raises(ValueError, match="background"):
        select(["background"])
    with pytest.raises(ValueError, match="merged_label_map"):
        protocol_organs(None, BTCV_LABELS, BTCV_MERGED_LABELS, BTCV_MERGED_LABEL_MAP[:-1])


def test_surface_dice_tolerances_per_organ():
    names = {"0": "background", "1": "liver", "2": "spleen", "3": "tumour"}
    assert surface_dice_tolerances(2.5, names) == [2.5, 2.5, 2.5]
    assert surface_dice_tolerances({"default": 3.0, "tumour": 1}, names) == [3.0, 3.0, 1.0]
    assert surface_dice_tolerances({"default": 3, "kidneys": 4}, names, ["kidneys"]) == [3.0, 3.0, 3.0]
    shipped = json.load(open(os.path.join(BUNDLE_ROOT, "configs", "evaluate.json")))["surface_dice_tolerance_mm"]
    assert surface_dice_tolerances(shipped, names) == [5.0, 3.0, 3.0]  # BTCV's names do not get in the way
    assert surface_dice_tolerances(shipped, BTCV_LABELS)[3:6] == [2.0, 3.0, 5.0]  # gallbladder, esophagus, liver
    with pytest.raises(ValueError, match=r"no tolerance for \['spleen'\]"):
        surface_dice_tolerances({"liver": 2, "tumour": 1}, names)
    with pytest.raises(ValueError, match=r"\['livre'\].*valid: default, liver, spleen, tumour"):
        surface_dice_tolerances({"default": 2, "livre": 1}, names)
    with pytest.raises(ValueError, match="finite numbers"):
        surface_dice_tolerances({"default": -1.0}, names)
