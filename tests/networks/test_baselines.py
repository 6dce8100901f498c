"""The baseline overlays (``configs/baselines/``), ``scripts/networks/baselines.py`` and the comparison harness
(``scripts/benchmarks/compare_networks.py``, ``scripts/benchmarks/equal_time_training.py``)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import DynUNet

from scripts.benchmarks import compare_networks, equal_time_training
from scripts.benchmarks.common import markdown_table, num_windows
from scripts.engine.streaming import StreamingSegmentationInferer
from scripts.networks.baselines import DeepSupervisionDynUNet

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
BASELINES = ["swinunetr", "unetr", "segresnet", "dynunet"]
# the smallest patch every network takes: SwinUNETR needs multiples of 32 and more than one voxel at 1/32 for its
# instance norms, DynUNet's plan strides by (32, 32, 8), CoTr by (16, 16, 8)
TINY_PATCH = [64, 32, 32]
HARNESS_PATCH = [32, 32, 16]  # CoTr and SegResNet take it


def _parser(*files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, f) for f in files])
    parser.update(overrides)
    return parser


def _overlay(name: str) -> str:
    return f"baselines/{name}.json"


@pytest.mark.parametrize("name", BASELINES)
def test_overlay_changes_only_existing_ids(name):
    with open(os.path.join(CONFIGS, "train.json")) as f:
        train = json.load(f)
    with open(os.path.join(CONFIGS, _overlay(name))) as f:
        overlay = json.load(f)
    assert set(overlay) <= set(train)
    assert set(overlay) - {"network_def"} == ({"patch_size"} if name == "swinunetr" else set())


def test_swinunetr_overlay_patch_is_divisible_by_32_and_contains_cotr_patch():
    cotr = _parser("train.json").get_parsed_content("patch_size")
    swin = _parser("train.json", _overlay("swinunetr")).get_parsed_content("patch_size")
    assert all(s % 32 == 0 and s >= c for s, c in zip(swin, cotr))


@pytest.mark.parametrize("name", BASELINES)
def test_overlay_trains_one_step_with_its_loss(name):
    parser = _parser("train.json", _overlay(name), patch_size=TINY_PATCH, device="$torch.device('cpu')")
    network, loss_function = parser.get_parsed_content("network"), parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    torch.manual_seed(0)
    images = torch.randn(1, 1, *TINY_PATCH)
    labels = torch.randint(0, 14, (1, 1, *TINY_PATCH)).float()
    network.train()
    outputs = network(images)
    if name == "dynunet":  # deep supervision: full resolution first, then 1/2, 1/4, 1/8 in-plane
        assert isinstance(outputs, list) and len(outputs) == len(parser.get_parsed_content("deep_supervision_weights"))
        assert [tuple(o.shape[2:]) for o in outputs] == [(64, 32, 32), (32, 16, 32), (16, 8, 16), (8, 4, 8)]
    else:
        assert tuple(outputs.shape) == (1, 14, *TINY_PATCH)
    loss = loss_function(outputs, labels)
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert tuple(network.eval()(images).shape) == (1, 14, *TINY_PATCH)


@pytest.mark.parametrize("name", BASELINES)
def test_overlay_works_with_evaluate_and_inference_configs(name, synthetic_study):
    # one flip axis keeps it short; the inferers are the configs' own
    evaluate = _parser("train.json", _overlay(name), "evaluate.json", patch_size=TINY_PATCH, tta_flip_axes=[0])
    inference = _parser("inference.json", _overlay(name), patch_size=TINY_PATCH, tta_flip_axes=[0])
    train = _parser("train.json", _overlay(name))
    assert inference["network_def"] == train["network_def"] == evaluate["network_def"]
    network = inference.get_parsed_content("network_def").eval()
    volume = torch.randn(1, 1, 72, 32, 32)  # two windows
    with torch.no_grad():
        for inferer in (evaluate.get_parsed_content("validate#inferer"), inference.get_parsed_content("inferer")):
            # the streaming inferer returns labels in the original geometry; its logits are what the network sets
            infer = inferer.blended_logits if isinstance(inferer, StreamingSegmentationInferer) else inferer
            assert tuple(infer(volume, network).shape) == (1, 14, 72, 32, 32)
    for files, workflow_type in (
        (["train.json", _overlay(name)], "train"),
        (["train.json", _overlay(name), "evaluate.json"], "train"),
        (["inference.json", _overlay(name)], "infer"),
    ):
        workflow = ConfigWorkflow(
            config_file=[os.path.join(CONFIGS, f) for f in files],
            meta_file=os.path.join(CONFIGS, "metadata.json"),
            workflow_type=workflow_type,
            init_id="no_initialize",
            dataset_dir=synthetic_study,
        )
        workflow.initialize()
        assert workflow.check_properties() == []


def test_deep_supervision_dynunet_returns_heads_at_their_resolution():
    kwargs = dict(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        kernel_size=[3, 3, 3, 3],
        strides=[1, 2, 2, 2],
        upsample_kernel_size=[2, 2, 2],
        filters=[4, 8, 8, 8],
        deep_supervision=True,
        deep_supr_num=2,
    )
    net = DeepSupervisionDynUNet(**kwargs)
    x = torch.randn(2, 1, 32, 32, 16)
    outputs = net.train()(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 32, 32, 16), (2, 3, 16, 16, 8), (2, 3, 8, 8, 4)]
    stacked = DynUNet(**kwargs)
    stacked.load_state_dict(net.state_dict())  # same parameters and names as MONAI's DynUNet
    with torch.no_grad():
        assert torch.equal(net.eval()(x), stacked.eval()(x))
        torch.manual_seed(0)
        mine = net.train()(x)
        torch.manual_seed(0)
        theirs = stacked.train()(x)
    assert theirs.shape == (2, 3, 3, 32, 32, 16)
    for head, upsampled in zip(mine, theirs.unbind(1)):
        assert torch.equal(F.interpolate(head, size=x.shape[2:]), upsampled)


def test_num_windows_matches_the_issue_figure():
    assert num_windows((512, 512, 128), (192, 192, 48), 0.5) == 125
    assert num_windows((64, 32, 32), (64, 32, 32), 0.5) == 1


def test_markdown_table_lines():
    rows = (row for row in [["CoTr", "1.00x"], ["UNETR", "-"]])  # any iterable of rows
    assert markdown_table(["network", "forward"], rows) == [
        "| network | forward |",
        "|---|---|",
        "| CoTr | 1.00x |",
        "| UNETR | - |",
    ]
    assert markdown_table(["a"], []) == ["| a |", "|---|"]


def _check_harness(tmp_path, parts: tuple[str, ...], **switches) -> None:
    results = compare_networks.run_benchmark(
        networks=["segresnet"],
        patch_size=HARNESS_PATCH,
        volume_size=HARNESS_PATCH,
        forward_repeats=1,
        train_repeats=1,
        **switches,
    )
    assert list(results) == ["cotr", "segresnet"]  # CoTr, the reference, is always measured, first
    for result in results.values():
        assert result["params"] > 0 and result["windows"] == 1
        assert {f"{p}_s" for p in parts} | {f"{p}_mem" for p in parts} <= set(result)
        for part in parts:
            assert math.isfinite(result[f"{part}_s"]) and result[f"{part}_s"] > 0 and result[f"{part}_mem"] >= 0
    cotr, segresnet = results["cotr"]["ratios"], results["segresnet"]["ratios"]
    assert all(cotr[k] == 1.0 for k in ("params", *(f"{p}_s" for p in parts)))
    assert all(math.isfinite(v) for k, v in segresnet.items() if not k.endswith("_mem") or results["cotr"][k] > 0)
    info = {"cpu": "test CPU", "cores": "2", "threads": "2", "torch": "x", "python": "y", "gpu": "none", "load": "0"}
    settings = {
        "patch_size": HARNESS_PATCH,
        "volume_size": tuple(HARNESS_PATCH),
        "volume_spacing": (0.76, 0.76, 3.0),
        "precision": "float32",
        "repeats": {"forward": 1, "sw": 1, "tta": 1, "train": 1},
    }
    text = compare_networks.report(results, info, settings)
    assert "| CoTr | 1.00x | 1.00x |" in text and "| SegResNet |" in text
    assert "reduced sizes" in text and "test CPU" in text
    png = compare_networks._plot(results, str(tmp_path / "chart.png"), "test chart")
    assert png is None or os.path.getsize(png) > 0


def test_harness_forward_and_sliding_window_with_cotr_as_reference(tmp_path):
    _check_harness(tmp_path, ("forward", "sw"), train=False, tta=False)


@pytest.mark.slow
def test_harness_runs_every_part(tmp_path):
    _check_harness(tmp_path, ("forward", "sw", "tta", "train"))


def test_wall_clock_schedule_anneals_and_stops():
    network = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
    rates = []

    def step(engine, batch):
        rates.append(optimizer.param_groups[0]["lr"])

    engine = Engine(step)
    engine.optimizer = optimizer
    schedule = equal_time_training.WallClockSchedule(seconds=0.2, base_lr=0.5, power=0.9)
    schedule.attach(engine)
    engine.run(range(10**9), max_epochs=1)
    assert 0.2 <= schedule.trained_s <= schedule.elapsed() < 5 and engine.state.iteration < 10**9
    assert rates[0] == pytest.approx(0.5, rel=0.05) and rates == sorted(rates, reverse=True) and rates[-1] < 0.1
    with pytest.raises(ValueError):
        equal_time_training.WallClockSchedule(seconds=0, base_lr=0.5, power=0.9)


@pytest.mark.slow
def test_equal_time_training_runs_end_to_end(synthetic_study, tmp_path):
    os.symlink(synthetic_study, tmp_path / "data")
    results = equal_time_training.run_equal_time(
        networks=["cotr", "dynunet"], seconds=2, patch_size=TINY_PATCH, workdir=str(tmp_path)
    )
    assert list(results) == ["cotr", "dynunet"]
    for result in results.values():
        assert result["iterations"] >= 1 and result["train_s"] >= 2
        assert 0.0 <= result["dice"] <= 1.0
    assert (tmp_path / "dynunet" / "models").is_dir()
