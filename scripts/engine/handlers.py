"""Ignite handlers the MONAI engines lack."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers import ValidationHandler as _MonaiValidationHandler

from scripts.engine.transforms import source_filename

__all__ = ["GradientClipping", "CaseTimer", "ValidationHandler"]


class GradientClipping:
    """
    Clips the global gradient norm of ``engine.network`` after every backward pass, before the optimiser step
    (unscaling first under AMP, so the threshold applies to the true gradients).

    Args:
        max_norm: largest allowed L2 norm of all gradients together (12 in the CoTr / nnU-Net recipe).
    """

    def __init__(self, max_norm: float = 12.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}.")
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


def _case_name(engine: Engine, key: str) -> str:
    """The file name of the case the engine just processed, from ``key``'s metadata, or ``"case <n>"``."""
    items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.batch]
    for item in items or []:
        source = source_filename(item, key) if isinstance(item, dict) else None
        if source:
            return os.path.basename(os.path.normpath(source))
    return f"case {engine.state.iteration}"


class CaseTimer:
    """
    Logs a line per case of an evaluator or inference run: its position, file name, seconds taken and the
    estimated time left, so that a long run over many whole volumes shows its progress.

    Args:
        key: the data key whose metadata names the case.
        logger_name: logger to write to.
    """

    def __init__(self, key: str = "image", logger_name: str = "CaseTimer") -> None:
        self.key = key
        self.logger = logging.getLogger(logger_name)
        self.started = 0.0
        self.durations: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.durations.clear())
        engine.add_event_handler(Events.ITERATION_STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def start(self, engine: Engine) -> None:
        self.started = time.perf_counter()

    def __call__(self, engine: Engine, *args: Any) -> None:
        seconds = time.perf_counter() - self.started
        self.durations.append(seconds)
        total = engine.state.epoch_length or len(self.durations)
        left = (total - len(self.durations)) * sum(self.durations) / len(self.durations)
        self.logger.info(
            f"[{len(self.durations)}/{total}] {_case_name(engine, self.key)}: {seconds:.1f} s"
            + (f", about {left / 60:.1f} min left" if left > 0 else "")
        )


class ValidationHandler(_MonaiValidationHandler):
    """
    MONAI's :class:`~monai.handlers.ValidationHandler`, which validates every ``interval`` epochs, plus one
    validation when training ends on an epoch that the interval skipped. The best-model checkpoint (what inference
    loads) then also covers the last epochs: a short fine-tune, e.g. from MONAI Label, of fewer epochs than
    ``interval`` still writes one. Arguments are MONAI's.
    """

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if self.epoch_level:
            engine.add_event_handler(Events.COMPLETED, self._validate_last_epoch)

    def _validate_last_epoch(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval:
            self(engine)
