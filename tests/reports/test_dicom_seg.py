"""
DICOM-SEG output: synthetic CT series (pydicom; rotated, coronal and flipped sagittal planes, anisotropic pixels and
slice steps, files in random order) get a label map defined in patient coordinates; the SEG written from the
reader's label map is read back with pydicom and highdicom, and every frame must reference the source image whose
pixels it holds, at that image's position, with exactly the labels computed pixel by pixel from the image's own
header. Segment names, colours and SNOMED CT codes are checked against pydicom's code dictionary; the bundle's
inference writes a SEG equal to its NIfTI output voxel for voxel.
"""

from __future__ import annotations

import os

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr._concepts_dict import concepts
from pydicom.uid import generate_uid

from scripts.data.dicom import find_series, read_series
from scripts.data.labels import BTCV_LABELS
from scripts.engine.infer_folder import InferenceInputs
from scripts.reports.dicom_seg import SaveDicomSegd, check_source_series, draw_dicom_seg, write_dicom_seg
from scripts.reports.overlays import organ_colour, organ_name
from tests.reliability.conftest import ct_image, run_bundle, write_nifti
from tests.reliability.test_dicom import write_slice

ROWS, COLUMNS, SLICES = 14, 18, 9
#: (ImageOrientationPatient, PixelSpacing (between rows, between columns), slice step mm); files in random order
PLANES = {
    "axial_rotated_feet_first": (
        (np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0, np.sin(np.pi / 6), -np.cos(np.pi / 6), 0.0), (0.7, 0.8), 2.5
    ),
    "coronal": ((1.0, 0.0, 0.0, 0.0, 0.0, -1.0), (0.9, 0.6), 3.0),
    "sagittal_flipped": ((0.0, -1.0, 0.0, 0.0, 0.0, -1.0), (1.1, 0.7), 4.0),
}  # fmt: skip
ORGANS = (2, 6, 11)  # right kidney, liver, pancreas
ORGANS_WITH_BACKGROUND = (0, *ORGANS)


def write_plane_series(folder, orientation, pixel_spacing, step, rows=ROWS, columns=COLUMNS, n=SLICES, **tags):
    """A CT series of ``n`` int16 slices of the given plane in ``folder`` (file names in random order)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(7)
    normal = np.cross(orientation[:3], orientation[3:])
    uid = generate_uid()
    order = rng.permutation(n)
    for k in range(n):
        write_slice(os.path.join(folder, f"IM{order[k]:03d}"), rng.integers(0, 1500, (rows, columns)), uid,
                    np.array([-30.0, 12.0, 80.0]) + k * step * normal, ImageOrientationPatient=list(orientation),
                    PixelSpacing=list(pixel_spacing), SliceThickness=step, InstanceNumber=k + 1, **tags)  # fmt: skip
    (series,), _ = find_series(folder)
    return series


def patient_label(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Labels of LPS points (..., 3): three organs placed asymmetrically along every axis around ``centre``."""
    d = points - centre
    label = np.zeros(points.shape[:-1], np.uint8)
    label[(d[..., 0] > 1.0) & (np.linalg.norm(d, axis=-1) < 9.0)] = 6
    label[np.linalg.norm(d - np.array([-4.0, 3.0, -5.0]), axis=-1) < 5.0] = 2
    label[(d[..., 2] > 3.0) & (d[..., 0] < -2.0)] = 11
    return label


def pixel_positions(ds: pydicom.Dataset) -> np.ndarray:
    """(Rows, Columns, 3) LPS centre of every pixel, one pixel at a time from the file's own header."""
    position = np.asarray(ds.ImagePositionPatient, float)
    orientation = np.asarray(ds.ImageOrientationPatient, float)
    row_direction, column_direction = orientation[:3], orientation[3:]
    between_rows, between_columns = (float(v) for v in ds.PixelSpacing)
    out = np.empty((int(ds.Rows), int(ds.Columns), 3))
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            out[r, c] = position + c * between_columns * row_direction + r * between_rows * column_direction
    return out


def reader_label_map(series, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The label map on the reader's grid (X=columns, Y=rows, Z=slices) and its RAS affine."""
    _, affine = read_series(series)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in series.shape), indexing="ij"), -1)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    return patient_label(ras * np.array([-1.0, -1.0, 1.0]), centre), affine


def _centre(series) -> np.ndarray:
    return np.mean([pixel_positions(pydicom.dcmread(f)).reshape(-1, 3).mean(0) for f in series.files], axis=0)


@pytest.mark.parametrize("plane", PLANES)
def test_every_frame_lands_on_its_source_slice_and_the_mask_equals_the_label_map(tmp_path, plane):
    series = write_plane_series(tmp_path / "ct", *PLANES[plane])
    centre = _centre(series)
    labels, affine = reader_label_map(series, centre)
    assert set(np.unique(labels)) == {0, *ORGANS}  # every organ crosses the volume
    names = {0: "background", **{k: BTCV_LABELS[k] for k in ORGANS}}
    output = write_dicom_seg(labels, affine, series.files, str(tmp_path / "out" / "ct_seg.dcm"), names)

    sources = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, series.files)}
    expected = {uid: patient_label(pixel_positions(ds), centre) for uid, ds in sources.items()}
    seg = pydicom.dcmread(output)
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == "1.2.3.5" and seg.StudyInstanceUID == "1.2.3.4"
    referenced = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for i in s.ReferencedInstanceSequence}  # fmt: skip
    assert referenced == set(sources) and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient, PLANES[plane][0])
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, PLANES[plane][1])
    pixels = seg.pixel_array.reshape(-1, ROWS, COLUMNS)
    organ_of_segment = dict(enumerate(ORGANS, start=1))
    seen = []
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        assert np.allclose(item.PlanePositionSequence[0].ImagePositionPatient, sources[uid].ImagePositionPatient)
        np.testing.assert_array_equal(frame, expected[uid] == organ_of_segment[segment])
        seen.append((uid, segment))
    present = {(uid, s) for uid, e in expected.items() for s, organ in organ_of_segment.items() if (e == organ).any()}
    assert len(seen) == len(set(seen)) and set(seen) == present  # no frame missing, repeated or empty

    segmentation = hd.seg.segread(output)
    reconstructed = np.zeros_like(labels)
    for k, path in enumerate(series.files):  # the reader's slice order: X=columns, Y=rows
        (frame,) = segmentation.get_pixels_by_source_instance(
            [str(pydicom.dcmread(path).SOPInstanceUID)], combine_segments=True, assert_missing_frames_are_empty=True
        )
        reconstructed[:, :, k] = np.asarray(ORGANS_WITH_BACKGROUND)[frame].T
    np.testing.assert_array_equal(reconstructed, labels)

    canonical = nib.as_closest_canonical(nib.Nifti1Image(labels, affine))  # the same labels, axes permuted/flipped
    assert not np.allclose(canonical.affine, affine)
    again = write_dicom_seg(np.asarray(canonical.dataobj), canonical.affine, series.files, str(tmp_path / "r.dcm"),
                            names)  # fmt: skip
    np.testing.assert_array_equal(pydicom.dcmread(again).pixel_array, seg.pixel_array)


def _code_meanings(value: str, scheme: str = "SCT") -> set[str]:
    """The meanings (synonyms) of code ``value`` of ``scheme`` in pydicom's dictionary of the codes DICOM uses."""
    return {m for entry in concepts[scheme].values() for v, (m, _) in entry.items() if v == value}


def test_segments_carry_names_colours_and_codes(tmp_path):
    series = write_plane_series(tmp_path / "ct", *PLANES["coronal"])
    labels = np.zeros(series.shape, np.uint8)
    labels[:6, :, :4] = 6  # only the liver is found
    output = write_dicom_seg(labels, series.affine, series.files, str(tmp_path / "seg.dcm"), BTCV_LABELS)
    seg = hd.seg.segread(output)
    assert seg.segment_numbers == list(range(1, 14))  # every organ of the table, the absent ones empty
    frames = seg.PerFrameFunctionalGroupsSequence
    assert {int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in frames} == {6}
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        assert description.SegmentLabel == organ_name(number, BTCV_LABELS)
        rgb = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb(clip=True)
        assert np.abs(np.asarray(rgb) - 255 * np.asarray(organ_colour(number))).max() <= 2
        assert description.SegmentAlgorithmType == "AUTOMATIC" and description.SegmentAlgorithmName == "CoTr"
        (family,) = description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence
        assert family.CodeMeaning in _code_meanings(family.CodeValue, "DCM")
        (category,) = description.SegmentedPropertyCategoryCodeSequence
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "91723000")  # Anatomical Structure
        (kind,) = description.SegmentedPropertyTypeCodeSequence
        assert kind.CodingSchemeDesignator == "SCT" and kind.CodeMeaning in _code_meanings(kind.CodeValue)
        modifiers = list(kind.get("SegmentedPropertyTypeModifierCodeSequence", []))
        anatomy = list(description.get("PrimaryAnatomicStructureSequence", []))
        assert all(c.CodingSchemeDesignator == "SCT" and c.CodeMeaning in _code_meanings(c.CodeValue)
                   for c in modifiers + anatomy)  # fmt: skip
        words = [m.CodeMeaning.lower() for m in modifiers] + [kind.CodeMeaning.lower()]
        structures = {s.CodeMeaning for s in anatomy}
        if BTCV_LABELS[number] == "portal_and_splenic_veins":  # one label, two veins
            assert words == ["vein"] and structures == {"Portal vein", "Splenic vein"}
        else:
            assert " ".join(words) == organ_name(number, BTCV_LABELS) and not structures


def test_organ_subset_and_generic_names(tmp_path):
    series = write_plane_series(tmp_path / "ct", *PLANES["coronal"])
    labels = np.zeros(series.shape, np.uint8)
    labels[2:5, 3:9, 1:3], labels[8:, :4, 5:] = 3, 9
    names = {3: "left_kidney", 9: "lesion"}  # selected organs, one name without a known code
    seg = hd.seg.segread(write_dicom_seg(labels, series.affine, series.files, str(tmp_path / "seg.dcm"), names))
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers] == ["left kidney", "lesion"]
    assert seg.get_segment_description(2).SegmentedPropertyTypeCodeSequence[0].CodeValue == "91723000"
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in series.files]
    stack = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(np.asarray([0, 3, 9])[stack].transpose(2, 1, 0), labels)


def test_refusals_name_the_problem(tmp_path):
    series = write_plane_series(tmp_path / "ct", *PLANES["sagittal_flipped"])
    labels = np.zeros(series.shape, np.uint8)
    with pytest.raises(ValueError, match=r"label value\(s\) \[7\] are not among the organs \[1, 2\]"):
        write_dicom_seg(labels + 7, series.affine, series.files, str(tmp_path / "a.dcm"), {1: "spleen", 2: "liver"})
    with pytest.raises(ValueError, match="do not cover the label map of shape"):
        write_dicom_seg(labels[:, :, :-1], series.affine, series.files[:-1] * 2, str(tmp_path / "a.dcm"), BTCV_LABELS)
    shifted = series.affine.copy()
    shifted[:3, 3] += 0.4 * shifted[:3, 0]
    with pytest.raises(ValueError, match=r"IM\d+: its pixels lie up to 0.40 voxels off the label map's grid"):
        write_dicom_seg(labels, shifted, series.files, str(tmp_path / "a.dcm"), BTCV_LABELS)
    with pytest.raises(ValueError, match="is one of the source images"):
        write_dicom_seg(labels, series.affine, series.files, series.files[0], BTCV_LABELS)
    assert not os.path.exists(tmp_path / "a.dcm")
    no_frame = write_plane_series(tmp_path / "noref", *PLANES["coronal"], FrameOfReferenceUID="")
    (problem,) = check_source_series(no_frame)
    assert problem.startswith(f"{no_frame.shown}: no DICOM-SEG possible: ") and "no FrameOfReferenceUID" in problem


def test_inference_inputs_check_seg_outputs_before_the_run(tmp_path):
    folder = tmp_path / "in"
    write_plane_series(folder / "study", *PLANES["coronal"])
    write_plane_series(folder / "noref", *PLANES["coronal"], FrameOfReferenceUID="")
    write_nifti(folder / "a.nii.gz", ct_image())
    output = tmp_path / "out"
    inputs = InferenceInputs(None, str(output), str(folder), dicom_seg=True).check()
    assert [c.name for c in inputs.cases] == ["a", "study"]
    (nifti,) = [c for c in inputs.cases if c.name == "a"]
    assert any(w.startswith(f"{folder / 'a.nii.gz'}: no DICOM-SEG for a NIfTI input") for w in nifti.warnings)
    ((shown, reason),) = inputs.skipped
    assert "noref" in shown and reason.startswith("no DICOM-SEG possible") and "FrameOfReferenceUID" in reason
    output.mkdir(exist_ok=True)
    (output / "study_seg.dcm").write_bytes(b"an earlier run's SEG")
    with pytest.raises(FileExistsError, match="study_seg.dcm"):
        InferenceInputs(None, str(output), str(folder), dicom_seg=True).check()
    assert InferenceInputs(None, str(output), str(folder), dicom_seg=True, overwrite=True).check().cases
    assert InferenceInputs(None, str(output), str(folder)).check().cases  # without SEG output the file is not ours


def test_transform_passes_nifti_cases_and_writes_dicom_ones(tmp_path):
    from monai.data import MetaTensor

    series = write_plane_series(tmp_path / "case1", *PLANES["axial_rotated_feet_first"])
    labels = np.zeros((1, *series.shape), np.uint8)
    labels[0, 3:9, 2:6, 1:5] = 1
    transform = SaveDicomSegd("pred", str(tmp_path / "out"), BTCV_LABELS)
    nifti = MetaTensor(labels, affine=series.affine, meta={"filename_or_obj": str(tmp_path / "x.nii.gz")})
    transform({"pred": nifti, "case": "x"})
    assert not os.path.exists(tmp_path / "out")
    dicom = MetaTensor(labels, affine=series.affine, meta={"filename_or_obj": series.reference})
    transform({"pred": dicom, "case": "case1"})
    seg = hd.seg.segread(str(tmp_path / "out" / "case1_seg.dcm"))
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in series.files]
    stack = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(stack.transpose(2, 1, 0), labels[0])
    shifted = series.affine.copy()
    shifted[:3, 3] += 0.5 * shifted[:3, 2]
    with pytest.raises(ValueError, match="off the label map's grid"):  # raised: the run records the case as failed
        transform({"pred": MetaTensor(labels, affine=shifted, meta={"filename_or_obj": series.reference}), "case": "b"})
    assert not os.path.exists(tmp_path / "out" / "b_seg.dcm")


@pytest.mark.slow
def test_bundle_inference_writes_a_seg_equal_to_the_nifti_output(tmp_path):
    import torch
    from monai.bundle import ConfigParser

    from tests.reliability.conftest import config_paths

    folder = tmp_path / "in"
    series = write_plane_series(folder / "ct1", *PLANES["sagittal_flipped"], rows=30, columns=36, n=14)
    write_nifti(folder / "scan.nii.gz", ct_image())
    parser = ConfigParser()
    parser.read_config(config_paths("inference.json", "demo.json"))
    torch.manual_seed(0)
    models = tmp_path / "models"
    models.mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), models / "model.pt")
    output = tmp_path / "out"
    result = run_bundle(
        "run",
        "inference",
        "--config_file",
        str(config_paths("inference.json", "demo.json")),
        "--dataset_dir",
        str(folder),
        "--ckpt_dir",
        str(models),
        "--output_dir",
        str(output),
        "--save_dicom_seg",
        "True",
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert f"{folder / 'scan.nii.gz'}: no DICOM-SEG for a NIfTI input" in result.stdout + result.stderr
    assert sorted(os.listdir(output)) == ["ct1_seg.dcm", "ct1_seg.nii.gz", "scan_seg.nii.gz"]
    nifti = np.asarray(nib.load(output / "ct1_seg.nii.gz").dataobj)
    assert len(np.unique(nifti)) > 2  # random weights: several organs, so the comparison means something
    seg = hd.seg.segread(str(output / "ct1_seg.dcm"))
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in series.files]
    stack = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(stack.transpose(2, 1, 0), nifti)  # full label table: segment number = label


def test_drawing_shows_the_segments_read_back_in_their_colours(tmp_path):
    import matplotlib.image

    series = write_plane_series(tmp_path / "ct", *PLANES["axial_rotated_feet_first"])
    labels = np.zeros(series.shape, np.uint8)
    labels[2:9, 3:8, :], labels[10:16, 6:12, 3:] = 1, 8  # spleen on every slice, aorta on 6 of them
    seg = write_dicom_seg(labels, series.affine, series.files, str(tmp_path / "seg.dcm"), BTCV_LABELS)
    picture = draw_dicom_seg(seg, str(tmp_path / "ct"), str(tmp_path / "seg.png"), num_slices=2)
    rgb = np.rint(matplotlib.image.imread(picture)[..., :3] * 255).astype(int).reshape(-1, 3)
    for label, shown in ((1, True), (8, True), (6, False)):  # the legend's patches are the exact colours
        colour = np.rint(255 * np.asarray(organ_colour(label))).astype(int)
        count = int((np.abs(rgb - colour).max(axis=1) <= 2).sum())
        assert (count > 50) if shown else (count == 0), (organ_name(label), count)
