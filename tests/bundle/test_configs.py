"""Every config parses, has the ids its workflow type needs, and builds what it promises."""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import inspect
import json
import os
import re
import shutil
import subprocess
import sys

import ignite.distributed
import monai.networks.nets
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from scripts.engine.config_check import RULES, ConfigValueError, check_config

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


#: every config file as it is run: alone or over the configs it overlays
CONFIG_STACKS = [
    ["train.json"],
    ["train.json", "demo.json"],
    ["train.json", "evaluate.json"],
    ["train.json", "evaluate.json", "demo.json"],
    ["train.json", "multi_gpu_train.json"],
    ["train.json", "evaluate.json", "multi_gpu_evaluate.json"],
    ["train.json", "evaluate.json", "datasets/btcv.json"],
    ["inference.json"],
    ["inference.json", "demo.json"],
    ["inference.json", "multi_gpu_inference.json"],
    ["inference.json", "datasets/btcv.json"],
    *(
        ["train.json", f"{kind}/{os.path.basename(p)}"]
        for kind in ("baselines", "variants")
        for p in sorted(glob.glob(os.path.join(CONFIGS, kind, "*.json")))
    ),
]
#: literal ids that are not user tunables, so they have no rule in scripts.engine.config_check.RULES (an id ending in
#: '#' covers every id below it)
NOT_TUNABLE = {
    "network_def#": "network hyperparameters: the network's constructor refuses inconsistent values (e.g. CoTr's "
    "d_model against the widths it attends over) and startup checks patch_size against the built network",
    "train#dataloader#shuffle": "multi-GPU: must stay false, the DistributedSampler shuffles",
    "validate#dataset#cache_rate": "evaluation reads each case once: a cache would only hold every volume in memory",
    "metric_names": "the evaluation's metric ids that MetricsSaver writes, fixed by validate#additional_metrics",
}


def _parsed(*files: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_paths(*files))
    return parser


def _is_literal(value) -> bool:
    """A plain value (number, bool, string, list or map of them): no reference, expression, macro or component."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, dict):
        return "_target_" not in value and all(map(_is_literal, value.values()))
    return all(map(_is_literal, value)) if isinstance(value, list) else True


def _ids_a_run_reads(parser: ConfigParser) -> set[str]:
    """The ids ``initialize``, ``run`` and ``finalize`` reach through references and macros, transitively."""
    seen, todo = set(), ["initialize", "run", "finalize"]
    while todo:
        name = todo.pop()
        if name not in seen and name in parser:
            seen.add(name)
            todo += re.findall(r"[@%]([\w#]+)", json.dumps(parser[name]))
    return seen


def test_every_config_file_is_in_a_checked_stack():
    files = {os.path.relpath(p, CONFIGS) for p in glob.glob(os.path.join(CONFIGS, "**", "*.json"), recursive=True)}
    assert files - {"metadata.json"} == {f for stack in CONFIG_STACKS for f in stack}


@pytest.mark.parametrize("files", CONFIG_STACKS, ids=["+".join(f) for f in CONFIG_STACKS])
def test_every_literal_tunable_id_is_checked(files):
    """A top-level or ``#``-path literal id that the stack uses is in ``checked_config`` with a rule, or not tunable."""
    parser = ConfigParser()
    parser.read_config(config_paths(*files))
    checked = set(parser["checked_config"])
    assert checked <= set(RULES), sorted(checked - set(RULES))
    read = _ids_a_run_reads(parser)
    unchecked = []
    for name in files:
        for key, value in json.load(open(os.path.join(CONFIGS, name))).items():
            key = key.removeprefix("+")
            if key.startswith("checked_config") or not _is_literal(value) or key in checked:
                continue
            if any(key == k or (k.endswith("#") and key.startswith(k)) for k in NOT_TUNABLE):
                continue
            # an id that no run of this stack reads (e.g. demo's training ids under inference.json, the fingerprint's
            # provenance record) tunes nothing here
            parts = key.split("#")
            if any("#".join(parts[:i]) in read for i in range(1, len(parts) + 1)) or any(
                r.startswith(key + "#") for r in read
            ):
                unchecked.append(f"{name}: {key}")
    assert not unchecked, (
        f"literal ids without a rule: add them to checked_config and scripts.engine.config_check.RULES, "
        f"or to NOT_TUNABLE with the reason: {unchecked}"
    )


def test_a_new_literal_id_without_a_rule_is_found(tmp_path):
    """The coverage check fails on an id like the ones it passes (a control for the test above)."""
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"mixup_prob": 0.2, "train#random_transforms#1#prob": "@mixup_prob"}))
    parser = ConfigParser()
    parser.read_config([*config_paths("train.json"), str(overlay)])
    read = _ids_a_run_reads(parser)
    assert {"mixup_prob", "rotate_range#0", "train#dataloader"} <= read and "mixup_prob" not in parser["checked_config"]
    assert "optimizer" not in _ids_a_run_reads(_parsed("inference.json", "demo.json"))  # demo's, unread there
    with pytest.raises(ConfigValueError):  # and the values the new rules refuse are refused in startup
        check_config({"rotate_prob": 2.0})


def test_startup_is_one_id_that_every_initialize_runs_first():
    """Every run starts with the same ``startup`` steps (error handler, config check, seed, patch check)."""
    startups = []
    for files in CONFIG_STACKS:
        parser = ConfigParser()
        parser.read_config(config_paths(*files))
        assert parser["initialize"][0] == "@startup", files
        assert not [step for step in parser["initialize"][1:] if "check_config" in step or "set_determinism" in step]
        startups.append(parser["startup"])
    # train.json and inference.json are run alone, so each holds the list; their overlays extend it, never copy it
    assert all(s == startups[0] for s in startups)
    assert startups[0][0] == "$scripts.engine.errors.install_error_handler(@debug)"
    for name in glob.glob(os.path.join(CONFIGS, "**", "*.json"), recursive=True):
        if os.path.basename(name) not in ("train.json", "inference.json"):
            config = json.load(open(name))
            assert "startup" not in config and ("initialize" not in config or config["initialize"][0] == "@startup")


def test_rank_zero_handlers_are_named_and_write_every_file(single_process_group, monkeypatch, synthetic_study):
    """On rank > 0 the trainer gets only train#handlers (every rank's), and none of them writes a file."""
    from monai.handlers import CheckpointSaver, MetricsSaver, TensorBoardHandler

    from scripts.reports.curves import TrainingCurvesHandler

    parser = ConfigParser()
    parser.read_config(config_paths("train.json", "demo.json", "multi_gpu_train.json"))
    parser.update({"dataset_dir": synthetic_study, "cache_rate": 0.0, "num_workers": 0})
    every_rank = parser["train"]["handlers"]
    rank_zero = parser["train"]["handlers_rank_zero"]
    writes = ("save_dir", "log_dir", "output_dir", "summary_writer", "writers", "output_png", "filename")
    for handler in every_rank:
        assert not set(handler) & set(writes) and "@output_dir" not in json.dumps(handler), handler["_target_"]
    assert [h["_target_"] for h in rank_zero if set(h) & set(writes)]  # the key scan sees the writers
    for built_with_the_real_rank in ("train#sampler", "validate#sampler"):
        parser.get_parsed_content(built_with_the_real_rank)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *args: 1)  # then the trainer of a second process
    handlers = parser.get_parsed_content("train#trainer#train_handlers")
    writers = (CheckpointSaver, TensorBoardHandler, MetricsSaver, TrainingCurvesHandler)
    assert len(handlers) == len(every_rank) and not [h for h in handlers if isinstance(h, writers)]
    assert type(handlers[0]).__name__ == "ResumeTraining"  # every rank restores the state


@pytest.mark.parametrize(
    "variant, expected",
    [
        (None, 41_872_504),
        ("cotr_star.json", 27_934_840),
        ("cotr_dagger.json", 36_894_712),
        ("without_detrans.json", 32_555_512),
    ],
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


def test_metadata_value_ranges():
    """The input range is what the preprocessing makes of any HU value; the output (logits) range is float32's."""
    metadata = json.load(open(os.path.join(CONFIGS, "metadata.json")))
    image = metadata["network_data_format"]["inputs"]["image"]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    parser = ConfigParser()
    parser.read_config(config_paths("train.json"))
    normalise = parser.get_parsed_content("normalize_intensity")
    hu = torch.linspace(-3000.0, 3000.0, 6001)[None, None, None]
    normalised = normalise({"image": hu})["image"].as_tensor()
    assert image["value_range"] == pytest.approx([normalised.min().item(), normalised.max().item()], abs=1e-3)
    finfo = torch.finfo(getattr(torch, pred["dtype"]))
    assert pred["value_range"] == [finfo.min, finfo.max]


def _pep503(name: str) -> str:
    """A distribution name in its normalised form (``pytorch_ignite`` -> ``pytorch-ignite``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _modules_named_in(text: str) -> set[str]:
    """``scripts...`` modules a config or source text names (``$import scripts.x``, ``_target_``, expressions)."""
    modules = set()
    for dotted in re.findall(r"\bscripts(?:\.\w+)+", text):
        parts = dotted.split(".")
        while parts and not (
            os.path.isfile(os.path.join(BUNDLE_ROOT, *parts) + ".py")
            or os.path.isdir(os.path.join(BUNDLE_ROOT, *parts))
        ):
            parts.pop()  # drop attribute names after the module
        if parts:
            modules.add(".".join(parts))
    return modules


def _third_party_imports(module: str, seen: set[str]) -> set[str]:
    """Top-level third-party modules that ``module`` (a ``scripts`` module) and what it imports of ``scripts`` use."""
    if module in seen:
        return set()
    seen.add(module)
    path = os.path.join(BUNDLE_ROOT, *module.split("."))
    is_package = os.path.isdir(path)
    path = os.path.join(path, "__init__.py") if is_package else path + ".py"
    package = module if is_package else module.rpartition(".")[0]
    source = open(path).read()
    found = set(re.findall(r"optional_import\(\s*[\"'](\w+)", source))
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: from .x import y
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            names = [".".join(base + ([node.module] if node.module else []))]
            names += [f"{names[0]}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module]
        for name in names:
            if name.split(".")[0] == "scripts":
                for local in _modules_named_in(name):
                    found |= _third_party_imports(local, seen)
            elif name.split(".")[0] not in sys.stdlib_module_names | {"__future__"}:
                found.add(name.split(".")[0])
    return found


def test_every_imported_package_is_declared_in_metadata():
    """What the zoo installs from metadata.json (MONAI, torch, numpy and the required packages) is all that any config
    needs: the ``scripts`` modules the configs name, everything they import, and the MONAI networks of the overlays
    with the optional packages their modules import."""
    metadata = json.load(open(os.path.join(CONFIGS, "metadata.json")))
    # MONAI 1.6.1 reads optional_packages_version as a deprecated name and moves it over required_packages_version,
    # dropping what the latter held (e.g. in the metadata that ckpt_export writes): optional packages go in required
    assert "optional_packages_version" not in metadata
    declared = {"monai", "torch", "numpy"} | {_pep503(n) for n in metadata["required_packages_version"]}
    config_files = glob.glob(os.path.join(CONFIGS, "**", "*.json"), recursive=True)
    modules, seen, imported = set(), set(), set()
    for path in config_files:
        text = open(path).read()
        modules |= _modules_named_in(text)
        for name in re.findall(r'"_target_":\s*"(\w+)"', text):
            network = getattr(monai.networks.nets, name, None)
            if network is not None:
                source = inspect.getsource(sys.modules[network.__module__])
                imported |= set(re.findall(r"optional_import\(\s*[\"'](\w+)", source))
    assert (
        "scripts.networks" in modules and "scripts.engine.infer_folder" in modules
    )  # the scan sees the configs' modules
    for module in modules:
        imported |= _third_party_imports(module, seen)
    assert {"nibabel", "ignite", "pydicom"} <= imported and "einops" in imported  # and what they import
    distributions = importlib.metadata.packages_distributions()
    missing = {
        name: distributions.get(name, [name])
        for name in imported
        if not any(_pep503(d) in declared for d in distributions.get(name, [name]))
    }
    assert not missing, f"imported by the configs but not declared in configs/metadata.json: {missing}"


def test_training_refuses_a_bad_case_before_it_starts(synthetic_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(synthetic_study, study)
    datalist = json.load(open(study / "datalist.json"))
    broken = study / datalist["training"][-1]["label"]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated download
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            str(config_paths("train.json", "demo.json")),
            "--dataset_dir",
            str(study),
            "--ckpt_dir",
            str(tmp_path / "models"),
            "--output_dir",
            str(tmp_path / "eval"),
        ],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert str(broken) in result.stderr and "Epoch" not in result.stdout + result.stderr
    assert not (tmp_path / "models").exists()
