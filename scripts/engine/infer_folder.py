"""
Inference over a folder in which every entry is either segmented or reported with its reason.

``configs/inference.json`` builds an :class:`InferenceInputs` from the input folder (config id ``dataset_dir``).
Its ``check()`` runs in ``initialize``, before the network is built, and finds every problem it can before any
computing:

- discovery: NIfTI files (``.nii``, ``.nii.gz``, any letter case) and DICOM series (a sub-folder, or DICOM files
  directly in the folder; several series in one folder are segmented one by one) are cases; hidden entries and
  entries not matching the optional ``image_pattern`` are listed as ignored; anything else is skipped with its
  reason;
- every case is read once: unreadable, non-3D, NaN/Inf or constant images, undefined geometry
  (:mod:`scripts.data.geometry`) and gapped or tilted DICOM series (:mod:`scripts.data.dicom`) are set aside with their
  reason; a scan thinner than the training patch gets a warning;
- outputs: the run is refused when the output folder is a file, inside the input folder, not writable or too
  full, or when an output already exists (config id ``overwrite``); with ``skip_existing`` a case whose outputs all
  exist is listed as already done and the others are segmented (an interrupted run continues).

Under ``torch.distributed`` (``torchrun`` with ``configs/multi_gpu_inference.json``) every rank discovers the same
cases, the ranks read their share of the checks and exchange the results, and each rank segments its shard
(:func:`shard_cases`: every case once, balanced by resampled size); ``finalize()`` gathers the ranks' results, rank
0 prints one summary, and every rank exits with status 1 when any case was not segmented.

During the run :meth:`InferenceInputs.guard` and :meth:`InferenceInputs.run_case` (the evaluator's
``iteration_update``) set aside a case that fails while it is loaded or predicted, so that the other cases are
still segmented; ``finalize()`` prints a summary of every entry and exits with status 1 when anything was not
segmented.

:class:`AtomicNibabelWriter` makes ``SaveImaged`` write each segmentation to a temporary file and rename it into
place: an interrupted run never leaves a truncated ``*_seg.nii.gz`` that looks finished.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, NibabelWriter

from scripts.data.checks import check_image_label_pair, check_image_values
from scripts.engine.atomic import atomic_output, stale_temporaries

__all__ = [
    "InferenceInputs",
    "InputError",
    "item_case_name",
    "Case",
    "check_image",
    "nifti_case_name",
    "case_name",
    "output_path",
    "AtomicNibabelWriter",
    "shard_cases",
]

logger = logging.getLogger(__name__)

_NIFTI = (".nii.gz", ".nii")

#: a uint8 label map compresses (gzip) to well under this fraction of its voxel count: the free-space estimate
OUTPUT_BYTES_PER_VOXEL = 0.125
#: room for each case's overlay PNG, measurement CSV and temporary file
OUTPUT_BYTES_PER_CASE = 4 * 2**20

#: the batch key that carries the case name, and the one that marks a case whose loading failed
CASE_KEY = "case"
FAILURE_KEY = "case_failure"

_ANATOMICAL_AXES = ("R-L", "A-P", "S-I")


class InputError(ValueError):
    """An inference run that cannot start: the message names the folder or files and what to do."""


def _within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _source_key(source: str) -> str:
    """``source`` as ``LoadImage`` writes it into ``filename_or_obj``."""
    return f"{Path(source).expanduser()}"


def is_nifti(path: str) -> bool:
    return path.lower().endswith(_NIFTI)


def nifti_case_name(path: str) -> str:
    """The file name without ``.nii`` / ``.nii.gz`` in any letter case: ``/d/Case.01.NII.GZ`` -> ``Case.01``."""
    name = os.path.basename(path)
    for ext in _NIFTI:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def case_name(path: str) -> str:
    """Case name of an image path: the file name without ``.nii.gz``/``.nii`` (any letter case), or a folder's name."""
    return nifti_case_name(os.path.normpath(path))


def item_case_name(data: Mapping[Hashable, Any], source: str) -> str:
    """The case name of a (collated) item: its ``"case"`` entry, else :func:`case_name` of its ``source`` path."""
    case = data.get(CASE_KEY)
    return str(case[0] if isinstance(case, (list, tuple)) else case) if case else case_name(source)


def output_path(case: str, output_dir: str, output_postfix: str = "seg", output_ext: str = ".nii.gz") -> str:
    """The segmentation file of ``case`` (a case name, or a NIfTI path whose case name is used)."""
    name = nifti_case_name(case) if is_nifti(case) else os.path.basename(case)
    return os.path.join(output_dir, f"{name}_{output_postfix}{output_ext}" if output_postfix else f"{name}{output_ext}")


def check_image(path: str) -> list[str]:
    """
    Check one input NIfTI file: readable completely, 3D (a trailing singleton dimension is allowed), geometry
    defined, no NaN/Inf, not one constant value; warns when it does not look like CT in HU.

    Returns:
        problem strings ``"<path>: <problem>"``; empty when the image is fine.
    """
    return check_image_label_pair(path, None, num_classes=2)


@dataclass
class Case:
    """
    One image to segment.

    Attributes:
        name: the case name; the output is ``<output_dir>/<name>_<postfix>.nii.gz``.
        source: what ``LoadImaged`` reads: a NIfTI path or a DICOM series reference.
        shown: how messages name the case (the file, or the folder and series UID).
        shape: spatial shape (X, Y, Z) once checked.
        affine: voxel-to-RAS affine once checked.
        warnings: warnings raised while checking it.
        series: the checked DICOM series (:class:`scripts.data.dicom.DicomSeries`) of a DICOM case, else None.
    """

    name: str
    source: str
    shown: str
    shape: tuple[int, ...] = ()
    affine: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    series: Any = None

    @property
    def item(self) -> dict[str, str]:
        return {"image": self.source, CASE_KEY: self.name}


def _strip(problems: Sequence[str], shown: str) -> str:
    return "; ".join(p[len(shown) + 2 :] if p.startswith(f"{shown}: ") else p for p in problems)


def thin_scan_warning(
    shape: Sequence[int], affine: np.ndarray, patch_size: Sequence[int], target_spacing: Sequence[float]
) -> str | None:
    """
    A warning when the scan, resampled to ``target_spacing`` (RAS axes), is smaller than ``patch_size`` along an
    axis: the sliding window then pads it (with air) and the network sees less context than it was trained on.
    None when the scan covers the patch.
    """
    columns = np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    short = []
    for ras in range(3):
        axis = int(np.argmax(np.abs(columns[ras])))
        extent = float(shape[axis] * spacing[axis])
        needed = float(patch_size[ras] * target_spacing[ras])
        if extent < needed - 1e-6:
            short.append(
                f"{extent:.1f} mm along {_ANATOMICAL_AXES[ras]} ({shape[axis]} voxels of {spacing[axis]:.2f} mm) "
                f"against the training patch's {needed:.1f} mm ({patch_size[ras]} x {target_spacing[ras]:g} mm)"
            )
    if not short:
        return None
    return (
        "the scan is smaller than the training patch: " + "; ".join(short) + ". It is padded with air to the patch "
        "size; organs cut by the scan's edges are segmented with less context and may be missed or incomplete."
    )


def _rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` process group; (0, 1) in a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_gather(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` in a single process); a collective: every rank calls it."""
    world = _rank_and_world()[1]
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def shard_cases(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """
    Split cases over ``world_size`` ranks, every case exactly once: largest first, each to the rank with the least
    total cost so far (lowest rank on a tie), so that the ranks finish at about the same time. Deterministic: every
    rank computes the same split from the same costs.

    Args:
        costs: the cost of each case (e.g. its voxels at the target spacing).
        world_size: number of ranks, >= 1.

    Returns:
        for each rank, the indices of its cases in increasing order (empty for a rank without a case).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}.")
    loads = [0.0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shards[rank].append(index)
        loads[rank] += costs[index]
    return [sorted(shard) for shard in shards]


class InferenceInputs:
    """
    Finds and checks the inputs and outputs of an inference run before it starts, guards each case while it runs,
    and reports every input folder entry after it.

    Args:
        images: input paths (NIfTI files or DICOM folders); None (default) discovers every case in ``dataset_dir``.
        output_dir: where the segmentations go (config id ``output_dir``).
        dataset_dir: the input folder (config id ``dataset_dir``).
        image_pattern: optional glob pattern (case-insensitive) that ``dataset_dir`` entries must match
            (config id ``image_pattern``; empty: every entry).
        overwrite: allow replacing existing segmentations (config id ``overwrite``); refused by default.
        output_postfix: ``SaveImaged``'s ``output_postfix``.
        output_ext: ``SaveImaged``'s ``output_ext``.
        patch_size: the sliding-window size (config id ``patch_size``), for the thin-scan warning.
        target_spacing: the resampling spacing (config id ``target_spacing``), for the thin-scan warning.
        debug: re-raise a case's failure instead of setting the case aside (config id ``debug``).
        dicom_seg: a DICOM-SEG is written for every DICOM case too (config id ``save_dicom_seg``): each series is
            checked for it, an existing SEG output counts as an existing output, and a NIfTI case gets a warning
            (it has no series to reference; its NIfTI output is written).
        skip_existing: continue an interrupted run (config id ``skip_existing``): a case whose outputs (the
            segmentation files and ``extra_outputs``) all exist is listed as already done and left untouched, the
            other cases are segmented (a partial output of theirs is replaced, temporary files of a killed write
            are removed). Refused together with ``overwrite``.
        extra_outputs: the other files the run writes for each case, relative to ``output_dir`` with ``{case}`` for
            the case name (e.g. ``["{case}.png"]``): with ``skip_existing`` a case missing one is segmented again.

    Examples::

        inputs = InferenceInputs(None, "/data/pred", "/data/img").check()  # raises on a setup problem
        dataset = Dataset(inputs.items, inputs.guard(preprocessing))
        evaluator = SupervisedEvaluator(..., iteration_update=inputs.run_case)
        ...
        inputs.finalize()  # summary; SystemExit(1) if an entry was not segmented
    """

    def __init__(
        self,
        images: Sequence[str] | str | None = None,
        output_dir: str = "./outputs",
        dataset_dir: str | None = None,
        image_pattern: str | None = None,
        overwrite: bool = False,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        patch_size: Sequence[int] | None = None,
        target_spacing: Sequence[float] | None = None,
        debug: bool = False,
        dicom_seg: bool = False,
        skip_existing: bool = False,
        extra_outputs: Sequence[str] = (),
    ) -> None:
        if overwrite and skip_existing:
            raise InputError(
                "overwrite and skip_existing are both on: --overwrite True replaces every existing output, "
                "--skip_existing True keeps the complete ones. Choose one."
            )
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        self.images_in = None if images is None else [os.fspath(p) for p in images]
        self.output_dir = os.fspath(output_dir)
        self.dataset_dir = None if dataset_dir is None else os.fspath(dataset_dir)
        self.image_pattern = image_pattern or None
        self.overwrite = overwrite
        self.output_postfix = output_postfix
        self.output_ext = output_ext
        self.patch_size = None if patch_size is None else [int(p) for p in patch_size]
        self.target_spacing = None if target_spacing is None else [float(s) for s in target_spacing]
        self.debug = bool(debug)
        self.dicom_seg = bool(dicom_seg)
        self.skip_existing = bool(skip_existing)
        self.extra_outputs = list(extra_outputs)
        self.cases: list[Case] = []
        self.outputs: dict[str, str] = {}
        self.skipped: list[tuple[str, str]] = []
        self.ignored: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str]] = []
        self.done: list[tuple[str, str]] = []
        self.exit_status = 0
        self._shard: list[int] = []
        self._started = 0.0
        self._by_source: dict[str, Case] = {}
        self._nifti_names: dict[str, list[str]] = {}
        self._loose_dicom: dict[str, list[str]] = {}
        self._checked = False

    # -- discovery ------------------------------------------------------------------------------------------

    def _where(self) -> str:
        if self.dataset_dir is None:
            return "the input list"
        pattern = f" matching '{self.image_pattern}'" if self.image_pattern else ""
        return f"{self.dataset_dir}{pattern}"

    def _dicom_cases(self, folder: str, files: Sequence[str] | None = None) -> list[Case]:
        """The series of ``folder`` (or of ``files`` in it) as cases; unusable files and series are reported."""
        from scripts.data.dicom import find_series

        series_list, unused = find_series(folder, files)
        self.ignored += unused
        cases = []
        for series in series_list:
            shown = series.shown
            if series.problems:
                self.skipped.append((shown, _strip(series.problems, shown)))
                continue
            cases.append(Case(series.name, series.reference, shown, tuple(series.shape), series.affine,
                              list(series.warnings), series))  # fmt: skip
        return cases

    def _classify(self, path: str, listed: bool) -> list[Case]:
        """Cases of one entry (``listed``: named by the user rather than found in ``dataset_dir``)."""
        name = os.path.basename(os.path.normpath(path))
        if not listed and name.startswith("."):
            self.ignored.append((path, "hidden entry"))
            return []
        if not listed and self.image_pattern and not fnmatch.fnmatch(name.lower(), self.image_pattern.lower()):
            self.ignored.append((path, f"does not match image_pattern '{self.image_pattern}'"))
            return []
        if os.path.isdir(path):
            reported = len(self.skipped)
            cases = self._dicom_cases(path)
            if not cases and len(self.skipped) == reported:
                self.skipped.append((path, "folder without a DICOM image series (its files are listed as ignored)"))
            return cases
        if not os.path.exists(path):
            self.skipped.append((path, "file not found"))
            return []
        if is_nifti(path):
            return [Case(nifti_case_name(path), path, path)]
        from scripts.data.dicom import is_dicom_file

        if is_dicom_file(path):  # read per folder, with the other DICOM files there, once every entry is classified
            self._loose_dicom.setdefault(os.path.dirname(os.path.abspath(path)), []).append(path)
            return []
        stem = name.split(".")[0]
        sidecar = [
            n for n in self._nifti_names.get(os.path.dirname(os.path.abspath(path)), ()) if nifti_case_name(n) == stem
        ]
        if sidecar:
            self.ignored.append((path, f"sidecar file of {sidecar[0]}"))
            return []
        self.skipped.append(
            (path, "not a NIfTI file (.nii, .nii.gz) or DICOM series: convert it to NIfTI to segment it")
        )
        return []

    def _discover(self) -> list[Case]:
        if self.images_in is not None:
            paths, listed = self.images_in, True
        else:
            paths, listed = [os.path.join(self.dataset_dir, n) for n in sorted(os.listdir(self.dataset_dir))], False
        self._nifti_names, self._loose_dicom = {}, {}
        for p in paths:
            if is_nifti(p):
                self._nifti_names.setdefault(os.path.dirname(os.path.abspath(p)), []).append(os.path.basename(p))
        cases = [c for p in paths for c in self._classify(p, listed)]
        for folder, files in self._loose_dicom.items():
            cases += self._dicom_cases(folder, files)
        return cases

    # -- checks ---------------------------------------------------------------------------------------------

    def _check_case(self, case: Case) -> list[str]:
        """Read ``case`` once: its problems (empty when usable); fills its shape, affine and warnings."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", UserWarning)
            if is_nifti(case.source):
                problems = check_image(case.source)
                if not problems:
                    import nibabel as nib

                    image = nib.load(case.source)
                    case.shape, case.affine = tuple(image.shape[:3]), np.asarray(image.affine)
            else:
                from scripts.data.dicom import read_series

                try:
                    data, _ = read_series(case.series)  # the series found at discovery: its headers are not read again
                    problems = check_image_values(data, case.shown)
                except Exception as e:  # any reader error means the same here: this series cannot be read
                    problems = [f"{case.shown}: unreadable DICOM series ({type(e).__name__}: {e})"]
        case.warnings += [str(w.message) for w in caught]
        if not problems and self.patch_size and self.target_spacing:
            thin = thin_scan_warning(case.shape, case.affine, self.patch_size, self.target_spacing)
            if thin:
                case.warnings.append(f"{case.shown}: {thin}")
        if not problems and self.dicom_seg:
            if case.series is None:
                case.warnings.append(
                    f"{case.shown}: no DICOM-SEG for a NIfTI input (there is no DICOM series to reference); only its "
                    "NIfTI segmentation is written"
                )
            else:
                from scripts.reports.dicom_seg import check_source_series

                problems = check_source_series(case.series)
        return problems

    def _check_output_dir(self) -> None:
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise InputError(f"output_dir {self.output_dir} is a file, not a folder: choose another --output_dir.")
        try:
            os.makedirs(self.output_dir, exist_ok=True)
            handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=self.output_dir)
            os.close(handle)
            os.remove(probe)
        except OSError as e:
            raise InputError(
                f"output_dir {self.output_dir} cannot be written ({e.strerror or e}): choose another --output_dir "
                "or fix its permissions."
            ) from e

    def _check_space(self) -> None:
        needed = sum(OUTPUT_BYTES_PER_VOXEL * int(np.prod(c.shape)) + OUTPUT_BYTES_PER_CASE for c in self.cases)
        if self.dicom_seg:
            from scripts.reports.dicom_seg import SEG_BYTES_PER_VOXEL

            needed += sum(SEG_BYTES_PER_VOXEL * int(np.prod(c.shape)) for c in self.cases if c.series is not None)
        free = shutil.disk_usage(self.output_dir).free
        if free < needed:
            raise InputError(
                f"output_dir {self.output_dir} has {free / 2**20:.0f} MiB free; the {len(self.cases)} segmentation(s) "
                f"need about {needed / 2**20:.0f} MiB. Free some space or choose another --output_dir."
            )

    def check(self) -> InferenceInputs:
        """
        Find the cases and run the checks once (later calls do nothing).

        Raises:
            InputError: the input folder is missing or holds no usable case, the output folder is a file, inside
                the input folder, not writable or too full.
            FileExistsError: outputs exist and ``overwrite`` is False (each is named).
        """
        if self._checked:
            return self
        if self.dataset_dir is not None and not os.path.isdir(self.dataset_dir):
            raise InputError(f"input folder {self.dataset_dir} not found (config id 'dataset_dir').")
        roots = [self.dataset_dir] if self.dataset_dir else []
        roots += [os.path.dirname(os.path.abspath(p)) for p in self.images_in or []]
        for folder in sorted(set(roots)):
            if _within(self.output_dir, folder):
                raise InputError(
                    f"output_dir {self.output_dir} is inside the input folder {folder}: inference never writes next "
                    "to its inputs. Choose another --output_dir."
                )
        self._check_output_dir()
        found = self._discover()
        main = _rank_and_world()[0] == 0  # every rank has the same results: rank 0 reports them
        for case, problems in zip(found, self._check_cases(found)):
            if problems:
                self.skipped.append((case.shown, _strip(problems, case.shown)))
                if main:
                    logger.warning(f"skipping {case.shown}: {self.skipped[-1][1]}")
            else:
                self.cases.append(case)
            for message in case.warnings if main else ():
                logger.warning(message)
        self._set_aside_output_clashes()
        if not self.cases:
            reported = self.skipped + self.ignored
            raise InputError(
                f"no usable input image in {self._where()}"
                + (":\n" + "\n".join(f"  {p}: {r}" for p, r in reported) if reported else " (the folder is empty).")
                + "\nInference reads NIfTI files (.nii, .nii.gz) and DICOM series folders (config id 'dataset_dir')."
            )
        self._sort_out_existing_outputs()
        self._check_space()
        self._by_source = {_source_key(c.source): c for c in self.cases}
        rank, world = _rank_and_world()
        costs = [self._cost(c) for c in self.cases]
        self._shard = shard_cases(costs, world)[rank]
        self._checked = True
        self._started = time.perf_counter()
        if main:
            logger.info(
                f"inference: {len(self.cases)} case(s) to segment into {self.output_dir}"
                + (f", {len(self.done)} already done" if self.done else "")
                + (f", {len(self.skipped)} skipped" if self.skipped else "")
                + (f", {len(self.ignored)} ignored" if self.ignored else "")
                + (
                    f"; {world} ranks, rank 0 segments {len(self._shard)} of them "
                    f"({sum(costs[i] for i in self._shard) / max(sum(costs), 1e-9):.0%} of the resampled voxels; "
                    "the progress shown is rank 0's)"
                    if world > 1
                    else ""
                )
            )
        return self

    def _check_cases(self, cases: Sequence[Case]) -> list[list[str]]:
        """
        :meth:`_check_case` of every case. Under ``torch.distributed`` each rank reads every ``world``-th case and
        the ranks exchange the results, so that they all know every case; they must have found the same cases.
        """
        rank, world = _rank_and_world()
        sources = _all_gather([c.source for c in cases])
        if any(s != sources[0] for s in sources):
            counts = ", ".join(f"rank {r}: {len(s)}" for r, s in enumerate(sources))
            raise InputError(
                f"the ranks found different cases in {self._where()} ({counts}): every node must see the same "
                "input folder (a shared file system) with the same content."
            )
        mine = {
            i: (self._check_case(c), c.shape, c.affine, c.warnings) for i, c in enumerate(cases) if i % world == rank
        }
        results = {i: result for part in _all_gather(mine) for i, result in part.items()}
        problems = []
        for i, case in enumerate(cases):
            found, case.shape, case.affine, case.warnings = results[i]
            problems.append(found)
        return problems

    def _cost(self, case: Case) -> float:
        """The voxels of ``case`` at ``target_spacing`` (its voxel count without one): its share of the work."""
        voxels = float(np.prod(case.shape))
        if self.target_spacing is None or case.affine is None:
            return voxels
        spacing = np.linalg.norm(np.asarray(case.affine, dtype=float)[:3, :3], axis=0)
        return voxels * float(np.prod(spacing) / np.prod(self.target_spacing))

    def expected_files(self, case: Case) -> list[str]:
        """Every file the run writes for ``case``: :meth:`case_outputs`, then ``extra_outputs``."""
        extra = [os.path.join(self.output_dir, template.format(case=case.name)) for template in self.extra_outputs]
        return self.case_outputs(case) + extra

    def _sort_out_existing_outputs(self) -> None:
        """
        Refuse existing segmentation files unless ``overwrite``; with ``skip_existing``, set aside as done the cases
        whose :meth:`expected_files` all exist, after removing what killed writes left behind. Under
        ``torch.distributed`` a file exists when any rank sees it (a shared output folder, or each node's own), and
        no rank writes before all have looked.
        """
        if self.skip_existing:
            for path in (p for c in self.cases for p in self.expected_files(c)):
                for temporary in stale_temporaries(path):
                    with contextlib.suppress(FileNotFoundError):  # another rank removed it first
                        os.remove(temporary)
        seen = [[os.path.exists(p) for p in self.expected_files(c)] for c in self.cases]
        seen = [[any(on_ranks) for on_ranks in zip(*case)] for case in zip(*_all_gather(seen))]
        if self.skip_existing:
            done = {c.name for c, files in zip(self.cases, seen) if all(files)}
            self.done = [(c.shown, self.outputs[c.name]) for c in self.cases if c.name in done]
            self.cases = [c for c in self.cases if c.name not in done]
            return
        existing = [  # expected_files starts with the segmentation files, which zip stops after
            (p, c.shown)
            for c, files in zip(self.cases, seen)
            for p, exists in zip(self.case_outputs(c), files)
            if exists
        ]
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{len(existing)} output file(s) already exist and overwrite is off:\n"
                + "\n".join(f"  {o} (from {i})" for o, i in existing)
                + "\nPass --overwrite True to replace them, --skip_existing True to keep the complete ones and segment "
                "the other cases (an interrupted run continues), or choose another --output_dir."
            )

    def case_outputs(self, case: Case) -> list[str]:
        """The segmentation files of ``case``: its NIfTI output and, for a DICOM case with ``dicom_seg``, its SEG."""
        if not (self.dicom_seg and case.series is not None):
            return [self.outputs[case.name]]
        from scripts.reports.dicom_seg import SEG_EXTENSION

        return [self.outputs[case.name], output_path(case.name, self.output_dir, self.output_postfix, SEG_EXTENSION)]

    def _set_aside_output_clashes(self) -> None:
        """Cases that would write the same output file, or whose output path is a folder, are skipped."""
        by_output: dict[str, list[Case]] = {}
        for case in self.cases:
            by_output.setdefault(
                output_path(case.name, self.output_dir, self.output_postfix, self.output_ext), []
            ).append(case)
        kept = []
        for output, cases in by_output.items():
            if len(cases) > 1:
                others = ", ".join(c.shown for c in cases)
                self.skipped += [(c.shown, f"same output file {output} as {others}: rename one") for c in cases]
            elif os.path.isdir(output):
                self.skipped.append((cases[0].shown, f"the output path {output} is a folder"))
            else:
                kept.append(cases[0])
                self.outputs[cases[0].name] = output
        self.cases = [c for c in self.cases if c in kept]

    # -- the run --------------------------------------------------------------------------------------------

    @property
    def images(self) -> list[str]:
        """The sources of the usable cases (after :meth:`check`)."""
        return [c.source for c in self.cases]

    @property
    def items(self) -> list[dict[str, str]]:
        """
        ``[{"image": source, "case": name}, ...]`` for the dataset: the usable cases once :meth:`check` has run
        (the config's ``initialize`` runs it); nothing before, so that building the config reads no file. Under
        ``torch.distributed``, this rank's shard of them (:func:`shard_cases`).
        """
        return [self.cases[i].item for i in self._shard] if self._checked else []

    def case_of(self, source: Any) -> Case | None:
        """The case loaded from ``source`` (a ``filename_or_obj``), or None."""
        return self._by_source.get(_source_key(str(source))) if source else None

    def name_formatter(self, metadict: Mapping[str, Any] | None, saver: Any = None) -> dict[str, Any]:
        """``SaveImaged``'s ``output_name_formatter``: the output file of a case is named by its case name."""
        case = self.case_of((metadict or {}).get("filename_or_obj"))
        if case is None:
            raise KeyError(f"no inference case was loaded from {(metadict or {}).get('filename_or_obj')!r}")
        return {"subject": f"{case.name}.nii", "idx": None}  # FolderLayout drops the extension it is given

    def guard(self, transform: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``transform`` (the preprocessing) that returns a failure marker instead of raising for one case."""
        return _GuardedTransform(transform, self.debug)

    def run_case(self, engine: Any, batch: Mapping[Hashable, Any]) -> dict:
        """
        The evaluator's ``iteration_update``: MONAI's iteration (inferer, postprocessing) for one case, or, when
        its loading failed or the iteration raises, the case recorded as failed and an empty output.
        """
        name = _first(batch.get(CASE_KEY)) or f"case {engine.state.iteration}"
        failure = _first(batch.get(FAILURE_KEY))
        if failure:
            self._fail(name, failure)
            return {}
        try:
            return engine._iteration(engine, batch)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            if self.debug:
                raise
            self._fail(name, f"{type(e).__name__}: {e}")
            return {}

    def _fail(self, name: str, reason: str) -> None:
        shown = next((c.shown for c in self.cases if c.name == name), name)
        self.failed.append((shown, reason))
        logger.error(f"{shown}: not segmented ({reason}); continuing with the other cases.")

    # -- the report -----------------------------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        """This rank's part of the summary: its cases, the outputs written, the failures, the time since the checks."""
        failed = {s for s, _ in self.failed}
        shard = [self.cases[i] for i in self._shard]
        return {
            "host": socket.gethostname(),
            "cases": len(shard),
            "voxels": sum(self._cost(c) for c in shard),
            "written": [self.outputs[c.name] for c in shard if os.path.exists(self.outputs[c.name])],
            "failed": list(self.failed),
            "missing": [
                (c.shown, self.outputs[c.name])
                for c in shard
                if c.shown not in failed and not os.path.exists(self.outputs[c.name])
            ],  # fmt: skip
            "seconds": time.perf_counter() - self._started,
        }

    def summary(self, records: Sequence[Mapping[str, Any]] | None = None) -> str:
        """
        What was written, what was skipped or failed and why, what was ignored, and the warnings.

        Args:
            records: every rank's ``_record()`` in rank order (:meth:`finalize` gathers them); default this
                process's own.
        """
        records = [self._record()] if records is None else records
        written = sum(len(r["written"]) for r in records)
        failures = [f for r in records for f in r["failed"]]
        missing = [m for r in records for m in r["missing"]]
        total = len(self.cases) + len(self.skipped) + len(self.done)
        lines = [f"inference: wrote {written} of {total} segmentation(s) to {self.output_dir}"]
        if self.done:
            lines.append(f"{len(self.done)} case(s) already done (skip_existing): their outputs were left as they were")
        for title, entries in (
            ("skipped {} input(s) that cannot be used", self.skipped),
            ("{} case(s) failed while being segmented", failures),
        ):
            if entries:
                lines.append(title.format(len(entries)) + ":")
                lines += [f"  {p}: {r}" for p, r in entries]
        if missing:
            lines.append(f"{len(missing)} expected output(s) were not written:")
            lines += [f"  {o} (from {i})" for i, o in missing]
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} entr{'y' if len(self.ignored) == 1 else 'ies'} (not images):")
            lines += [f"  {p}: {r}" for p, r in self.ignored]
        messages = [m for c in self.cases for m in c.warnings]
        if messages:
            lines.append(f"{len(messages)} warning(s):")
            lines += [f"  {m}" for m in messages]
        if len(records) > 1:
            voxels = max(sum(r["voxels"] for r in records), 1e-9)
            lines.append(f"{len(records)} ranks on {len({r['host'] for r in records})} host(s):")
            lines += [
                f"  rank {rank} ({r['host']}): {len(r['written'])} of {r['cases']} case(s) written "
                f"({r['voxels'] / voxels:.0%} of the resampled voxels), {len(r['failed'])} failed, {r['seconds']:.1f} s"
                for rank, r in enumerate(records)
            ]
        return "\n".join(lines)

    def finalize(self, exit_on_failure: bool = True) -> int:
        """
        Print :meth:`summary` (stderr when an input was not segmented) and set :attr:`exit_status`: 1 when an
        input was not segmented, else 0. Under ``torch.distributed`` (a collective: every rank calls it) the ranks'
        results are gathered, rank 0 prints the summary of the whole run, and every rank gets the same status.

        Args:
            exit_on_failure: raise ``SystemExit(1)`` when the status is 1 (:meth:`exit_if_failed`); False lets the
                config release the process group first.

        Returns:
            :attr:`exit_status`.
        """
        self.check()
        rank, world = _rank_and_world()
        records = _all_gather(self._record())
        failed = bool(self.skipped) or any(r["failed"] or r["missing"] for r in records)
        self.exit_status = int(failed)
        if rank == 0:
            print(self.summary(records), file=sys.stderr if failed else sys.stdout, flush=True)
        elif failed:
            print(f"inference (rank {rank}): exit status 1, not every input was segmented (summary on rank 0)",
                  file=sys.stderr, flush=True)  # fmt: skip
        if world > 1:
            torch.distributed.barrier()  # every rank has reported before one exits and torchrun stops the others
        if exit_on_failure:
            self.exit_if_failed()
        return self.exit_status

    def exit_if_failed(self) -> None:
        """Raise ``SystemExit`` with :attr:`exit_status` (set by :meth:`finalize`) when it is not 0."""
        if self.exit_status:
            raise SystemExit(self.exit_status)


def _first(value: Any) -> Any:
    """A batch-of-one value (collation makes lists) as the value itself."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


class _GuardedTransform:
    """Runs a transform; on an exception returns ``{"image": <1 voxel>, "case": ..., "case_failure": reason}``."""

    def __init__(self, transform: Callable[[Any], Any], debug: bool) -> None:
        self.transform = transform
        self.debug = debug

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        try:
            return self.transform(data)
        except Exception as e:
            if self.debug:
                raise
            cause = e
            while cause.__cause__ is not None:  # MONAI wraps a transform's error in "applying transform ..."
                cause = cause.__cause__
            return {
                "image": MetaTensor(torch.zeros(1, 1, 1, 1)),
                CASE_KEY: data.get(CASE_KEY, ""),
                FAILURE_KEY: f"{type(cause).__name__}: {cause}",
            }


class AtomicNibabelWriter(NibabelWriter):
    """
    MONAI's ``NibabelWriter`` writing to a temporary file in the destination folder and renaming it into place:
    a reader (or a later run's existing-output check) never sees a half-written NIfTI file.
    Use with ``SaveImaged(writer="scripts.engine.infer_folder.AtomicNibabelWriter")``.
    """

    def write(self, filename: Any, verbose: bool = False, **obj_kwargs: Any) -> None:
        filename = os.fspath(filename)
        base = os.path.basename(filename)
        ext = ".nii.gz" if base.endswith(".nii.gz") else os.path.splitext(base)[1]  # nibabel picks the format by it
        with atomic_output(filename, suffix=f".tmp{ext}") as temporary:
            super().write(temporary, verbose=False, **obj_kwargs)
        if verbose:
            logger.info(f"writing: {filename}")
