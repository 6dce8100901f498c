"""
The evaluation report: per-case metrics and organ status with organ names, a summary that says what each number
averages, a per-organ Dice box plot, a per-organ status chart and one overlay picture per case.

Usage::

    python -m scripts.reports.evaluation --eval_dir eval --dataset_dir /data/RawData \\
        --datalist /data/RawData/datalist.json
    python -m scripts.reports.evaluation --eval_dir eval --organs "['liver','spleen']"
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scripts.data.labels import BTCV_LABELS, BTCV_MERGED_LABEL_MAP, BTCV_MERGED_LABELS
from scripts.engine.atomic import write_csv_atomic
from scripts.engine.infer_folder import case_name
from scripts.engine.metrics import (
    ABSENT,
    DETECTED,
    FALSE_POSITIVE,
    MISSED,
    ORGAN_STATUSES,
    organ_status,
    protocol_organs,
)
from scripts.engine.organs import select_organs
from scripts.reports.overlays import organ_colour, organ_name, save_figure_atomic, save_overlay_png

__all__ = [
    "METRIC_FILES",
    "AVERAGES",
    "read_raw_metrics",
    "write_evaluation_report",
    "plot_dice_boxplot",
    "plot_organ_status",
]

logger = logging.getLogger(__name__)


#: metric -> MetricsSaver name in ``configs/evaluate.json`` (id ``metric_names``); "dice", "hd95" and "nsd" are scores,
#: "missed" and "false_positive" the detection errors of ``scripts.engine.metrics.OrganDetectionErrorMetric``
_METRIC_NAMES = {
    "dice": "val_mean_dice",
    "hd95": "val_hd95",
    "nsd": "val_nsd",
    "missed": "val_missed",
    "false_positive": "val_false_positive",
}
#: (metric, protocol) -> the MetricsSaver raw CSV that ``configs/evaluate.json`` writes into the evaluation folder;
#: protocol "all" scores every class, "merged" the classes of ``merged_label_map`` (BTCV: the paper's 11 organs)
METRIC_FILES: dict[tuple[str, str], str] = {
    (metric, protocol): f"{name}{'_merged' if protocol == 'merged' else ''}_raw.csv"
    for protocol in ("all", "merged")
    for metric, name in _METRIC_NAMES.items()
}
_SCORES = ("dice", "hd95", "nsd")
#: the (case, organ) pairs each score is averaged over: HD95 is undefined when one side is empty
_SCORED = {
    "dice": "detected, missed, false positive",
    "hd95": "detected only",
    "nsd": "detected, missed, false positive",
}
#: the three averages of a score over (case, organ) pairs in ``summary.csv``; the first is MONAI's reduction
#: ``"mean"``, the value MetricsSaver writes to ``metrics.csv``, the second the "mean" column of the paper's Table 1
AVERAGES = (
    "mean over cases of each case's mean over its organs",
    "mean over organs of each organ's mean over cases",
    "pooled mean over (case, organ) pairs",
)
_STATUS_COLOURS = {DETECTED: "tab:green", MISSED: "tab:red", FALSE_POSITIVE: "tab:orange", ABSENT: "0.82"}
_SUMMARY_HEADER = [
    "protocol",
    "metric",
    "organ",
    "average",
    "scored",
    "value",
    "cases",
    "organs",
    "pairs",
    "detected",
    "missed",
    "false_positive",
    "absent",
]

# the matplotlib figures of this module: size in inches and dpi
BOXPLOT_FIGSIZE, FIGURE_DPI = (12.0, 5.5), 100
STATUS_PANEL_FIGSIZE = (12.0, 4.5)  # one panel per protocol, stacked


def _parse_value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_raw_metrics(path: str) -> tuple[list[int], dict[str, dict[int | str, float]]]:
    """
    Read a MetricsSaver ``*_raw.csv`` (``filename,class0,...,classK,mean``; ``nan`` where a value is undefined).

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


def _case_means(values: np.ndarray) -> np.ndarray:
    """Per-row mean of the non-nan values of ``values`` (cases, organs); nan for a row without any."""
    counts = (~np.isnan(values)).sum(1)
    sums = np.where(np.isnan(values), 0.0, values).sum(1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)


def _averages(values: np.ndarray) -> tuple[list[float], int, int, int]:
    """
    The :data:`AVERAGES` of ``values`` (cases, organs; nan = not scored), and the number of cases, organs and
    (case, organ) pairs with a value.
    """
    scored = ~np.isnan(values)
    if not scored.any():
        return [math.nan] * len(AVERAGES), 0, 0, 0
    by_case = _case_means(values)
    by_organ = _case_means(values.T)
    averages = [float(np.nanmean(by_case)), float(np.nanmean(by_organ)), float(values[scored].mean())]
    return averages, int(scored.any(1).sum()), int(scored.any(0).sum()), int(scored.sum())


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
            [finite[i] for i in drawn],
            positions=positions[drawn],
            widths=0.6,
            patch_artist=True,
            showfliers=False,
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
    ax.set_ylabel("Dice (missed and false-positive organs: 0)")
    ax.grid(axis="y", color="0.85")
    ax.set_axisbelow(True)
    by_case = _case_means(np.stack(values, axis=1)) if values and dice else np.zeros(0)
    by_case = by_case[~np.isnan(by_case)]
    overall = f", mean {by_case.mean():.3f} (over cases of each case's mean over its organs)" if by_case.size else ""
    ax.set_title(f"Dice per organ over {len(dice)} case(s){overall}")
    fig.tight_layout()
    return save_figure_atomic(fig, output_png, FIGURE_DPI)


def plot_organ_status(
    panels: Sequence[tuple[str, Mapping[int, str], Mapping[str, Mapping[int, str]]]], output_png: str
) -> str:
    """
    Per-organ status chart: for each organ a bar stacked from the number of cases where it was detected, missed,
    a false positive and absent, one panel per protocol (``STATUS_PANEL_FIGSIZE`` each at ``FIGURE_DPI``).

    Args:
        panels: (title, label -> name of the organs in bar order, image -> label -> status) per protocol.
        output_png: PNG to write (atomically).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    width, height = STATUS_PANEL_FIGSIZE
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, height * len(panels)), squeeze=False)
    for ax, (title, organs, status) in zip(axes[:, 0], panels):
        labels = list(organs)
        positions = np.arange(len(labels))
        bottom = np.zeros(len(labels))
        totals = {}
        for state in ORGAN_STATUSES:
            counts = np.array([sum(row.get(label) == state for row in status.values()) for label in labels], float)
            totals[state] = int(counts.sum())
            ax.bar(
                positions,
                counts,
                0.7,
                bottom=bottom,
                color=_STATUS_COLOURS[state],
                edgecolor="white",
                label=f"{state} ({totals[state]})",
            )
            for x, (count, base) in enumerate(zip(counts, bottom)):
                if count:
                    ax.text(x, base + count / 2, f"{int(count)}", ha="center", va="center", fontsize=8)
            bottom += counts
        ax.set_xticks(positions, [organ_name(label, organs) for label in labels], rotation=35, ha="right", fontsize=9)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_ylim(0, max(1, len(status)))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("cases")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, title="(case, organ) pairs")
        errors = f"{totals[MISSED]} missed, {totals[FALSE_POSITIVE]} false positive"
        ax.set_title(f"{title}: organ status over {len(status)} case(s), {errors}")
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


def _protocol_tables(
    eval_dir: str, protocol: str, prefix: int
) -> dict[str, tuple[list[int], dict[str, dict[int | str, float]]]]:
    """metric -> (label columns, image -> label -> value) of the raw CSVs of ``protocol`` found in ``eval_dir``."""
    tables = {}
    for metric in _METRIC_NAMES:
        path = os.path.join(eval_dir, METRIC_FILES[(metric, protocol)])
        if os.path.isfile(path):
            tables[metric] = read_raw_metrics(path)
        else:
            logger.warning(f"{path} not found: the report has no {metric}_{prefix} values.")
    return tables


def _statuses(
    tables: Mapping[str, tuple[list[int], dict[str, dict[int | str, float]]]],
    images: Sequence[str],
    labels: Sequence[int],
) -> dict[str, dict[int, str]] | None:
    """image -> label -> status from the missed and false-positive tables; None without them."""
    if "missed" not in tables or "false_positive" not in tables:
        return None
    missed, false_positive = tables["missed"][1], tables["false_positive"][1]
    status: dict[str, dict[int, str]] = {}
    for image in images:
        m, fp = missed.get(image, {}), false_positive.get(image, {})
        try:
            status[image] = {label: organ_status(m.get(label, math.nan), fp.get(label, math.nan)) for label in labels}
        except ValueError as e:
            raise ValueError(f"{image}: no status in the missed and false-positive raw CSVs ({e})") from e
    return status


def _summary(
    protocol: str,
    tables: Mapping[str, tuple[list[int], dict[str, dict[int | str, float]]]],
    images: Sequence[str],
    organs: Mapping[int, str],
    status: Mapping[str, Mapping[int, str]] | None,
) -> tuple[list[list[Any]], list[str]]:
    """``summary.csv`` rows of one protocol and the log lines that say the same in words."""
    labels = list(organs)

    def counts(selected: Sequence[int]) -> list[Any]:
        if status is None:
            return [""] * 4
        states = [status[image][label] for image in images for label in selected]
        return [states.count(s) for s in (DETECTED, MISSED, FALSE_POSITIVE, ABSENT)]

    rows, words = [], []
    for metric in (m for m in _SCORES if m in tables):
        table = tables[metric][1]
        values = np.array([[table.get(i, {}).get(label, math.nan) for label in labels] for i in images], float)
        values = values.reshape(len(images), len(labels))
        averages, cases, scored, pairs = _averages(values)
        for average, value in zip(AVERAGES, averages):
            rows.append([protocol, metric, "all", average, _SCORED[metric], _format(value), cases, scored, pairs])
            rows[-1] += counts(labels)
        for j, label in enumerate(labels):
            column = values[:, j][~np.isnan(values[:, j])]
            value = float(column.mean()) if column.size else math.nan
            rows.append([protocol, metric, organ_name(label, organs), "mean over cases", _SCORED[metric]])
            rows[-1] += [_format(value), column.size, int(column.size > 0), column.size, *counts([label])]
        unit, name = (" mm", "HD95") if metric == "hd95" else ("", "Dice" if metric == "dice" else "NSD")
        words.append(
            f"{name} {_format(averages[0])}{unit}, the {AVERAGES[0]} ({cases} cases, {scored} organs, {pairs} "
            f"(case, organ) pairs: {_SCORED[metric]}); {_format(averages[1])}{unit} {AVERAGES[1]}; "
            f"{_format(averages[2])}{unit} pooled"
        )
    if status is not None:
        detected, missed, false_positive, absent = counts(labels)
        words.append(
            f"{len(images)} cases x {len(labels)} organs: {detected} detected, {missed} missed, {false_positive} "
            f"false positive (Dice and NSD 0, no HD95), {absent} absent from both (not scored)"
        )
    return rows, [f"{protocol}: {w}" for w in words]


def write_evaluation_report(
    eval_dir: str,
    label_names: Mapping[int, str] | None = None,
    merged_label_names: Mapping[int, str] | None = None,
    dataset_dir: str | None = None,
    datalist: str | None = None,
    organs: Sequence[str] | str | None = None,
    merged_label_map: Sequence[int] | None = None,
) -> list[str]:
    """
    Write the report of an evaluation run into ``eval_dir/report`` and log its summary.

    Reads what ``configs/evaluate.json`` writes into ``eval_dir``: the MetricsSaver files (:data:`METRIC_FILES`;
    ``val_mean_dice_raw.csv`` is required, the others are used when present) and the segmentations
    ``segmentations/<case>_seg.nii.gz``. Writes:

    - ``per_case_metrics.csv``: ``case``, ``image``, then for the N classes of each protocol ``dice_<N>/<organ>`` ...
      ``dice_<N>/mean``, the same for ``hd95_<N>`` (mm) and ``nsd_<N>`` (normalised surface Dice), and
      ``status_<N>/<organ>`` (``detected``, ``missed``, ``false positive``, ``absent``); the merged protocol follows
      when it has other classes (BTCV: ``..._13/...`` then ``..._11/...``, the paper's 11-organ protocol). ``nan``
      where a value is undefined (see ``scripts.engine.metrics``); each ``mean`` is over the case's organs with a value.
    - ``summary.csv``: per protocol and score, the three :data:`AVERAGES` over all organs and the mean over cases of
      each organ, each with the pairs it counts (``scored``, ``cases``, ``organs``, ``pairs``) and how many of them
      were detected, missed, false positive or absent.
    - ``dice_boxplot.png``: Dice of each organ across cases; ``organ_status.png``: each organ's status counts.
    - ``<case>.png``: the overlay of every case (:func:`scripts.reports.overlays.save_overlay_png`) with its Dice per
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
        organs: report only these organs (config id ``organs``, see ``scripts.engine.metrics.protocol_organs``);
            None: all.
        merged_label_map: label -> merged label (config id ``merged_label_map``); default ``BTCV_MERGED_LABEL_MAP``
            when ``merged_label_names`` is also the default. Needed to select ``organs`` in the merged protocol.

    Returns:
        the written files: the two CSVs, the box plot, the status chart, then the overlays.
    """
    names = {int(k): v for k, v in (BTCV_LABELS if label_names is None else label_names).items()}
    if merged_label_names is None and merged_label_map is None:
        merged_label_map = BTCV_MERGED_LABEL_MAP
    merged = {int(k): v for k, v in (BTCV_MERGED_LABELS if merged_label_names is None else merged_label_names).items()}
    dice_csv = os.path.join(eval_dir, METRIC_FILES[("dice", "all")])
    if not os.path.isfile(dice_csv):
        raise FileNotFoundError(f"{eval_dir}: no {METRIC_FILES[('dice', 'all')]}; run the evaluation first.")
    if merged_label_map is not None:
        selected = protocol_organs(organs, names, merged, merged_label_map)
    elif organs:
        raise ValueError("organs: give merged_label_map (config id) too, to select the merged organs.")
    else:
        selected = {"all": select_organs(names), "merged": select_organs(merged)}
    protocols = {"all": names} if len(merged) == len(names) else {"all": names, "merged": merged}
    report_dir = os.path.join(eval_dir, "report")
    _, dice = read_raw_metrics(dice_csv)
    images = list(dice)

    header, columns, summary, words, panels = ["case", "image"], [], [_SUMMARY_HEADER], [], []
    for protocol, protocol_names in protocols.items():
        n = len(protocol_names) - 1
        tables = _protocol_tables(eval_dir, protocol, n)
        organs_scored = selected[protocol]
        for metric in _SCORES:
            if metric in tables:
                header += [f"{metric}_{n}/{organ_name(label, organs_scored)}" for label in organs_scored]
                header.append(f"{metric}_{n}/mean")
                columns.append(("score", tables[metric][1], list(organs_scored)))
        status = _statuses(tables, images, list(organs_scored))
        if status is not None:
            header += [f"status_{n}/{organ_name(label, organs_scored)}" for label in organs_scored]
            columns.append(("status", status, list(organs_scored)))
            panels.append((f"{n} organs", organs_scored, status))
        protocol_summary, lines = _summary(f"{n} organs", tables, images, organs_scored, status)
        summary += protocol_summary
        words += lines

    rows: list[list[Any]] = [header]
    for image in images:
        row: list[Any] = [case_name(image), image]
        for kind, table, labels in columns:
            values = table.get(image, {})
            if kind == "status":
                row += [values[label] for label in labels]
            else:
                scores = np.array([values.get(label, math.nan) for label in labels], float)
                row += [_format(v) for v in scores] + [_format(_case_means(scores[None])[0])]
        rows.append(row)
    written = [write_csv_atomic(os.path.join(report_dir, "per_case_metrics.csv"), rows)]
    written.append(write_csv_atomic(os.path.join(report_dir, "summary.csv"), summary))
    boxplot_labels = list(selected["all"])
    written.append(plot_dice_boxplot(dice, boxplot_labels, names, os.path.join(report_dir, "dice_boxplot.png")))
    if panels:
        written.append(plot_organ_status(panels, os.path.join(report_dir, "organ_status.png")))
    for line in words:
        logger.info(line)
    logger.info(f"evaluation report: {report_dir} (summary.csv says what each average counts)")

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
        shown = {label: scores.get(label, math.nan) for label in boxplot_labels}
        title = f"{case}    mean Dice {_format(_case_means(np.array([list(shown.values())], float))[0])}"
        written.append(
            save_overlay_png(
                image_path,
                segmentation,
                os.path.join(report_dir, f"{case}.png"),
                label_path,
                names,
                title=title,
                scores=shown,
            )
        )
    return written


if __name__ == "__main__":
    import fire

    fire.Fire(write_evaluation_report)
