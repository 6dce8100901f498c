"""Ignite handlers the MONAI engines lack."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["GradientClipping"]


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
