"""
Inference over a folder that reports bad inputs instead of stopping at the first one.

``configs/inference.json`` builds an :class:`InferenceInputs` from the folder's file list. Its ``check()`` runs in
``initialize``, before the network is built: every input is read once; unreadable, non-3D, NaN/Inf or constant
images are set aside with their reason (MONAI's ``SupervisedEvaluator`` would stop at the first one), and the
run is refused, before any computing, when the output folder is the input folder or an output already exists
(config id ``overwrite``). The evaluator then runs over the readable images only, and ``finalize()`` prints a
summary and exits with status 1 when anything was skipped, so that a script notices.

:class:`AtomicNibabelWriter` makes ``SaveImaged`` write each segmentation to a temporary file and rename it into
place: an interrupted run never leaves a truncated ``*_seg.nii.gz`` that looks finished.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.data import NibabelWriter
from monai.data.utils import create_file_basename

from scripts.atomic import atomic_output
from scripts.datalist import check_image_label_pair, check_image_values

__all__ = ["InferenceInputs", "check_image", "output_path", "AtomicNibabelWriter"]

logger = logging.getLogger(__name__)

_NIFTI = (".nii", ".nii.gz")


def _within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_image(path: str) -> list[str]:
    """
    Check one input image: readable completely, 3D (a trailing singleton dimension is allowed), no NaN/Inf, not
    one constant value; warns when it does not look like CT in HU. NIfTI files are read with nibabel, anything
    else (a DICOM series folder, NRRD, MHA, ...) with MONAI's ``LoadImage``.

    Returns:
        problem strings ``"<path>: <problem>"``; empty when the image is fine.
    """
    if os.path.isfile(path) and path.lower().endswith(_NIFTI):
        return check_image_label_pair(path, None, num_classes=2)
    if not os.path.exists(path):
        return [f"{path}: file not found"]
    from monai.transforms import LoadImage

    try:
        data = np.asarray(LoadImage(image_only=True)(path))
    except Exception as e:  # every reader error means the same to the user: this input cannot be read
        detail = str(e).strip().splitlines()
        return [f"{path}: unreadable image ({type(e).__name__}: {detail[-1] if detail else ''})"]
    shape = data.shape[:3] if data.ndim == 4 and data.shape[3] == 1 else data.shape
    if len(shape) != 3:
        return [f"{path}: image is not 3D (shape {tuple(data.shape)}, {data.ndim}D)"]
    return check_image_values(data, path)


def output_path(image: str, output_dir: str, output_postfix: str = "seg", output_ext: str = ".nii.gz") -> str:
    """The file ``SaveImaged(output_dir, output_postfix, output_ext, separate_folder=False)`` writes for ``image``."""
    return create_file_basename(output_postfix, image, output_dir, separate_folder=False, makedirs=False) + output_ext


class InferenceInputs:
    """
    Checks the inputs and outputs of an inference run before it starts and reports what was skipped after it.

    Args:
        images: input image paths (files, or DICOM series folders), e.g. the config's ``datalist``.
        output_dir: where the segmentations go (config id ``output_dir``).
        dataset_dir: the input folder (config id ``dataset_dir``), for the messages and the same-folder check.
        image_pattern: the glob pattern that listed ``images`` (config id ``image_pattern``), for the messages.
        overwrite: allow replacing existing segmentations (config id ``overwrite``); refused by default.
        output_postfix: ``SaveImaged``'s ``output_postfix``.
        output_ext: ``SaveImaged``'s ``output_ext``.

    Examples::

        inputs = InferenceInputs(sorted(glob.glob("/data/img/*.nii.gz")), "/data/pred", "/data/img")
        inputs.check()  # raises on a setup problem, sets aside unreadable images
        dataset = Dataset([{"image": p} for p in inputs.images], transform)
        ...
        inputs.finalize()  # summary; SystemExit(1) if an image was skipped
    """

    def __init__(
        self,
        images: Sequence[str] | str,
        output_dir: str,
        dataset_dir: str | None = None,
        image_pattern: str | None = None,
        overwrite: bool = False,
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
    ) -> None:
        self.images_in = [images] if isinstance(images, str) else [os.fspath(p) for p in images]
        self.output_dir = os.fspath(output_dir)
        self.dataset_dir = None if dataset_dir is None else os.fspath(dataset_dir)
        self.image_pattern = image_pattern
        self.overwrite = overwrite
        self.output_postfix = output_postfix
        self.output_ext = output_ext
        self.images: list[str] = []
        self.outputs: dict[str, str] = {}
        self.skipped: list[tuple[str, str]] = []
        self.warned: list[tuple[str, str]] = []
        self._checked = False

    def _where(self) -> str:
        if self.dataset_dir is None:
            return "the input list"
        pattern = f" matching '{self.image_pattern}'" if self.image_pattern else ""
        return f"{self.dataset_dir}{pattern}"

    def check(self) -> InferenceInputs:
        """
        Run the checks once (later calls do nothing).

        Raises:
            FileNotFoundError: the input folder does not exist, or nothing matches the pattern.
            ValueError: the output folder is (inside) the input folder, or two inputs map to one output file.
            FileExistsError: outputs exist and ``overwrite`` is False (each is named).
            RuntimeError: no input can be read (each is named, with its reason).
        """
        if self._checked:
            return self
        if self.dataset_dir is not None and not os.path.isdir(self.dataset_dir):
            raise FileNotFoundError(f"input folder {self.dataset_dir} not found (config id 'dataset_dir').")
        if not self.images_in:
            raise FileNotFoundError(
                f"no input images: nothing in {self._where()} (config ids 'dataset_dir' and 'image_pattern')."
            )
        folders = {os.path.dirname(os.path.abspath(p)) for p in self.images_in}
        if self.dataset_dir is not None:
            folders.add(os.path.abspath(self.dataset_dir))
        for folder in sorted(folders):
            if _within(self.output_dir, folder):
                raise ValueError(
                    f"output_dir {self.output_dir} is inside the input folder {folder}: inference never writes next "
                    "to its inputs. Choose another --output_dir."
                )
        for image in self.images_in:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                problems = check_image(image)
            for w in caught:
                self.warned.append((image, str(w.message)))
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if problems:
                reason = "; ".join(p[len(image) + 2 :] if p.startswith(f"{image}: ") else p for p in problems)
                self.skipped.append((image, reason))
                logger.warning(f"skipping {image}: {reason}")
            else:
                self.images.append(image)
        if not self.images:
            raise RuntimeError(
                f"none of the {len(self.images_in)} input image(s) in {self._where()} can be used:\n"
                + "\n".join(f"  {p}: {r}" for p, r in self.skipped)
            )
        by_output: dict[str, list[str]] = {}
        for image in self.images:
            by_output.setdefault(output_path(image, self.output_dir, self.output_postfix, self.output_ext), []).append(image)
        clashes = {o: i for o, i in by_output.items() if len(i) > 1}
        if clashes:
            raise ValueError(
                "several inputs would be written to the same output file:\n"
                + "\n".join(f"  {o}: from {', '.join(i)}" for o, i in clashes.items())
            )
        self.outputs = {i[0]: o for o, i in by_output.items()}
        existing = [(o, i) for i, o in self.outputs.items() if os.path.exists(o)]
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{len(existing)} output file(s) already exist and overwrite is off:\n"
                + "\n".join(f"  {o} (from {i})" for o, i in existing)
                + "\nPass --overwrite True to replace them, or choose another --output_dir."
            )
        self._checked = True
        logger.info(
            f"inference: {len(self.images)} image(s) to segment into {self.output_dir}"
            + (f", {len(self.skipped)} skipped" if self.skipped else "")
        )
        return self

    @property
    def items(self) -> list[dict[str, str]]:
        """
        ``[{"image": path}, ...]`` for the dataset: the usable inputs once :meth:`check` has run (the config's
        ``initialize`` runs it), every input before (building the config without running it reads no file).
        """
        return [{"image": p} for p in (self.images if self._checked else self.images_in)]

    def summary(self) -> str:
        """What was written, what was skipped and why, and any expected output that is missing."""
        written = [o for o in self.outputs.values() if os.path.exists(o)]
        missing = [(i, o) for i, o in self.outputs.items() if not os.path.exists(o)]
        lines = [f"inference: wrote {len(written)} of {len(self.images_in)} segmentation(s) to {self.output_dir}"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} input(s) that cannot be used:")
            lines += [f"  {p}: {r}" for p, r in self.skipped]
        if missing:
            lines.append(f"{len(missing)} expected output(s) were not written:")
            lines += [f"  {o} (from {i})" for i, o in missing]
        if self.warned:
            lines.append(f"{len(self.warned)} warning(s):")
            lines += [f"  {m}" for _, m in self.warned]
        return "\n".join(lines)

    def finalize(self) -> None:
        """Print :meth:`summary` (stderr) and exit with status 1 when an input was skipped or an output is missing."""
        self.check()
        text = self.summary()
        failed = bool(self.skipped) or any(not os.path.exists(o) for o in self.outputs.values())
        print(text, file=sys.stderr if failed else sys.stdout, flush=True)
        if failed:
            raise SystemExit(1)


class AtomicNibabelWriter(NibabelWriter):
    """
    MONAI's ``NibabelWriter`` writing to a temporary file in the destination folder and renaming it into place:
    a reader (or a later run's existing-output check) never sees a half-written NIfTI file.
    Use with ``SaveImaged(writer="scripts.infer_folder.AtomicNibabelWriter")``.
    """

    def write(self, filename: Any, verbose: bool = False, **obj_kwargs: Any) -> None:
        filename = os.fspath(filename)
        base = os.path.basename(filename)
        ext = ".nii.gz" if base.endswith(".nii.gz") else os.path.splitext(base)[1]  # nibabel picks the format by it
        with atomic_output(filename, suffix=f".tmp{ext}") as temporary:
            super().write(temporary, verbose=False, **obj_kwargs)
        if verbose:
            logger.info(f"writing: {filename}")
