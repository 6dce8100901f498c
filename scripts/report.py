"""
Pictures and tables of a run: the evaluation report (per-case metrics with organ names, a per-organ Dice box
plot and one overlay picture per case), training curves from the TensorBoard logs, an ignite handler that
draws them during and after training, and a transform that draws inference overlays.

Usage::

    python -m scripts.report report --eval_dir eval --dataset_dir /data/RawData --datalist /data/RawData/datalist.json
    python -m scripts.report curves --log_dir eval --output_png eval/training_curves.png
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import min_version, optional_import

from scripts.atomic import atomic_output
from scripts.datalist import BTCV_LABELS
from scripts.infer_folder import nifti_case_name
from scripts.visualize import organ_colour, organ_name, save_figure_atomic, save_overlay_png

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = [
    "BTCV_MERGED_LABELS",
    "METRIC_FILES",
    "case_name",
    "read_raw_metrics",
    "write_evaluation_report",
    "plot_dice_boxplot",
    "read_scalars",
    "plot_training_curves",
    "TrainingCurvesHandler",
    "SaveOverlayd",
    "SavedSegmentationTransform",
    "write_csv_atomic",
    "source_filename",
]

logger = logging.getLogger(__name__)

#: The paper's 11-organ protocol (kidneys and adrenal glands merged): merged label -> name, the order of the
#: ``classN`` columns (label N + 1) of the ``*_merged_raw.csv`` files written by ``configs/evaluate.json``.
BTCV_MERGED_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "kidneys",
    3: "gallbladder",
    4: "esophagus",
    5: "liver",
    6: "stomach",
    7: "aorta",
    8: "inferior_vena_cava",
    9: "portal_and_splenic_veins",
    10: "pancreas",
    11: "adrenal_glands",
}

#: (metric, protocol) -> the MetricsSaver raw CSV that ``configs/evaluate.json`` writes into the evaluation folder;
#: protocol "all" scores every class, "merged" the classes of ``merged_label_map`` (BTCV: the paper's 11 organs)
METRIC_FILES: dict[tuple[str, str], str] = {
    ("dice", "all"): "val_mean_dice_raw.csv",
    ("hd95", "all"): "val_hd95_raw.csv",
    ("dice", "merged"): "val_mean_dice_merged_raw.csv",
    ("hd95", "merged"): "val_hd95_merged_raw.csv",
}

# the matplotlib figures of this module: size in inches and dpi
BOXPLOT_FIGSIZE, CURVES_FIGSIZE, FIGURE_DPI = (12.0, 5.5), (12.0, 4.5), 100


def case_name(path: str) -> str:
    """Case name of an image path: the file name without ``.nii.gz``/``.nii`` (any letter case), or a folder's name."""
    return nifti_case_name(os.path.normpath(path))


def _parse_value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_raw_metrics(path: str) -> tuple[list[int], dict[str, dict[int | str, float]]]:
    """
    Read a MetricsSaver ``*_raw.csv`` (``filename,class0,...,classK,mean``; ``nan`` for an organ absent from
    both prediction and ground truth).

    Returns:
        the label values of the class columns (``classN`` is label N + 1) and, per image path in file order,
        label value -> metric, plus ``"mean"`` -> the row's mean.
    """
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:1] != ["filename"]:
        raise ValueError(f"{path}: not a MetricsSaver raw CSV (expected a 'filename,class0,...' header).")
    header = rows[0]
    keys: list[int | str] = []
    for column in header[1:]:
        if column.startswith("class") and column[5:].isdigit():
            keys.append(int(column[5:]) + 1)
        else:
            keys.append(column)
    table = {}
    for row in rows[1:]:
        if row:
            table[row[0]] = {key: _parse_value(value) for key, value in zip(keys, row[1:])}
    return [k for k in keys if isinstance(k, int)], table


def _format(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4f}")


def write_csv_atomic(path: str, rows: Sequence[Sequence[Any]]) -> str:
    """Write ``rows`` (header first) as CSV through a temporary file and a rename; returns ``path``."""
    with atomic_output(path, suffix=".csv.tmp") as temporary, open(temporary, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def plot_dice_boxplot(
    dice: Mapping[str, Mapping[int | str, float]],
    labels: Sequence[int],
    label_names: Mapping[int, str],
    output_png: str,
) -> str:
    """
    Box plot of the per-case Dice of every organ in ``labels`` (one box per organ, in the organ's colour,
    cases as dots); NaN values (organ absent from prediction and ground truth) are left out and counted.
    """
    import matplotlib.pyplot as plt

    values = [np.array([row.get(label, math.nan) for row in dice.values()], dtype=float) for label in labels]
    finite = [v[np.isfinite(v)] for v in values]
    fig, ax = plt.subplots(figsize=BOXPLOT_FIGSIZE)
    positions = np.arange(1, len(labels) + 1)
    drawn = [i for i, v in enumerate(finite) if v.size]
    if drawn:
        boxes = ax.boxplot(
            [finite[i] for i in drawn], positions=positions[drawn], widths=0.6, patch_artist=True, showfliers=False,
            medianprops={"color": "black", "linewidth": 1.5},
        )
        for i, box in zip(drawn, boxes["boxes"]):
            box.set_facecolor((*organ_colour(labels[i]), 0.55))
            box.set_edgecolor("0.25")
    rng = np.random.default_rng(0)
    for i, v in enumerate(finite):
        jitter = rng.uniform(-0.15, 0.15, v.size)
        ax.scatter(positions[i] + jitter, v, s=14, color="0.15", zorder=3, linewidths=0)
    ticks = []
    for label, v, f in zip(labels, values, finite):
        name = organ_name(label, label_names)
        ticks.append(name if f.size == v.size else f"{name}\n(n={f.size} of {v.size})")
    ax.set_xticks(positions, ticks, rotation=35, ha="right", fontsize=9)
    ax.set_xlim(0.4, len(labels) + 0.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice")
    ax.grid(axis="y", color="0.85")
    ax.set_axisbelow(True)
    pooled = np.concatenate(finite) if finite else np.zeros(0)
    overall = f", mean Dice {pooled.mean():.3f} over all organs and cases" if pooled.size else ""
    ax.set_title(f"Dice per organ over {len(dice)} case(s){overall}")
    fig.tight_layout()
    return save_figure_atomic(fig, output_png, FIGURE_DPI)


def _validation_labels(datalist: str, dataset_dir: str | None) -> dict[str, tuple[str, str | None]]:
    """Case name -> (image path, label path) of the ``validation`` entries of a datalist."""
    base = dataset_dir if dataset_dir is not None else os.path.dirname(os.path.abspath(datalist))
    with open(datalist) as f:
        entries = json.load(f).get("validation", [])
    cases = {}
    for entry in entries:
        image = os.path.join(base, entry["image"])
        label = os.path.join(base, entry["label"]) if entry.get("label") else None
        cases[case_name(image)] = (image, label)
    return cases


def write_evaluation_report(
    eval_dir: str,
    label_names: Mapping[int, str] | None = None,
    merged_label_names: Mapping[int, str] | None = None,
    dataset_dir: str | None = None,
    datalist: str | None = None,
) -> list[str]:
    """
    Write the report of an evaluation run into ``eval_dir/report``.

    Reads what ``configs/evaluate.json`` writes into ``eval_dir``: the MetricsSaver files
    ``val_mean_dice_raw.csv`` (required), ``val_hd95_raw.csv``, ``val_mean_dice_merged_raw.csv`` and
    ``val_hd95_merged_raw.csv`` (used when present) and the segmentations
    ``segmentations/<case>_seg.nii.gz``. Writes:

    - ``per_case_metrics.csv``: ``case``, ``image``, then ``dice_<N>/<class>`` ... ``dice_<N>/mean`` and
      ``hd95_<N>/<class>`` ... for the N foreground classes, then the same for the merged classes when they
      differ (BTCV: ``dice_13/...``, ``hd95_13/...``, ``dice_11/...``, ``hd95_11/...``, the paper's 11-organ
      protocol; HD95 in mm); ``nan`` where a class is absent from prediction and ground truth.
    - ``dice_boxplot.png``: Dice of each class across cases.
    - ``<case>.png``: the overlay of every case (:func:`scripts.visualize.save_overlay_png`) with its Dice per
      class in the legend, and the ground truth when ``datalist`` is given (its ``validation`` entries,
      paths relative to ``dataset_dir``, default the datalist's folder). A case whose files are missing is
      skipped with a warning.

    Args:
        eval_dir: the evaluation output folder (``output_dir`` of the config).
        label_names: label value -> class name (config id ``label_names``); default ``BTCV_LABELS``.
        merged_label_names: merged label value -> name (config id ``merged_label_names``); default
            ``BTCV_MERGED_LABELS``. Merged metrics with as many classes as ``label_names`` are the same metrics
            again and are left out.
        dataset_dir: folder the datalist paths are relative to.
        datalist: datalist JSON for the ground-truth labels, or None to draw the predictions only.

    Returns:
        the written files: the CSV, the box plot, then the overlays.
    """
    names = {int(k): v for k, v in (BTCV_LABELS if label_names is None else label_names).items()}
    merged = {int(k): v for k, v in (BTCV_MERGED_LABELS if merged_label_names is None else merged_label_names).items()}
    protocols = {"all": names, "merged": merged}
    dice_csv = os.path.join(eval_dir, METRIC_FILES[("dice", "all")])
    if not os.path.isfile(dice_csv):
        raise FileNotFoundError(f"{eval_dir}: no {METRIC_FILES[('dice', 'all')]}; run the evaluation first.")
    report_dir = os.path.join(eval_dir, "report")
    tables: dict[str, tuple[list[int], dict[str, dict[int | str, float]], Mapping[int, str]]] = {}
    for (metric, protocol), file_name in METRIC_FILES.items():
        protocol_names = protocols[protocol]
        if protocol == "merged" and len(merged) == len(names):
            continue
        prefix = f"{metric}_{len(protocol_names) - 1}"
        path = os.path.join(eval_dir, file_name)
        if os.path.isfile(path):
            tables[prefix] = (*read_raw_metrics(path), protocol_names)
        else:
            logger.warning(f"{path} not found: per_case_metrics.csv has no {prefix} columns.")
    labels, dice, _ = tables[f"dice_{len(names) - 1}"]

    header = ["case", "image"]
    for prefix, (columns, _, protocol_names) in tables.items():
        header += [f"{prefix}/{organ_name(label, protocol_names)}" for label in columns] + [f"{prefix}/mean"]
    rows: list[list[Any]] = [header]
    for image in dice:
        row: list[Any] = [case_name(image), image]
        for columns, table, _ in tables.values():
            values = table.get(image, {})
            row += [_format(values.get(key, math.nan)) for key in [*columns, "mean"]]
        rows.append(row)
    written = [write_csv_atomic(os.path.join(report_dir, "per_case_metrics.csv"), rows)]
    written.append(plot_dice_boxplot(dice, labels, names, os.path.join(report_dir, "dice_boxplot.png")))

    cases = _validation_labels(datalist, dataset_dir) if datalist else {}
    for image, scores in dice.items():
        case = case_name(image)
        segmentation = os.path.join(eval_dir, "segmentations", f"{case}_seg.nii.gz")
        image_path, label_path = image, None
        if case in cases:
            label_path = cases[case][1]
            if not os.path.isfile(image_path):
                image_path = cases[case][0]
        elif datalist:
            logger.warning(f"{case}: not in the validation entries of {datalist}; overlay without ground truth.")
        missing = [p for p in (image_path, segmentation, label_path) if p and not os.path.isfile(p)]
        if missing:
            logger.warning(f"{case}: overlay skipped, missing {', '.join(missing)}.")
            continue
        mean = scores.get("mean", math.nan)
        title = f"{case}    mean Dice {_format(mean)}"
        written.append(
            save_overlay_png(
                image_path, segmentation, os.path.join(report_dir, f"{case}.png"), label_path, names,
                title=title, scores={k: v for k, v in scores.items() if isinstance(k, int)},
            )
        )
    return written


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


def source_filename(data: Mapping[Hashable, Any], key: Hashable) -> str | None:
    """
    The file ``data[key]`` was loaded from: ``filename_or_obj`` of its MetaTensor meta or of ``<key>_meta_dict``;
    None when there is none, or when it names several files (a batch of more than one).
    """
    meta = getattr(data.get(key), "meta", None) or data.get(f"{key}_meta_dict") or {}
    source = meta.get("filename_or_obj")
    if isinstance(source, (list, tuple)):  # a batch of one
        source = source[0] if len(source) == 1 else None
    return str(source) if source else None


class SavedSegmentationTransform(MapTransform):
    """
    Base of inference postprocessing placed after ``SaveImaged``: for every case, :meth:`write_case` gets the case
    name (the item's ``"case"`` entry, else :func:`case_name` of the source), the original image (the
    ``filename_or_obj`` of the key's MetaTensor meta, or of ``<key>_meta_dict``: a NIfTI file or a DICOM series)
    and the saved segmentation ``seg_dir/<case>_<output_postfix><output_ext>``, as inference names it. A failure is
    logged as a warning naming the case; the data passes through unchanged.

    Args:
        keys: the image key(s) whose file names identify the cases.
        output_dir: folder of what is written.
        seg_dir: folder of the saved segmentations; default ``output_dir``.
        output_postfix: ``SaveImaged``'s ``output_postfix``.
        output_ext: ``SaveImaged``'s ``output_ext``.
        label_names: label value -> class name (int or string keys, as config id ``label_names``); default ``BTCV_LABELS``.
        enabled: False makes the transform a no-op (so that a config can switch it off).
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        output_dir: str = "./outputs",
        seg_dir: str | None = None,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        label_names: Mapping[int, str] | None = None,
        enabled: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = output_dir
        self.seg_dir = seg_dir if seg_dir is not None else output_dir
        self.output_postfix = output_postfix
        self.output_ext = output_ext
        self.label_names = {int(k): v for k, v in (BTCV_LABELS if label_names is None else label_names).items()}
        self.enabled = bool(enabled)

    def write_case(self, case: str, source: str, segmentation: str) -> None:
        """Write this transform's output for one case: its name, ``source`` image, ``segmentation`` file."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        name = type(self).__name__
        for key in self.key_iterator(d):
            source = source_filename(d, key)
            if source is None:
                logger.warning(f"{name}: {key!r} has no filename_or_obj; case skipped.")
                continue
            case = d.get("case")
            case = str(case[0] if isinstance(case, (list, tuple)) else case) if case else case_name(source)
            postfix = f"_{self.output_postfix}" if self.output_postfix else ""
            segmentation = os.path.join(self.seg_dir, f"{case}{postfix}{self.output_ext}")
            try:
                self.write_case(case, source, segmentation)
            except Exception as e:
                logger.warning(f"{name}: {case} ({source}) skipped ({type(e).__name__}: {e}).")
        return d


class SaveOverlayd(SavedSegmentationTransform):
    """
    Draws the overlay of the saved segmentation on the original image (:func:`scripts.visualize.save_overlay_png`)
    into ``output_dir/<case>.png``. Arguments as :class:`SavedSegmentationTransform`, plus ``window``: the CT
    window (level, width) in HU.

    Example::

        SaveOverlayd("image", output_dir="eval/inference", enabled=True)(data)
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        output_dir: str = "./overlays",
        seg_dir: str | None = None,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        label_names: Mapping[int, str] | None = None,
        window: Sequence[float] = (40.0, 400.0),
        enabled: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, output_dir, seg_dir, output_postfix, output_ext, label_names, enabled, allow_missing_keys)
        if len(window) != 2 or window[1] <= 0:
            raise ValueError(f"window must be (level, width) with width > 0, got {window}.")
        self.window = (float(window[0]), float(window[1]))

    def write_case(self, case: str, source: str, segmentation: str) -> None:
        output_png = os.path.join(self.output_dir, f"{case}.png")
        save_overlay_png(source, segmentation, output_png, None, self.label_names, self.window, title=case)


if __name__ == "__main__":
    import fire

    fire.Fire({"report": write_evaluation_report, "curves": plot_training_curves})
