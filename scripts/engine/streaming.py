"""
Bounded-memory whole-volume segmentation: a Gaussian sliding window whose blended logits are finalised slice by slice
along the last spatial axis, turned into probabilities and resampled to the original image grid in chunks, so that
the only whole-volume tensor besides the input is the uint8 label map in the original geometry.

It replaces ``SlidingWindowInferer`` + ``Activationsd(softmax)`` + ``Invertd`` + ``AsDiscreted(argmax)``, whose
float32 (and, while resampling, float64) probability volumes grow with the scan's length.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.data.utils import AFFINE_TOL, compute_importance_map, dense_patch_slices
from monai.inferers import Inferer
from monai.transforms import SpatialResample
from monai.utils import BlendMode, ensure_tuple_rep, fall_back_tuple, look_up_option, optional_import

from scripts.engine.inferers import FlipTTA

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["StreamingSegmentationInferer", "scan_interval", "CHUNK_VOXELS"]

#: original-grid voxels resampled per chunk (14 float64 channels: ~117 MiB per 2**20 voxels)
CHUNK_VOXELS = 1 << 20
#: classes a uint8 label map can hold
MAX_CLASSES = 256
#: the dtype ``Spacingd`` resamples in by default, which ``Invertd`` reuses for its inverse
RESAMPLE_DTYPE = torch.float64
#: slack (in preprocessed voxels) on a chunk's source box against rounding of the sampling grid
_GRID_ROUNDING = 1e-4


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    """
    The window step per axis of MONAI's ``sliding_window_inference``: ``int(roi * (1 - overlap))``, at least 1, or the
    window size where the window spans the axis.
    """
    return tuple(int(r) if r == s else max(int(r * (1 - o)), 1) for s, r, o in zip(image_size, roi_size, overlap))


def _ring_pieces(start: int, stop: int, length: int) -> list[tuple[slice, slice]]:
    """Pieces ``(ring slice, offset slice)`` of the positions ``[start, stop)`` in a ring buffer of ``length``."""
    head = start % length
    first = min(stop - start, length - head)
    pieces = [(slice(head, head + first), slice(0, first))]
    if first < stop - start:
        pieces.append((slice(0, stop - start - first), slice(first, stop - start)))
    return pieces


class _Chunk(NamedTuple):
    """Original-grid slices ``[start, stop)`` along the chunking axis and the preprocessed box they sample."""

    start: int
    stop: int
    box_lo: tuple[int, int, int]
    box_hi: tuple[int, int, int]

    @property
    def empty(self) -> bool:
        return any(hi <= lo for lo, hi in zip(self.box_lo, self.box_hi))


def _plan_chunks(
    voxel_map: np.ndarray, original_shape: Sequence[int], source_shape: Sequence[int], chunk_voxels: int
) -> tuple[int, list[_Chunk]]:
    """
    Chunk the original grid along the axis that sweeps the preprocessed Z most, and give each chunk the preprocessed
    box its bilinear samples read: the range of its 8 corners (exact, the map is affine), each end widened to the
    two neighbours a sample interpolates between, clipped to ``source_shape``.

    Args:
        voxel_map: (4, 4) map from original voxel indices to preprocessed voxel indices.
        original_shape: original grid size (3 axes).
        source_shape: preprocessed grid size (3 axes).
        chunk_voxels: original voxels per chunk (at least one slice).

    Returns:
        the chunking axis, and the chunks in the order the preprocessed slices they need become available.
    """
    extent = np.abs(voxel_map[2, :3]) * (np.asarray(original_shape) - 1)
    axis = int(np.argmax(extent))
    plane = math.prod(original_shape) // original_shape[axis]
    length = max(1, chunk_voxels // plane)
    chunks = []
    for start in range(0, original_shape[axis], length):
        stop = min(start + length, original_shape[axis])
        ends = [(0, n - 1) for n in original_shape]
        ends[axis] = (start, stop - 1)
        corners = np.array([[*c, 1.0] for c in itertools.product(*ends)]).T
        mapped = (voxel_map @ corners)[:3]
        lo = np.maximum(np.floor(mapped.min(1) - _GRID_ROUNDING), 0).astype(int)
        hi = np.minimum(np.floor(mapped.max(1) + _GRID_ROUNDING) + 2, source_shape).astype(int)
        chunks.append(_Chunk(start, stop, tuple(lo.tolist()), tuple(hi.tolist())))
    return axis, sorted(chunks, key=lambda c: c.box_lo[2])


def _channel_argmax(probabilities: torch.Tensor) -> torch.Tensor:
    """
    uint8 index of the first maximum over the channels of ``probabilities`` (C, ...), as ``argmax(dim=0)``: a running
    maximum over the channels, faster on CPU than ``torch.argmax``'s reduction over the outer axis
    (``docs/benchmarks.md``, "Streaming inference").
    """
    if probabilities.shape[0] > MAX_CLASSES:
        raise ValueError(f"uint8 labels hold at most {MAX_CLASSES} classes, got {probabilities.shape[0]} channels.")
    best = probabilities[0].clone()
    index = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
    for channel in range(1, probabilities.shape[0]):
        index.masked_fill_(probabilities[channel] > best, channel)  # strictly greater: ties keep the first channel
        torch.maximum(best, probabilities[channel], out=best)
    return index


def _per_item(value: torch.Tensor | np.ndarray | Sequence, item_ndim: int, batch_size: int) -> torch.Tensor:
    """``value`` as a tensor with a leading batch axis of ``batch_size`` (added when it has ``item_ndim`` dims)."""
    value = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    return value.expand(batch_size, *value.shape) if value.ndim == item_ndim else value


class StreamingSegmentationInferer(Inferer):
    """
    Gaussian sliding-window segmentation straight to a label map in the original image geometry, in memory that does
    not grow with the scan's length.

    Windows are placed as MONAI's ``sliding_window_inference`` places them (same steps, same symmetric padding with
    ``pad_value`` of axes shorter than the window, same clamped Gaussian importance map), but taken in the order of
    their start along the last spatial axis (Z). Their weighted logits go into a ring buffer spanning only the slices
    that windows still touch; a slice no later window touches is divided by its summed weight (the logits
    ``sliding_window_inference`` returns) and turned into probabilities by a softmax. Chunks of the original grid are
    then resampled from the finalised slices (bilinear, zero padding, float64: what ``Invertd`` does with the
    inverses of ``CropForegroundd``, ``Spacingd`` and ``Orientationd``; a nearest copy where the grids differ by whole
    voxels, as when ``Spacingd`` kept the voxels), their argmax written into the uint8 label map, and probability
    slices no remaining chunk needs are dropped. Peak memory: the input, the label map, the ring
    (``C x X x Y x (window depth + spread of one window batch)`` float32) and a few chunks' worth of probabilities.

    Used as ``inferer(inputs, network)`` by MONAI's ``SupervisedEvaluator``; postprocessing is only ``SaveImaged``
    (``resample=False``).

    Args:
        roi_size: window size (3 spatial axes); non-positive components take the image's size.
        sw_batch_size: windows per network call.
        overlap: overlap of neighbouring windows per axis, in [0, 1).
        mode: blending, ``"gaussian"`` or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        pad_value: value padding axes shorter than the window (for CT, the normalised intensity of air).
        progress: show a progress bar over the window batches.
        tta_axes: spatial axes mirrored per window (:class:`scripts.engine.inferers.FlipTTA`); empty for none.
        precision: arithmetic of the network, see :class:`scripts.engine.inferers.FlipTTA`.
        chunk_voxels: original-grid voxels resampled at once.

    Example::

        inferer = StreamingSegmentationInferer((192, 192, 48), sw_batch_size=2, overlap=0.5, pad_value=-7.6)
        labels = inferer(batch["image"], network)  # uint8 (B, 1, *original spatial shape), original affine
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        mode: BlendMode | str = BlendMode.GAUSSIAN,
        sigma_scale: Sequence[float] | float = 0.125,
        pad_value: float = 0.0,
        progress: bool = False,
        tta_axes: Sequence[int] = (),
        precision: str = "float32",
        chunk_voxels: int = CHUNK_VOXELS,
    ) -> None:
        super().__init__()
        self.overlap = ensure_tuple_rep(overlap, 3)
        if any(not 0 <= o < 1 for o in self.overlap):
            raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}.")
        if sw_batch_size < 1 or chunk_voxels < 1:
            raise ValueError(f"sw_batch_size and chunk_voxels must be positive, got {sw_batch_size}, {chunk_voxels}.")
        self.roi_size = ensure_tuple_rep(roi_size, 3)
        self.sw_batch_size = sw_batch_size
        self.mode = look_up_option(mode, BlendMode)
        self.sigma_scale = sigma_scale
        self.pad_value = float(pad_value)
        self.progress = progress and has_tqdm
        self.tta_axes = tuple(tta_axes)
        self.precision = precision
        self.chunk_voxels = chunk_voxels
        FlipTTA(nn.Identity(), self.tta_axes, precision)  # validates the axes and the precision now
        self._resample = SpatialResample(
            mode="bilinear", padding_mode="zeros", align_corners=False, dtype=RESAMPLE_DTYPE
        )

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor]
    ) -> MetaTensor:
        """
        ``inputs``: preprocessed image MetaTensor (B, C_in, X, Y, Z) whose ``affine`` is the preprocessed grid's and
        whose meta has ``original_affine`` and ``spatial_shape`` (set by ``LoadImage``) -> uint8 label MetaTensor
        (B, 1, *spatial_shape) with the original affine and the input's other metadata.
        """
        if not isinstance(inputs, MetaTensor) or not {"original_affine", "spatial_shape"} <= set(inputs.meta):
            raise ValueError("inputs must be a MetaTensor with 'original_affine' and 'spatial_shape' in its meta.")
        batch_size = inputs.shape[0]
        affines = _per_item(inputs.affine, 2, batch_size).to(torch.float64)
        original_affines = _per_item(inputs.meta["original_affine"], 2, batch_size).to(torch.float64)
        shapes = {tuple(int(n) for n in s) for s in _per_item(inputs.meta["spatial_shape"], 1, batch_size)}
        if len(shapes) != 1:
            raise ValueError(f"the items of a batch must share their original spatial shape, got {sorted(shapes)}.")
        (shape,) = shapes
        predictor = FlipTTA(network, self.tta_axes, self.precision)
        images = inputs.as_tensor()
        labels = torch.zeros((batch_size, 1, *shape), dtype=torch.uint8, device=inputs.device)
        for b in range(batch_size):
            self._segment(images[b], predictor, affines[b].cpu().numpy(), original_affines[b].cpu().numpy(), labels[b])
        out = MetaTensor(labels)  # the meta set afterwards: MetaTensor(meta=...) rejects batched channel metadata
        out.meta = {**inputs.meta, "affine": original_affines if inputs.is_batch else original_affines[0]}
        out.applied_operations = [[] for _ in range(batch_size)] if inputs.is_batch else []  # nothing to invert
        out.is_batch = inputs.is_batch
        return out

    def blended_logits(self, inputs: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """
        The blended logits (B, C_out, X, Y, Z) of ``inputs`` (B, C_in, X, Y, Z), as ``sliding_window_inference``
        with ``cval=pad_value`` returns them: the stream :meth:`__call__` resamples, gathered for checking
        (whole-volume memory).
        """
        predictor = FlipTTA(network, self.tta_axes, self.precision)
        images = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        return torch.stack([torch.cat([s for _, s in self._stitch(image, predictor)], dim=-1) for image in images])

    def windows(self, spatial_size: Sequence[int]) -> list[tuple[slice, slice, slice]]:
        """The windows over an image of ``spatial_size`` (padded to the window where smaller), sorted by Z start."""
        roi = fall_back_tuple(self.roi_size, spatial_size)
        padded = [max(s, r) for s, r in zip(spatial_size, roi)]
        slices = dense_patch_slices(padded, roi, scan_interval(padded, roi, self.overlap))
        return sorted(slices, key=lambda w: w[-1].start)  # stable: MONAI's order within one Z start

    def _stitch(self, image: torch.Tensor, predictor: nn.Module) -> Iterator[tuple[int, torch.Tensor]]:
        """
        ``image`` (C_in, X, Y, Z) -> blended logits slice by slice in increasing Z, as ``(z, logits (C_out, X, Y, 1))``,
        each as soon as no remaining window touches slice ``z``.
        """
        size = tuple(image.shape[1:])
        roi = fall_back_tuple(self.roi_size, size)
        padded = tuple(max(s, r) for s, r in zip(size, roi))
        pad = [(p - s) // 2 for p, s in zip(padded, size)]  # sliding_window_inference's symmetric padding
        crop = tuple(slice(p, p + s) for p, s in zip(pad, size))
        windows = self.windows(size)
        batches = [windows[i : i + self.sw_batch_size] for i in range(0, len(windows), self.sw_batch_size)]
        # the slices a batch leaves open: from its first window's start (all before are final) to its last's end
        depth = max(batch[-1][-1].stop - batch[0][-1].start for batch in batches)
        importance = compute_importance_map(
            roi, mode=self.mode, sigma_scale=self.sigma_scale, device=image.device, dtype=image.dtype
        )
        weights = torch.zeros((*padded[:2], depth), dtype=image.dtype, device=image.device)
        ring: torch.Tensor | None = None  # (C_out, X, Y, depth), allocated once the channels are known
        done = 0  # padded Z below which the logits have been yielded
        for index, batch in enumerate(tqdm(batches) if self.progress else batches):
            logits = predictor(self._window_batch(image, batch, pad, padded)).to(image.dtype) * importance
            if ring is None:
                ring = torch.zeros((logits.shape[1], *padded[:2], depth), dtype=image.dtype, device=image.device)
            for window, window_logits in zip(batch, logits):
                for ring_z, window_z in _ring_pieces(window[2].start, window[2].stop, depth):
                    ring[:, window[0], window[1], ring_z] += window_logits[..., window_z]
                    weights[window[0], window[1], ring_z] += importance[..., window_z]
            del logits  # not held while the consumer resamples the finished slices
            final = batches[index + 1][0][2].start if index + 1 < len(batches) else padded[2]
            # one slice at a time: the consumer keeps only the slices it still needs, the ring holds the rest
            for z in range(max(done, crop[2].start), min(final, crop[2].stop)):
                slot = slice(z % depth, z % depth + 1)
                yield z - pad[2], ring[:, crop[0], crop[1], slot] / weights[crop[0], crop[1], slot]
            for ring_z, _ in _ring_pieces(done, final, depth):
                ring[..., ring_z] = 0
                weights[..., ring_z] = 0
            done = final

    def _window_batch(
        self, image: torch.Tensor, batch: Sequence[tuple[slice, ...]], pad: Sequence[int], padded: Sequence[int]
    ) -> torch.Tensor:
        """
        (len(batch), C_in, *roi) windows of ``image`` (C_in, X, Y, Z), given in the coordinates of ``image`` padded
        to ``padded`` with ``pad`` voxels before it; the padding is ``pad_value``.
        """
        if tuple(padded) == tuple(image.shape[1:]):
            return torch.stack([image[(slice(None), *window)] for window in batch])
        out = torch.full(
            (len(batch), image.shape[0], *(w.stop - w.start for w in batch[0])),
            self.pad_value,
            dtype=image.dtype,
            device=image.device,
        )
        for item, window in zip(out, batch):
            source = [slice(max(w.start - p, 0), min(w.stop - p, n)) for w, p, n in zip(window, pad, image.shape[1:])]
            target = [slice(s.start - (w.start - p), s.stop - (w.start - p)) for s, w, p in zip(source, window, pad)]
            item[(slice(None), *target)] = image[(slice(None), *source)]
        return out

    def _segment(
        self,
        image: torch.Tensor,
        predictor: nn.Module,
        affine: np.ndarray,
        original_affine: np.ndarray,
        labels: torch.Tensor,
    ) -> None:
        """Writes into ``labels`` (1, *original shape) the labels of ``image`` (C_in, X, Y, Z) on ``affine``'s grid."""
        original_shape = tuple(labels.shape[1:])
        voxel_map = np.linalg.solve(affine, original_affine)  # original voxel -> preprocessed voxel
        whole = np.round(voxel_map)
        # within MONAI's tolerance of whole voxels, Spacingd left the voxels as they were (the target spacing, up to the
        # file's float32 rounding) and Invertd only flips and pads: nearest sampling is that exact copy, where bilinear
        # would give the voxels next to the crop a rounding-noise weight (and the edge's label instead of background)
        exact = np.allclose(voxel_map, whole, rtol=0, atol=AFFINE_TOL)
        voxel_map = whole if exact else voxel_map
        axis, chunks = _plan_chunks(voxel_map, original_shape, image.shape[1:], self.chunk_voxels)
        pending = [c for c in chunks if not c.empty]  # the others lie outside the preprocessed grid: background
        probabilities: dict[int, torch.Tensor] = {}  # z -> finalised (C, X, Y, 1) slice, while a chunk needs it
        for z, logits in self._stitch(image, predictor):
            if not pending:
                break  # the rest of the preprocessed grid lies outside the original one
            if z < pending[0].box_lo[2]:
                continue  # below every remaining chunk's box
            with torch.autocast(image.device.type, enabled=False):  # float64 resampling, also under the engine's AMP
                probabilities[z] = torch.softmax(logits, dim=0)
                while pending and pending[0].box_hi[2] <= z + 1:
                    chunk = pending.pop(0)
                    index = [slice(None)] * 4
                    index[axis + 1] = slice(chunk.start, chunk.stop)
                    labels[tuple(index)] = self._resample_chunk(
                        probabilities, chunk, voxel_map, axis, original_shape, exact
                    )
                    needed = pending[0].box_lo[2] if pending else z + 1
                    for stale in [k for k in probabilities if k < needed]:
                        del probabilities[stale]

    def _resample_chunk(
        self,
        probabilities: Mapping[int, torch.Tensor],
        chunk: _Chunk,
        voxel_map: np.ndarray,
        axis: int,
        original_shape: Sequence[int],
        exact: bool,
    ) -> torch.Tensor:
        """
        Argmax (uint8, (chunk shape)) of the probabilities resampled to one chunk of the original grid: bilinearly, or
        where ``voxel_map`` maps whole voxels to whole voxels (``exact``), by copying the nearest.
        """
        (x0, y0, z0), (x1, y1, z1) = chunk.box_lo, chunk.box_hi
        source = torch.cat([probabilities[z][:, x0:x1, y0:y1] for z in range(z0, z1)], dim=-1)
        to_chunk = np.eye(4)
        to_chunk[axis, 3] = chunk.start
        to_box = np.eye(4)
        to_box[:3, 3] = -np.asarray(chunk.box_lo)
        shape = list(original_shape)
        shape[axis] = chunk.stop - chunk.start
        # a plain tensor has the identity affine: the destination affine is then the chunk-voxel -> box-voxel map
        resampled = self._resample(
            source,
            dst_affine=torch.as_tensor(to_box @ voxel_map @ to_chunk),
            spatial_size=shape,
            mode="nearest" if exact else "bilinear",
        )
        return _channel_argmax(torch.as_tensor(resampled))
