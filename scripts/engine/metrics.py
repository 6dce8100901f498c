"""
Evaluation metrics per organ with missing organs scored openly, in millimetres where MONAI works in voxels.

Every (case, organ) pair has a status, from whether the organ is in the reference and in the prediction:

==================  =========  ==========  ========  =========================  ============
status              reference  prediction  Dice      HD95 (mm)                  surface Dice
==================  =========  ==========  ========  =========================  ============
``detected``        yes        yes         computed  computed                   computed
``missed``          yes        no          0         nan (counted as missed)    0
``false positive``  no         yes         0         nan (counted as f. p.)     0
``absent``          no         no          nan       nan                        nan
==================  =========  ==========  ========  =========================  ============

The Dice convention is nnU-Net's (an empty reference with a non-empty prediction scores 0; only a pair empty on both
sides is left out). MONAI's ``DiceMetric`` gives nan (``ignore_empty=True``) or 1 (``ignore_empty=False``) for an
empty reference, so :class:`OrganDiceMetric` builds on the latter. A distance to nothing is undefined, so HD95 is
averaged over detected pairs only and :class:`OrganDetectionErrorMetric` counts the missed and false-positive pairs
next to it, rather than putting an arbitrary penalty into the mean. Each label's voxel spacing comes from its affine.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics.metric import reinit__is_reduced
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler, MetricsSaver
from monai.metrics import (
    CumulativeIterationMetric,
    DiceMetric,
    HausdorffDistanceMetric,
    SurfaceDiceMetric,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from monai.metrics.utils import do_metric_reduction, ignore_background, prepare_spacing
from monai.utils import MetricReduction

from scripts.data.labels import BTCV_LABELS, BTCV_MERGED_LABELS

__all__ = [
    "ABSENT",
    "DETECTED",
    "MISSED",
    "FALSE_POSITIVE",
    "ORGAN_STATUSES",
    "DETECTION_ERRORS",
    "voxel_spacing",
    "organ_presence",
    "organ_status",
    "protocol_organs",
    "surface_dice_tolerances",
    "OrganDiceMetric",
    "DetectedHausdorffDistanceMetric",
    "DetectedSurfaceDiceMetric",
    "OrganDetectionErrorMetric",
    "OrganDice",
    "PhysicalMetricHandler",
    "PhysicalHausdorffDistance",
    "PhysicalSurfaceDice",
    "OrganDetectionErrors",
    "QuietMetricsSaver",
]


#: status of a (case, organ) pair, see the module docstring
ABSENT, DETECTED, MISSED, FALSE_POSITIVE = "absent", "detected", "missed", "false positive"
ORGAN_STATUSES = (DETECTED, MISSED, FALSE_POSITIVE, ABSENT)
#: the two errors :class:`OrganDetectionErrorMetric` counts
DETECTION_ERRORS = ("missed", "false_positive")


def voxel_spacing(image: torch.Tensor) -> list[float]:
    """Voxel size in mm of a channel-first MetaTensor, read from its affine (1.0 per axis without one)."""
    spatial_dims = image.ndim - 1
    if not isinstance(image, MetaTensor):
        return [1.0] * spatial_dims
    affine = np.asarray(image.affine, dtype=np.float64)
    return np.linalg.norm(affine[:spatial_dims, :spatial_dims], axis=0).tolist()


def organ_presence(
    y_pred: torch.Tensor, y: torch.Tensor, include_background: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Whether each organ is in the prediction and in the reference.

    Args:
        y_pred: one-hot prediction ``(B, C, X, Y, Z)``.
        y: one-hot reference, same shape.
        include_background: keep channel 0.

    Returns:
        ``(predicted, present)``: bool ``(B, C)`` (``C - 1`` without the background).
    """
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y must have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    if not include_background:
        y_pred, y = ignore_background(y_pred, y)
    return y_pred.flatten(2).amax(-1) > 0, y.flatten(2).amax(-1) > 0  # amax: no full-size temporary


def organ_status(missed: float, false_positive: float) -> str:
    """
    Status of a (case, organ) pair from its values in :class:`OrganDetectionErrorMetric`'s two tables: ``missed``
    (1 missed, 0 detected, nan without the organ in the reference) and ``false_positive`` (1 false positive, 0
    absent, nan with the organ in the reference).
    """
    if missed == 1:
        return MISSED
    if missed == 0:
        return DETECTED
    if false_positive == 1:
        return FALSE_POSITIVE
    if false_positive == 0:
        return ABSENT
    raise ValueError(f"missed={missed}, false_positive={false_positive}: one of them must be 0 or 1.")


def _names(organs: Sequence[str] | str | None) -> list[str]:
    if not organs:
        return []
    return [o.strip() for o in organs.split(",")] if isinstance(organs, str) else [str(o).strip() for o in organs]


def protocol_organs(
    organs: Sequence[str] | str | None,
    label_names: Mapping[Any, str],
    merged_label_names: Mapping[Any, str],
    merged_label_map: Sequence[int],
) -> dict[str, dict[int, str]]:
    """
    The organs each evaluation protocol scores: ``"all"`` (label -> name of ``label_names``) and ``"merged"`` (merged
    label -> name of ``merged_label_names``, the labels after ``merged_label_map``). Names may come from either table:
    a name of ``label_names`` selects that label and the merged organ it belongs to (``left_kidney`` selects
    ``kidneys``, scored on both kidneys), a merged name selects the merged organ and every label merged into it
    (``kidneys`` selects ``right_kidney`` and ``left_kidney``). ``organs`` None or empty selects every organ.

    Raises:
        ValueError: a name in neither table (listing the valid names), or a ``merged_label_map`` that does not map
            each label of ``label_names`` to a label of ``merged_label_names`` with the background kept at 0.
    """
    full = {int(k): v for k, v in label_names.items()}
    merged = {int(k): v for k, v in merged_label_names.items()}
    mapping = [int(m) for m in merged_label_map]
    if len(mapping) != len(full) or mapping[:1] != [0] or not set(mapping) <= set(merged):
        raise ValueError(
            f"config id 'merged_label_map' {list(merged_label_map)} must give, for each of the {len(full)} labels of "
            f"'label_names', a label of 'merged_label_names' ({sorted(merged)}), with 0 (background) first."
        )
    requested = _names(organs)
    valid = [n for k, n in sorted(full.items()) if k]
    valid += [n for k, n in sorted(merged.items()) if k and n not in valid]
    unknown = [n for n in requested if n not in valid]
    if unknown:
        raise ValueError(
            f"config id 'organs': {unknown} not in the label tables (config ids 'label_names', 'merged_label_names'); "
            f"valid names: {', '.join(valid)}."
        )
    wanted = set(requested)
    chosen = [k for k in sorted(full) if k and (not wanted or full[k] in wanted or merged[mapping[k]] in wanted)]
    return {
        "all": {k: full[k] for k in chosen},
        "merged": {m: merged[m] for m in sorted({mapping[k] for k in chosen})},
    }


def surface_dice_tolerances(
    tolerance_mm: float | Mapping[str, float], label_names: Mapping[Any, str], other_names: Iterable[str] = ()
) -> list[float]:
    """
    Surface Dice tolerance in mm of each foreground class of ``label_names``, in label order.

    Args:
        tolerance_mm: one tolerance for every organ, or organ name -> tolerance with an optional ``"default"`` for the
            organs not named (config id ``surface_dice_tolerance_mm``). Names of BTCV's tables may be there for a
            dataset without them (the shipped table names them); any other name must be one of the classes.
        label_names: label -> name of the classes scored.
        other_names: names that ``tolerance_mm`` may also hold without being scored here (the other protocol's).

    Raises:
        ValueError: a negative or non-numeric tolerance, an unknown name, or an organ without a tolerance.
    """
    organs = [name for label, name in sorted((int(k), v) for k, v in label_names.items()) if label]
    table = dict(tolerance_mm) if isinstance(tolerance_mm, Mapping) else {"default": tolerance_mm}
    bad = {k: v for k, v in table.items() if not _is_tolerance(v)}
    if bad:
        raise ValueError(f"config id 'surface_dice_tolerance_mm': {bad} must be finite numbers of mm >= 0.")
    known = {*organs, *other_names, *BTCV_LABELS.values(), *BTCV_MERGED_LABELS.values(), "default"}
    unknown = sorted(set(table) - known)
    if unknown:
        valid = ", ".join(dict.fromkeys([*organs, *other_names]))
        raise ValueError(
            f"config id 'surface_dice_tolerance_mm' names {unknown}, not in the label tables; valid: default, {valid}."
        )
    missing = [name for name in organs if name not in table and "default" not in table]
    if missing:
        raise ValueError(
            f"config id 'surface_dice_tolerance_mm' has no tolerance for {missing}: add them or a 'default'."
        )
    return [float(table.get(name, table.get("default"))) for name in organs]


def _is_tolerance(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _extents(mask: torch.Tensor) -> list[torch.Tensor]:
    """
    Per spatial axis, which slices of each channel of ``mask`` ``(B, C, X, Y, Z)`` hold a voxel: ``(B, C, X)``,
    ``(B, C, Y)``, ``(B, C, Z)`` bool, from two passes over the volume (reduce Z first, then the small rest).
    """
    in_plane = mask.amax(-1) > 0
    return [in_plane.any(-1), in_plane.any(-2), mask.amax(dim=(2, 3)) > 0]


def _per_organ(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    include_background: bool,
    spacing: Any,
    measure: Callable[[torch.Tensor, torch.Tensor, Any, int], torch.Tensor],
    one_sided: float,
) -> torch.Tensor:
    """
    ``measure(pred, ref, spacing, channel)`` on each detected pair, ``one_sided`` for a missed or false-positive pair,
    nan for an absent one; returns ``(B, C)``.

    ``measure`` gets ``(1, 1, x, y, z)`` crops around the pair's voxels, one background voxel wider on every side
    where the image allows: MONAI's edge and distance functions scan their whole input for each organ, which costs
    more than the distances on a CT volume, and the crop changes neither the edges nor the distances.
    """
    if not include_background:
        y_pred, y = ignore_background(y_pred, y)
    pred_extents, ref_extents = _extents(y_pred), _extents(y)
    predicted, present = pred_extents[0].any(-1), ref_extents[0].any(-1)
    out = torch.full(predicted.shape, math.nan, dtype=torch.float, device=y_pred.device)
    out[predicted ^ present] = one_sided
    spacings = prepare_spacing(spacing=spacing, batch_size=y_pred.shape[0], img_dim=y_pred.ndim - 2)
    for b, c in torch.nonzero(predicted & present).tolist():
        box = [b, c]
        for p, r in zip(pred_extents, ref_extents):
            index = torch.nonzero(p[b, c] | r[b, c])[:, 0]
            box.append(slice(max(int(index[0]) - 1, 0), int(index[-1]) + 2))
        crop = (slice(b, b + 1), slice(c, c + 1), *box[2:])
        value = measure(y_pred[crop], y[crop], spacings[b], c)
        out[b, c] = value.reshape(()).to(out.device)
    return out


class OrganDiceMetric(DiceMetric):
    """
    Dice per organ with nnU-Net's convention for empty sides: 0 when only one of prediction and reference has the
    organ, nan (left out of means) only when neither has it. Inputs are one-hot ``(B, C, X, Y, Z)``; the result is
    ``(B, C)`` (``C - 1`` without the background).
    """

    def __init__(
        self,
        include_background: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(
            include_background=include_background, reduction=reduction, get_not_nans=get_not_nans, ignore_empty=False
        )

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        dice = super()._compute_tensor(y_pred, y)  # 1 for an organ in neither
        predicted, present = organ_presence(y_pred, y, self.include_background)
        return dice.masked_fill(~(predicted | present).to(dice.device), math.nan)


class DetectedHausdorffDistanceMetric(HausdorffDistanceMetric):
    """
    MONAI's Hausdorff distance (``percentile=95`` for HD95) on the detected organs only, nan for every other pair
    (:class:`OrganDetectionErrorMetric` counts the missed and false-positive ones); ``spacing`` as in MONAI.
    Inputs one-hot ``(B, C, X, Y, Z)``, result ``(B, C)``.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        def measure(p: torch.Tensor, t: torch.Tensor, spacing: Any, c: int) -> torch.Tensor:
            return compute_hausdorff_distance(
                p,
                t,
                include_background=True,
                distance_metric=self.distance_metric,
                percentile=self.percentile,
                directed=self.directed,
                spacing=spacing,
            )

        return _per_organ(y_pred, y, self.include_background, kwargs.get("spacing"), measure, math.nan)


class DetectedSurfaceDiceMetric(SurfaceDiceMetric):
    """
    MONAI's normalised surface Dice with ``class_thresholds`` in the unit of ``spacing`` (mm with
    :class:`PhysicalSurfaceDice`): computed on detected organs, 0 on missed and false-positive ones (as MONAI does),
    nan when neither side has the organ. Inputs one-hot ``(B, C, X, Y, Z)``, result ``(B, C)``.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        channels = y_pred.shape[1] - (0 if self.include_background else 1)
        if len(self.class_thresholds) != channels:
            raise ValueError(f"{len(self.class_thresholds)} class_thresholds for {channels} classes scored.")

        def measure(p: torch.Tensor, t: torch.Tensor, spacing: Any, c: int) -> torch.Tensor:
            return compute_surface_dice(
                p,
                t,
                [self.class_thresholds[c]],
                include_background=True,
                distance_metric=self.distance_metric,
                spacing=spacing,
                use_subvoxels=self.use_subvoxels,
            )

        return _per_organ(y_pred, y, self.include_background, kwargs.get("spacing"), measure, 0.0)


class OrganDetectionErrorMetric(CumulativeIterationMetric):
    """
    Detection errors per organ. ``error="missed"``: 1 when the reference has the organ and the prediction does not,
    0 when both have it, nan when the reference does not. ``error="false_positive"``: 1 when only the prediction has
    it, 0 when neither does, nan when the reference has it. The per-organ mean over cases is a rate (of cases with,
    resp. without, the organ); the default ``reduction="sum"`` counts the (case, organ) pairs.
    Inputs one-hot ``(B, C, X, Y, Z)``, result ``(B, C)``.
    """

    def __init__(
        self,
        error: str = "missed",
        include_background: bool = False,
        reduction: MetricReduction | str = MetricReduction.SUM,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        if error not in DETECTION_ERRORS:
            raise ValueError(f"error must be one of {DETECTION_ERRORS}, got {error!r}.")
        self.error = error
        self.include_background = include_background
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        predicted, present = organ_presence(y_pred, y, self.include_background)
        if self.error == "missed":
            return (~predicted).float().masked_fill(~present, math.nan)
        return predicted.float().masked_fill(present, math.nan)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> Any:
        """Reduce the buffer (nan left out): by default the number of errors."""
        f, not_nans = do_metric_reduction(self.get_buffer(), reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class OrganDice(IgniteMetricHandler):
    """
    Ignite handler of :class:`OrganDiceMetric`, the drop-in replacement of MONAI's ``MeanDice``: the default
    ``reduction="mean"`` averages each case's organs (nan left out), then the cases.
    """

    def __init__(
        self,
        include_background: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = OrganDiceMetric(include_background=include_background, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class PhysicalMetricHandler(IgniteMetricHandler):
    """Ignite handler that gives its metric each case's voxel spacing in mm, read from the label's affine."""

    @reinit__is_reduced
    def update(self, output: Sequence) -> None:
        if len(output) != 2:
            raise ValueError(f"output must have length 2, got {len(output)}.")
        y_pred, y = output
        for i in range(len(y)):  # one case at a time: each has its own spacing
            label = y[i]
            self.metric_fn(y_pred[i][None], label[None], spacing=voxel_spacing(label))


class PhysicalHausdorffDistance(PhysicalMetricHandler):
    """
    Handler of :class:`DetectedHausdorffDistanceMetric` in millimetres (after ``Invertd`` or a label loaded from its
    file, the original scan's geometry). Use ``percentile=95`` for HD95.
    """

    def __init__(
        self,
        include_background: bool = False,
        distance_metric: str = "euclidean",
        percentile: float | None = None,
        directed: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = DetectedHausdorffDistanceMetric(
            include_background=include_background,
            distance_metric=distance_metric,
            percentile=percentile,
            directed=directed,
            reduction=reduction,
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class PhysicalSurfaceDice(PhysicalMetricHandler):
    """
    Handler of :class:`DetectedSurfaceDiceMetric` with ``class_thresholds`` in mm (one per organ scored, see
    :func:`surface_dice_tolerances`).
    """

    def __init__(
        self,
        class_thresholds: Sequence[float],
        include_background: bool = False,
        distance_metric: str = "euclidean",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = DetectedSurfaceDiceMetric(
            class_thresholds=list(class_thresholds),
            include_background=include_background,
            distance_metric=distance_metric,
            reduction=reduction,
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class OrganDetectionErrors(IgniteMetricHandler):
    """Handler of :class:`OrganDetectionErrorMetric`: the number of missed (or false-positive) (case, organ) pairs."""

    def __init__(
        self,
        error: str = "missed",
        include_background: bool = False,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = OrganDetectionErrorMetric(error=error, include_background=include_background)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class QuietMetricsSaver(MetricsSaver):
    """
    MONAI's ``MetricsSaver`` without numpy's "All-NaN slice" and "Mean of empty slice" warnings: an organ present in
    every case has no false-positive values (and one never detected no HD95), so its summary column is all nan by
    design; the summary CSVs say ``nan`` and ``notnans`` 0 there.
    """

    def __call__(self, engine: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            super().__call__(engine)
