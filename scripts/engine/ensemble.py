"""
Fold ensembles: k networks of one architecture (e.g. the folds of ``--split kfold``), each loaded from its own
checkpoint (config id ``ckpt_files``), predicting every sliding window together by averaging their softmax
probabilities, as nnU-Net ensembles its folds.

:class:`SoftmaxEnsemble` returns ``log(mean_k softmax(logits_k))`` per window, which the sliding-window inferers
blend and turn into probabilities with a softmax like any logits: for one window ``softmax(log(mean_k p_k))`` is
``mean_k p_k``; an ensemble of one returns ``log_softmax(logits)``, the logits minus a per-voxel constant, so the
blended probabilities are the single model's up to float32 rounding.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from scripts.engine.checkpoint import CheckpointError, CheckpointLoader, check_checkpoint

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["SoftmaxEnsemble", "ensemble_network", "check_ensemble_checkpoints", "EnsembleCheckpointLoader"]


class SoftmaxEnsemble(nn.Module):
    """
    The log of the mean softmax probabilities of ``networks``.

    Args:
        networks: each maps (B, C_in, X, Y, Z) to logits (B, C_out, X, Y, Z) with the same C_out.

    Example::

        ensemble = SoftmaxEnsemble([fold0, fold1, fold2, fold3, fold4])
        labels = StreamingSegmentationInferer((192, 192, 48), overlap=0.5)(image, ensemble)
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(networks) == 0:
            raise ValueError("an ensemble needs at least one network.")
        self.networks = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C_in, X, Y, Z) -> ``log(mean_k softmax(network_k(x)))`` (B, C_out, X, Y, Z)."""
        total = None
        for network in self.networks:
            log_probabilities = torch.log_softmax(network(x), dim=1)
            # log(sum p) accumulated in log space: one member's output held at a time, no underflow of small p
            total = log_probabilities if total is None else torch.logaddexp(total, log_probabilities)
        return total - math.log(len(self.networks))

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """Compile every member the way it compiles itself (``nn.Module.compile``, same arguments)."""
        for network in self.networks:
            network.compile(*args, **kwargs)


def _compiled(network: nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in network.modules())


def ensemble_network(network: nn.Module, ckpt_files: Sequence[str] | None) -> nn.Module:
    """
    The network inference runs (config id ``inference_network``): ``network`` itself without ``ckpt_files``; else a
    :class:`SoftmaxEnsemble` of ``network`` and ``len(ckpt_files) - 1`` copies of it, one member per file (loaded
    by :class:`EnsembleCheckpointLoader`).

    Raises:
        ValueError: ``network`` is already compiled (a copy would call the original's compiled code); compile
            the ensemble instead.
    """
    if ckpt_files is None:
        return network
    if _compiled(network):
        raise ValueError("copy the network into the ensemble before compiling it; then compile the ensemble.")
    return SoftmaxEnsemble([network] + [copy.deepcopy(network) for _ in range(len(ckpt_files) - 1)])


def check_ensemble_checkpoints(ckpt_files: Sequence[str], network: nn.Module, map_location: Any = "cpu") -> None:
    """
    :func:`scripts.engine.checkpoint.check_checkpoint` of every file of ``ckpt_files`` against ``network`` (one member's
    architecture), in ``initialize`` so that a missing, unsafe or mismatched member is reported before any data is
    read. Every problem is listed, each naming its file.

    Raises:
        CheckpointError: some files are missing, unreadable, unsafe, made for another network, or listed twice.
    """
    problems, seen = [], set()
    for path in ckpt_files:
        real = os.path.realpath(path)
        if real in seen:
            problems.append(f"{path}: listed twice; each member of an ensemble needs its own checkpoint")
            continue
        seen.add(real)
        try:
            check_checkpoint(path, network, map_location)
        except (FileNotFoundError, CheckpointError) as e:
            problems.append(str(e).rstrip("."))
    if problems:
        raise CheckpointError(
            f"{len(problems)} of the {len(ckpt_files)} ensemble checkpoints (config id 'ckpt_files') cannot be used:\n"
            + "\n".join(f"  {p}" for p in problems)
        )


class EnsembleCheckpointLoader:
    """
    Loads member k of ``ensemble`` from ``load_paths[k]`` when the engine starts, each with
    :class:`scripts.engine.checkpoint.CheckpointLoader` (safe loading, wrapper prefixes removed, mismatches explained
    with the file's name), as the single-checkpoint configs load their network.

    Args:
        ensemble: the ensemble whose members to load.
        load_paths: one checkpoint per member, in member order (config id ``ckpt_files``).
        map_location: ``torch.load``'s ``map_location``; give the inference device.
    """

    def __init__(self, ensemble: SoftmaxEnsemble, load_paths: Sequence[str], map_location: Any = None) -> None:
        if len(load_paths) != len(ensemble.networks):
            raise ValueError(f"{len(load_paths)} checkpoints for an ensemble of {len(ensemble.networks)} networks.")
        self.loaders = [
            CheckpointLoader(load_path=path, load_dict={"model": member}, map_location=map_location)
            for path, member in zip(load_paths, ensemble.networks)
        ]

    def attach(self, engine: Engine) -> None:
        """Attach every member's loader to ``engine`` (they run when it starts)."""
        for loader in self.loaders:
            loader.attach(engine)
