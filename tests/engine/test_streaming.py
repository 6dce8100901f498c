"""
The streaming inferer against the whole-volume pipeline the configs had before it, computed independently with MONAI:
``sliding_window_inference``, softmax, ``Invertd`` of the real preprocessing (``configs/inference.json``) and argmax,
on small synthetic CT files.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, decollate_batch, list_data_collate
from monai.engines import SupervisedEvaluator
from monai.inferers import sliding_window_inference
from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd, SaveImaged

from scripts.data.synthetic import make_phantom, phantom_to_nifti
from scripts.engine.inferers import FlipTTA
from scripts.engine.streaming import StreamingSegmentationInferer, _plan_chunks, scan_interval

ROI = (16, 16, 12)
OVERLAP = 0.5
NUM_CLASSES = 14
SPACING = (0.9, 0.7, 2.5)

#: name -> (orientation on disk, RAS shape, RAS spacing) of a phantom
CASES = {
    "LPS": ("LPS", (40, 36, 30), SPACING),  # cropped in Y by CropForegroundd
    "PLS, in-plane axes swapped": ("PLS", (40, 36, 30), SPACING),
    "SLP, slices along the first axis": ("SLP", (40, 36, 30), SPACING),
    "LPI, slices top to bottom": ("LPI", (40, 36, 30), SPACING),
    "at the target spacing: Spacingd keeps the voxels": ("LPS", (40, 36, 30), (0.76, 0.76, 3.0)),
    "shorter than the window along Z": ("LPS", (30, 28, 8), SPACING),  # 7 slices at 3 mm < 12
    "long, 27 window rows along Z": ("LPS", (24, 20, 200), (0.8, 0.8, 2.5)),
}


@pytest.fixture(scope="module")
def pad_value(config) -> float:
    return config.get_parsed_content("background_value")  # the normalised intensity of air


@pytest.fixture(scope="module")
def network() -> nn.Module:
    """Seeded random 3x3x3 + 1x1x1 convolutions: labels depend on intensity and neighbourhood, window edges matter."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, NUM_CLASSES, 1)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("streaming")
    paths = {}
    for index, (name, (axcodes, shape, spacing)) in enumerate(CASES.items()):
        image, label = make_phantom(shape, spacing, seed=index)
        img, _ = phantom_to_nifti(image, label, spacing, axcodes=axcodes)
        paths[name] = str(folder / f"case{index}.nii.gz")
        nib.save(img, paths[name])
    return paths


def whole_volume_labels(
    config: ConfigParser, path: str, network: nn.Module, pad_value: float, sw_batch_size: int
) -> np.ndarray:
    """Sliding window (``cval=pad_value``), softmax, ``Invertd`` of the config's preprocessing, argmax."""
    preprocessing = config.get_parsed_content("preprocessing")
    postprocessing = [  # configs/inference.json's postprocessing before the streaming inferer replaced it
        Activationsd("pred", softmax=True),
        Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
        AsDiscreted("pred", argmax=True),
    ]
    data = preprocessing({"image": path})
    with torch.no_grad():
        data["pred"] = sliding_window_inference(
            data["image"][None], ROI, sw_batch_size, network, OVERLAP, mode="gaussian", cval=pad_value
        )[0]
    return np.asarray(Compose(postprocessing)(data)["pred"][0])


def streaming_inferer(pad_value: float, sw_batch_size: int = 2, **kwargs) -> StreamingSegmentationInferer:
    # 2 original slices of these ~40x36 planes per chunk: many chunks, each needing a few preprocessed slices
    return StreamingSegmentationInferer(ROI, sw_batch_size, OVERLAP, pad_value=pad_value, chunk_voxels=3000, **kwargs)


@pytest.mark.parametrize("name", list(CASES))
def test_labels_equal_the_whole_volume_pipeline(config, files, network, pad_value, name):
    batch = list_data_collate([config.get_parsed_content("preprocessing")({"image": files[name]})])
    with torch.no_grad():
        labels = streaming_inferer(pad_value)(batch["image"], network)
    expected = whole_volume_labels(config, files[name], network, pad_value, sw_batch_size=2)
    original = nib.load(files[name])
    assert labels.dtype == torch.uint8 and tuple(labels.shape) == (1, 1, *original.shape)
    np.testing.assert_allclose(labels.affine[0].numpy(), original.affine, atol=1e-6)
    agreement = float((labels[0, 0].numpy() == expected).mean())
    # the same arithmetic up to the order of the blending sums and the resampling grid's origin: no label flips
    assert agreement == 1.0, f"{name}: {agreement:.6f} of the voxels agree"
    assert len(np.unique(expected)) >= 4  # not a trivial segmentation
    assert (expected == 0).any()  # with background, including the part CropForegroundd cut off


@pytest.mark.parametrize("sw_batch_size, tta_axes", [(1, ()), (5, ()), (2, (0, 2))])
@pytest.mark.parametrize("name", ["shorter than the window along Z", "long, 27 window rows along Z"])
def test_blended_logits_equal_sliding_window_inference(
    config, files, network, pad_value, name, sw_batch_size, tta_axes
):
    image = config.get_parsed_content("preprocessing")({"image": files[name]})["image"][None]
    inferer = streaming_inferer(pad_value, sw_batch_size, tta_axes=tta_axes)
    with torch.no_grad():
        logits = inferer.blended_logits(image, network)
        expected = sliding_window_inference(
            image.as_tensor(), ROI, sw_batch_size, FlipTTA(network, tta_axes), OVERLAP, mode="gaussian", cval=pad_value
        )
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_windows_are_monais_sorted_by_z():
    inferer = StreamingSegmentationInferer((16, 16, 12), overlap=(0.5, 0.25, 0.5))
    windows = inferer.windows((40, 16, 7))
    assert scan_interval((40, 16, 12), (16, 16, 12), (0.5, 0.25, 0.5)) == (8, 16, 12)
    assert [w[2].start for w in windows] == sorted(w[2].start for w in windows)
    assert sorted((w[0].start, w[2].start) for w in windows) == [(x, 0) for x in (0, 8, 16, 24)]  # padded to 12 in Z


def test_batch_of_two_through_the_evaluator_and_saveimaged(config, files, network, pad_value, tmp_path):
    names = ["LPS", "LPI, slices top to bottom"]  # one shape, two orientations
    preprocessing = config.get_parsed_content("preprocessing")
    loader = DataLoader(Dataset([{"image": files[n]} for n in names], preprocessing), batch_size=2)
    save = SaveImaged(
        "pred",
        output_dir=str(tmp_path),
        output_postfix="seg",
        output_dtype=np.uint8,
        resample=False,
        separate_folder=False,
        squeeze_end_dims=True,
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=network,
        inferer=streaming_inferer(pad_value),
        postprocessing=save,
    )
    evaluator.run()
    for name in names:
        case = os.path.basename(files[name]).split(".")[0]
        saved, original = nib.load(str(tmp_path / f"{case}_seg.nii.gz")), nib.load(files[name])
        assert saved.shape == original.shape and saved.get_data_dtype() == np.uint8
        np.testing.assert_allclose(saved.affine, original.affine, atol=1e-6)
        expected = whole_volume_labels(config, files[name], network, pad_value, sw_batch_size=2)
        assert np.array_equal(np.asarray(saved.dataobj), expected)


def test_output_decollates_to_the_original_geometry(config, files, network, pad_value):
    batch = list_data_collate(
        [config.get_parsed_content("preprocessing")({"image": files["PLS, in-plane axes swapped"]})]
    )
    with torch.no_grad():
        (item,) = decollate_batch(streaming_inferer(pad_value)(batch["image"], network))
    assert item.applied_operations == [] and not item.is_batch
    assert item.meta["filename_or_obj"] == files["PLS, in-plane axes swapped"]
    torch.testing.assert_close(item.affine, batch["image"].meta["original_affine"][0])


def test_chunks_follow_the_axis_that_drives_z():
    # original axis 0 runs down the preprocessed Z, half a slice per voxel; original axes 1, 2 are the preprocessed Y, X
    voxel_map = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [-0.5, 0, 0, 15.0], [0, 0, 0, 1]])
    axis, chunks = _plan_chunks(voxel_map, (30, 8, 9), (9, 8, 16), chunk_voxels=2 * 8 * 9)
    assert axis == 0 and len(chunks) == 15
    assert [c.start for c in chunks] == list(range(28, -1, -2))  # decreasing original index = increasing Z
    for c in chunks:
        z = 15.0 - 0.5 * np.array([c.start, c.stop - 1])
        assert c.box_lo[2] <= max(np.floor(z.min()), 0) and c.box_hi[2] >= min(np.floor(z.max()) + 2, 16)
    assert [c.empty for c in chunks].count(True) == 0
    _, beyond = _plan_chunks(voxel_map, (30, 8, 9), (9, 8, 8), chunk_voxels=2 * 8 * 9)
    assert beyond[-1].empty  # original slices mapped past the preprocessed grid: background, not resampled


def test_rejects_inputs_without_original_geometry(network):
    with pytest.raises(ValueError, match="original_affine"):
        StreamingSegmentationInferer(ROI)(torch.zeros(1, 1, 16, 16, 12), network)
    with pytest.raises(ValueError, match="precision"):
        StreamingSegmentationInferer(ROI, precision="float8")
