"""
Training curves from the TensorBoard logs (training loss per iteration, validation mean Dice per epoch), and an
ignite handler that draws them during and after training.

Usage::

    python -m scripts.reports.curves --log_dir eval --output_png eval/training_curves.png
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.utils import min_version, optional_import

from scripts.reports.overlays import save_figure_atomic

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = [
    "read_scalars",
    "plot_training_curves",
    "TrainingCurvesHandler",
]

logger = logging.getLogger(__name__)

# the matplotlib figure of this module: size in inches and dpi
CURVES_FIGSIZE, FIGURE_DPI = (12.0, 4.5), 100


def read_scalars(log_dir: str, tags: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """
    Scalars ``tags`` of every TensorBoard event file under ``log_dir`` (recursively), as (steps, values)
    sorted by step; where several files log one step (a resumed or repeated run) the latest write wins.
    A truncated last record (a writer still running) is skipped.

    Raises:
        FileNotFoundError: no event file under ``log_dir``.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    files = sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files (events.out.tfevents.*) in log_dir {log_dir!r}.")
    latest: dict[str, dict[int, tuple[float, float]]] = {tag: {} for tag in tags}
    for path in files:
        try:
            for event in EventFileLoader(path).Load():
                for value in event.summary.value:
                    if value.tag not in latest:
                        continue
                    if value.HasField("simple_value"):
                        number = float(value.simple_value)
                    else:
                        number = float(tensor_util.make_ndarray(value.tensor).reshape(-1)[0])
                    previous = latest[value.tag].get(event.step)
                    if previous is None or event.wall_time >= previous[0]:
                        latest[value.tag][event.step] = (event.wall_time, number)
        except Exception as e:  # a corrupt file should not hide the others
            logger.warning(f"{path}: read stopped ({type(e).__name__}: {e}).")
    out = {}
    for tag, points in latest.items():
        steps = np.array(sorted(points), dtype=np.int64)
        out[tag] = (steps, np.array([points[s][1] for s in steps], dtype=float))
    return out


def _smooth(values: np.ndarray) -> np.ndarray:
    """Debiased exponential moving average with a span of about 2% of the points."""
    span = max(1.0, len(values) / 50.0)
    alpha = 2.0 / (span + 1.0)
    out = np.empty_like(values)
    average, weight = 0.0, 0.0
    for i, v in enumerate(values):
        average = (1 - alpha) * average + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = average / weight
    return out


def plot_training_curves(
    log_dir: str, output_png: str, loss_tag: str = "train_loss", dice_tag: str = "val_mean_dice"
) -> str:
    """
    Plot the training loss (per iteration, with a smoothed line) and the validation mean Dice (per epoch,
    best epoch marked) from the TensorBoard event files under ``log_dir`` into ``output_png`` (written
    atomically, ``CURVES_FIGSIZE`` at ``FIGURE_DPI``: 1200 x 450 pixels).

    Args:
        log_dir: folder of the event files (``output_dir`` of ``configs/train.json``).
        output_png: PNG to write.
        loss_tag: scalar tag of the training loss, logged per iteration.
        dice_tag: scalar tag of the validation mean Dice, logged per validation epoch.

    Returns:
        ``output_png``.

    Raises:
        FileNotFoundError: ``log_dir`` has no event files.
        ValueError: the event files log neither tag.
    """
    import matplotlib.pyplot as plt

    scalars = read_scalars(log_dir, (loss_tag, dice_tag))
    (loss_steps, loss), (dice_steps, dice) = scalars[loss_tag], scalars[dice_tag]
    if not loss.size and not dice.size:
        raise ValueError(
            f"the TensorBoard event files in log_dir {log_dir!r} log neither {loss_tag!r} nor {dice_tag!r}."
        )
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=CURVES_FIGSIZE)
    if loss.size:
        stride = max(1, loss.size // 5000)  # the raw line needs no more points than pixels
        ax_loss.plot(
            loss_steps[::stride], loss[::stride], color="tab:blue", alpha=0.3, linewidth=0.8, label="per iteration"
        )
        ax_loss.plot(loss_steps, _smooth(loss), color="tab:blue", linewidth=1.8, label="smoothed")
        ax_loss.legend(loc="upper right")
        ax_loss.set_title(f"training loss (last {loss[-1]:.4f}, iteration {loss_steps[-1]})")
    else:
        ax_loss.text(0.5, 0.5, f"no {loss_tag!r} logged", ha="center", va="center", transform=ax_loss.transAxes)
        ax_loss.set_title("training loss")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel(loss_tag)
    if dice.size:
        ax_dice.plot(dice_steps, dice, "o-", color="tab:green", markersize=4, linewidth=1.5)
        best = int(np.nanargmax(dice)) if np.isfinite(dice).any() else 0
        best_label = f"best {dice[best]:.4f} (epoch {dice_steps[best]})"
        ax_dice.plot(dice_steps[best], dice[best], "*", color="tab:red", markersize=14, label=best_label)
        ax_dice.legend(loc="lower right")
        ax_dice.set_ylim(0, 1)
        ax_dice.set_title(f"validation mean Dice (last {dice[-1]:.4f}, epoch {dice_steps[-1]})")
    else:
        ax_dice.text(0.5, 0.5, f"no {dice_tag!r} logged yet", ha="center", va="center", transform=ax_dice.transAxes)
        ax_dice.set_title("validation mean Dice")
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel(dice_tag)
    for ax in (ax_loss, ax_dice):
        ax.grid(color="0.9")
    fig.tight_layout()
    return save_figure_atomic(fig, output_png, FIGURE_DPI)


class TrainingCurvesHandler:
    """
    Ignite handler that draws :func:`plot_training_curves` when the engine completes and, with
    ``interval > 0``, every ``interval`` epochs. A failure is logged as a warning and never stops training.

    ``TensorBoardStatsHandler`` writes its events asynchronously (flushed every two minutes); pass those
    handlers (or ``SummaryWriter``s) as ``writers`` to flush them before plotting, otherwise the picture shows
    what is on disk.

    Args:
        log_dir: folder of the TensorBoard event files.
        output_png: PNG to write; default ``<log_dir>/training_curves.png``.
        interval: also plot every ``interval`` epochs (0: only at the end).
        writers: MONAI ``TensorBoardHandler``s or ``SummaryWriter``s to flush first.

    Example::

        TrainingCurvesHandler("eval", interval=50).attach(trainer)
    """

    def __init__(
        self, log_dir: str, output_png: str | None = None, interval: int = 0, writers: Sequence[Any] = ()
    ) -> None:
        if int(interval) < 0:
            raise ValueError(f"interval must be >= 0 (0: only at the end), got {interval}.")
        self.log_dir = log_dir
        self.output_png = output_png if output_png is not None else os.path.join(log_dir, "training_curves.png")
        self.interval = int(interval)
        self.writers = list(writers)

    def attach(self, engine: Engine) -> None:
        """Plot on ``Events.COMPLETED`` and, with ``interval > 0``, every ``interval`` epochs."""
        engine.add_event_handler(Events.COMPLETED, self)
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine | None = None) -> str | None:
        """Flush the writers and plot; returns the PNG path, or None (with a warning) on failure."""
        try:
            for writer in self.writers:
                getattr(writer, "_writer", writer).flush()
            return plot_training_curves(self.log_dir, self.output_png)
        except Exception as e:
            logger.warning(f"training curves not drawn ({type(e).__name__}: {e}).")
            return None


if __name__ == "__main__":
    import fire

    fire.Fire(plot_training_curves)
