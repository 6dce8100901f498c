"""
DICOM series are checked, not trusted: synthetic CT series (pydicom) with a gap, a tilt, duplicate or mixed
slices are refused with the folder, the series UID and the files named; unused files are reported with the
reason; a clean series reads as ITK reads it (an independent implementation), with nothing printed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImage, Orientationd, SaveImaged, Spacingd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    MediaStorageDirectoryStorage,
    SegmentationStorage,
    generate_uid,
)  # fmt: skip

from scripts.data.dicom import (
    DicomSeriesError,
    DicomSeriesReader,
    find_series,
    is_dicom_file,
    read_series,
    read_series_reference,
    resolve_series,
)  # fmt: skip

from .conftest import AFFINE, ct_image, root_cause, write_nifti

COLUMNS, ROWS, SLICES = 24, 20, 10
PIXEL_SPACING = (0.7, 0.8)  # between rows (y), between columns (x)
STEP = 2.5
#: axial, rotated 30 degrees in-plane and flipped: the row x column normal points to the feet
ORIENTATION = (np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0, np.sin(np.pi / 6), -np.cos(np.pi / 6), 0.0)
ORIGIN = np.array([-40.0, 25.0, 110.0])
INTERCEPT = -1024.0

Edit = Callable[[int, Dataset], None]


def _normal(orientation=ORIENTATION) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def write_slice(path: str, pixels: np.ndarray, series_uid: str, position, **tags) -> Dataset:
    """One single-frame CT image file: int16 stored values, ``tags`` override the defaults."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID, ds.Modality, ds.ImageType = "synthetic", "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.5", series_uid
    ds.SeriesNumber, ds.SeriesDescription = 2, "abdomen"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in ORIENTATION]
    ds.PixelSpacing, ds.SliceThickness = list(PIXEL_SPACING), STEP
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, INTERCEPT
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_series(
    folder, series_uid: str = "", n: int = SLICES, positions=None, seed: int = 0, edit: Edit | None = None
) -> tuple[str, np.ndarray]:
    """
    A CT series in ``folder``, files named in random order; ``edit(k, ds)`` changes slice k before it is written.
    Returns the series UID and the HU volume (X=columns, Y=rows, Z=slice index).
    """
    os.makedirs(folder, exist_ok=True)
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 2000, size=(n, ROWS, COLUMNS)).astype(np.int16)
    positions = [ORIGIN + k * STEP * _normal() for k in range(n)] if positions is None else positions
    names = rng.permutation(n)
    for k in range(n):
        ds = Dataset()
        ds.InstanceNumber = k + 1
        if edit is not None:
            edit(k, ds)
        write_slice(os.path.join(folder, f"IM{names[k]:04d}_{seed}"), stored[k], series_uid, positions[k],
                    **{e.keyword: e.value for e in ds})  # fmt: skip
    return series_uid, np.transpose(stored, (2, 1, 0)).astype(np.float32) + INTERCEPT


def _positions(steps) -> list[np.ndarray]:
    return [ORIGIN + along * _normal() for along in np.concatenate([[0.0], np.cumsum(steps)])]


def _tilted(degrees: float) -> list[np.ndarray]:
    shift = STEP * np.tan(np.radians(degrees)) * np.array(ORIENTATION[3:])  # each slice moves along the columns
    return [ORIGIN + k * (STEP * _normal() + shift) for k in range(SLICES)]


def test_clean_series_reads_as_itk_reads_it(tmp_path, capfd):
    folder = str(tmp_path / "case1")
    uid, expected = write_series(folder)
    series, unused = find_series(folder)
    volume, affine = read_series(series[0])
    assert capfd.readouterr() == ("", "")  # nothing printed by scanning and reading
    assert unused == [] and len(series) == 1
    one = series[0]
    assert (one.series_uid, one.name, one.reference, one.problems, one.warnings) == (uid, "case1", folder, [], [])
    assert one.shape == (COLUMNS, ROWS, SLICES) and one.description == "CT series 2 'abdomen'"
    np.testing.assert_allclose(one.spacing, (0.8, 0.7, STEP))
    np.testing.assert_allclose(volume, expected)
    # the DICOM definition: voxel (i, j, k) lies at IPP_k + i * dx * row + j * dy * column (LPS)
    lps = ORIGIN + 3 * STEP * _normal() + 5 * 0.8 * np.array(ORIENTATION[:3]) + 7 * 0.7 * np.array(ORIENTATION[3:])
    np.testing.assert_allclose(affine @ [5, 7, 3, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-9)

    itk = LoadImage(reader="ITKReader", image_only=True)(folder)
    np.testing.assert_allclose(volume, itk.numpy(), atol=1e-4)
    np.testing.assert_allclose(affine, itk.affine.numpy(), atol=1e-4)


#: the configs' LoadImaged for NIfTI files and DICOM series alike: NibabelReader, listed last, is tried first
LOAD_IMAGED = {"_target_": "LoadImaged", "keys": "image", "image_only": True,
               "reader": ["scripts.data.dicom.DicomSeriesReader", "NibabelReader"]}  # fmt: skip


def test_load_imaged_reads_nifti_and_dicom_series_through_inference_transforms(tmp_path, capfd):
    """The inference flow: load, reorient and resample, invert onto the input grid, save named after the input."""
    single, study = str(tmp_path / "case1"), str(tmp_path / "study")
    write_series(single)
    write_series(study, seed=2)
    write_series(study, seed=3, edit=lambda k, ds: setattr(ds, "SeriesNumber", 3))
    gapped = str(tmp_path / "gapped")
    write_series(gapped, positions=_positions([STEP] * 4 + [2 * STEP] + [STEP] * 4))
    nifti = write_nifti(tmp_path / "case2.nii.gz", ct_image())
    preprocessing = Compose([
        ConfigParser({"load": LOAD_IMAGED}).get_parsed_content("load"),
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=(1.0, 1.0, 2.0), mode="bilinear"),
    ])  # fmt: skip
    postprocessing = Compose([
        Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False),
        SaveImaged(keys="pred", output_dir=str(tmp_path / "out"), output_postfix="seg", resample=False,
                   separate_folder=False, print_log=False),
    ])  # fmt: skip
    for source, name in [(single, "case1"), (os.path.join(study, "study_series3"), "study_series3"), (nifti, "case2")]:
        data = preprocessing({"image": source})
        assert data["image"].meta["filename_or_obj"] == source and data["image"].meta["space"] == "RAS"
        postprocessing({**data, "pred": data["image"].clone()})
        saved = nib.load(str(tmp_path / "out" / f"{name}_seg.nii.gz"))
        reference = LoadImage(reader=DicomSeriesReader, image_only=True)(source)
        assert saved.shape == tuple(reference.shape)  # back on the input's grid, by the RAS affine it was read with
        np.testing.assert_allclose(saved.affine, reference.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(reference.affine.numpy(), AFFINE)  # the NIfTI went to NibabelReader
    with pytest.raises(RuntimeError) as error:  # MONAI wraps a transform's error; ITK must not read it instead
        preprocessing({"image": gapped})
    assert isinstance(root_cause(error.value), DicomSeriesError) and "missing slice(s)" in str(root_cause(error.value))
    assert capfd.readouterr() == ("", "")


def test_two_series_in_one_folder(tmp_path):
    folder = str(tmp_path / "study")
    uid2, expected2 = write_series(folder, seed=2)
    uid3, expected3 = write_series(folder, seed=3, edit=lambda k, ds: setattr(ds, "SeriesNumber", 3))
    series, unused = find_series(folder)
    assert unused == [] and [s.series_uid for s in series] == [uid2, uid3]
    assert [s.name for s in series] == ["study_series2", "study_series3"]
    assert [s.reference for s in series] == [os.path.join(folder, s.name) for s in series]
    load = LoadImage(reader=DicomSeriesReader, image_only=True)
    np.testing.assert_allclose(load(series[0].reference).numpy(), expected2)
    np.testing.assert_allclose(load(os.path.join(folder, uid3)).numpy(), expected3)  # by SeriesInstanceUID too
    with pytest.raises(DicomSeriesError, match=f"{folder} holds 2 DICOM image series; refer to one of them: .*series3"):
        resolve_series(folder)
    with pytest.raises(DicomSeriesError, match="has no series named 'study_series4'"):
        resolve_series(os.path.join(folder, "study_series4"))
    np.testing.assert_allclose(read_series_reference(series[1].reference)[0], expected3)
    only, unused = find_series(folder, files=series[1].files[:4])  # a subset, e.g. the DICOM files among others
    assert unused == [] and [(s.series_uid, s.name, len(s.files)) for s in only] == [(uid3, "study", 4)]


def _set_on(slice_index: int, **tags) -> Edit:
    """An ``edit`` that sets ``tags`` on one slice."""

    def edit(k: int, ds: Dataset) -> None:
        if k == slice_index:
            for keyword, value in tags.items():
                setattr(ds, keyword, value)

    return edit


def _with_short_slice(folder: str) -> str:
    """A series whose last slice has 18 rows, not 20."""
    uid, volume = write_series(folder, n=SLICES - 1)
    pixels = (volume[:, :18, 0].T - INTERCEPT).astype(np.int16)
    write_slice(os.path.join(folder, "short"), pixels, uid, ORIGIN + (SLICES - 1) * STEP * _normal(), InstanceNumber=10)
    return uid


REFUSALS: dict[str, tuple[Callable[[str], str], list[str]]] = {
    # case: (writes the series into a folder and returns its UID, expected parts of the message)
    "missing_slice": (
        lambda folder: write_series(folder, positions=_positions([STEP] * 4 + [2 * STEP] + [STEP] * 4))[0],
        ["missing slice(s)", "slice step is 2.5 mm", "largest gap is a 5 mm step", "instance numbers 5 and 6",
         "about 1 slice(s) missing", "refused, not resampled"],
    ),
    "non_uniform_spacing": (
        lambda folder: write_series(folder, positions=_positions([STEP] * 4 + [3.0] + [STEP] * 4))[0],
        ["non-uniform slice spacing", "slice step is 2.5 mm", "1 of 9 steps differ from it by more than 0.025 mm",
         "a 3 mm step between positions -100 and -97 mm"],
    ),
    "duplicate_positions": (
        lambda folder: write_series(folder, positions=_positions([STEP] * 4 + [0.0] + [STEP] * 4))[0],
        ["duplicate slice positions", "1 pair(s)", "instance numbers 5 and 6", "must be split first"],
    ),
    "gantry_tilt": (
        lambda folder: write_series(folder, positions=_tilted(15.0))[0],
        ["15.00 degrees off the row x column normal", "resample the series"],
    ),
    "mixed_sizes": (_with_short_slice, ["mixed Rows within the series: [20] in", "but [18] in", "short"]),
    "mixed_pixel_spacing": (
        lambda folder: write_series(folder, edit=_set_on(3, PixelSpacing=[0.7, 0.9]))[0],
        ["mixed PixelSpacing within the series: [0.7, 0.8] in", "but [0.7, 0.9] in"],
    ),
    "missing_tag": (
        lambda folder: write_series(folder, edit=_set_on(4, ImagePositionPatient=None))[0],
        ["ImagePositionPatient missing or not 3 number(s) in 1 of 10 files"],
    ),
    "multi_frame": (
        lambda folder: write_series(folder, edit=_set_on(0, NumberOfFrames=3))[0],
        ["multi-frame (enhanced) objects are not supported: 1 of 10 files", "NumberOfFrames 3"],
    ),
    "one_slice": (lambda folder: write_series(folder, n=1)[0], ["1 slice(s); a 3D volume needs at least 2"]),
    "absurd_spacing": (
        lambda folder: write_series(folder, edit=lambda k, ds: setattr(ds, "PixelSpacing", [0.001, 0.001]))[0],
        ["implausible voxel spacing [0.001, 0.001, 2.5] mm", "[0.01, 50] mm"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_series(tmp_path, case, capfd):
    folder = str(tmp_path / case)
    write, expected = REFUSALS[case]
    uid = write(folder)
    series, unused = find_series(folder)
    assert unused == [] and len(series) == 1
    message = "\n".join(series[0].problems)
    assert message.startswith(f"DICOM series {uid} in {folder}: ")
    for part in expected:
        assert part in message
    with pytest.raises(DicomSeriesError) as error:
        read_series(series[0])
    assert error.value.problems == series[0].problems
    # through LoadImage: the refusal reaches the caller, ITK does not read the series in its place
    with pytest.raises(DicomSeriesError, match=f"DICOM series {uid}"):
        LoadImage(reader=DicomSeriesReader, image_only=True)(folder)
    assert capfd.readouterr() == ("", "")


def test_unused_files_are_reported_with_the_reason(tmp_path):
    folder = str(tmp_path / "case1")
    uid, expected = write_series(folder)
    open(os.path.join(folder, "notes.txt"), "w").write("not a DICOM file")
    os.makedirs(os.path.join(folder, "derived"))
    pixels = np.zeros((ROWS, COLUMNS), np.int16)
    dicomdir = Dataset()
    dicomdir.file_meta = FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID, dicomdir.file_meta.MediaStorageSOPInstanceUID = (
        MediaStorageDirectoryStorage,
        generate_uid(),
    )
    dicomdir.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicomdir.FileSetID, dicomdir.DirectoryRecordSequence = "SYNTHETIC", []
    dicomdir.save_as(os.path.join(folder, "DICOMDIR"), enforce_file_format=True)
    write_slice(os.path.join(folder, "seg.dcm"), pixels, generate_uid(), ORIGIN, SOPClassUID=SegmentationStorage)
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    write_slice(os.path.join(folder, "scout1"), pixels, uid, ORIGIN, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                ImageOrientationPatient=list(sagittal), InstanceNumber=99)  # fmt: skip
    write_slice(os.path.join(folder, "scout2"), pixels, generate_uid(), ORIGIN, SeriesNumber=1,
                ImageOrientationPatient=list(sagittal))  # fmt: skip
    series, unused = find_series(folder)
    assert len(series) == 1 and series[0].problems == [] and series[0].name == "case1"
    np.testing.assert_allclose(read_series(series[0])[0], expected)
    reasons = {os.path.basename(path): reason for path, reason in unused}
    assert sorted(reasons) == ["DICOMDIR", "derived", "notes.txt", "scout1", "scout2", "seg.dcm"]
    assert reasons["DICOMDIR"].startswith("a DICOMDIR")
    assert reasons["derived"] == "a folder: subfolders are not scanned"
    assert reasons["notes.txt"].startswith("not a DICOM file")
    assert reasons["seg.dcm"].startswith("not an image: Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.4)")
    assert is_dicom_file(os.path.join(folder, "seg.dcm")) and not is_dicom_file(os.path.join(folder, "notes.txt"))
    assert reasons["scout1"] == "a localizer/scout image (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)"
    assert reasons["scout2"].startswith("a single-slice series") and reasons["scout2"].endswith("a localizer")


def test_folder_without_series_and_other_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing")
    with pytest.raises(DicomSeriesError, match=r"empty: no DICOM image series among its 1 entries \(.*readme.txt: not"):
        resolve_series(str(empty))
    nifti = write_nifti(tmp_path / "img.nii.gz", ct_image())
    assert resolve_series(nifti) is None and resolve_series(str(tmp_path / "missing.nii.gz")) is None
    with pytest.raises(ValueError, match="not a DICOM folder or DICOM series reference"):
        DicomSeriesReader().read(nifti)


def test_undecodable_pixel_data_names_the_file_and_transfer_syntax(tmp_path):
    folder = str(tmp_path / "case1")
    write_series(folder)
    series = resolve_series(folder)
    ds = pydicom.dcmread(series.files[4])
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a JPEG-LS stream"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(series.files[4], enforce_file_format=True)
    with pytest.raises(DicomSeriesError, match=f"{series.files[4]}: cannot decode the pixel data of transfer syntax "
                       f"JPEG-LS Lossless Image Compression \\({JPEGLSLossless}\\)"):  # fmt: skip
        read_series(resolve_series(folder))


def test_warnings_are_logged_not_printed(tmp_path, caplog, capfd):
    folder = str(tmp_path / "case1")
    write_series(folder, edit=lambda k, ds: setattr(ds, "SliceThickness", 5.0))
    series = resolve_series(folder)
    assert series.problems == [] and len(series.warnings) == 1
    assert "SliceThickness 5 mm differs from the 2.5 mm step" in series.warnings[0]
    with caplog.at_level(logging.WARNING, logger="scripts.data.dicom"):
        LoadImage(reader=DicomSeriesReader, image_only=True)(folder)
    assert series.warnings[0] in caplog.messages
    assert capfd.readouterr() == ("", "")
