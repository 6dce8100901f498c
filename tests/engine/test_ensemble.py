"""
Fold ensembles: :class:`SoftmaxEnsemble` averages its members' softmax probabilities per sliding window (checked
against numpy and MONAI's ``sliding_window_inference``), an ensemble of one gives the single model's labels, and the
inference config loads one member per file of ``ckpt_files``, refusing bad files before the network runs.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import list_data_collate
from monai.inferers import sliding_window_inference

from scripts.data.synthetic import make_phantom, phantom_to_nifti
from scripts.engine.checkpoint import CheckpointError, CheckpointLoader
from scripts.engine.ensemble import (
    EnsembleCheckpointLoader,
    SoftmaxEnsemble,
    check_ensemble_checkpoints,
    ensemble_network,
)
from scripts.engine.streaming import StreamingSegmentationInferer
from tests.reliability.conftest import config_paths, root_cause, run_bundle, workflow

ROI = (16, 16, 12)
OVERLAP = 0.5
NUM_CLASSES = 14


def _network(seed: int, num_classes: int = NUM_CLASSES) -> nn.Module:
    """Seeded random convolutions: labels depend on intensity and neighbourhood, so window edges matter."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, num_classes, 1)).eval()


def _softmax(logits: np.ndarray) -> np.ndarray:
    """float64 softmax over axis 0."""
    e = np.exp(logits - logits.max(axis=0))
    return e / e.sum(axis=0)


@pytest.fixture(scope="module")
def batch(config, tmp_path_factory):
    """A preprocessed LPS phantom (anisotropic, cropped by CropForegroundd) as the evaluator batches it."""
    image, label = make_phantom((40, 36, 30), (0.9, 0.7, 2.5), seed=0)
    path = str(tmp_path_factory.mktemp("ensemble") / "case.nii.gz")
    nib.save(phantom_to_nifti(image, label, (0.9, 0.7, 2.5), axcodes="LPS")[0], path)
    return list_data_collate([config.get_parsed_content("preprocessing")({"image": path})])


def test_an_ensemble_of_one_gives_the_single_models_labels(config, batch):
    network = _network(0)
    inferer = StreamingSegmentationInferer(
        ROI, 2, OVERLAP, pad_value=config.get_parsed_content("background_value"), tta_axes=(0, 2), chunk_voxels=3000
    )
    assert len(inferer.windows(batch["image"].shape[2:])) > 8  # blending across many windows
    with torch.no_grad():
        single = inferer(batch["image"], network)
        ensemble = inferer(batch["image"], SoftmaxEnsemble([network]))
        probabilities = inferer.blended_logits(batch["image"], network).softmax(1)
        ensemble_probabilities = inferer.blended_logits(batch["image"], SoftmaxEnsemble([network])).softmax(1)
    assert len(np.unique(single.numpy())) >= 4  # not a trivial segmentation
    assert torch.equal(ensemble, single)
    # log_softmax is the logits minus a per-voxel constant, which the blended softmax cancels up to float32 rounding
    torch.testing.assert_close(ensemble_probabilities, probabilities, atol=1e-6, rtol=0)


def test_two_models_give_the_mean_of_their_probabilities():
    a, b = _network(1), _network(2)
    image = torch.randn(1, 1, *ROI)
    inferer = StreamingSegmentationInferer(ROI, 1, OVERLAP)
    assert len(inferer.windows(ROI)) == 1
    with torch.no_grad():
        probabilities = inferer.blended_logits(image, SoftmaxEnsemble([a, b])).softmax(1)[0].numpy()
        logits_a, logits_b = (n(image)[0].numpy().astype(np.float64) for n in (a, b))
    expected = (_softmax(logits_a) + _softmax(logits_b)) / 2
    np.testing.assert_allclose(probabilities, expected, atol=2e-6, rtol=0)
    # not the average of the logits, nor either model alone
    for other in (_softmax((logits_a + logits_b) / 2), _softmax(logits_a), _softmax(logits_b)):
        assert np.abs(other - expected).max() > 1e-2


def test_the_average_is_taken_per_window():
    a, b = _network(3), _network(4)
    image = torch.randn(1, 1, 40, 36, 30)
    inferer = StreamingSegmentationInferer(ROI, 2, OVERLAP)
    assert len(inferer.windows(image.shape[2:])) > 8

    def mean_of_probabilities(window: torch.Tensor) -> torch.Tensor:
        return torch.log((a(window).softmax(1) + b(window).softmax(1)) / 2)

    with torch.no_grad():
        blended = inferer.blended_logits(image, SoftmaxEnsemble([a, b]))
        expected = sliding_window_inference(image, ROI, 2, mean_of_probabilities, OVERLAP, mode="gaussian")
        after_blending = torch.log(
            (inferer.blended_logits(image, a).softmax(1) + inferer.blended_logits(image, b).softmax(1)) / 2
        )
    torch.testing.assert_close(blended, expected, atol=1e-5, rtol=1e-5)
    assert (blended.softmax(1) - after_blending.exp()).abs().max() > 1e-3  # the two orders differ: the test tells


def test_ensemble_network_copies_the_network_per_file():
    network = _network(5)
    assert ensemble_network(network, None) is network
    ensemble = ensemble_network(network, ["a.pt", "b.pt", "c.pt"])
    assert isinstance(ensemble, SoftmaxEnsemble) and len(ensemble.networks) == 3
    assert ensemble.networks[0] is network
    weights = [m[0].weight for m in ensemble.networks]
    assert all(torch.equal(w, weights[0]) for w in weights) and len({w.data_ptr() for w in weights}) == 3
    with pytest.raises(ValueError, match="at least one network"):
        SoftmaxEnsemble([])
    network.compile()  # a copy would share the original's compiled call
    with pytest.raises(ValueError, match="before compiling"):
        ensemble_network(network, ["a.pt", "b.pt"])


def test_compiling_the_ensemble_compiles_every_member():
    ensemble = SoftmaxEnsemble([_network(6), _network(7)])
    ensemble.compile(dynamic=False)
    assert all(m._compiled_call_impl is not None for m in ensemble.networks)
    assert ensemble._compiled_call_impl is None  # the members' own compile, not one graph over all


def test_bad_member_checkpoints_are_all_listed_by_file(tmp_path):
    network = _network(0)
    good, other, duplicate = str(tmp_path / "fold0.pt"), str(tmp_path / "fold1.pt"), str(tmp_path / "." / "fold0.pt")
    torch.save(network.state_dict(), good)
    torch.save(_network(0, num_classes=3).state_dict(), other)  # another label set
    missing = str(tmp_path / "fold2.pt")
    check_ensemble_checkpoints([good], network)
    with pytest.raises(CheckpointError) as error:
        check_ensemble_checkpoints([good, other, missing, duplicate], network)
    message = str(error.value)
    assert message.startswith("3 of the 4 ensemble checkpoints (config id 'ckpt_files') cannot be used:")
    lines = message.splitlines()[1:]
    assert lines[0].startswith(f"  {other} does not fit the configured network")
    assert lines[1] == f"  checkpoint {missing} not found" and lines[2] == f"  {duplicate}: listed twice" + (
        "; each member of an ensemble needs its own checkpoint"
    )


def test_each_member_is_loaded_from_its_file(tmp_path):
    a, b = _network(1), _network(2)
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in b.state_dict().items()}}, tmp_path / "b.pt")  # from DDP
    ensemble = ensemble_network(_network(9), [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")])
    loader = EnsembleCheckpointLoader(ensemble, [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")], map_location="cpu")
    assert all(isinstance(m, CheckpointLoader) for m in loader.loaders)
    engine = Engine(lambda engine, batch: None)
    loader.attach(engine)
    engine.run([0])
    for member, source in zip(ensemble.networks, (a, b)):
        for name, value in source.state_dict().items():
            assert torch.equal(member.state_dict()[name], value), name
    with pytest.raises(ValueError, match="2 checkpoints for an ensemble of 3"):
        EnsembleCheckpointLoader(SoftmaxEnsemble([a, b, _network(3)]), ["a.pt", "b.pt"])


# ---------------------------------------------------------------------------------------------------------------
# configs/inference.json: ckpt_files
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def demo_checkpoints(tmp_path) -> list[str]:
    """Two checkpoints of the demo overlay's CoTr with different random weights."""
    parser = ConfigParser()
    parser.read_config(config_paths("inference.json", "demo.json"))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(str(tmp_path / f"fold{seed}" / "model.pt"))
        os.makedirs(os.path.dirname(paths[-1]))
        torch.save(parser.get_parsed_content("network_def", lazy=False).state_dict(), paths[-1])
    return paths


def test_the_config_without_ckpt_files_runs_the_one_network_as_before(config):
    parser = ConfigParser(config.get())
    parser["device"] = "$torch.device('cpu')"
    assert parser.get_parsed_content("inference_network") is parser.get_parsed_content("network")
    loader = parser.get_parsed_content("handlers#0")
    assert type(loader) is CheckpointLoader and loader.load_path == parser.get_parsed_content("ckpt_path")


def test_the_config_builds_and_checks_an_ensemble(tmp_path, demo_checkpoints):
    parser = ConfigParser()
    parser.read_config(config_paths("inference.json", "demo.json"))
    parser.update({"device": "$torch.device('cpu')", "ckpt_files": demo_checkpoints})
    ensemble = parser.get_parsed_content("inference_network")
    assert isinstance(ensemble, SoftmaxEnsemble) and len(ensemble.networks) == 2
    loader = parser.get_parsed_content("handlers#0")
    assert isinstance(loader, EnsembleCheckpointLoader)
    assert [m.load_path for m in loader.loaders] == demo_checkpoints

    missing = str(tmp_path / "fold2" / "model.pt")
    flow = workflow(
        ["inference.json", "demo.json"],
        "infer",
        ckpt_files=[*demo_checkpoints, missing],
        ckpt_path=str(tmp_path / "none.pt"),
        dataset_dir=str(tmp_path),
        output_dir=str(tmp_path / "out"),
        device="$torch.device('cpu')",
    )
    with pytest.raises(Exception) as error:
        flow.initialize()  # before any data is read or the network runs
    cause = root_cause(error.value)
    assert isinstance(cause, CheckpointError)  # only the members are named: ckpt_path is not read
    assert str(cause).splitlines() == [
        "1 of the 3 ensemble checkpoints (config id 'ckpt_files') cannot be used:",
        f"  checkpoint {missing} not found",
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_ensemble_of_two_checkpoints_with_an_organ_subset(tmp_path, demo_checkpoints):
    """``--ckpt_files`` with two folds and ``--organs``: the labels of the ensemble, restricted to the organs."""
    image, label = make_phantom((72, 60, 30), (3.0, 3.0, 6.0), seed=0)
    source = tmp_path / "in" / "case.nii.gz"
    os.makedirs(source.parent)
    nib.save(phantom_to_nifti(image, label, (3.0, 3.0, 6.0), axcodes="LPS")[0], source)
    output = tmp_path / "out"
    result = run_bundle(
        "run",
        "inference",
        "--config_file",
        str(config_paths("inference.json", "demo.json")),
        "--dataset_dir",
        str(source.parent),
        "--output_dir",
        str(output),
        "--ckpt_path",
        str(tmp_path / "none.pt"),
        "--ckpt_files",
        str(demo_checkpoints),
        "--organs",
        "['liver','spleen']",
        "--save_measurements",
        "True",
        "--save_overlays",
        "True",
        "--sw_progress",
        "False",
    )
    assert result.returncode == 0, result.stderr[-6000:]
    for path in demo_checkpoints:
        assert f"Restored all variables from {path}" in result.stderr + result.stdout
    written = nib.load(output / "case_seg.nii.gz")
    labels = np.asarray(written.dataobj)

    # the same ensemble in this process, from the two files
    parser = ConfigParser()
    parser.read_config(config_paths("inference.json", "demo.json"))
    parser.update({"device": "$torch.device('cpu')", "sw_progress": False})
    members = []
    for path in demo_checkpoints:
        members.append(parser.get_parsed_content("network_def", lazy=False).eval())
        members[-1].load_state_dict(torch.load(path, weights_only=True))
    batch = list_data_collate([parser.get_parsed_content("preprocessing")({"image": str(source)})])
    inferer = parser.get_parsed_content("inferer")
    with torch.no_grad():
        ensemble = inferer(batch["image"], SoftmaxEnsemble(members))[0, 0].numpy()
        single = inferer(batch["image"], members[0])[0, 0].numpy()
    assert {1, 6} <= set(np.unique(ensemble)) and len(np.unique(ensemble)) > 4  # other organs to drop
    assert (ensemble != single).mean() > 0.05  # the second member changes the labels: both are used
    np.testing.assert_array_equal(labels, np.where(np.isin(ensemble, [1, 6]), ensemble, 0))
    assert written.shape == nib.load(source).shape

    rows = open(output / "case_measurements.csv").read().splitlines()
    assert [r.split(",")[:3] for r in rows[1:]] == [["case", "1", "spleen"], ["case", "6", "liver"]]
    assert (output / "case.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "value, valid",
    [(None, True), (["a.pt"], True), (("a.pt", "b.pt"), True), ([], False), ("a.pt", False), (["a.pt", ""], False)],
)
def test_config_check_of_ckpt_files(value, valid):
    from scripts.engine.config_check import ConfigValueError, check_config

    if valid:
        check_config({"ckpt_files": value})
    else:
        with pytest.raises(ConfigValueError, match="config id 'ckpt_files' must be null"):
            check_config({"ckpt_files": value})
