"""
Checkpoints that survive interruption and load safely.

- :func:`save_atomic` writes a checkpoint to a temporary file in the destination folder and renames it into
  place, so an interrupted write never leaves a truncated ``.pt`` and never destroys the previous one.
- :func:`load_checkpoint` reads with ``torch.load(..., weights_only=True)`` (a file can hold tensors and plain
  containers only; it never runs code) and turns the errors into messages naming the file.
- :func:`unwrap_network_state` finds the network's state dict in a checkpoint saved through the usual wrappers:
  nested in a ``"state_dict"``/``"model"``/``"network"`` entry, keys prefixed by ``module.`` (DDP,
  DataParallel), ``_orig_mod.`` (``torch.compile``) or a Lightning module's ``model.``/``net.``.
- :func:`check_network_state` compares a state dict with a network before loading and says in words what is
  wrong: another number of classes, another network variant, another width, another model.
- :class:`AtomicCheckpointSaver` is MONAI's ``CheckpointSaver`` with atomic writes. MONAI's own saver writes in
  place (``DiskSaver(atomic=False)``) and, for a fixed file name such as ``model.pt``, deletes the old file
  before writing the new one: a kill in between loses the model.
- :class:`CheckpointLoader` is MONAI's ``CheckpointLoader`` with the checks above.
- :class:`ResumableCheckpointSaver` saves everything needed to continue a training (network, optimizer, LR
  scheduler, trainer epoch/iteration, AMP scaler, best-model tracking) to one file every ``interval`` epochs
  and at the end; :class:`ResumeTraining` restores it when the trainer starts.

Every checkpoint written here is a dict of plain state dicts (tensors, numbers, strings, lists, dicts), the
only thing ``weights_only=True`` accepts.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Collection, Mapping
from typing import Any

import torch
import torch.nn as nn
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver
from monai.utils import min_version, optional_import
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from scripts.engine.atomic import atomic_output

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")
Checkpoint, _ = optional_import("ignite.handlers", "0.4.11", min_version, "Checkpoint")
DiskSaver, _ = optional_import("ignite.handlers", "0.4.11", min_version, "DiskSaver")

__all__ = [
    "CheckpointError",
    "RESUMABLE_FILENAME",
    "save_atomic",
    "load_checkpoint",
    "WRAPPER_PREFIXES",
    "STATE_ENTRIES",
    "unwrap_network_state",
    "check_network_state",
    "check_checkpoint",
    "resolve_resume_path",
    "check_resume",
    "load_matching_weights",
    "AtomicCheckpointSaver",
    "CheckpointLoader",
    "ResumableCheckpointSaver",
    "ResumeTraining",
]

logger = logging.getLogger(__name__)

#: file name of the resumable training state in ``ckpt_dir`` (config id ``resume_path``)
RESUMABLE_FILENAME = "checkpoint_latest.pt"
_MAX_LISTED = 5
# what torch.load raises for a truncated or corrupt file
_READ_ERRORS = (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError)

#: prefix that a wrapper adds to every key of the state dict it saves -> where the checkpoint comes from
WRAPPER_PREFIXES: dict[str, str] = {
    "module.": "saved from DistributedDataParallel or DataParallel",
    "_orig_mod.": "saved from a torch.compile'd network",
    "model.": "saved from a wrapper module's 'model' attribute, e.g. a Lightning module",
    "net.": "saved from a wrapper module's 'net' attribute, e.g. a Lightning module",
}
# attribute names any model may use: removed only when the names left are exactly the network's
_GENERIC_PREFIXES = ("model.", "net.")
#: entries of a checkpoint dict that hold the network's state dict (ignite/MONAI savers, Lightning, others)
STATE_ENTRIES = ("state_dict", "model", "network")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unreadable, unsafe, or made for another network."""


def _unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else obj


def _rank() -> int:
    return (
        torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    )


def save_atomic(obj: Any, path: str | os.PathLike) -> str:
    """
    ``torch.save(obj, path)`` atomically: write a temporary file in the same folder, flush it to disk, then
    ``os.replace`` it onto ``path``. Readers see the old file or the new one, never a partial one; a kill
    during the write leaves at most a hidden ``.<name>.*.tmp`` file next to an intact old checkpoint.

    Returns:
        the absolute path written.
    """
    path = os.path.abspath(os.fspath(path))
    with atomic_output(path) as temporary:
        torch.save(obj, temporary)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """
    Load a checkpoint with ``torch.load(path, map_location=map_location, weights_only=True)``.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        CheckpointError: the file is truncated or corrupt, or holds Python objects other than tensors and plain
            containers (refused: unpickling arbitrary objects can run code).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:  # torch reports every unpickling failure as "weights only load failed"
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "weights_only" not in ln]
            raise CheckpointError(
                f"{path}: unreadable or corrupt checkpoint ({lines[-1] if lines else type(e).__name__})."
            ) from None
        raise CheckpointError(
            f"{path}: refused to load: it holds the Python object {found.group(1)}, not only tensors and plain "
            "containers, and unpickling objects can run code (checkpoints are read with "
            "torch.load(weights_only=True)). Only load files you trust; save checkpoints as plain state dicts."
        ) from None
    except _READ_ERRORS as e:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({type(e).__name__}: {e}).") from None


def _listed(names: list[str]) -> str:
    more = len(names) - _MAX_LISTED
    return ", ".join(names[:_MAX_LISTED]) + (f" (and {more} more)" if more > 0 else "")


def _is_tensor_dict(state: Any) -> bool:
    return isinstance(state, Mapping) and len(state) > 0 and all(isinstance(v, torch.Tensor) for v in state.values())


def _wrapper_prefix(names: Collection[str], expected: Collection[str]) -> str | None:
    """The prefix of :data:`WRAPPER_PREFIXES` that every name carries and that is safe to remove, or None."""
    for prefix in WRAPPER_PREFIXES:
        if not all(name.startswith(prefix) for name in names) or any(name.startswith(prefix) for name in expected):
            continue  # a partial prefix, or the network's own names start so: not a wrapper's
        if prefix in _GENERIC_PREFIXES and {name[len(prefix) :] for name in names} != set(expected):
            continue
        return prefix
    return None


def _without_prefix(state: Mapping, prefix: str) -> OrderedDict:
    """A copy of ``state`` without ``prefix``, keeping the per-module versions ``load_state_dict`` reads."""
    stripped = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        stripped._metadata = OrderedDict(metadata)  # type: ignore[attr-defined]  # renamed in place below
    consume_prefix_in_state_dict_if_present(stripped, prefix)
    return stripped


def unwrap_network_state(state: Any, network: nn.Module, path: str = "checkpoint", key: str = "model") -> Any:
    """
    The state dict of ``network`` inside ``state`` as saved through the usual wrappers, logging (INFO) what was
    unwrapped: a checkpoint dict holding it under ``key`` or else one of :data:`STATE_ENTRIES` (nested entries
    are followed), then prefixes of :data:`WRAPPER_PREFIXES` carried by every key (``module._orig_mod.`` from a
    compiled DDP network: both). ``model.``/``net.`` are removed only when the names left are exactly the
    network's; a prefix that only some keys carry is never removed. What does not unwrap is returned as it is,
    for :func:`check_network_state` to explain.

    Args:
        state: what :func:`load_checkpoint` returned, or its entry for the network.
        network: the configured network (DDP/DataParallel wrappers are looked through).
        path: the checkpoint file, for the log.
        key: entry of the network in a checkpoint dict (config ``load_dict`` key).
    """
    expected = set(_unwrap(network).state_dict())
    steps = []
    while isinstance(state, Mapping) and not _is_tensor_dict(state):
        entry = next((k for k in dict.fromkeys((key, *STATE_ENTRIES)) if isinstance(state.get(k), Mapping)), None)
        if entry is None:
            break
        state = state[entry]
        if entry != key:  # under ``key`` is where the configs' own checkpoints keep it: nothing to report
            steps.append(f"took the network state dict from its '{entry}' entry")
    while _is_tensor_dict(state) and set(state) != expected:
        prefix = _wrapper_prefix(list(state), expected)
        if prefix is None:
            break
        state = _without_prefix(state, prefix)
        steps.append(f"removed the '{prefix}' prefix of {len(state)} keys ({WRAPPER_PREFIXES[prefix]})")
    if steps:
        logger.info(f"checkpoint {path}: " + "; ".join(steps))
    return state


def _common_prefix(names: list[str]) -> str:
    """The first dotted component that every name starts with (``"model."``), or ``""``."""
    first = names[0].split(".", 1)[0] + "." if "." in names[0] else ""
    return first if first and all(name.startswith(first) for name in names) else ""


def _names_problem(names: list[str], expected: list[str], network: nn.Module) -> str:
    """Why the parameter names of a checkpoint differ from the network's, with the advice that fits the cause."""
    wanted = set(expected)
    for prefix, origin in WRAPPER_PREFIXES.items():
        carried = [name for name in names if name.startswith(prefix)]
        if 0 < len(carried) < len(names) and any(name[len(prefix) :] in wanted for name in carried):
            return (
                f"{len(carried)} of its {len(names)} parameter names carry the '{prefix}' prefix ({origin}) and the "
                "others do not: such a mix is not unwrapped automatically. Save the state dict of the unwrapped "
                "network (e.g. model.module.state_dict() for DistributedDataParallel)"
            )
    note = ""
    common = _common_prefix(names)
    if common and not wanted.intersection(names) and wanted.intersection(n[len(common) :] for n in names):
        names = [name[len(common) :] for name in names]
        note = f"all its parameter names carry the prefix '{common}' (a wrapper module's attribute) and, without it, "
    if not wanted.intersection(names):
        return (
            f"it shares no parameter name with the configured {type(_unwrap(network)).__name__} (the checkpoint holds "
            f"{_listed(names)}; the network needs {_listed(expected)}): it is a checkpoint of another model. Check "
            "--ckpt_path, or run with the network_def the model was trained with (e.g. configs/baselines/...)"
        )
    present = set(names)
    missing = [k for k in expected if k not in present]
    unexpected = [k for k in names if k not in wanted]
    return (
        note
        + "the checkpoint is for another network variant: "
        + (f"{len(missing)} parameter(s) the network needs are missing ({_listed(missing)})" if missing else "")
        + ("; " if missing and unexpected else "")
        + (f"{len(unexpected)} parameter(s) the network lacks ({_listed(unexpected)})" if unexpected else "")
        + ". Use the same network_def overlay (configs/variants/...) as for training"
    )


def check_network_state(network: nn.Module, state: Any, path: str = "checkpoint", strict: bool = True) -> None:
    """
    Check that ``state`` is a state dict ``network`` can load, before loading it, and explain a mismatch.

    Args:
        network: the configured network (DDP/DataParallel wrappers are looked through).
        state: the checkpoint's state dict for it.
        path: the checkpoint file, for the message.
        strict: also refuse missing and unexpected parameters (as ``load_state_dict(strict=True)``).

    Raises:
        CheckpointError: naming the file and, in words, the mismatch: another number of output classes
            (config id ``num_classes``), another network variant (missing/unexpected parameters: blocks,
            DeTrans levels, ...), other parameter shapes (widths), another model (no parameter name in
            common), or wrapped and unwrapped names mixed.
    """
    expected = _unwrap(network).state_dict()
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(state)[:_MAX_LISTED] if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"{path}: not a network state dict (it holds {keys}).")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    heads = [k for k in shapes if "head" in k and state[k].shape[1:] == expected[k].shape[1:]]
    if heads and len(heads) == len(shapes):
        found = {int(state[k].shape[0]) for k in heads}
        wanted = {int(expected[k].shape[0]) for k in heads}
        problems.append(
            f"the checkpoint predicts {'/'.join(map(str, sorted(found)))} classes but the network is configured for "
            f"{'/'.join(map(str, sorted(wanted)))} (config id 'num_classes'): use the num_classes the model was "
            "trained with"
        )
    elif shapes:
        details = [f"{k}: checkpoint {tuple(state[k].shape)}, network {tuple(expected[k].shape)}" for k in shapes]
        problems.append(
            f"{len(shapes)} parameter(s) have other shapes ({_listed(details)}): the network_def (channels, d_model, "
            "num_heads, num_points, num_classes, ...) differs from the one the checkpoint was trained with"
        )
    if strict and (missing or unexpected):
        problems.append(_names_problem(list(state), list(expected), network))
    if problems:
        raise CheckpointError(f"{path} does not fit the configured network: " + "; ".join(problems) + ".")


def check_checkpoint(path: str, network: nn.Module, map_location: Any = "cpu", key: str = "model") -> None:
    """
    Load ``path`` safely and check it fits ``network`` (:func:`check_network_state`), e.g. in ``initialize``
    so that a missing, unsafe or mismatched checkpoint is reported before any data is read.

    Args:
        path: a network state dict (``model.pt``), possibly saved through a wrapper (:func:`unwrap_network_state`),
            or a checkpoint dict holding one under ``key``.
        network: the configured network.
        map_location: ``torch.load``'s ``map_location``.
        key: entry of the network in a checkpoint dict (config ``load_dict`` key).
    """
    check_network_state(network, unwrap_network_state(load_checkpoint(path, map_location), network, path, key), path)


def resolve_resume_path(resume: bool | str | None, checkpoint_path: str) -> str | None:
    """
    The checkpoint a training should resume from, or None to start from scratch.

    Args:
        resume: config id ``resume``: False (or ``"false"``, None, ``""``) to start over; True (or ``"true"``) to
            continue from ``checkpoint_path``; any other string is the path of a resumable checkpoint.
        checkpoint_path: config id ``resume_path``, default ``<ckpt_dir>/checkpoint_latest.pt``.

    Raises:
        FileNotFoundError: resuming was asked for and the checkpoint does not exist.
        TypeError: ``resume`` is neither a boolean nor a path.
    """
    if isinstance(resume, str) and resume.strip().lower() in ("", "false"):
        resume = False
    elif isinstance(resume, str) and resume.strip().lower() == "true":
        resume = True
    if resume is None or resume is False:
        return None
    if resume is True:
        path = checkpoint_path
    elif isinstance(resume, (str, os.PathLike)):
        path = os.fspath(resume)
    else:
        raise TypeError(f"config id 'resume' must be True, False or a checkpoint path, got {resume!r}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"cannot resume: checkpoint {path} not found (config ids 'resume' and 'resume_path'). Training writes it "
            f"every 'checkpoint_interval' epochs as <ckpt_dir>/{RESUMABLE_FILENAME}."
        )
    return os.path.abspath(path)


def check_resume(resume: bool | str | None, checkpoint_path: str) -> str | None:
    """
    :func:`resolve_resume_path`, run in ``initialize`` so that a missing checkpoint is reported before any data
    is loaded; also warns when a fresh training is about to replace an existing resumable checkpoint.
    """
    path = resolve_resume_path(resume, checkpoint_path)
    if path is None and os.path.isfile(checkpoint_path):
        warnings.warn(
            f"{checkpoint_path} exists and this training starts from scratch: it will be replaced after the first "
            "checkpoint interval. To continue that training instead, pass --resume true.",
            stacklevel=2,
        )
    elif path is not None:
        logger.info(f"training will resume from {path}")
    return path


def load_matching_weights(
    network: nn.Module, path: str | None, map_location: Any = "cpu", key: str = "model"
) -> tuple[list[str], list[str]]:
    """
    Initialise ``network`` for fine-tuning from a checkpoint trained on another label set: copy every tensor
    whose name and shape match, keep the network's own initialisation for the rest (typically the output heads),
    and log what was skipped. Nothing is loaded when ``path`` is empty (config id ``pretrained``).

    Args:
        network: the network to initialise (a DDP wrapper is looked through).
        path: a plain state dict, or a dict holding it under ``key``, read with ``weights_only=True`` and unwrapped
            with :func:`unwrap_network_state`.
        map_location: device for the loaded tensors.
        key: where the state dict sits in a checkpoint dict.

    Returns:
        the names loaded and the names skipped.

    Raises:
        CheckpointError: the checkpoint shares no tensor with the network (most likely another architecture).
    """
    if not path:
        return [], []
    state = unwrap_network_state(load_checkpoint(path, map_location), network, path, key)
    own = _unwrap(network).state_dict()
    loaded = [name for name, value in state.items() if name in own and own[name].shape == value.shape]
    skipped = sorted(set(own) - set(loaded))
    if not loaded:
        raise CheckpointError(f"{path}: no tensor matches the network by name and shape; is it a CoTr checkpoint?")
    with torch.no_grad():
        for name in loaded:
            own[name].copy_(state[name])
    logger.info(f"pretrained {path}: loaded {len(loaded)} tensors, re-initialised {len(skipped)}: {_listed(skipped)}")
    return loaded, skipped


class _AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` writing with :func:`save_atomic`, optionally always under one fixed file name."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def _save_func(self, checkpoint: Mapping, path: Any, func: Any) -> None:
        save_atomic(checkpoint, path)

    def remove(self, filename: str) -> None:
        # a fixed-name file is replaced atomically by the next save: deleting it first would open a window in
        # which a kill leaves no model at all
        if self.filename is not None:
            return
        path = os.path.join(self.dirname, filename)
        if _rank() == self.save_on_rank and os.path.exists(path):
            os.remove(path)


class AtomicCheckpointSaver(_MonaiCheckpointSaver):
    """
    MONAI's ``CheckpointSaver`` (same arguments, same files) with atomic writes: a checkpoint is written to a
    temporary file and renamed into place, and a fixed-name checkpoint (``model.pt``, ``model_final.pt``) is
    never deleted before its replacement is complete.

    ``state_dict()``/``load_state_dict()`` carry the best-metric tracking, so that a resumed training only
    replaces ``model.pt`` with a better model.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        fixed = {
            "_final_checkpoint": self._final_filename,
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": None,
        }
        for attribute, filename in fixed.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, filename)

    def state_dict(self) -> dict:
        """The best-metric tracking list (empty without ``save_key_metric``)."""
        if self._key_metric_checkpoint is None:
            return {}
        state = self._key_metric_checkpoint.state_dict()  # {"_saved": [(priority, filename), ...]}
        return {key: [(float(p), str(f)) for p, f in items] for key, items in state.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self._key_metric_checkpoint is not None and state_dict:
            self._key_metric_checkpoint.load_state_dict(state_dict)


class CheckpointLoader(_MonaiCheckpointLoader):
    """
    MONAI's ``CheckpointLoader`` (same arguments) that explains what is wrong: a missing file, an unreadable or
    unsafe one (``weights_only=True`` refuses arbitrary pickles), a missing entry, or a network mismatch
    (:func:`check_network_state`), each message naming the file. Loads a network from a plain state dict
    (``model.pt``), from a resumable checkpoint (its ``"model"`` entry), or from one saved through a wrapper
    (:func:`unwrap_network_state`: DDP, ``torch.compile``, nested ``"state_dict"`` entries, ...).
    """

    def __call__(self, engine: Engine) -> None:
        if not self.strict_shape:  # MONAI's partial loading for transfer learning, unchanged
            return super().__call__(engine)
        checkpoint = load_checkpoint(self.load_path, self.map_location)
        load_dict = dict(self.load_dict)
        first = next(iter(load_dict))
        if len(load_dict) == 1 and (not isinstance(checkpoint, Mapping) or first not in checkpoint):
            checkpoint = {first: checkpoint}  # the file is directly the state dict of the one object
        missing = [k for k in load_dict if k not in checkpoint]
        if missing:
            raise CheckpointError(f"{self.load_path}: has no {missing} entry (it holds {list(checkpoint)}).")
        checkpoint = dict(checkpoint)
        for key, obj in load_dict.items():
            if isinstance(obj, nn.Module):
                checkpoint[key] = unwrap_network_state(checkpoint[key], obj, self.load_path, key)
                check_network_state(obj, checkpoint[key], self.load_path, self.strict)
        prior_max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=load_dict, checkpoint=checkpoint, strict=self.strict)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"{self.load_path}: its epoch count ({engine.state.epoch}) is larger than max_epochs "
                f"({prior_max_epochs}); raise --max_epochs to train further."
            )
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"Restored all variables from {self.load_path}")


_RESERVED = ("trainer", "scaler", "validator")


def _training_state(engine: Engine, save_dict: Mapping[str, Any], validator: Engine | None) -> dict[str, Any]:
    state = {key: _unwrap(obj).state_dict() for key, obj in save_dict.items()}
    state["trainer"] = dict(engine.state_dict())
    scaler = getattr(engine, "scaler", None)
    if getattr(engine, "amp", False) and scaler is not None:
        state["scaler"] = scaler.state_dict()
    if validator is not None:
        state["validator"] = {
            "best_metric": float(getattr(validator.state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(validator.state, "best_metric_epoch", -1)),
        }
    return state


class ResumableCheckpointSaver:
    """
    Saves the full training state to ``save_dir/filename`` (atomically, replacing the previous one) every
    ``interval`` epochs and when training completes: the ``state_dict()`` of every object in ``save_dict``
    (network unwrapped from DDP), the trainer's epoch and iteration (``"trainer"``), under AMP the grad scaler
    (``"scaler"``) and the validator's best metric and its epoch (``"validator"``). :class:`ResumeTraining`
    continues from it.

    Attach it on rank 0 only (``configs/multi_gpu_train.json`` does); it also refuses to write on other ranks.

    Args:
        save_dir: folder of the checkpoint (config id ``ckpt_dir``).
        save_dict: name -> object with ``state_dict()``; name the network ``"model"`` so that evaluation and
            inference can load the file like ``model.pt``.
        interval: save every this many epochs (config id ``checkpoint_interval``); 0 saves only at the end.
        filename: file name, default ``checkpoint_latest.pt``.
        validator: the evaluator run during training, whose best metric is kept.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        interval: int = 1,
        filename: str = RESUMABLE_FILENAME,
        validator: Engine | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            raise ValueError(f"interval (config id 'checkpoint_interval') must be an integer >= 0, got {interval!r}.")
        for key, obj in save_dict.items():
            if not callable(getattr(obj, "state_dict", None)):
                raise ValueError(f"save_dict['{key}'] has no state_dict(): {type(obj).__name__}.")
            if key in _RESERVED:
                raise ValueError(f"save_dict key '{key}' is reserved: the trainer, AMP scaler and validator are added.")
        self.path = os.path.join(save_dir, filename)
        self.save_dict = dict(save_dict)
        self.interval = interval
        self.validator = validator
        self._name = name
        self.logger = logging.getLogger(name)
        self._saved_iteration: int | None = None

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if _rank() != 0 or engine.state.iteration == self._saved_iteration:
            return
        save_atomic(_training_state(engine, self.save_dict, self.validator), self.path)
        self._saved_iteration = engine.state.iteration
        self.logger.info(
            f"Saved resumable checkpoint {self.path} (epoch {engine.state.epoch}, iteration {engine.state.iteration})"
        )


class ResumeTraining:
    """
    When the trainer starts, restores a checkpoint written by :class:`ResumableCheckpointSaver`: the objects in
    ``load_dict`` (network, optimizer, LR scheduler, ...), the trainer's epoch and iteration, and the AMP scaler,
    so that training continues after the saved epoch instead of starting over. ``max_epochs`` stays the
    configured one (raise it to train longer). Does nothing when ``resume`` is False.

    Args:
        resume: config id ``resume`` (see :func:`resolve_resume_path`).
        checkpoint_path: config id ``resume_path``, used when ``resume`` is True.
        load_dict: name -> object with ``load_state_dict()``, the same names as the saver's ``save_dict``.
        map_location: ``torch.load``'s ``map_location``; give the training device.
        validator: the evaluator run during training; its best metric and epoch are restored.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        resume: bool | str | None,
        checkpoint_path: str,
        load_dict: Mapping[str, Any],
        map_location: Any = None,
        validator: Engine | None = None,
        name: str | None = None,
    ) -> None:
        self.load_path = resolve_resume_path(resume, checkpoint_path)
        self.load_dict = dict(load_dict)
        self.map_location = map_location
        self.validator = validator
        self._name = name
        self.logger = logging.getLogger(name)

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        if self.load_path is not None:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        checkpoint = load_checkpoint(self.load_path, self.map_location)
        to_load = {**self.load_dict, "trainer": engine}
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            if isinstance(checkpoint, Mapping) and "scaler" in checkpoint:
                to_load["scaler"] = scaler
            else:
                warnings.warn(f"{self.load_path} has no AMP scaler state (saved without AMP); starting a fresh scaler.")
        missing = [k for k in to_load if not isinstance(checkpoint, Mapping) or k not in checkpoint]
        if missing:
            held = list(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise CheckpointError(
                f"{self.load_path} is not a resumable training checkpoint: it lacks {missing} (it holds {held}). "
                f"Weights-only files such as model.pt cannot resume a training; use <ckpt_dir>/{RESUMABLE_FILENAME}."
            )
        for key, obj in to_load.items():
            if isinstance(obj, nn.Module):
                check_network_state(obj, checkpoint[key], self.load_path)
        prior_max_epochs = engine.state.max_epochs
        saved_max_epochs = checkpoint["trainer"].get("max_epochs")
        Checkpoint.load_objects(to_load=to_load, checkpoint=dict(checkpoint), strict=True)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"{self.load_path} was saved at epoch {engine.state.epoch}, past max_epochs ({prior_max_epochs}): "
                "raise --max_epochs to train further."
            )
        engine.state.max_epochs = prior_max_epochs
        if saved_max_epochs is not None and saved_max_epochs != prior_max_epochs:
            warnings.warn(
                f"{self.load_path} was saved by a training with max_epochs={saved_max_epochs}, this one runs to "
                f"{prior_max_epochs}: the optimizer and LR scheduler continue their saved state (the LR schedule "
                "keeps the original length)."
            )
        if self.validator is not None and isinstance(checkpoint.get("validator"), Mapping):
            self.validator.state.best_metric = checkpoint["validator"].get("best_metric", -1)
            self.validator.state.best_metric_epoch = checkpoint["validator"].get("best_metric_epoch", -1)
        self.logger.info(
            f"Resumed training from {self.load_path}: epoch {engine.state.epoch} of {engine.state.max_epochs} "
            f"done, iteration {engine.state.iteration}"
        )
