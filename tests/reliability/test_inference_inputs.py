"""Inference inputs and outputs: unreadable cases set aside, never writing into the input folder, no overwriting."""

from __future__ import annotations

import glob
import os

import nibabel as nib
import numpy as np
import pytest

from scripts.engine.infer_folder import AtomicNibabelWriter, InferenceInputs, InputError, output_path

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
    assert inputs.items == [{"image": p, "case": n} for p, n in zip(inputs.images, ("a", "b"))]
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
    assert (
        "skipped 4 input(s)" in summary
        and f"  {broken}: unreadable" in summary
        and f"  {missing}: file not found" in summary
    )


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
    with pytest.raises(InputError, match="no usable input image") as raised:
        InferenceInputs([broken], str(tmp_path / "out"), str(folder)).check()
    assert f"{broken}: image contains" in str(raised.value)


def test_empty_or_missing_input_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        InputError, match=f"no usable input image in {empty} matching '\\*.nii.gz' \\(the folder is empty"
    ):
        InferenceInputs(None, str(tmp_path / "out"), str(empty), "*.nii.gz").check()
    with pytest.raises(InputError, match=f"input folder {tmp_path / 'nope'} not found"):
        InferenceInputs(None, str(tmp_path / "out"), str(tmp_path / "nope")).check()


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


def test_two_inputs_for_one_output_are_both_set_aside(tmp_path):
    folder = tmp_path / "in"
    one = write_nifti(folder / "case.nii.gz", ct_image())
    two = write_nifti(folder / "case.nii", ct_image())
    other = write_nifti(folder / "other.nii.gz", ct_image())
    inputs = InferenceInputs(None, str(tmp_path / "out"), str(folder)).check()
    assert inputs.images == [other]
    reasons = dict(inputs.skipped)
    assert set(reasons) == {one, two} and all("same output file" in r and "rename one" in r for r in reasons.values())


def test_non_ct_input_is_processed_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "in"
    image = write_nifti(folder / "mr.nii.gz", np.random.default_rng(0).random((24, 24, 8)).astype(np.float32))
    output = str(tmp_path / "out")
    inputs = InferenceInputs([image], output, str(folder)).check()  # warnings are collected, named, not raised
    assert inputs.images == [image] and not inputs.skipped
    (message,) = inputs.cases[0].warnings
    assert message.startswith(f"{image}: intensities span") and "does not look like CT" in message
    write_nifti(output_path(image, output), np.zeros((24, 24, 8), np.uint8))
    inputs.finalize()
    assert "1 warning(s)" in capsys.readouterr().out


def test_unreadable_dicom_folder_is_set_aside(tmp_path):
    series = tmp_path / "in" / "case01"
    series.mkdir(parents=True)
    (series / "slice000.dcm").write_bytes(b"not dicom")
    good = write_nifti(tmp_path / "in" / "good.nii.gz", ct_image())
    inputs = InferenceInputs(None, str(tmp_path / "out"), str(tmp_path / "in")).check()
    assert inputs.images == [good] and inputs.skipped == [
        (str(series), "folder without a DICOM image series (its files are listed as ignored)")
    ]
    assert [path for path, _ in inputs.ignored] == [str(series / "slice000.dcm")]


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


# ---------------------------------------------------------------------------------------------------------------
# discovery: every entry of the input folder is segmented or reported
# ---------------------------------------------------------------------------------------------------------------


def test_every_folder_entry_is_a_case_or_reported(tmp_path, capsys):
    folder = tmp_path / "in"
    for i, name in enumerate(["a.nii.gz", "B.NII", "c.Nii.Gz"]):
        write_nifti(folder / name, ct_image(seed=i))
    cases = [str(p) for p in folder.iterdir()]  # nibabel may change the letter case of the extension it writes
    (folder / "a.json").write_text("{}")  # dcm2niix's sidecar of a.nii.gz
    (folder / "notes.txt").write_text("scanned on Monday")
    (folder / "scan.nrrd").write_bytes(b"NRRD0004")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "empty").mkdir()
    output = str(tmp_path / "out")
    inputs = InferenceInputs(None, output, str(folder)).check()
    assert sorted(inputs.images) == sorted(cases)
    assert sorted(c.name for c in inputs.cases) == ["B", "a", "c"]
    skipped, ignored = dict(inputs.skipped), dict(inputs.ignored)
    assert set(skipped) == {str(folder / n) for n in ("notes.txt", "scan.nrrd", "empty")}
    assert "not a NIfTI file" in skipped[str(folder / "scan.nrrd")]
    assert ignored == {str(folder / ".DS_Store"): "hidden entry", str(folder / "a.json"): "sidecar file of a.nii.gz"}
    for case in inputs.cases:
        write_nifti(output_path(case.name, output), np.zeros((24, 24, 8), np.uint8))
    with pytest.raises(SystemExit) as exited:  # entries that look like inputs but were not segmented fail the run
        inputs.finalize()
    assert exited.value.code == 1
    summary = capsys.readouterr().err
    assert "wrote 3 of 6" in summary
    for entry in ("notes.txt", "scan.nrrd", "empty", ".DS_Store", "a.json"):
        assert str(folder / entry) in summary


def test_image_pattern_narrows_the_folder_and_says_what_it_left_out(tmp_path):
    folder = tmp_path / "in"
    kept = write_nifti(folder / "img0001.nii.gz", ct_image())
    other = write_nifti(folder / "label0001.nii.gz", ct_image())
    inputs = InferenceInputs(None, str(tmp_path / "out"), str(folder), "IMG*").check()
    assert inputs.images == [kept] and inputs.ignored == [(other, "does not match image_pattern 'IMG*'")]


def test_output_is_named_after_the_case_in_any_letter_case(tmp_path):
    folder = tmp_path / "in"
    image = write_nifti(folder / "Case.01.NII.GZ", ct_image())
    inputs = InferenceInputs(None, str(tmp_path / "out"), str(folder)).check()
    assert inputs.outputs == {"Case.01": str(tmp_path / "out" / "Case.01_seg.nii.gz")}
    from monai.data.folder_layout import FolderLayout

    layout = FolderLayout(str(tmp_path / "out"), postfix="seg", extension=".nii.gz")  # as SaveImaged forms the name
    assert layout.filename(**inputs.name_formatter({"filename_or_obj": image})) == inputs.outputs["Case.01"]


# ---------------------------------------------------------------------------------------------------------------
# the output folder is checked before the network runs
# ---------------------------------------------------------------------------------------------------------------


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    folder = _folder(tmp_path)
    output = tmp_path / "out.nii.gz"
    output.write_bytes(b"a user's file")
    with pytest.raises(InputError, match=f"output_dir {output} is a file, not a folder"):
        InferenceInputs(None, str(output), folder).check()
    assert output.read_bytes() == b"a user's file"


def test_unwritable_output_dir_is_refused_naming_the_reason(tmp_path, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(InputError, match="cannot be written \\(Permission denied\\)"):
        InferenceInputs(None, str(tmp_path / "out"), _folder(tmp_path)).check()


def test_too_little_space_is_refused(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))  # 1 MiB free
    with pytest.raises(InputError, match="has 1 MiB free; the 2 segmentation\\(s\\) need about 8 MiB"):
        InferenceInputs(None, str(tmp_path / "out"), _folder(tmp_path)).check()


def test_an_output_path_taken_by_a_folder_sets_the_case_aside(tmp_path):
    folder = _folder(tmp_path)
    (tmp_path / "out" / "a_seg.nii.gz").mkdir(parents=True)
    inputs = InferenceInputs(None, str(tmp_path / "out"), folder).check()
    assert [c.name for c in inputs.cases] == ["b"]
    assert inputs.skipped == [
        (os.path.join(folder, "a.nii.gz"), f"the output path {tmp_path / 'out' / 'a_seg.nii.gz'} is a folder")
    ]


# ---------------------------------------------------------------------------------------------------------------
# thin scans
# ---------------------------------------------------------------------------------------------------------------


def test_a_scan_thinner_than_the_patch_warns(tmp_path):
    folder = tmp_path / "in"
    thin = write_nifti(folder / "slab.nii.gz", ct_image((24, 24, 7)))  # 7 slices of 4.5 mm (conftest's AFFINE)
    inputs = InferenceInputs(
        None, str(tmp_path / "out"), str(folder), patch_size=(12, 12, 48), target_spacing=(2, 2, 3)
    ).check()
    assert inputs.images == [thin]
    (message,) = inputs.cases[0].warnings
    assert message.startswith(f"{thin}: the scan is smaller than the training patch")
    assert "31.5 mm along S-I (7 voxels of 4.50 mm) against the training patch's 144.0 mm" in message
    assert "padded with air" in message and "R-L" not in message  # 48 mm in-plane cover the 24 mm patch
    assert message in inputs.summary()
    wide = InferenceInputs(
        None, str(tmp_path / "out2"), str(folder), patch_size=(12, 12, 8), target_spacing=(2, 2, 3)
    ).check()
    assert wide.cases[0].warnings == []


# ---------------------------------------------------------------------------------------------------------------
# a case that fails during the run does not stop the others
# ---------------------------------------------------------------------------------------------------------------


def test_a_case_that_fails_while_running_is_reported_and_the_others_are_segmented(tmp_path, demo_network, capsys):
    import torch

    from .conftest import workflow

    folder = _folder(tmp_path, names=("a", "b", "c"))
    checkpoint = tmp_path / "model.pt"
    torch.save(demo_network.state_dict(), checkpoint)
    output = tmp_path / "out"
    runner = workflow(
        ["inference.json", "demo.json"],
        "infer",
        dataset_dir=folder,
        output_dir=str(output),
        ckpt_path=str(checkpoint),
        num_workers=0,
        tta_flip_axes=[],
        sw_progress=False,
    )
    runner.initialize()
    truncated = os.path.join(folder, "b.nii.gz")  # changed on disk after the checks
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 2])
    runner.run()
    with pytest.raises(SystemExit) as exited:
        runner.finalize()
    assert exited.value.code == 1
    assert sorted(os.listdir(output)) == ["a_seg.nii.gz", "c_seg.nii.gz"]
    summary = capsys.readouterr().err
    assert "1 case(s) failed while being segmented" in summary and f"  {truncated}: " in summary


# ---------------------------------------------------------------------------------------------------------------
# DICOM series: each one a case, checked first; measurements and overlays as for NIfTI
# ---------------------------------------------------------------------------------------------------------------


def test_dicom_series_are_cases_and_get_measurements_and_overlays(tmp_path, demo_network, capsys):
    import torch

    from scripts.data.dicom import read_series_reference

    from .conftest import workflow
    from .test_dicom import _positions, write_series

    root = tmp_path / "in"
    uid2, _ = write_series(str(root / "study"), seed=2)
    uid3, _ = write_series(str(root / "study"), seed=3, edit=lambda k, ds: setattr(ds, "SeriesNumber", 3))
    gapped_uid, _ = write_series(str(root / "gapped"), n=9, positions=_positions([2.5] * 4 + [5.0] + [2.5] * 3))
    write_nifti(root / "a.nii.gz", ct_image())
    checkpoint = tmp_path / "model.pt"
    torch.save(demo_network.state_dict(), checkpoint)
    output = tmp_path / "out"
    runner = workflow(
        ["inference.json", "demo.json"],
        "infer",
        dataset_dir=str(root),
        output_dir=str(output),
        ckpt_path=str(checkpoint),
        num_workers=0,
        tta_flip_axes=[],
        sw_progress=False,
        save_measurements=True,
        save_overlays=True,
    )
    runner.initialize()
    assert [c.name for c in runner.parser.get_parsed_content("inputs").cases] == ["a", "study_series2", "study_series3"]
    ((shown, reason),) = runner.parser.get_parsed_content("inputs").skipped
    assert shown == f"DICOM series {gapped_uid} in {root / 'gapped'}" and reason.startswith("missing slice(s)")
    runner.run()
    with pytest.raises(SystemExit):  # the gapped series was not segmented
        runner.finalize()
    for name in ("study_series2", "study_series3"):
        volume, affine = read_series_reference(str(root / "study" / name))
        segmentation = nib.load(output / f"{name}_seg.nii.gz")
        assert segmentation.shape == volume.shape and np.allclose(segmentation.affine, affine, atol=1e-4)
        rows = open(output / f"{name}_measurements.csv").read().splitlines()
        assert rows[0].startswith("case,label,name") and rows[1].startswith(f"{name},1,spleen")
        assert (output / f"{name}.png").stat().st_size > 10_000
    summary = capsys.readouterr().err
    assert "wrote 3 of 4" in summary and f"DICOM series {gapped_uid}" in summary
    assert "__module__" not in summary and "SWIG" not in summary  # no console noise of the image libraries
