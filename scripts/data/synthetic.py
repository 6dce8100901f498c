"""
Synthetic abdominal CT phantoms with the 13 BTCV organs, written in the BTCV "RawData" layout so that the
whole pipeline (datalist, loading, orientation, training, evaluation) can be run without the real data.

Each case is an elliptic abdomen (subcutaneous fat, a muscle wall, a textured bowel/fat cavity), a
vertebra with spinal canal and paraspinal muscles, and the BTCV organs (labels 1-13 in
:data:`scripts.data.labels.BTCV_LABELS` order) as smooth randomly perturbed ellipsoids and tubes at roughly
anatomical places, with organ-specific HU, mild blur and Gaussian noise. The files have real NIfTI
geometry: per-case anisotropic spacing, a non-zero origin and non-RAS orientations (LPS, and some cases
with the in-plane axes swapped or the slice order reversed), so ``Orientationd("RAS")`` has work to do.

Usage::

    python -m scripts.data.synthetic btcv --output_dir /tmp/synth --num_cases 12
    python -m scripts.data.synthetic btcv --output_dir /tmp/synth --num_cases 4 --num_test 2 --shape "[96,96,32]"
    python -m scripts.data.synthetic msd --output_dir /tmp/synth_msd --num_cases 6   # MSD layout, liver + spleen
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from scripts.data.labels import BTCV_LABELS
from scripts.data.prepare_dataset import prepare_btcv

__all__ = ["make_phantom", "phantom_to_nifti", "generate", "generate_msd", "ORGAN_HU", "CASE_AXCODES", "MSD_LABELS"]

#: nominal HU per label (portal-venous phase); each case jitters them
ORGAN_HU: dict[int, float] = {
    1: 50.0,  # spleen
    2: 150.0,  # right kidney (cortex; medulla darker)
    3: 150.0,  # left kidney
    4: 10.0,  # gallbladder
    5: 40.0,  # esophagus
    6: 60.0,  # liver
    7: 25.0,  # stomach (wall and contents, sometimes an air bubble)
    8: 200.0,  # aorta
    9: 130.0,  # inferior vena cava
    10: 160.0,  # portal and splenic veins
    11: 80.0,  # pancreas
    12: 30.0,  # right adrenal gland
    13: 30.0,  # left adrenal gland
}

#: orientations of the files on disk, cycled over the cases (the phantom itself is built in RAS)
CASE_AXCODES: tuple[str, ...] = ("LPS", "PLS", "LPS", "LPI")

if sorted(ORGAN_HU) != sorted(BTCV_LABELS)[1:]:
    raise RuntimeError("ORGAN_HU must give one HU per BTCV organ label.")

_AIR, _FAT, _MUSCLE = -1000.0, -100.0, 50.0
_CAVITY = 0.85  # organs stay inside this fraction of the body ellipse (inside the muscle wall)


def _check_triplet(name: str, value: Sequence, cast: type) -> tuple:
    try:
        out = tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 numbers, got {value!r}.") from None
    if len(out) != 3 or any(v <= 0 for v in out):
        raise ValueError(f"{name} must be 3 positive numbers, got {value!r}.")
    return out


class _Canvas:
    """Label volume with 1D body-frame coordinates and bounding-box painting of blobs and tubes."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator):
        self.shape = shape
        self.rng = rng
        half = [(n - 1) * s / 2.0 for n, s in zip(shape, spacing)]
        half_xy = max((half[0] + half[1]) / 2.0, 1e-6)
        self.kz = half[2] / half_xy  # z extent in in-plane units, so that tubes are physically round
        # body frame: u -> patient right, v -> anterior (both [-1, 1]), z = w * kz with w in [-1, 1] -> superior
        self.coords = [
            np.linspace(-1.0, 1.0, shape[0]) if shape[0] > 1 else np.zeros(1),
            np.linspace(-1.0, 1.0, shape[1]) if shape[1] > 1 else np.zeros(1),
            (np.linspace(-1.0, 1.0, shape[2]) if shape[2] > 1 else np.zeros(1)) * self.kz,
        ]
        self.label = np.zeros(shape, dtype=np.uint8)
        self.cavity_axes = (0.92, 0.68)
        self.centres: dict[int, tuple[float, float, float]] = {}

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, ...], list[np.ndarray]]:
        """Slices and broadcastable local coordinates of the box [lo, hi] (body frame)."""
        sl, local = [], []
        for ax in range(3):
            c = self.coords[ax]
            i0 = int(np.searchsorted(c, lo[ax], side="left"))
            i1 = int(np.searchsorted(c, hi[ax], side="right"))
            i0, i1 = min(max(i0, 0), len(c) - 1), max(min(i1, len(c)), 1)
            i1 = max(i1, i0 + 1)
            sl.append(slice(i0, i1))
            shp = [1, 1, 1]
            shp[ax] = i1 - i0
            local.append(c[i0:i1].reshape(shp))
        return tuple(sl), local

    def inside_cavity(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        a, b = self.cavity_axes
        return (u / a) ** 2 + ((v + 0.02) / b) ** 2 < _CAVITY**2

    def _wobble(self, q: Sequence[np.ndarray], amp: float) -> np.ndarray | float:
        """Smooth low-frequency perturbation: a sum of random plane waves in the local coordinates q."""
        out: np.ndarray | float = 0.0
        for _ in range(3):
            d = self.rng.normal(size=3)
            d *= self.rng.uniform(0.4, 0.9) / np.linalg.norm(d)
            phase = self.rng.uniform(0, 2 * np.pi)
            out = out + (amp / 3.0) * np.sin(2 * np.pi * (d[0] * q[0] + d[1] * q[1] + d[2] * q[2]) + phase)
        return out

    def _paint(self, sl: tuple[slice, ...], mask: np.ndarray, value: int, u: np.ndarray, v: np.ndarray) -> None:
        mask = mask & self.inside_cavity(u, v)
        self.label[sl][mask] = value

    def ellipsoid(self, value: int, centre: Sequence[float], radii: Sequence[float], amp: float = 0.15) -> None:
        """Perturbed ellipsoid; centre (u, v, w) with w normalised to [-1, 1]; radii in body units."""
        c = np.array([centre[0], centre[1], centre[2] * self.kz])
        r = np.asarray(radii, dtype=float)
        self.centres.setdefault(value, tuple(c))
        sl, (u, v, z) = self.box(c - r * (1 + amp), c + r * (1 + amp))
        q = [(u - c[0]) / r[0], (v - c[1]) / r[1], (z - c[2]) / r[2]]
        dist = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
        self._paint(sl, dist < 1.0 + self._wobble(q, amp), value, u, v)

    def tube(self, value: int, points: Sequence[Sequence[float]], radius: float, amp: float = 0.15) -> None:
        """Tube of ``radius`` (body units, modulated by up to ``amp``) along a polyline of (u, v, w) points."""
        pts = np.array([[p[0], p[1], p[2] * self.kz] for p in points], dtype=float)
        self.centres.setdefault(value, tuple(pts[len(pts) // 2]))
        rmax = radius * (1 + amp)
        sl, (u, v, z) = self.box(pts.min(0) - rmax, pts.max(0) + rmax)
        best = np.full(np.broadcast_shapes(u.shape, v.shape, z.shape), np.inf)
        freq, phase = self.rng.uniform(1.0, 2.5), self.rng.uniform(0, 2 * np.pi)
        for a, b in zip(pts[:-1], pts[1:]):
            ab = b - a
            t = ((u - a[0]) * ab[0] + (v - a[1]) * ab[1] + (z - a[2]) * ab[2]) / max(float(ab @ ab), 1e-12)
            t = np.clip(t, 0.0, 1.0)
            d = np.sqrt((u - a[0] - t * ab[0]) ** 2 + (v - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2)
            r = radius * (1.0 + amp * np.sin(2 * np.pi * freq * t + phase))
            best = np.minimum(best, d / r)
        self._paint(sl, best < 1.0, value, u, v)

    def ensure_present(self, value: int) -> None:
        """Mark a 3x3x3 block at the organ's centre if the organ vanished (tiny volumes or overwrites)."""
        if np.any(self.label == value):
            return
        idx = [int(np.argmin(np.abs(self.coords[ax] - self.centres[value][ax]))) for ax in range(3)]
        sl = tuple(slice(max(i - 1, 0), i + 2) for i in idx)
        self.label[sl] = value


def _smooth_field(shape: tuple[int, int, int], rng: np.random.Generator, coarse: Sequence[int]) -> np.ndarray:
    """Smooth random field of unit-ish amplitude: coarse Gaussian noise, linearly upsampled."""
    coarse = tuple(max(2, min(int(c), n)) for c, n in zip(coarse, shape))
    small = rng.normal(size=coarse).astype(np.float32)
    return ndimage.zoom(small, [n / c for n, c in zip(shape, coarse)], order=1, mode="nearest", grid_mode=True)


def make_phantom(
    shape: Sequence[int] = (160, 160, 64),
    spacing: Sequence[float] = (1.5, 1.5, 3.0),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """
    One synthetic abdominal CT volume and its BTCV label map.

    Array axes are in RAS voxel order: along axis 0 the index increases toward the patient's right (index 0
    is the patient's left side), along axis 1 from posterior to anterior, along axis 2 from inferior to
    superior (axis 2 is the through-plane, coarse axis). With the affine
    ``diag(spacing)`` (see :func:`phantom_to_nifti`) the arrays are exactly what ``Orientationd("RAS")``
    gives. The anatomy is laid out relative to the field of view, so any shape works (small organs are
    kept to at least a few voxels).

    Args:
        shape: volume size (x, y, z) in voxels, each >= 8.
        spacing: voxel size (x, y, z) in mm; sets the physical aspect of the anatomy.
        seed: random seed; the same seed gives the same phantom.

    Returns:
        ``(image, label)``: int16 HU in [-1024, 3071] and uint8 labels 0-13 (all 13 organs present).

    Examples::

        image, label = make_phantom((96, 96, 32), seed=3)
    """
    shape = _check_triplet("shape", shape, int)
    spacing = _check_triplet("spacing", spacing, float)
    if min(shape) < 8:
        raise ValueError(f"shape must be at least 8 voxels per axis, got {shape}.")
    rng = np.random.default_rng(seed)
    cv = _Canvas(shape, spacing, rng)
    ucoord, vcoord, zcoord = cv.coords
    kz = cv.kz

    def jit(p: Sequence[float], s: float = 0.03) -> tuple[float, ...]:
        return tuple(float(x) + rng.uniform(-s, s) for x in p)

    def size(r: Sequence[float], lo: float = 0.85, hi: float = 1.15) -> tuple[float, ...]:
        f = rng.uniform(lo, hi)
        return tuple(float(x) * f * rng.uniform(0.95, 1.05) for x in r)

    # --- body: ellipse in-plane that widens slightly toward the pelvis ---
    a0, b0 = 0.92 * rng.uniform(0.96, 1.02), 0.68 * rng.uniform(0.94, 1.04)
    cv.cavity_axes = (a0, b0)
    u2 = ucoord[:, None, None]
    v2 = vcoord[None, :, None] + 0.02
    wz = zcoord[None, None, :] / max(kz, 1e-6)
    widen = 1.0 - 0.03 * wz
    rho = np.sqrt((u2 / (a0 * widen)) ** 2 + (v2 / (b0 * widen)) ** 2)  # 1 at the skin

    # --- organs (labels in BTCV_LABELS order; painted large to small, later overwrites earlier) ---
    cv.ellipsoid(6, jit((0.42, 0.02, 0.45)), size((0.40, 0.44, 0.50)), amp=0.12)  # liver, right upper
    cv.ellipsoid(6, jit((0.05, 0.30, 0.62)), size((0.32, 0.16, 0.24)), amp=0.12)  # liver, left lobe
    cv.ellipsoid(1, jit((-0.55, -0.22, 0.40)), size((0.14, 0.20, 0.28)))  # spleen, left posterior
    cv.ellipsoid(7, jit((-0.30, 0.22, 0.45)), size((0.24, 0.18, 0.30)))  # stomach, left upper
    cv.ellipsoid(2, jit((0.33, -0.36, -0.25)), size((0.12, 0.11, 0.28)), amp=0.08)  # right kidney
    cv.ellipsoid(3, jit((-0.33, -0.36, -0.15)), size((0.12, 0.11, 0.28)), amp=0.08)  # left kidney
    cv.ellipsoid(4, jit((0.30, 0.30, 0.05)), size((0.07, 0.09, 0.14)), amp=0.1)  # gallbladder under the liver
    cv.tube(11, [jit((0.14, 0.06, 0.0)), jit((-0.10, 0.05, 0.12)), jit((-0.42, -0.08, 0.22))], 0.065 * size([1])[0])
    cv.ellipsoid(12, jit((0.22, -0.30, 0.30), 0.02), size((0.045, 0.07, 0.10)), amp=0.1)  # right adrenal
    cv.ellipsoid(13, jit((-0.22, -0.30, 0.35), 0.02), size((0.045, 0.07, 0.10)), amp=0.1)  # left adrenal
    cv.tube(5, [jit((-0.03, -0.12, 1.3), 0.01), jit((-0.07, -0.08, 0.85), 0.02), jit((-0.18, 0.08, 0.55), 0.02)], 0.045)
    ivc_x = 0.12 + rng.uniform(-0.02, 0.02)
    cv.tube(9, [(ivc_x, -0.21, -1.3), jit((ivc_x, -0.20, 0.0), 0.015), jit((ivc_x + 0.02, -0.16, 0.75), 0.015)], 0.06)
    ao_x = -0.06 + rng.uniform(-0.02, 0.02)
    cv.tube(8, [(ao_x, -0.25, -1.3), jit((ao_x, -0.24, 0.0), 0.015), (ao_x, -0.25, 1.3)], 0.065)
    cv.tube(10, [jit((-0.45, -0.10, 0.30)), jit((0.02, -0.01, 0.12), 0.02), jit((0.28, 0.06, 0.33))], 0.035)

    # --- spine (label 0; painted over any organ that strayed into it) ---
    spine_v = -0.44 + rng.uniform(-0.02, 0.02)
    body_r = 0.11 * rng.uniform(0.9, 1.1)
    dv = vcoord[None, :, None] - spine_v
    d_body = np.sqrt(ucoord[:, None, None] ** 2 + dv**2) / body_r
    d_canal = np.sqrt(ucoord[:, None, None] ** 2 + (dv + body_r + 0.05) ** 2) / 0.045
    d_process = np.sqrt((ucoord[:, None, None] / 0.03) ** 2 + ((dv + body_r + 0.15) / 0.07) ** 2)
    d_para = np.minimum(
        np.sqrt(((ucoord[:, None, None] - 0.16) / 0.10) ** 2 + ((dv + body_r + 0.10) / 0.08) ** 2),
        np.sqrt(((ucoord[:, None, None] + 0.16) / 0.10) ** 2 + ((dv + body_r + 0.10) / 0.08) ** 2),
    )
    bone = (d_body < 1.0) | (d_process < 1.0)
    spine_any = bone | (d_canal < 1.0) | (d_para < 1.0)
    label = cv.label
    label[np.broadcast_to(spine_any, label.shape)] = 0
    for value in ORGAN_HU:
        cv.ensure_present(value)

    # --- intensities ---
    texture = _smooth_field(shape, rng, (10, 10, max(3, shape[2] // 8)))
    cavity = -45.0 + 45.0 * texture  # bowel loops and mesenteric fat
    hu = np.where(rho <= 1.0, np.where(rho > 0.93, _FAT, np.where(rho > 0.87, _MUSCLE, cavity)), _AIR)
    hu = hu.astype(np.float32, copy=False)
    z_mm = np.arange(shape[2]) * spacing[2] + rng.uniform(0.0, 30.0)
    disc = (z_mm % 30.0 < 5.0)[None, None, :]  # ~30 mm vertebrae separated by ~5 mm discs
    bone_hu = np.where(d_body > 0.8, 700.0, 300.0)  # cortical rim, cancellous core
    bone_hu = np.where(disc & (d_body < 1.0), 90.0, bone_hu)
    spine_hu = np.where(bone, bone_hu, np.where(d_canal < 1.0, 15.0, _MUSCLE))
    spine_hu = np.broadcast_to(spine_hu, shape)
    spine_mask = np.broadcast_to(spine_any, shape)
    hu[spine_mask] = spine_hu[spine_mask]

    organ_hu = np.zeros(len(BTCV_LABELS), dtype=np.float32)
    for value, nominal in ORGAN_HU.items():
        organ_hu[value] = nominal + rng.uniform(-8.0, 8.0)
    organ = label > 0
    hu[organ] = organ_hu[label[organ]] + 6.0 * texture[organ]
    # kidney medulla: darker core of each kidney
    boxes = ndimage.find_objects(label, max_label=len(BTCV_LABELS) - 1)
    for value in (2, 3):
        box = boxes[value - 1]
        m = label[box] == value
        if m.sum() > 27:
            core = ndimage.binary_erosion(m, iterations=max(1, min(shape) // 40))
            hu[box][core] -= 50.0
    # stomach: air bubble at the anterior top in some cases
    if rng.uniform() < 0.5:
        m = label == 7
        c = cv.centres[7]
        bubble = m & (vcoord[None, :, None] > c[1] + 0.08) & (zcoord[None, None, :] > c[2] + 0.05)
        hu[bubble] = -850.0

    hu = ndimage.gaussian_filter(hu, sigma=(0.8, 0.8, 0.5), truncate=2.5)
    hu += rng.normal(0.0, 15.0, size=shape).astype(np.float32)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return image, label


def phantom_to_nifti(
    image: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] = (1.5, 1.5, 3.0),
    axcodes: str | Sequence[str] = "LPS",
    origin: Sequence[float] | None = None,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """
    NIfTI images of a RAS-ordered phantom, stored in the orientation ``axcodes`` (world positions unchanged).

    Args:
        image: int16 HU array in RAS voxel order (see :func:`make_phantom`).
        label: uint8 label array of the same shape.
        spacing: voxel size (x, y, z) in mm of the RAS arrays.
        axcodes: orientation on disk, e.g. ``"LPS"`` (DICOM-like, affine ``diag(-sx, -sy, sz)``), ``"PLS"``
            (in-plane axes swapped) or ``"LPI"`` (slices top to bottom).
        origin: world position (RAS mm) of RAS voxel (0, 0, 0); default centres the volume at 0.

    Returns:
        ``(image_nifti, label_nifti)`` with the same affine, qform/sform code 1 (scanner), units mm,
        int16 image with ``scl_slope``/``scl_inter`` 1/0, uint8 label.
    """
    if image.shape != label.shape or image.ndim != 3:
        raise ValueError(f"image and label must be 3D arrays of one shape, got {image.shape} and {label.shape}.")
    spacing = _check_triplet("spacing", spacing, float)
    axcodes = tuple(axcodes)
    ras = np.diag([*spacing, 1.0])
    ras[:3, 3] = (
        -(np.asarray(image.shape) - 1) / 2.0 * np.asarray(spacing) if origin is None else np.asarray(origin, float)
    )
    try:
        ornt = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(axcodes)
        )
    except ValueError as e:
        raise ValueError(f"axcodes must name 3 different axes out of R/L, A/P, S/I, got {axcodes!r}: {e}") from None
    affine = ras @ nib.orientations.inv_ornt_aff(ornt, image.shape)
    out = []
    for arr, dtype in ((image, np.int16), (label, np.uint8)):
        data = np.ascontiguousarray(nib.orientations.apply_orientation(arr, ornt).astype(dtype, copy=False))
        img = nib.Nifti1Image(data, affine)
        hdr = img.header
        hdr.set_data_dtype(dtype)
        hdr.set_xyzt_units("mm", "sec")
        hdr.set_slope_inter(1.0, 0.0)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        out.append(img)
    return out[0], out[1]


_CASE_RE = re.compile(r"^(img|label)\d+\.nii(\.gz)?$")


def _case_seed(seed: int, case: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(case)]).generate_state(1)[0])


def _synthetic_cases(
    total: int,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    seed: int,
    describe: Callable[[int], str],
) -> Iterator[tuple[int, nib.Nifti1Image, nib.Nifti1Image]]:
    """
    ``(case, image, label)`` NIfTI pairs for cases 1..total: each with its own spacing (``spacing`` jittered by
    up to ~10-15 %), a scanner-like non-zero origin and an orientation from :data:`CASE_AXCODES`; prints a
    progress line per case, naming it ``describe(case)``.
    """
    start = time.perf_counter()
    for case in range(1, total + 1):
        rng = np.random.default_rng(_case_seed(seed, 10_000 + case))
        f_xy = rng.uniform(0.9, 1.1)
        case_spacing = (spacing[0] * f_xy, spacing[1] * f_xy, spacing[2] * rng.uniform(0.85, 1.15))
        centre = rng.uniform([-30.0, -30.0, -620.0], [30.0, 30.0, -380.0])  # scanner-like table position
        origin = centre - (np.asarray(shape) - 1) / 2.0 * np.asarray(case_spacing)
        axcodes = CASE_AXCODES[(case - 1) % len(CASE_AXCODES)]
        image, label = make_phantom(shape, case_spacing, seed=_case_seed(seed, case))
        img, lbl = phantom_to_nifti(image, label, case_spacing, axcodes=axcodes, origin=origin)
        print(
            f"[{case}/{total}] {describe(case)} ({axcodes}, spacing {case_spacing[0]:.2f}x{case_spacing[1]:.2f}x"
            f"{case_spacing[2]:.2f} mm, {time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        yield case, img, lbl


def _prepare_output_dir(output_dir: str, overwrite: bool, stale: Callable[[str], bool], folders: Sequence[str]) -> str:
    """
    Create ``output_dir`` and its ``folders``; a non-empty ``output_dir`` is refused unless ``overwrite``, and then
    the files for which ``stale(name)`` is true in ``folders`` (an earlier run's cases) are removed.
    """
    output_dir = os.path.abspath(os.path.expanduser(str(output_dir)))
    if os.path.isfile(output_dir):
        raise NotADirectoryError(f"{output_dir} is a file; give a folder to write the cases into.")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise FileExistsError(f"{output_dir} is not empty; pass --overwrite True to write into it.")
        for sub in folders:
            folder = os.path.join(output_dir, sub)
            if os.path.isdir(folder):
                for name in os.listdir(folder):
                    if stale(name):
                        os.remove(os.path.join(folder, name))
    for sub in folders:
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    return output_dir


def generate(
    output_dir: str,
    num_cases: int = 12,
    num_test: int = 0,
    shape: Sequence[int] = (160, 160, 64),
    spacing: Sequence[float] = (1.5, 1.5, 3.0),
    seed: int = 0,
    val_fraction: float = 0.25,
    overwrite: bool = False,
) -> str:
    """
    Write synthetic cases in the BTCV RawData layout and their datalist.

    Training cases ``Training/img/img0001.nii.gz`` + ``Training/label/label0001.nii.gz`` ... and test images
    ``Testing/img/img<num_cases+1>.nii.gz`` ...; each case has its own spacing (``spacing`` jittered by up to
    ~10-15 %), a non-zero origin and an orientation from :data:`CASE_AXCODES`. The datalist
    ``output_dir/datalist.json`` is written by :func:`scripts.data.prepare_dataset.prepare_btcv` with a seeded
    random split.

    Args:
        output_dir: folder to create; an existing non-empty folder is refused unless ``overwrite``.
        num_cases: labelled cases, >= 2.
        num_test: unlabelled test images, >= 0.
        shape: volume size (x, y, z) in voxels (before reorientation on disk).
        spacing: nominal voxel size (x, y, z) in mm.
        seed: random seed of the phantoms and the split.
        val_fraction: held-out fraction of the random split.
        overwrite: allow a non-empty ``output_dir``; earlier ``img*``/``label*`` files there and the datalist
            are replaced.

    Returns:
        the absolute path of the datalist JSON.
    """
    if int(num_cases) != num_cases or num_cases < 2:
        raise ValueError(f"num_cases must be an integer >= 2 (training + validation), got {num_cases}.")
    if int(num_test) != num_test or num_test < 0:
        raise ValueError(f"num_test must be an integer >= 0, got {num_test}.")
    shape = _check_triplet("shape", shape, int)
    spacing = _check_triplet("spacing", spacing, float)
    folders = ("Training/img", "Training/label") + (("Testing/img",) if num_test else ())
    output_dir = _prepare_output_dir(output_dir, overwrite, lambda name: bool(_CASE_RE.match(name)), folders)

    def image_path(case: int) -> str:
        return f"{'Testing' if case > num_cases else 'Training'}/img/img{case:04d}.nii.gz"

    for case, img, lbl in _synthetic_cases(int(num_cases) + int(num_test), shape, spacing, seed, image_path):
        testing = case > num_cases
        nib.save(img, os.path.join(output_dir, image_path(case)))
        if not testing:
            nib.save(lbl, os.path.join(output_dir, f"Training/label/label{case:04d}.nii.gz"))
    return prepare_btcv(
        output_dir,
        output=os.path.join(output_dir, "datalist.json"),
        split="random",
        seed=seed,
        val_fraction=val_fraction,
        overwrite=overwrite,
    )


#: the classes of :func:`generate_msd`: class name -> the BTCV labels it merges (everything else is background)
MSD_LABELS: dict[str, tuple[int, ...]] = {"liver": (6,), "spleen": (1,)}


def generate_msd(
    output_dir: str,
    num_cases: int = 6,
    num_test: int = 0,
    labels: Mapping[str, Sequence[int]] = MSD_LABELS,
    shape: Sequence[int] = (96, 96, 32),
    spacing: Sequence[float] = (1.5, 1.5, 4.5),
    seed: int = 0,
    nnunet: bool = False,
    modality: str = "CT",
    overwrite: bool = False,
) -> str:
    """
    Write synthetic cases in the Medical Segmentation Decathlon layout (``dataset.json``, ``imagesTr``,
    ``labelsTr``, ``imagesTs``), or the nnU-Net raw layout, with a label set of one's choosing: a stand-in for a
    user's own dataset. Case geometry is as in :func:`generate` (anisotropic, non-RAS, per-case spacing).

    Args:
        output_dir: folder to create; an existing non-empty folder is refused unless ``overwrite``.
        num_cases: labelled cases.
        num_test: unlabelled images in ``imagesTs``.
        labels: class name -> BTCV labels (:data:`scripts.data.labels.BTCV_LABELS`) it is made of, in label-value
            order from 1.
        shape: volume size (x, y, z) in voxels.
        spacing: nominal voxel size (x, y, z) in mm.
        seed: random seed of the phantoms.
        nnunet: nnU-Net v2 layout: ``<case>_0000.nii.gz`` images, ``channel_names`` and name -> value
            ``labels``, no file list; otherwise MSD: ``modality``, value -> name ``labels`` and a ``training`` list.
        modality: ``"CT"`` writes HU; any other name writes the phantom rescaled to positive MR-like values.
        overwrite: allow a non-empty ``output_dir``.

    Returns:
        the path of ``dataset.json``.
    """
    shape = _check_triplet("shape", shape, int)
    spacing = _check_triplet("spacing", spacing, float)
    folders = ("imagesTr", "labelsTr") + (("imagesTs",) if num_test else ())
    output_dir = _prepare_output_dir(output_dir, overwrite, lambda name: name.endswith(".nii.gz"), folders)
    lut = np.zeros(len(BTCV_LABELS), np.uint8)
    for value, btcv_labels in enumerate(labels.values(), start=1):
        lut[list(btcv_labels)] = value
    suffix = "_0000" if nnunet else ""

    def image_path(case: int) -> str:
        return f"{'imagesTs' if case > num_cases else 'imagesTr'}/case_{case:03d}{suffix}.nii.gz"

    training = []
    for case, img, lbl in _synthetic_cases(int(num_cases) + int(num_test), shape, spacing, seed, image_path):
        if modality.upper() != "CT":
            data = (np.asanyarray(img.dataobj).astype(np.float32) + 1024.0) * 0.5
            img = nib.Nifti1Image(data, img.affine, img.header)
            img.header.set_data_dtype(np.float32)
        nib.save(img, os.path.join(output_dir, image_path(case)))
        if case <= num_cases:
            label = f"labelsTr/case_{case:03d}.nii.gz"
            nib.save(
                nib.Nifti1Image(lut[np.asanyarray(lbl.dataobj)], lbl.affine, lbl.header),
                os.path.join(output_dir, label),
            )
            training.append({"image": f"./{image_path(case)}", "label": f"./{label}"})
    names = ["background", *labels]
    spec: dict = {"name": "SyntheticCT", "description": "synthetic abdominal phantoms", "numTraining": len(training)}
    if nnunet:
        spec.update(channel_names={"0": modality}, labels={n: i for i, n in enumerate(names)}, file_ending=".nii.gz")
    else:
        spec.update(modality={"0": modality}, labels={str(i): n for i, n in enumerate(names)}, training=training)
    path = os.path.join(output_dir, "dataset.json")
    with open(path, "w") as f:
        json.dump(spec, f, indent=4)
    return path


if __name__ == "__main__":
    import fire

    fire.Fire({"btcv": generate, "msd": generate_msd})
