"""
Thin-slab benchmark: what the sliding window's padding does to a scan thinner than the training patch.

A synthetic abdominal case is segmented whole by the bundle's inference (``configs/inference.json``), then slabs
of its middle slices are cut out (each a NIfTI file of its own, same spacing and world position) and segmented
alone, padded as the bundle pads them, with the normalised value of air (config id ``background_value``), and
as MONAI's sliding window pads by default, with normalised 0 (about 83 HU: soft tissue all around the patient).
For each slab it prints the mean Dice over the organs present of the slab's segmentation against the same slices
segmented inside the full volume, and against the ground truth.

Usage::

    python -m scripts.apps.demo                                                  # trains demo/models/model.pt
    python -m scripts.benchmarks.thin_slab --checkpoint demo/models/model.pt --write_docs True
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from scripts.benchmarks.bench_inference import segmentation_dice
from scripts.benchmarks.common import REPO_ROOT, machine_info, machine_line, markdown_table, update_docs_section
from scripts.data.synthetic import make_phantom, phantom_to_nifti

__all__ = ["PADDINGS", "cut_slab", "run_thin_slab"]

#: padding name -> config overrides
PADDINGS = {"air (background_value)": {}, "normalised 0 (MONAI's default cval)": {"background_value": 0.0}}

RELIABILITY_DOCS = os.path.join(REPO_ROOT, "docs", "reliability.md")


def cut_slab(image: np.ndarray, label: np.ndarray, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices ``first`` .. ``first + count - 1`` along Z of RAS-ordered (X, Y, Z) arrays."""
    return image[..., first : first + count], label[..., first : first + count]


def _segment(image: nib.Nifti1Image, name: str, work: str, files: Sequence[str], **overrides: object) -> np.ndarray:
    """The bundle's segmentation of ``image`` as a RAS-ordered (X, Y, Z) label array."""
    from monai.bundle import ConfigWorkflow

    folder, output = os.path.join(work, f"in_{name}"), os.path.join(work, f"out_{name}")
    os.makedirs(folder)
    nib.save(image, os.path.join(folder, f"{name}.nii.gz"))
    workflow = ConfigWorkflow(
        config_file=[os.path.join(REPO_ROOT, f) for f in files],
        meta_file=os.path.join(REPO_ROOT, "configs", "metadata.json"),
        workflow_type="infer",
        dataset_dir=folder,
        output_dir=output,
        num_workers=0,
        tta_flip_axes=[],
        sw_progress=False,
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return np.asarray(nib.as_closest_canonical(nib.load(os.path.join(output, f"{name}_seg.nii.gz"))).dataobj)


def run_thin_slab(
    checkpoint: str,
    overlay: str = "configs/demo.json",
    shape: Sequence[int] = (160, 160, 64),
    spacing: Sequence[float] = (1.5, 1.5, 3.0),
    slab_slices: Sequence[int] = (7, 16, 32),
    seed: int = 1234,
    write_docs: bool = False,
) -> list[list[str]]:
    """
    Segment a synthetic case whole and as centred slabs of ``slab_slices`` slices under each of :data:`PADDINGS`.

    Args:
        checkpoint: weights of the configured network (e.g. the demo's ``demo/models/model.pt``).
        overlay: config overlay on ``configs/inference.json`` (``""``: none).
        shape: synthetic volume size (X, Y, Z) in voxels; spacing: its voxel size in mm.
        slab_slices: slab thicknesses in slices.
        seed: seed of the synthetic case (not one of the demo's training cases).
        write_docs: rewrite the ``thin_slab`` section of ``docs/reliability.md``.

    Returns:
        the table rows: slab, padding, Dice against the full-volume segmentation, Dice against the ground truth.
    """
    files = ["configs/inference.json"] + ([overlay] if overlay else [])
    image, label = make_phantom(shape, spacing, seed)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        full = _segment(phantom_to_nifti(image, label, spacing)[0], "full", work, files, ckpt_path=checkpoint)
        counts = (label > 0).sum(axis=(0, 1))
        centre = int(np.argmax(np.convolve(counts, np.ones(max(slab_slices)), mode="same")))
        rows.append([f"full volume ({shape[2]} slices)", "-", "1.000", f"{segmentation_dice(label, full):.3f}"])
        for count in slab_slices:
            first = int(np.clip(centre - count // 2, 0, shape[2] - count))
            slab_image, slab_label = cut_slab(image, label, first, count)
            origin = -(np.asarray(shape) - 1) / 2.0 * np.asarray(spacing) + [0.0, 0.0, first * spacing[2]]
            slab_nifti = phantom_to_nifti(slab_image, slab_label, spacing, origin=origin)[0]
            for padding, overrides in PADDINGS.items():
                name = f"slab{count}_{'air' if not overrides else 'zero'}"
                segmented = _segment(slab_nifti, name, work, files, ckpt_path=checkpoint, **overrides)
                inside = full[..., first : first + count]
                rows.append([
                    f"{count} slices ({count * spacing[2]:g} mm)", padding,
                    f"{segmentation_dice(inside, segmented):.3f}", f"{segmentation_dice(slab_label, segmented):.3f}",
                ])  # fmt: skip
    table = markdown_table(["scan", "padding", "Dice vs full-volume segmentation", "Dice vs ground truth"], rows)
    print("\n".join(table))
    if write_docs:
        text = (
            f"Measured by `python -m scripts.benchmarks.thin_slab --checkpoint {checkpoint}` (overlay `{overlay}`, "
            f"synthetic case seed {seed}, {shape[0]}x{shape[1]}x{shape[2]} voxels of "
            f"{' x '.join(f'{s:g}' for s in spacing)} mm; {machine_line(machine_info())}). Mean Dice over the "
            "organs present in either segmentation.\n\n" + "\n".join(table)
        )
        update_docs_section("thin_slab", text, path=RELIABILITY_DOCS)
    return rows


def main(**kwargs: object) -> None:
    """Command line: :func:`run_thin_slab` printing its table only."""
    run_thin_slab(**kwargs)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
