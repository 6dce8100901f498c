"""
Checkpoints: atomic writes that survive a kill, safe loading, checkpoints saved through wrappers (DDP,
torch.compile, nested entries), clear errors for the wrong network.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from ignite.engine import Engine, Events

from scripts.engine.checkpoint import (
    AtomicCheckpointSaver,
    CheckpointError,
    CheckpointLoader,
    ResumableCheckpointSaver,
    ResumeTraining,
    check_checkpoint,
    check_resume,
    load_checkpoint,
    load_matching_weights,
    resolve_resume_path,
    save_atomic,
    unwrap_network_state,
)

from .conftest import BUNDLE_ROOT, CONFIGS, config_paths


def _engine() -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = 1
    return engine


def _network(**overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_paths("inference.json", "demo.json"))
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


# ---------------------------------------------------------------------------------------------------------------
# atomic writes, checked by killing the writer half-way
# ---------------------------------------------------------------------------------------------------------------

_KILLED_WRITE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver
from scripts.engine.checkpoint import AtomicCheckpointSaver

saver_class = {{"monai": CheckpointSaver, "ours": AtomicCheckpointSaver}}[{which!r}]
net = torch.nn.Linear(4, 2)
saver = saver_class(
    {folder!r}, {{"model": net}}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
)
engine = Engine(lambda e, b: None)
engine.state.metrics = {{"dice": 0.5}}
saver.metrics_completed(engine)  # first best model: model.pt written completely

def killed_while_writing(obj, f, *args, **kwargs):
    (open(f, "wb") if isinstance(f, (str, os.PathLike)) else f).write(b"PK partial")
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = killed_while_writing
with torch.no_grad():
    net.weight.add_(1.0)
engine.state.metrics = {{"dice": 0.9}}
saver.metrics_completed(engine)  # a better model: killed while it is written
"""


def _kill_while_replacing(folder, which: str) -> subprocess.CompletedProcess:
    script = _KILLED_WRITE.format(root=BUNDLE_ROOT, which=which, folder=str(folder))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_best_model_survives_a_kill_during_its_replacement(tmp_path):
    result = _kill_while_replacing(tmp_path, "ours")
    assert result.returncode == -9, result.stderr[-3000:]
    state = load_checkpoint(tmp_path / "model.pt")  # the previous best model, complete
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (2, 4)


def test_monai_checkpoint_saver_alone_loses_the_model(tmp_path):
    """Why we wrap it: MONAI's saver deletes model.pt, then writes in place; a kill leaves nothing usable."""
    result = _kill_while_replacing(tmp_path, "monai")
    assert result.returncode == -9, result.stderr[-3000:]
    path = tmp_path / "model.pt"
    if path.exists():
        with pytest.raises(CheckpointError, match="unreadable or (truncated|corrupt)"):
            load_checkpoint(path)


def test_save_atomic_leaves_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"w": torch.zeros(3)}, path)

    def failing(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:  # half a checkpoint reaches the disk, then the write fails
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"w": torch.ones(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(3))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)  # readable by the group, as MONAI wants


def test_configs_use_the_atomic_writers():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_paths("train.json", "demo.json"))
    handlers = parser["train"]["handlers"] + parser["train"]["handlers_rank_zero"]
    handlers += [parser["validate"]["best_model_saver"]]
    savers = [h["_target_"] for h in handlers if "CheckpointSaver" in h["_target_"]]
    assert savers == [
        "scripts.engine.checkpoint.AtomicCheckpointSaver",
        "scripts.engine.checkpoint.ResumableCheckpointSaver",
        "scripts.engine.checkpoint.AtomicCheckpointSaver",
    ]
    assert parser["validate"]["handlers"][2] == "@validate#best_model_saver"
    saver = parser.get_parsed_content("validate#best_model_saver")
    assert isinstance(saver, AtomicCheckpointSaver)
    assert type(saver._key_metric_checkpoint.save_handler).__name__ == "_AtomicDiskSaver"
    for files, key in (
        (["inference.json"], "postprocessing"),
        (["train.json", "evaluate.json"], "validate#postprocessing"),
    ):
        parser = ConfigParser()
        parser.read_config(config_paths(*files))
        writers = [t["writer"] for t in parser[key]["transforms"] if t["_target_"] == "SaveImaged"]
        assert writers == ["scripts.engine.infer_folder.AtomicNibabelWriter"], files


def test_handler_indices_the_configs_rely_on():
    """TrainingCurvesHandler flushes the shared TensorBoard writer; multi-GPU runs the rank-zero ones on rank 0 only."""
    import json

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_paths("train.json", "demo.json"))
    every_rank, rank_zero = parser["train"]["handlers"], parser["train"]["handlers_rank_zero"]
    assert parser["train"]["trainer"]["train_handlers"] == "$@train#handlers + @train#handlers_rank_zero"
    handlers = every_rank + rank_zero
    assert every_rank[0]["_target_"] == "scripts.engine.checkpoint.ResumeTraining"  # every rank restores the state
    assert [h["_target_"] for h in rank_zero] == [
        "scripts.engine.checkpoint.AtomicCheckpointSaver",
        "scripts.engine.checkpoint.ResumableCheckpointSaver",
        "StatsHandler",
        "TensorBoardStatsHandler",
        "ignite.handlers.ProgressBar",
        "scripts.reports.curves.TrainingCurvesHandler",
    ]
    # one SummaryWriter by id, so that a handler MONAI Label inserts into the list cannot shift what is flushed
    assert handlers[-1]["writers"] == ["@tensorboard_writer"]
    tensorboard = [
        h
        for h in handlers + parser["validate"]["handlers"]
        if isinstance(h, dict) and h["_target_"] == "TensorBoardStatsHandler"
    ]
    assert [h["summary_writer"] for h in tensorboard] == ["@tensorboard_writer"] * 2
    multi = json.load(open(os.path.join(CONFIGS, "multi_gpu_train.json")))
    assert multi["train#trainer#train_handlers"] == (
        "$@train#handlers + (@train#handlers_rank_zero if dist.get_rank() == 0 else [])"
    )


# ---------------------------------------------------------------------------------------------------------------
# safe loading
# ---------------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: a stand-in for any code a malicious checkpoint could run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious(path, marker) -> str:
    torch.save({"model": {"weight": _Payload(str(marker))}}, str(path))
    return str(path)


def test_the_payload_is_live(tmp_path):
    """Control: without weights_only the file runs its code, so the refusals below are meaningful."""
    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_malicious_pickle_is_refused_by_every_loading_path(tmp_path):
    from monai.bundle import ConfigParser

    marker = tmp_path / "pwned"
    path = _malicious(tmp_path / "model.pt", marker)
    network = _network()

    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused to load"):
        check_checkpoint(path, network)  # evaluation/inference "initialize"

    parser = ConfigParser()  # inference.json's own loader, as configured
    parser.read_config(config_paths("inference.json", "demo.json"))
    parser["ckpt_path"] = path
    parser["device"] = "$torch.device('cpu')"
    with pytest.raises(CheckpointError, match=re.escape(path)):
        parser.get_parsed_content("checkpointloader")(_engine())

    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    resume = ResumeTraining(path, "unused", {"model": network, "optimizer": optimizer}, map_location="cpu")
    with pytest.raises(CheckpointError, match="refused to load"):
        resume(_engine())
    assert not marker.exists()


def test_every_torch_load_in_scripts_and_configs_is_weights_only():
    calls = []
    for folder in ("scripts", "configs"):
        for root, _, files in os.walk(os.path.join(BUNDLE_ROOT, folder)):
            for name in files:
                if name.endswith((".py", ".json")):
                    text = open(os.path.join(root, name)).read()
                    for match in re.finditer(r"torch\.load\(", text):
                        call = text[match.start() : text.find(")", match.start()) + 1]
                        calls.append((name, call))
    assert calls, "expected our own loading code to call torch.load"
    assert all("weights_only=True" in call for _, call in calls), [c for c in calls if "weights_only=True" not in c[1]]


def test_configs_load_checkpoints_through_the_safe_loader_with_map_location():
    from monai.bundle import ConfigParser

    for files, key in (
        (["inference.json"], "checkpointloader"),
        (["train.json", "evaluate.json"], "validate#handlers#0"),
    ):
        parser = ConfigParser()
        parser.read_config(config_paths(*files))
        loader = parser[key]
        assert (
            loader["_target_"] == "scripts.engine.checkpoint.CheckpointLoader" and loader["map_location"] == "@device"
        ), files
    parser = ConfigParser()
    parser.read_config(config_paths("train.json"))
    assert parser["train"]["handlers"][0]["map_location"] == "@device"


def test_missing_and_truncated_checkpoints_name_the_file(tmp_path):
    missing = tmp_path / "models" / "model.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_checkpoint(missing)
    path = tmp_path / "model.pt"
    torch.save({"w": torch.randn(100, 100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": unreadable or truncated"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------------
# a checkpoint for another network
# ---------------------------------------------------------------------------------------------------------------


def _saved(tmp_path, network) -> str:
    path = str(tmp_path / "model.pt")
    torch.save(network.state_dict(), path)
    return path


def test_checkpoint_with_another_number_of_classes(tmp_path):
    path = _saved(tmp_path, _network(num_classes=5))
    network = _network()
    loader = CheckpointLoader(load_path=path, load_dict={"model": network}, map_location="cpu")
    with pytest.raises(CheckpointError) as raised:
        loader(_engine())
    message = str(raised.value)
    assert message.startswith(f"{path} does not fit the configured network")
    assert "predicts 5 classes but the network is configured for 14 (config id 'num_classes')" in message


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"network_def#blocks": [2, 2, 2]},
            "another network variant: 9 parameter(s) the network lacks (encoder.stages.0.1.",
        ),
        ({"network_def#num_levels": 0}, "another network variant: "),
        ({"network_def#d_model": 24, "network_def#channels": [16, 32, 24, 24]}, "have other shapes"),
    ],
    ids=["more_blocks", "without_detrans", "other_widths"],
)
def test_checkpoint_of_another_variant(tmp_path, overrides, expected):
    path = _saved(tmp_path, _network(**overrides))
    with pytest.raises(CheckpointError) as raised:
        check_checkpoint(path, _network())
    assert str(raised.value).startswith(f"{path} does not fit the configured network") and expected in str(raised.value)


def test_matching_checkpoint_loads(tmp_path):
    source = _network()
    path = _saved(tmp_path, source)
    network = _network()
    CheckpointLoader(load_path=path, load_dict={"model": network}, map_location="cpu")(_engine())
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), network.state_dict().values()))


def test_checkpoint_of_another_model_entirely(tmp_path):
    path = str(tmp_path / "model.pt")
    torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    with pytest.raises(CheckpointError) as raised:
        check_checkpoint(path, _network())
    message = str(raised.value)
    assert "it shares no parameter name with the configured CoTr (the checkpoint holds weight, bias;" in message
    assert "it is a checkpoint of another model" in message and "variant" not in message


# ---------------------------------------------------------------------------------------------------------------
# checkpoints saved through wrappers: DDP, torch.compile, nested entries
# ---------------------------------------------------------------------------------------------------------------


def _ddp(network: torch.nn.Module, folder) -> torch.nn.parallel.DistributedDataParallel:
    """``network`` in a real DistributedDataParallel (a one-process gloo group, closed again at once)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/process_group", rank=0, world_size=1)
    try:
        return torch.nn.parallel.DistributedDataParallel(network)
    finally:
        dist.destroy_process_group()


_DDP_LOG = "removed the 'module.' prefix of {n} keys (saved from DistributedDataParallel or DataParallel)"
_COMPILE_LOG = "removed the '_orig_mod.' prefix of {n} keys (saved from a torch.compile'd network)"
_ENTRY_LOG = "took the network state dict from its 'state_dict' entry"
_LIGHTNING_LOG = (
    "removed the 'model.' prefix of {n} keys (saved from a wrapper module's 'model' attribute, e.g. a Lightning module)"
)


@pytest.mark.parametrize(
    "wrap, steps",
    [
        (lambda net, tmp: _ddp(net, tmp).state_dict(), [_DDP_LOG]),
        (lambda net, tmp: torch.compile(net).state_dict(), [_COMPILE_LOG]),
        (lambda net, tmp: torch.compile(_ddp(net, tmp)).state_dict(), [_COMPILE_LOG, _DDP_LOG]),
        (lambda net, tmp: {"state_dict": net.state_dict(), "epoch": 3}, [_ENTRY_LOG]),
        (
            lambda net, tmp: {"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "epoch": 3},
            [_ENTRY_LOG, _LIGHTNING_LOG],
        ),
    ],
    ids=["ddp", "compiled", "compiled_ddp", "nested_state_dict", "lightning"],
)
def test_wrapped_checkpoint_loads_with_identical_weights(tmp_path, caplog, wrap, steps):
    source = _network()
    expected = source.state_dict()
    path = str(tmp_path / "model.pt")
    torch.save(wrap(source, tmp_path), path)
    network = _network()
    assert not all(torch.equal(network.state_dict()[k], v) for k, v in expected.items())  # fresh weights
    with caplog.at_level(logging.INFO, logger="scripts.engine.checkpoint"):
        check_checkpoint(path, network)  # the configs' initialize: accepted
        unwrapped = unwrap_network_state(load_checkpoint(path), network, path)
        CheckpointLoader(load_path=path, load_dict={"model": network}, map_location="cpu")(_engine())  # evaluator
    line = f"checkpoint {path}: " + "; ".join(step.format(n=len(expected)) for step in steps)
    assert [r.getMessage() for r in caplog.records if r.name == "scripts.engine.checkpoint"] == [line] * 3
    loaded = network.state_dict()
    assert list(unwrapped) == list(loaded) == list(expected)
    assert all(torch.equal(unwrapped[k], v) and torch.equal(loaded[k], v) for k, v in expected.items())


def test_wrapped_checkpoint_initialises_a_fine_tuning(tmp_path):
    source = _network()
    path = str(tmp_path / "model.pt")
    torch.save({"state_dict": _ddp(source, tmp_path).state_dict()}, path)
    network = _network()
    loaded, skipped = load_matching_weights(network, path)
    assert len(loaded) == len(source.state_dict()) and skipped == []
    assert all(torch.equal(network.state_dict()[k], v) for k, v in source.state_dict().items())


def test_wrapped_checkpoint_of_another_network_keeps_its_diagnosis(tmp_path):
    path = str(tmp_path / "model.pt")
    torch.save(_ddp(_network(num_classes=5), tmp_path).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"predicts 5 classes but the network is configured for 14"):
        check_checkpoint(path, _network())
    lightning = {f"model.{k}": v for k, v in _network(**{"network_def#blocks": [2, 2, 2]}).state_dict().items()}
    torch.save({"state_dict": lightning}, path)
    with pytest.raises(CheckpointError) as raised:  # not stripped: the names left are not the network's
        check_checkpoint(path, _network())
    assert "all its parameter names carry the prefix 'model.'" in str(raised.value)
    assert "another network variant: 9 parameter(s) the network lacks (encoder.stages.0.1." in str(raised.value)


def test_a_partial_prefix_is_not_removed(tmp_path, caplog):
    state = _network().state_dict()
    mixed = {(f"module.{k}" if i % 2 else k): v for i, (k, v) in enumerate(state.items())}
    path = str(tmp_path / "model.pt")
    torch.save(mixed, path)
    network = _network()
    with caplog.at_level(logging.INFO, logger="scripts.engine.checkpoint"):
        assert unwrap_network_state(load_checkpoint(path), network, path).keys() == mixed.keys()
        for load in (
            lambda: check_checkpoint(path, network),
            lambda: CheckpointLoader(load_path=path, load_dict={"model": network}, map_location="cpu")(_engine()),
        ):
            with pytest.raises(CheckpointError) as raised:
                load()
            message = str(raised.value)
            assert f"{len(state) // 2} of its {len(state)} parameter names carry the 'module.' prefix" in message
            assert "model.module.state_dict()" in message
    assert not [r for r in caplog.records if r.name == "scripts.engine.checkpoint"]


# ---------------------------------------------------------------------------------------------------------------
# resume options
# ---------------------------------------------------------------------------------------------------------------


def test_resume_option_values(tmp_path):
    latest = tmp_path / "checkpoint_latest.pt"
    for off in (False, None, "false", "False", ""):
        assert resolve_resume_path(off, str(latest)) is None
    with pytest.raises(FileNotFoundError, match=re.escape(f"cannot resume: checkpoint {latest} not found")):
        resolve_resume_path(True, str(latest))
    with pytest.raises(FileNotFoundError, match="elsewhere.pt"):
        resolve_resume_path(str(tmp_path / "elsewhere.pt"), str(latest))
    save_atomic({"w": torch.zeros(1)}, latest)
    assert resolve_resume_path("true", str(latest)) == str(latest) == resolve_resume_path(True, str(latest))
    assert resolve_resume_path(str(latest), "unused") == str(latest)
    with pytest.raises(TypeError, match="'resume'"):
        resolve_resume_path(3, str(latest))


def test_fresh_training_warns_before_replacing_a_resumable_checkpoint(tmp_path):
    latest = tmp_path / "checkpoint_latest.pt"
    assert check_resume(False, str(latest)) is None  # nothing there: no warning needed
    save_atomic({"w": torch.zeros(1)}, latest)
    with pytest.warns(UserWarning, match="pass --resume true"):
        check_resume(False, str(latest))


def test_resume_refuses_a_weights_only_file(tmp_path):
    network = _network()
    path = _saved(tmp_path, network)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    resume = ResumeTraining(True, path, {"model": network, "optimizer": optimizer}, map_location="cpu")
    with pytest.raises(CheckpointError, match="is not a resumable training checkpoint: it lacks"):
        resume(_engine())


def test_best_model_tracking_is_plain_data(tmp_path):
    saver = AtomicCheckpointSaver(
        str(tmp_path),
        {"model": torch.nn.Linear(2, 2)},
        save_key_metric=True,
        key_metric_name="dice",
        key_metric_filename="model.pt",
    )
    engine = _engine()
    engine.state.metrics = {"dice": 0.25}
    saver.metrics_completed(engine)
    save_atomic({"best": saver.state_dict()}, tmp_path / "state.pt")
    state = load_checkpoint(tmp_path / "state.pt")["best"]  # weights_only=True accepts it
    other = AtomicCheckpointSaver(
        str(tmp_path),
        {"model": torch.nn.Linear(2, 2)},
        save_key_metric=True,
        key_metric_name="dice",
        key_metric_filename="model.pt",
    )
    other.load_state_dict(state)
    engine.state.metrics = {"dice": 0.2}  # worse than the restored best: model.pt is kept
    before = os.stat(tmp_path / "model.pt").st_mtime_ns
    other.metrics_completed(engine)
    assert os.stat(tmp_path / "model.pt").st_mtime_ns == before


def _tiny_training(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=10, power=0.9)

    def step(engine, batch):
        optimizer.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    trainer = Engine(step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: scheduler.step())  # as LrScheduleHandler
    return trainer, {"model": net, "optimizer": optimizer, "lr_scheduler": scheduler}


def test_resumable_checkpoint_every_interval_and_at_the_end(tmp_path):
    trainer, objects = _tiny_training()
    saver = ResumableCheckpointSaver(str(tmp_path), objects, interval=2)
    saver.attach(trainer)
    path = tmp_path / "checkpoint_latest.pt"
    seen = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: seen.append(load_checkpoint(path)["trainer"]["iteration"] if path.exists() else None),
    )
    data = [torch.randn(4, 3) for _ in range(3)]
    trainer.run(data, max_epochs=5)
    assert seen == [None, 6, 6, 12, 12]
    saved = load_checkpoint(path)
    assert saved["trainer"]["iteration"] == 15 and saved["lr_scheduler"]["last_epoch"] == 5

    resumed, fresh = _tiny_training(seed=1)
    ResumeTraining(True, str(path), fresh, map_location="cpu").attach(resumed)
    epochs, buffers = [], []
    resumed.add_event_handler(
        Events.STARTED,
        lambda e: buffers.append(
            [s["momentum_buffer"].clone() for s in fresh["optimizer"].state_dict()["state"].values()]
        ),
    )
    resumed.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    with pytest.warns(UserWarning, match="saved by a training with max_epochs=5, this one runs to 7"):
        resumed.run(data, max_epochs=7)
    expected = [s["momentum_buffer"] for s in saved["optimizer"]["state"].values()]
    assert len(buffers[0]) == 2 and all(torch.equal(a, b) for a, b in zip(buffers[0], expected))
    assert epochs == [6, 7] and fresh["lr_scheduler"].last_epoch == 7
    with pytest.raises(ValueError, match="reserved"):
        ResumableCheckpointSaver(str(tmp_path), {"trainer": fresh["model"]})
