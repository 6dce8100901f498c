"""
Refusals read as ``error: <message>`` with exit status 2, bugs keep their traceback: the excepthook of
:mod:`scripts.engine.errors` on exception chains built by MONAI's config evaluation and ignite, and through the real
CLI.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import sys

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigExpression, ConfigParser
from monai.handlers import StatsHandler

from scripts.engine.checkpoint import CheckpointError
from scripts.engine.config_check import check_config
from scripts.engine.errors import (
    DEBUG_HINT,
    EXIT_USER_ERROR,
    ErrorHandler,
    find_user_error,
    install_error_handler,
    is_user_error,
)

from .conftest import CONFIGS, config_paths, run_bundle

INSTALL = "$scripts.engine.errors.install_error_handler(@debug)"


@pytest.fixture(autouse=True)
def _restore_hook():
    """Each test may install the handler; leave the test process as it was."""
    original = sys.excepthook
    yield
    install_error_handler(debug=True)  # restores the log record factory too
    sys.excepthook = original


def _raised(expression: str, **names) -> BaseException:
    """The exception MONAI raises when a config expression fails, as the excepthook receives it."""
    with pytest.raises(BaseException) as raised:
        ConfigExpression(expression, globals=names).evaluate()
    return raised.value


def _handle(error: BaseException, capsys) -> tuple[int | None, str, list]:
    """Run :class:`ErrorHandler` on ``error``: (exit status or None, stderr, calls of the previous hook)."""
    calls = []
    handler = ErrorHandler(previous=lambda *args: calls.append(args))
    try:
        handler(type(error), error, error.__traceback__)
        status = None
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err, calls


@pytest.fixture
def own_module(tmp_path):
    """A module of the ``scripts`` package (by name) with a deliberate refusal and two bugs."""
    path = tmp_path / "own.py"
    path.write_text(
        "def refuse():\n"
        "    raise ValueError(\n"
        "        'config id x must be positive'\n"
        "    )\n\n"
        "def crash():\n"
        "    return int('ten')\n\n"
        "def lookup():\n"
        "    return {}['trainer']\n"
    )
    spec = importlib.util.spec_from_file_location("scripts._own_for_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------------
# what counts as a user-facing error
# ---------------------------------------------------------------------------------------------------------------


def test_a_config_refusal_is_printed_alone_with_status_2(capsys):
    error = _raised("$check_config({'sw_overlap': 1.5, 'max_epochs': 'ten'})", check_config=check_config)
    assert type(error) is RuntimeError and "Failed to evaluate" in str(error)  # MONAI's wrapper
    status, err, calls = _handle(error, capsys)
    assert status == EXIT_USER_ERROR == 2 and not calls
    assert err.splitlines() == [
        "error: 2 invalid config value(s):",
        "  config id 'sw_overlap' must be a number in [0, 1), got 1.5 (float)",
        "  config id 'max_epochs' must be a positive integer, got 'ten' (str)",
        DEBUG_HINT,
    ]


def test_the_refusal_is_found_under_nested_wrappers(capsys):
    """A full disk while a transform writes: MONAI's "applying transform" wrappers inside "Failed to evaluate"."""
    from monai.transforms import Compose, Lambdad

    def write(_):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/case_seg.nii.gz")

    error = _raised("$save({'pred': 0})", save=Compose([Lambdad("pred", write)]))
    assert "applying transform" in str(error.__cause__)
    status, err, _ = _handle(error, capsys)
    assert status == 2
    assert err.splitlines()[0] == "error: [Errno 28] No space left on device: '/data/out/case_seg.nii.gz'"


def test_a_component_refusing_its_arguments(capsys):
    """MONAI's "Failed to instantiate" wrapper."""
    parser = ConfigParser(
        {
            "saver": {
                "_target_": "scripts.engine.checkpoint.ResumableCheckpointSaver",
                "save_dir": ".",
                "save_dict": {},
                "interval": -1,
            },
            "initialize": ["$@saver.attach"],
        }
    )
    with pytest.raises(RuntimeError) as raised:
        parser.get_parsed_content("initialize#0")
    status, err, _ = _handle(raised.value, capsys)
    assert status == 2
    assert err.splitlines()[0] == "error: interval (config id 'checkpoint_interval') must be an integer >= 0, got -1."


def test_an_error_in_an_engine_run_is_found_and_its_logged_traceback_dropped(capsys, caplog):
    """``run``: ignite fires EXCEPTION_RAISED, MONAI's StatsHandler logs the traceback and re-raises."""

    def process(engine, batch):
        raise CheckpointError("models/model.pt does not fit the configured network: ...")

    install_error_handler(debug=False)
    engine = Engine(process)
    stats = StatsHandler(iteration_log=False)  # logs to stdout through a logger of its own, not the root's
    stats.logger.addHandler(caplog.handler)
    try:
        stats.attach(engine)
        error = _raised("$engine.run([1])", engine=engine)
    finally:
        stats.logger.removeHandler(caplog.handler)
    status, err, _ = _handle(error, capsys)
    assert status == 2 and err.startswith("error: models/model.pt does not fit the configured network: ...\n")
    logged = [r for r in caplog.records if r.getMessage().startswith("Exception: models/model.pt")]
    assert logged and all(r.exc_info is None for r in logged)  # the message stays in the log, the traceback goes
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError("checkpoint models/model.pt not found."),
        FileExistsError("2 output file(s) already exist and overwrite is off"),
        PermissionError(errno.EACCES, "Permission denied", "/data/out"),
        IsADirectoryError("/data is a directory"),
        NotADirectoryError("/data/file.nii.gz is not a directory"),
        OSError(errno.ENOSPC, "No space left on device", "/data/out/case_seg.nii.gz"),
    ],
    ids=lambda e: type(e).__name__ + ("_ENOSPC" if getattr(e, "errno", None) == errno.ENOSPC else ""),
)
def test_path_and_storage_errors_are_user_facing_wherever_raised(error):
    assert is_user_error(error) and find_user_error(error) is error


def test_our_raise_is_user_facing_our_crash_is_a_bug(own_module, capsys):
    refusal = _raised("$f()", f=own_module.refuse)
    assert find_user_error(refusal) is refusal.__cause__
    for bug in (own_module.crash, own_module.lookup):  # failing inside our code, not a `raise` of ours
        status, err, calls = _handle(_raised("$f()", f=bug), capsys)
        assert status is None and err == "" and len(calls) == 1  # the full traceback, by Python's own hook
    assert not is_user_error(OSError(errno.EIO, "Input/output error"))
    assert not is_user_error(ValueError("from a library, not from us"))


def test_a_key_error_message_reads_without_quotes(capsys):
    status, err, _ = _handle(_raised("$check_config({'no_such_id': 1})", check_config=check_config), capsys)
    assert status == 2 and err.startswith("error: no check defined for config id(s) ['no_such_id']; add them")


def test_a_bug_while_handling_a_refusal_keeps_its_traceback(capsys):
    def broken():
        try:
            check_config({"sw_overlap": 1.5})
        except ValueError:
            return None.missing  # a bug in the error handling itself: never hidden behind the refusal

    status, err, calls = _handle(_raised("$f()", f=broken), capsys)
    assert status is None and err == "" and isinstance(calls[0][1].__cause__, AttributeError)


def test_other_exceptions_and_system_exit_are_left_alone(capsys):
    assert _handle(KeyboardInterrupt(), capsys)[2]  # to the previous hook
    # SystemExit (inference's finalize exits 1 when a case was skipped) is not wrapped by MONAI and never reaches
    # an excepthook: the interpreter exits with its code
    stop = _raised("$sys.exit(1)", sys=sys)
    assert type(stop) is SystemExit and stop.code == 1 and find_user_error(stop) is None


def test_each_torchrun_rank_names_itself(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    status, err, _ = _handle(_raised("$check_config({'sw_overlap': 1.5})", check_config=check_config), capsys)
    assert status == 2 and err.startswith("error (rank 1): 1 invalid config value(s):")


def test_the_message_survives_torch_distributed_wrapping_the_hook(tmp_path, capsys):
    """init_process_group (after the handler, in multi_gpu_train.json) wraps the excepthook and buffers stderr."""
    import torch.distributed as dist

    install_error_handler(debug=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/process_group", rank=0, world_size=1)
    try:
        assert not isinstance(sys.excepthook, ErrorHandler)  # torch's wrapper around it
        error = _raised("$check_config({'sw_overlap': 1.5})", check_config=check_config)
        with pytest.raises(SystemExit) as stop:
            sys.excepthook(type(error), error, error.__traceback__)
    finally:
        dist.destroy_process_group()
    assert stop.value.code == 2 and capsys.readouterr().err.startswith("error: 1 invalid config value(s):")


def test_install_and_debug(capsys, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)  # in-process workflows of other tests installed theirs
    original = sys.excepthook
    install_error_handler(False)
    install_error_handler("false")  # replaces the first one instead of wrapping it
    assert isinstance(sys.excepthook, ErrorHandler) and sys.excepthook.previous is original
    install_error_handler("true")  # --debug true arrives as a string
    assert sys.excepthook is original
    install_error_handler(True)
    assert sys.excepthook is original


# ---------------------------------------------------------------------------------------------------------------
# through the CLI: python -m monai.bundle run inference ... (fire lets the exception reach the excepthook)
# ---------------------------------------------------------------------------------------------------------------


def _errors_overlay(tmp_path) -> str:
    """configs/inference.json's own imports and initialize list with the handler installed first."""
    config = json.load(open(os.path.join(CONFIGS, "inference.json")))
    imports = [i for i in config["imports"] if i != "$import scripts.engine.errors"] + ["$import scripts.engine.errors"]
    initialize = [INSTALL] + [item for item in config["initialize"] if item != INSTALL]
    path = tmp_path / "errors.json"
    path.write_text(json.dumps({"imports": imports, "debug": config.get("debug", False), "initialize": initialize}))
    return str(path)


def _infer(tmp_path, *overrides: str):
    files = config_paths("inference.json", "demo.json") + [_errors_overlay(tmp_path)]
    return run_bundle(
        "run",
        "inference",
        "--config_file",
        str(files),
        "--meta_file",
        os.path.join(CONFIGS, "metadata.json"),
        "--output_dir",
        str(tmp_path / "out"),
        *overrides,
    )


def _assert_refused(result, *message: str) -> None:
    """Exit status 2, a short stderr without traceback that ends with the lines starting with ``message``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-6000:]
    assert "Traceback" not in result.stderr and len(lines) < 15, result.stderr
    block = lines[-1 - len(message) : -1]
    assert lines[-1] == DEBUG_HINT and all(line.startswith(m) for line, m in zip(block, message, strict=True)), lines


def _checkpoint(tmp_path, **overrides) -> str:
    parser = ConfigParser()
    parser.read_config(config_paths("inference.json", "demo.json"))
    for key, value in overrides.items():
        parser[key] = value
    path = str(tmp_path / "model.pt")
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


@pytest.mark.slow
def test_cli_config_refusal(tmp_path):
    _assert_refused(
        _infer(tmp_path, "--sw_overlap", "1.5"),
        "error: 1 invalid config value(s):",
        "  config id 'sw_overlap' must be a number in [0, 1), got 1.5 (float)",
    )


@pytest.mark.slow
def test_cli_config_refusal_with_debug_keeps_the_traceback(tmp_path):
    result = _infer(tmp_path, "--sw_overlap", "1.5", "--debug", "True")
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert "ConfigValueError: 1 invalid config value(s)" in result.stderr and DEBUG_HINT not in result.stderr


@pytest.mark.slow
def test_cli_missing_input_folder(tmp_path):
    missing = tmp_path / "no_such_folder"
    result = _infer(tmp_path, "--ckpt_path", _checkpoint(tmp_path), "--dataset_dir", str(missing))
    _assert_refused(result, f"error: input folder {missing} not found")


@pytest.mark.slow
def test_cli_checkpoint_that_does_not_fit(tmp_path):
    path = _checkpoint(tmp_path, num_classes=5)
    result = _infer(tmp_path, "--ckpt_path", path, "--dataset_dir", str(tmp_path))
    _assert_refused(
        result,
        f"error: {path} does not fit the configured network: the checkpoint predicts 5 classes but the network is "
        "configured for 14 (config id 'num_classes'): use the num_classes the model was trained with.",
    )
