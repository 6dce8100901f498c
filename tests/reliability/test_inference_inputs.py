"""Inference inputs and outputs: unreadable cases set aside, never writing into the input folder, no overwriting."""

from __future__ import annotations

import glob
import os

import nibabel as nib
import numpy as np
import pytest

from scripts.datalist import NonHUIntensityWarning
from scripts.infer_folder import AtomicNibabelWriter, InferenceInputs, output_path

from .conftest import ct_image, write_nifti


def _folder(tmp_path, names=("a", "b")) -> str:
    folder = tmp_path / "in"
    for i, name in enumerate(names):
        write_nifti(folder / f"{name}.nii.gz", ct_image(seed=i))
    return str(folder)


def _images(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.nii.gz")))


def test_unreadable_cases_are_set_aside_and_reported(tmp_path, capsys):
    folder = _folder(tmp_path)
    broken = os.path.join(folder, "broken.nii.gz")
    data = open(os.path.join(folder, "a.nii.gz"), "rb").read()
    open(broken, "wb").write(data[: len(data) // 2])
    flat = write_nifti(os.path.join(folder, "flat.nii.gz"), np.zeros((24, 24, 8), np.int16))
    volume4d = write_nifti(os.path.join(folder, "series.nii.gz"), np.stack([ct_image()] * 2, -1))
    missing = os.path.join(folder, "gone.nii.gz")
    output = str(tmp_path / "out")
    inputs = InferenceInputs(_images(folder) + [missing], output, folder, "*.nii.gz").check()
    assert inputs.images == [os.path.join(folder, n) for n in ("a.nii.gz", "b.nii.gz")]
    assert inputs.items == [{"image": p} for p in inputs.images]
    reasons = dict(inputs.skipped)
    assert "unreadable or truncated data" in reasons[broken]
    assert reasons[flat] == "image is one constant value (0)"
    assert reasons[volume4d].startswith("image is not 3D")
    assert reasons[missing] == "file not found"
    for image in inputs.images:  # what the network wrote
        write_nifti(output_path(image, output), np.zeros((24, 24, 8), np.uint8))
    with pytest.raises(SystemExit) as exited:
        inputs.finalize()
    assert exited.value.code == 1
    summary = capsys.readouterr().err
    assert summary.startswith(f"inference: wrote 2 of 6 segmentation(s) to {output}")
    assert "skipped 4 input(s)" in summary and f"  {broken}: unreadable" in summary and f"  {missing}: file not found" in summary


def test_clean_run_finishes_with_status_zero(tmp_path, capsys):
    folder = _folder(tmp_path)
    output = str(tmp_path / "out")
    inputs = InferenceInputs(_images(folder), output, folder).check()
    for image in inputs.images:
        write_nifti(output_path(image, output), np.zeros((24, 24, 8), np.uint8))
    inputs.finalize()  # no SystemExit
    assert "wrote 2 of 2" in capsys.readouterr().out


def test_a_missing_output_fails_the_run(tmp_path, capsys):
    folder = _folder(tmp_path)
    inputs = InferenceInputs(_images(folder), str(tmp_path / "out"), folder).check()
    with pytest.raises(SystemExit):
        inputs.finalize()
    assert "2 expected output(s) were not written" in capsys.readouterr().err


def test_nothing_readable_is_an_error(tmp_path):
    folder = tmp_path / "in"
    broken = write_nifti(folder / "a.nii.gz", np.full((24, 24, 8), np.nan, np.float32))
    with pytest.raises(RuntimeError, match="none of the 1 input image") as raised:
        InferenceInputs([broken], str(tmp_path / "out"), str(folder)).check()
    assert f"{broken}: image contains" in str(raised.value)


def test_empty_or_missing_input_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"nothing in {empty} matching '\\*.nii.gz'"):
        InferenceInputs([], str(tmp_path / "out"), str(empty), "*.nii.gz").check()
    with pytest.raises(FileNotFoundError, match=f"input folder {tmp_path / 'nope'} not found"):
        InferenceInputs([], str(tmp_path / "out"), str(tmp_path / "nope")).check()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_never_writes_into_the_input_folder(tmp_path, where):
    folder = _folder(tmp_path)
    output = folder if where == "same" else os.path.join(folder, "predictions")
    with pytest.raises(ValueError, match="inside the input folder"):
        InferenceInputs(_images(folder), output, folder).check()


def test_existing_outputs_are_refused_unless_overwrite(tmp_path):
    folder = _folder(tmp_path)
    output = str(tmp_path / "out")
    existing = write_nifti(output_path(os.path.join(folder, "b.nii.gz"), output), np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(FileExistsError) as raised:
        InferenceInputs(_images(folder), output, folder).check()
    assert f"{existing} (from {os.path.join(folder, 'b.nii.gz')})" in str(raised.value)
    assert "--overwrite True" in str(raised.value)
    assert InferenceInputs(_images(folder), output, folder, overwrite=True).check().images == _images(folder)


def test_two_inputs_for_one_output_are_refused(tmp_path):
    folder = tmp_path / "in"
    one = write_nifti(folder / "case.nii.gz", ct_image())
    two = write_nifti(folder / "case.nii", ct_image())
    with pytest.raises(ValueError, match="same output file"):
        InferenceInputs([one, two], str(tmp_path / "out"), str(folder)).check()


def test_non_ct_input_is_processed_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "in"
    image = write_nifti(folder / "mr.nii.gz", np.random.default_rng(0).random((24, 24, 8)).astype(np.float32))
    output = str(tmp_path / "out")
    with pytest.warns(NonHUIntensityWarning, match="does not look like CT"):
        inputs = InferenceInputs([image], output, str(folder)).check()
    assert inputs.images == [image] and not inputs.skipped
    write_nifti(output_path(image, output), np.zeros((24, 24, 8), np.uint8))
    inputs.finalize()
    assert "1 warning(s)" in capsys.readouterr().out


def test_unreadable_dicom_folder_is_set_aside(tmp_path):
    series = tmp_path / "in" / "case01"
    series.mkdir(parents=True)
    (series / "slice000.dcm").write_bytes(b"not dicom")
    good = write_nifti(tmp_path / "in" / "good.nii.gz", ct_image())
    inputs = InferenceInputs([str(series), good], str(tmp_path / "out"), str(tmp_path / "in"), "*").check()
    assert inputs.images == [good] and inputs.skipped[0][0] == str(series)
    assert inputs.skipped[0][1].startswith("unreadable image")


# ---------------------------------------------------------------------------------------------------------------
# atomic NIfTI writing
# ---------------------------------------------------------------------------------------------------------------


def _write(path: str, value: int) -> None:
    writer = AtomicNibabelWriter(output_dtype=np.uint8)
    writer.set_data_array(np.full((1, 4, 4, 3), value, np.uint8), channel_dim=0)
    writer.set_metadata({"affine": np.eye(4), "original_affine": np.eye(4)}, resample=False)
    writer.write(path)


def test_atomic_writer_writes_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "case_seg.nii.gz")
    _write(path, 3)
    assert np.all(np.asarray(nib.load(path).dataobj) == 3) and nib.load(path).get_data_dtype() == np.uint8

    def failing_save(image, filename):
        open(filename, "wb").write(b"\x1f\x8b partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _write(path, 5)
    monkeypatch.undo()
    assert np.all(np.asarray(nib.load(path).dataobj) == 3)  # the old segmentation, complete
    assert os.listdir(tmp_path) == ["case_seg.nii.gz"]
