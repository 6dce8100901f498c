"""
Bad input gives a clear error naming the file and the problem before any training or inference starts.

The data cases go through the real entry point: the configs' ``initialize`` (``ConfigWorkflow``, as
``python -m monai.bundle run`` does), with the CPU demo overlay.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from scripts.data.checks import DataValidationError, NonHUIntensityWarning
from scripts.engine.config_check import RULES, ConfigValueError, check_config

from .conftest import (
    AFFINE,
    SMALL_SHAPE,
    config_paths,
    ct_image,
    organ_label,
    root_cause,
    workflow,
    write_nifti,
    write_small_study,
)

TRAIN = ["train.json", "demo.json"]
EVALUATE = ["train.json", "evaluate.json", "demo.json"]


def _truncate(path: str, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


def _break(case: str, root: str, datalist: dict) -> str:
    """Damage one file (or the datalist) of a valid small study the way ``case`` says; return its path."""
    image = os.path.join(root, datalist["training"][0]["image"])
    label = os.path.join(root, datalist["training"][0]["label"])
    listing = os.path.join(root, "datalist.json")
    if case == "truncated_image":
        _truncate(image)
        return image
    if case == "corrupt_label":
        open(label, "wb").write(b"not a NIfTI file at all" * 10)
        return label
    if case == "image_2d":
        write_nifti(image, ct_image()[:, :, 0])
        return image
    if case == "image_4d":
        write_nifti(image, np.stack([ct_image(), ct_image()], axis=-1))
        return image
    if case == "shape_mismatch":
        write_nifti(label, organ_label((24, 24, 7)))
        return label
    if case == "affine_mismatch":
        shifted = AFFINE.copy()
        shifted[0, 3] += 5.0
        write_nifti(label, organ_label(), shifted)
        return label
    if case == "label_out_of_range":
        write_nifti(label, organ_label(value=15))
        return label
    if case == "zeros_image":
        write_nifti(image, np.zeros(SMALL_SHAPE, np.int16))
        return image
    if case == "nan_image":
        data = ct_image().astype(np.float32)
        data[5, 5, 2] = np.nan
        write_nifti(image, data)
        return image
    if case == "inf_image":
        data = ct_image().astype(np.float32)
        data[5, 5, 2] = -np.inf
        write_nifti(image, data)
        return image
    if case == "missing_label":
        os.remove(label)
        return label
    if case == "missing_datalist":
        os.remove(listing)
        return listing
    if case == "invalid_datalist":
        open(listing, "w").write('{"training": [')
        return listing
    if case == "empty_datalist":
        open(listing, "w").write("{}")
        return listing
    if case == "empty_training_key":
        json.dump({"training": [], "validation": datalist["validation"]}, open(listing, "w"))
        return listing
    raise AssertionError(case)


BAD_DATA = [
    ("truncated_image", "unreadable or truncated data"),
    ("corrupt_label", "unreadable NIfTI"),
    ("image_2d", "image is not 3D"),
    ("image_4d", "image is not 3D (shape (24, 24, 8, 2), 4D)"),
    ("shape_mismatch", "label shape (24, 24, 7) differs from image shape (24, 24, 8)"),
    ("affine_mismatch", "label affine differs from image affine"),
    ("label_out_of_range", "label values outside [0, 13] (14 classes): 15"),
    ("zeros_image", "image is one constant value (0)"),
    ("nan_image", "image contains 1 NaN/Inf voxel(s)"),
    ("inf_image", "image contains 1 NaN/Inf voxel(s)"),
    ("missing_label", "file not found"),
    ("missing_datalist", "datalist file not found"),
    ("invalid_datalist", "datalist is not valid JSON"),
    ("empty_datalist", "datalist is empty"),
    ("empty_training_key", "datalist key 'training' is missing or empty"),
]


@pytest.mark.parametrize("case, expected", BAD_DATA, ids=[c for c, _ in BAD_DATA])
def test_training_refuses_bad_data_naming_the_file(tmp_path, case, expected):
    root = str(tmp_path / "study")
    broken = _break(case, root, write_small_study(root))
    models = tmp_path / "models"
    flow = workflow(TRAIN, dataset_dir=root, ckpt_dir=str(models), output_dir=str(tmp_path / "eval"))
    with pytest.raises(Exception) as raised:
        flow.initialize()
    error = root_cause(raised.value)
    assert isinstance(error, DataValidationError), repr(error)
    assert any(p.startswith(f"{broken}: ") and expected in p for p in error.problems), error.problems
    assert not models.exists()  # refused before anything was built or written


def test_training_checks_labels_against_the_configured_classes(tmp_path):
    root = str(tmp_path / "study")
    datalist = write_small_study(root)  # the labels hold the value 6
    flow = workflow(
        TRAIN,
        dataset_dir=root,
        ckpt_dir=str(tmp_path / "models"),
        num_classes=5,
        label_names={str(i): f"class_{i}" for i in range(5)},
    )
    with pytest.raises(Exception) as raised:
        flow.initialize()
    error = root_cause(raised.value)
    label = os.path.join(root, datalist["training"][0]["label"])
    assert f"{label}: label values outside [0, 4] (5 classes): 6" in str(error)


def test_valid_small_study_passes_without_warnings(tmp_path):
    root = str(tmp_path / "study")
    write_small_study(root)
    flow = workflow(TRAIN, dataset_dir=root, ckpt_dir=str(tmp_path / "models"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonHUIntensityWarning)
        flow.initialize()


def test_non_ct_range_warns_naming_the_file(tmp_path):
    root = str(tmp_path / "study")
    datalist = write_small_study(root)
    image = os.path.join(root, datalist["training"][1]["image"])
    write_nifti(image, (ct_image(seed=1).astype(np.float32) + 1000.0) / 2000.0)  # normalised to about 0-0.5
    flow = workflow(TRAIN, dataset_dir=root, ckpt_dir=str(tmp_path / "models"))
    with pytest.warns(NonHUIntensityWarning) as caught:
        flow.initialize()  # a warning, not an error: the run may go on
    assert any(str(w.message).startswith(f"{image}: intensities span [") for w in caught)


def _write_model(path: str, network) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(network.state_dict(), path)


def test_evaluation_validates_its_validation_cases_only(tmp_path, demo_network):
    root = str(tmp_path / "study")
    datalist = write_small_study(root)
    models = str(tmp_path / "models")
    _write_model(os.path.join(models, "model.pt"), demo_network)
    os.remove(os.path.join(root, datalist["training"][0]["image"]))  # not needed to evaluate
    workflow(EVALUATE, dataset_dir=root, ckpt_dir=models, output_dir=str(tmp_path / "eval")).initialize()

    missing = os.path.join(root, datalist["validation"][0]["label"])
    os.remove(missing)
    flow = workflow(EVALUATE, dataset_dir=root, ckpt_dir=models, output_dir=str(tmp_path / "eval"))
    with pytest.raises(Exception) as raised:
        flow.initialize()
    error = root_cause(raised.value)
    assert isinstance(error, DataValidationError) and f"{missing}: file not found" in error.problems


def test_evaluation_refuses_a_missing_checkpoint_before_reading_data(tmp_path):
    root = str(tmp_path / "study")
    write_small_study(root)
    flow = workflow(EVALUATE, dataset_dir=root, ckpt_dir=str(tmp_path / "nothing"), output_dir=str(tmp_path / "eval"))
    with pytest.raises(Exception) as raised:
        flow.initialize()
    error = root_cause(raised.value)
    assert isinstance(error, FileNotFoundError) and str(tmp_path / "nothing" / "model.pt") in str(error)


# ---------------------------------------------------------------------------------------------------------------
# an image smaller than the training patch is padded, in training, validation and inference
# ---------------------------------------------------------------------------------------------------------------


def test_image_smaller_than_the_patch_is_padded(tmp_path, demo_network):
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    image = write_nifti(tmp_path / "small.nii.gz", ct_image((20, 20, 6)))  # 40x40x27 mm: 14x14x5 at 3x3x6 mm
    label = write_nifti(tmp_path / "small_label.nii.gz", organ_label((20, 20, 6)))
    train = ConfigParser()
    train.read_config(config_paths(*TRAIN))
    patch = train.get_parsed_content("patch_size")
    samples = train.get_parsed_content("train#preprocessing")({"image": image, "label": label})
    assert tuple(samples[0]["image"].shape) == (1, *patch) and tuple(samples[0]["label"].shape) == (1, *patch)
    air = train.get_parsed_content("background_value")  # the normalised value of hu_min: what air becomes
    cached = Compose(
        train.get_parsed_content("train#deterministic_transforms") + train.get_parsed_content("train#cached_transforms")
    )
    padded = cached({"image": image, "label": label})["image"]  # before the random crop and intensity augmentation
    assert all(s >= p for s, p in zip(padded.shape[1:], patch))
    assert float(padded[0, :, :, 0].max()) == pytest.approx(air)  # a padded slice is air, not 0 (~83 HU of soft tissue)

    network = demo_network.eval()
    validation = train.get_parsed_content("validate#preprocessing")({"image": image, "label": label})
    assert all(s < p for s, p in zip(validation["image"].shape[1:], patch))
    with torch.no_grad():
        logits = train.get_parsed_content("validate#inferer")(validation["image"][None], network)
    assert tuple(logits.shape) == (1, 14, *validation["image"].shape[1:])

    infer = ConfigParser()
    infer.read_config(config_paths("inference.json", "demo.json"))
    data = infer.get_parsed_content("preprocessing")({"image": image})
    inferer = infer.get_parsed_content("inferer")
    assert inferer.pad_value == pytest.approx(air)
    with torch.no_grad():
        labels = inferer(data["image"][None], network)  # in the image's own geometry
        logits = inferer.blended_logits(data["image"][None], network)
    assert tuple(labels.shape) == (1, 1, 20, 20, 6) and tuple(logits.shape) == (1, 14, *data["image"].shape[1:])


# ---------------------------------------------------------------------------------------------------------------
# config overrides of the wrong type
# ---------------------------------------------------------------------------------------------------------------


WRONG_TYPES = [
    ("max_epochs", "ten", "config id 'max_epochs' must be a positive integer, got 'ten' (str)"),
    ("max_epochs", 2.5, "must be a positive integer, got 2.5 (float)"),
    ("batch_size", True, "must be a positive integer, got True (bool)"),
    ("patch_size", 64, "must be a list of 3 positive integers"),
    ("patch_size", [64, 64], "must be a list of 3 positive integers"),
    ("target_spacing", [1.0, 1.0, -1.0], "must be a list of 3 positive numbers"),
    ("num_classes", 1, "must be an integer >= 2"),
    ("learning_rate", "1e-2x", "must be a positive number"),
    ("cache_rate", 1.5, "must be a number in [0, 1]"),
    ("check_data", "false", "write --check_data False"),
    ("overwrite", "yes", "must be a boolean"),
    ("tta_flip_axes", [0, 3], "distinct spatial axes among 0, 1, 2"),
    ("resume", 3, "True, False or the path of a resumable checkpoint"),
    ("checkpoint_interval", -1, "an integer >= 0"),
    ("dataset_dir", None, "a non-empty path string"),
    ("label_names", {"0": "background", "2": "liver"}, "a map of label value -> class name for the values 0..N-1"),
    ("label_names", ["background", "liver"], "a map of label value -> class name"),
    ("inference_precision", "half", "must be one of 'float32', 'bfloat16', 'float16', got 'half'"),
    ("compile_network", "true", "write --compile_network True"),
    ("rotate_prob", 1.2, "must be a probability, a number in [0, 1], got 1.2"),
    ("flip_prob", "0.5", "must be a probability"),
    ("rotate_range", [0.0, 3.14], "a list of 3 angles >= 0 in radians"),
    ("scale_range", [1.4, 0.7], "a list [min, max] of positive zoom factors"),
    ("blur_sigma", [-0.5, 1.0], "a list [min, max] of Gaussian sigmas >= 0"),
    ("low_resolution_zoom", [0.5, 1.5], "a list [min, max] of zoom factors in (0, 1]"),
    ("gamma_range", [0.0, 1.5], "a list [min, max] of positive gammas"),
    ("brightness_factor", 1.0, "a number in [0, 1)"),
    ("noise_std", -0.1, "a number >= 0"),
    ("dice_smooth", 0, "a positive number"),
    ("merged_label_map", [1, 0, 2], "starting with 0 (background)"),
    ("merged_label_names", {"1": "kidneys"}, "a map of merged class value -> name"),
    ("image_readers", [], "a non-empty list of MONAI image reader names"),
    ("data_list_file_path", "", "a non-empty path string"),
]


@pytest.mark.parametrize(
    "key, value, expected", WRONG_TYPES, ids=[f"{k}-{type(v).__name__}" for k, v, _ in WRONG_TYPES]
)
def test_wrong_config_types_are_named(key, value, expected):
    with pytest.raises(ConfigValueError) as raised:
        check_config({key: value})
    assert expected in str(raised.value)


def test_every_wrong_value_is_listed_at_once():
    with pytest.raises(ConfigValueError) as raised:
        check_config({"max_epochs": 0, "hu_min": 400.0, "hu_max": 300.0, "sw_overlap": 1.0})
    text = str(raised.value)
    assert text.startswith("3 invalid config value(s)")
    assert (
        "'max_epochs'" in text
        and "'hu_min' (400.0) must be smaller than 'hu_max' (300.0)" in text
        and "'sw_overlap'" in text
    )


def test_label_names_must_name_every_class():
    with pytest.raises(ConfigValueError, match="'label_names' names 14 classes but 'num_classes' is 3: set both"):
        check_config({"num_classes": 3, "label_names": {str(i): f"c{i}" for i in range(14)}})
    check_config({"num_classes": 3, "label_names": {"0": "background", "1": "liver", "2": "spleen"}})


def test_merged_label_map_must_fit_both_label_tables():
    names = {"0": "background", "1": "kidneys"}
    with pytest.raises(ConfigValueError) as raised:
        check_config({"num_classes": 4, "merged_label_map": [0, 1, 1, 2], "merged_label_names": names})
    assert "'merged_label_names' names 2 merged classes but 'merged_label_map' maps to 3" in str(raised.value)
    with pytest.raises(ConfigValueError, match="'merged_label_map' maps 3 label values but 'num_classes' is 4"):
        check_config({"num_classes": 4, "merged_label_map": [0, 1, 1]})
    check_config({"num_classes": 3, "merged_label_map": [0, 1, 1], "merged_label_names": names})


@pytest.mark.parametrize(
    "patch, fits", [([64, 64, 32], True), ([32, 32, 16], True), ([16, 16, 8], False), ([64, 60, 32], False)]
)
def test_patch_size_is_checked_against_the_network_stride(patch, fits):
    from monai.bundle import ConfigParser
    from monai.networks.nets import SegResNet

    from scripts.engine.config_check import check_patch_size

    parser = ConfigParser()
    parser.read_config(config_paths(*TRAIN))
    network = parser.get_parsed_content("network_def")
    # the demo CoTr: stem (2, 2, 1) then three stages of (2, 2, 2), so 16 x 16 x 8; a patch of exactly that is one
    # voxel deep, which instance normalisation cannot normalise
    divisor = [2 * 2 * 2 * 2, 2 * 2 * 2 * 2, 1 * 2 * 2 * 2]
    assert list(network.size_divisor) == divisor
    expected = all(p % d == 0 for p, d in zip(patch, divisor)) and patch != divisor
    assert fits == expected
    if fits:
        check_patch_size(patch, network)
    else:
        with pytest.raises(
            ConfigValueError, match=r"config id 'patch_size' .* does not fit network_def.*\[16, 16, 8\]"
        ):
            check_patch_size(patch, network)
    check_patch_size(patch, SegResNet(spatial_dims=3, init_filters=8))  # networks without a stride are not checked


def test_unknown_checked_id_is_a_config_mistake():
    with pytest.raises(KeyError, match="no_such_id"):
        check_config({"no_such_id": 1})


CONFIG_SETS = [
    TRAIN,
    ["train.json"],
    EVALUATE,
    ["train.json", "multi_gpu_train.json"],
    ["inference.json"],
    ["inference.json", "demo.json"],
]


@pytest.mark.parametrize("files", CONFIG_SETS, ids=["+".join(f) for f in CONFIG_SETS])
def test_config_defaults_pass_their_checks(files):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_paths(*files))
    checked = parser.get_parsed_content("checked_config")
    assert set(checked) <= set(RULES) and {"num_classes", "patch_size", "amp"} <= set(checked)
    check_config(checked)
    initialize = parser.get("initialize")
    assert initialize[0] == "@startup" and any(
        "check_config(@checked_config)" in step for step in parser.get("startup")
    )


def test_wrong_override_fails_in_initialize(tmp_path):
    root = str(tmp_path / "study")
    write_small_study(root)
    flow = workflow(TRAIN, dataset_dir=root, ckpt_dir=str(tmp_path / "models"), max_epochs="ten", patch_size=[64, 64])
    with pytest.raises(Exception) as raised:
        flow.initialize()
    error = root_cause(raised.value)
    assert isinstance(error, ConfigValueError)
    assert "'max_epochs' must be a positive integer, got 'ten'" in str(error) and "'patch_size'" in str(error)
