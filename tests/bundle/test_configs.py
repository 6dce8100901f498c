"""Every config parses, has the ids its workflow type needs, and builds what it promises."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import os

import ignite.distributed
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from .conftest import BUNDLE_ROOT, CONFIGS, SCHEMA, config_paths, run_cli

WORKFLOWS = [
    (["train.json"], "train"),
    (["train.json", "demo.json"], "train"),
    (["train.json", "multi_gpu_train.json"], "train"),
    (["train.json", "evaluate.json"], "train"),
    (["inference.json"], "infer"),
    (["inference.json", "demo.json"], "infer"),
]


@pytest.fixture
def single_process_group(tmp_path):
    """A one-process Gloo group, as torchrun would start, for configs that build distributed samplers."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()
    # ignite caches the distributed context it saw; later workflows in this process must see a serial one
    ignite.distributed.utils._set_model(ignite.distributed.comp_models._SerialModel())


@pytest.mark.parametrize("files, workflow_type", WORKFLOWS)
def test_check_properties(files, workflow_type, synthetic_study, request):
    if "multi_gpu_train.json" in files:
        request.getfixturevalue("single_process_group")
    workflow = ConfigWorkflow(
        config_file=config_paths(*files),
        meta_file=os.path.join(CONFIGS, "metadata.json"),
        logging_file=os.path.join(CONFIGS, "logging.conf"),
        workflow_type=workflow_type,
        init_id="no_initialize",  # parse only: the multi-GPU "initialize" would start a process group
        dataset_dir=synthetic_study,
    )
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.parametrize(
    "variant, expected",
    [(None, 41_872_504), ("cotr_star.json", 27_934_840), ("cotr_dagger.json", 36_894_712), ("without_detrans.json", 32_555_512)],
)
def test_variant_overlays_build_the_paper_networks(variant, expected):
    parser = ConfigParser()
    parser.read_config(config_paths("train.json", *(["variants/" + variant] if variant else [])))
    network = parser.get_parsed_content("network_def")
    assert sum(p.numel() for p in network.parameters() if p.requires_grad) == expected


def test_single_scale_overlay_attends_over_one_level():
    parser = ConfigParser()
    parser.read_config(config_paths("train.json", "variants/single_scale.json"))
    assert parser.get_parsed_content("network_def").detrans.num_levels == 1


def test_inference_and_train_describe_the_same_network_and_preprocessing():
    train, infer = (json.load(open(p)) for p in config_paths("train.json", "inference.json"))
    assert train["network_def"] == infer["network_def"]
    shared = ("patch_size", "target_spacing", "hu_min", "hu_max", "intensity_mean", "intensity_std", "num_classes")
    for key in (*shared, "label_names", "normalize_intensity", "foreground_crop_hu"):
        assert train[key] == infer[key], key
    def targets(transforms: list) -> list[str]:
        return [t if isinstance(t, str) else t["_target_"] for t in transforms]

    loaded = targets(train["train"]["deterministic_transforms"])
    assert loaded == targets(infer["preprocessing"]["transforms"]) and "@normalize_intensity" in loaded


def test_recipe_numbers_follow_the_paper():
    parser = ConfigParser()
    parser.read_config(config_paths("train.json"))
    assert parser.get_parsed_content("patch_size") == [192, 192, 48]
    scale = parser.get_parsed_content("train#deterministic_transforms")[5]
    hu = torch.tensor([[[[-2000.0, -958.0, 82.92, 327.0, 3000.0]]]])
    expected = (hu.clamp(-958, 327) - 82.92) / 136.97
    assert torch.allclose(scale({"image": hu})["image"].as_tensor(), expected, atol=1e-5)
    weights = parser.get_parsed_content("deep_supervision_weights")
    assert weights == pytest.approx([0.533, 0.267, 0.133, 0.067], abs=1e-3) and sum(weights) == pytest.approx(1.0)
    optimizer = parser.get_parsed_content("optimizer")
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, 0.99, True, 3e-5)
    scheduler = parser.get_parsed_content("lr_scheduler")
    for _ in range(500):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 500 / 1000) ** 0.9)


def test_metadata_matches_the_schema():
    if not os.path.exists(SCHEMA):
        pytest.skip(f"the metadata schema is not at {SCHEMA} (it is read from shared/reference, never copied here)")
    run_cli("verify_metadata", "--meta_file", os.path.join(CONFIGS, "metadata.json"), "--filepath", SCHEMA)
    metadata = json.load(open(os.path.join(BUNDLE_ROOT, "metadata.json")))  # the root symlink
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(pred["channel_def"]) == 14
    assert os.path.islink(os.path.join(BUNDLE_ROOT, "metadata.json"))


def test_training_refuses_a_bad_case_before_it_starts(synthetic_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(synthetic_study, study)
    datalist = json.load(open(study / "datalist.json"))
    broken = study / datalist["training"][-1]["label"]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated download
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
         str(config_paths("train.json", "demo.json")), "--dataset_dir", str(study),
         "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode != 0
    assert str(broken) in result.stderr and "Epoch" not in result.stdout + result.stderr
    assert not (tmp_path / "models").exists()
