"""Dataset fingerprint: values against an independent computation, the nnU-Net rules, and the overlay in use."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts.data.fingerprint import anisotropic_target_spacing, fingerprint, fit_patch_size, network_size_divisor
from scripts.data.prepare_dataset import prepare_msd
from scripts.data.synthetic import generate_msd
from scripts.engine.config_check import check_config

from ..conftest import BUNDLE_ROOT

CONFIGS = os.path.join(BUNDLE_ROOT, "configs")
SCHEMA = os.path.join(os.path.dirname(BUNDLE_ROOT), "shared", "reference", "meta_schema_20240725.json")


def _prepared(tmp_path, modality: str = "CT") -> str:
    root = tmp_path / f"Task01_{modality}"
    generate_msd(str(root), num_cases=4, shape=(56, 48, 16), spacing=(1.5, 1.5, 4.0), seed=7, modality=modality)
    return prepare_msd(str(root), output=str(tmp_path / "datalist.json"))


def _canonical_cases(datalist: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(RAS image, RAS label, RAS spacing) of every labelled case, read with nibabel's own reorientation."""
    content = json.load(open(datalist))
    cases = []
    for item in content["training"] + content["validation"]:
        image = nib.as_closest_canonical(nib.load(os.path.join(content["dataset_dir"], item["image"])))
        label = nib.as_closest_canonical(nib.load(os.path.join(content["dataset_dir"], item["label"])))
        cases.append((image.get_fdata(), np.asarray(label.dataobj), np.asarray(image.header.get_zooms()[:3])))
    return cases


def test_ct_fingerprint_equals_an_independent_numpy_computation(tmp_path):
    datalist = _prepared(tmp_path)
    overlay = fingerprint(datalist, name="synthetic", output_dir=str(tmp_path / "datasets"))
    cases = _canonical_cases(datalist)
    foreground = np.concatenate([image[label > 0] for image, label, _ in cases])
    assert overlay["hu_min"] == pytest.approx(np.percentile(foreground, 0.5), abs=1e-6)
    assert overlay["hu_max"] == pytest.approx(np.percentile(foreground, 99.5), abs=1e-6)
    assert overlay["intensity_mean"] == pytest.approx(foreground.mean(), abs=1e-6)
    assert overlay["intensity_std"] == pytest.approx(foreground.std(), abs=1e-6)
    spacing = np.median([s for _, _, s in cases], axis=0)  # 4.0 mm slices are not "anisotropic" (< 3 x 1.5)
    assert overlay["target_spacing"] == pytest.approx(spacing.tolist(), abs=1e-4)
    median_shape = np.median([np.array(i.shape) * s / spacing for i, _, s in cases], axis=0)
    assert overlay["patch_size"] == [int(m // d * d) for m, d in zip(median_shape, (16, 16, 8))]
    assert overlay["label_names"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert "num_classes" not in overlay  # one source of truth: the configs derive it from label_names

    written = json.load(open(tmp_path / "datasets" / "synthetic.json"))
    assert written == json.loads(json.dumps(overlay))
    meta = json.load(open(tmp_path / "datasets" / "synthetic_metadata.json"))
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == overlay["label_names"] and pred["num_channels"] == 3
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == overlay["patch_size"]
    if os.path.isfile(SCHEMA):
        import jsonschema

        jsonschema.validate(meta, json.load(open(SCHEMA)))
    with pytest.raises(FileExistsError, match="synthetic.json already exists"):
        fingerprint(datalist, name="synthetic", output_dir=str(tmp_path / "datasets"))


def test_anisotropic_data_keep_a_coarser_slice_spacing():
    spacings = np.array([[0.8, 0.8, 5.0], [0.7, 0.7, 3.0], [0.9, 0.9, 5.0], [0.8, 0.8, 1.0]])
    shapes = np.array([[512, 512, 40]] * 4)
    # median z 4.0 > 3 x 0.8 and ~50 slices < 512 / 3: z takes the 10th percentile of [1, 3, 5, 5] = 1.6
    assert anisotropic_target_spacing(spacings, shapes) == pytest.approx([0.8, 0.8, 1.6])
    # the percentile is never finer than the in-plane spacing
    thin = spacings.copy()
    thin[:, 2] = [0.3, 0.3, 5.0, 5.0]  # median 2.65 > 3 x 0.8, 10th percentile 0.3
    assert anisotropic_target_spacing(thin, shapes) == pytest.approx([0.8, 0.8, 0.8])
    # as many slices as in-plane voxels: not anisotropic in voxels, the median stays
    assert anisotropic_target_spacing(spacings, np.array([[64, 64, 64]] * 4)) == pytest.approx([0.8, 0.8, 4.0])


def test_patch_size_fits_the_data_and_the_network_stride():
    stride = network_size_divisor()
    network_def = json.load(open(os.path.join(CONFIGS, "train.json")))["network_def"]
    stages = len(network_def["blocks"])  # the stem's stride times every stage's
    assert stride == [s * t**stages for s, t in zip(network_def["stem_stride"], network_def["stage_stride"])]
    assert stride == [16, 16, 8]  # the strides the patches below are worked out for
    assert fit_patch_size([300.0, 250.0, 100.0], stride) == [192, 192, 48]
    assert fit_patch_size([120.7, 90.0, 37.0], stride) == [112, 80, 32]
    assert fit_patch_size([20.0, 12.0, 9.0], stride) == [32, 32, 16]  # the deepest map must keep 2 voxels per axis
    assert fit_patch_size([120.7, 90.0, 37.0], [8, 8, 4]) == [120, 88, 36]


def test_mr_gets_per_image_zscore_and_trains_from_the_overlay(tmp_path):
    datalist = _prepared(tmp_path, modality="MR")
    overlay = fingerprint(datalist, name="mr", output_dir=str(tmp_path / "datasets"))
    assert not {"hu_min", "hu_max", "intensity_mean", "intensity_std"} & set(overlay)
    assert overlay["normalize_intensity"]["_target_"] == "NormalizeIntensityd"
    darkest = min(image.min() for image, _, _ in _canonical_cases(datalist))
    assert overlay["foreground_crop_hu"] == pytest.approx(darkest)

    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, "train.json"), str(tmp_path / "datasets" / "mr.json")])
    check_config(parser.get_parsed_content("checked_config"))
    case = parser.get_parsed_content("validate#dataset")[0]
    image = case["image"]
    assert abs(float(image.mean())) < 1e-4 and float(image.std()) == pytest.approx(1.0, abs=1e-3)
    assert set(torch.unique(case["label"]).tolist()) <= {0.0, 1.0, 2.0}


def test_ct_overlay_sets_the_classes_of_every_config(tmp_path):
    datalist = _prepared(tmp_path)
    fingerprint(datalist, name="ct", output_dir=str(tmp_path / "datasets"))
    overlay = str(tmp_path / "datasets" / "ct.json")
    for configs in (["train.json"], ["train.json", "evaluate.json"], ["inference.json"]):
        parser = ConfigParser()
        parser.read_config([os.path.join(CONFIGS, c) for c in configs] + [overlay])
        check_config(parser.get_parsed_content("checked_config"))
        assert parser.get_parsed_content("network_def").decoder.final_head.out_channels == 3
        assert parser.get_parsed_content("label_names")["2"] == "spleen"


def test_shipped_btcv_overlay_is_the_papers_recipe_and_the_default():
    btcv = json.load(open(os.path.join(CONFIGS, "datasets", "btcv.json")))
    assert (btcv["hu_min"], btcv["hu_max"], btcv["intensity_mean"], btcv["intensity_std"]) == (
        -958.0,
        327.0,
        82.92,
        136.97,
    )
    defaults = json.load(open(os.path.join(CONFIGS, "train.json"))) | json.load(
        open(os.path.join(CONFIGS, "evaluate.json"))
    )
    for key, value in btcv.items():
        if key != "dataset_fingerprint":
            assert defaults[key] == value, key
