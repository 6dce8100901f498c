"""
Cohort inference over several processes and nodes (``configs/multi_gpu_inference.json``), resumable runs
(``--skip_existing True``) and sharded evaluation (``configs/multi_gpu_evaluate.json``).

The fast tests run the ranks of :class:`scripts.engine.infer_folder.InferenceInputs` as threads of this process,
exchanging their values through an emulated ``all_gather_object``; the slow ones launch ``torchrun`` with Gloo on the
CPU and compare every output with a single-process run of the same cases.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import torch

import scripts.engine.infer_folder as infer_folder
from scripts.engine.infer_folder import InferenceInputs, InputError, output_path, shard_cases
from tests.reliability.conftest import AFFINE, ct_image, workflow, write_nifti

from .conftest import BUNDLE_ROOT, CONFIGS, config_paths
from .test_configs import single_process_group  # noqa: F401 (a fixture of the overlay test)

# ---------------------------------------------------------------------------------------------------------------
# sharding
# ---------------------------------------------------------------------------------------------------------------


def _best_makespan(costs: list[float], world: int) -> float:
    """The smallest possible largest per-rank total, by trying every assignment (small inputs only)."""
    best = math.inf
    for assignment in itertools.product(range(world), repeat=len(costs)):
        loads = [0.0] * world
        for cost, rank in zip(costs, assignment):
            loads[rank] += cost
        best = min(best, max(loads))
    return best


@pytest.mark.parametrize("seed, num_cases, world", [(0, 7, 2), (1, 8, 3), (2, 3, 4), (3, 6, 1), (4, 0, 2)])
def test_shards_cover_every_case_once_and_are_balanced(seed, num_cases, world):
    costs = [float(c) for c in np.random.default_rng(seed).integers(1, 100, num_cases)]
    shards = shard_cases(costs, world)
    assert len(shards) == world
    assert sorted(i for shard in shards for i in shard) == list(range(num_cases))  # every case exactly once
    assert all(shard == sorted(shard) for shard in shards)
    assert shard_cases(costs, world) == shards  # every rank computes the same split
    if num_cases:
        # largest-first greedy is within 4/3 - 1/(3 m) of the best split (Graham's bound)
        makespan = max(sum(costs[i] for i in shard) for shard in shards)
        assert makespan <= (4 / 3 - 1 / (3 * world)) * _best_makespan(costs, world) + 1e-9
    with pytest.raises(ValueError, match="world_size"):
        shard_cases(costs, 0)


# ---------------------------------------------------------------------------------------------------------------
# ranks as threads: InferenceInputs' exchanges between ranks without a process group
# ---------------------------------------------------------------------------------------------------------------


class _ThreadRanks:
    """``world`` ranks run as threads; ``all_gather`` stands in for ``torch.distributed.all_gather_object``."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.local = threading.local()
        self.slots: list = [None] * world
        self.barrier = threading.Barrier(world, timeout=30)

    def rank_and_world(self) -> tuple[int, int]:
        return self.local.rank, self.world

    def all_gather(self, value):
        self.slots[self.local.rank] = value
        self.barrier.wait()
        gathered = list(self.slots)
        self.barrier.wait()  # everyone has read before the next exchange writes
        return gathered

    def run(self, fn) -> list:
        """``fn(rank)`` on every rank; its results in rank order (an exception is returned, not raised)."""
        results: list = [None] * self.world

        def target(rank: int) -> None:
            self.local.rank = rank
            try:
                results[rank] = fn(rank)
            except Exception as e:  # handed to the test (a rank left waiting times out of the barrier)
                results[rank] = e

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results


@pytest.fixture
def ranks(monkeypatch):
    emulated = _ThreadRanks(2)
    monkeypatch.setattr(infer_folder, "_rank_and_world", emulated.rank_and_world)
    monkeypatch.setattr(infer_folder, "_all_gather", emulated.all_gather)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: emulated.barrier.wait())
    return emulated


# anisotropic voxels, orientations other than RAS (a flipped LPS-like grid, and one with X and Y swapped)
SWAPPED = np.array([[0, -1.5, 0, 40.0], [-1.5, 0, 0, 60.0], [0, 0, 5.0, -200.0], [0, 0, 0, 1]])


def _cohort(folder, shapes) -> list[str]:
    return [
        write_nifti(os.path.join(folder, f"case{i}.nii.gz"), ct_image(s, seed=i), SWAPPED if i % 2 else AFFINE)
        for i, s in enumerate(shapes)
    ]


SHAPES = [(24, 24, 8), (40, 32, 12), (16, 16, 6), (32, 32, 10), (28, 20, 8)]


def test_ranks_share_the_checks_agree_on_done_cases_and_split_the_rest(tmp_path, ranks, monkeypatch):
    folder = str(tmp_path / "in")
    _cohort(folder, SHAPES)
    checked: list[tuple[int, str]] = []
    original = InferenceInputs._check_case

    def counted(self, case):
        checked.append((ranks.local.rank, case.name))
        return original(self, case)

    monkeypatch.setattr(InferenceInputs, "_check_case", counted)
    # each node writes into a folder of its own; case3 was finished by rank 1's node in an earlier run
    outputs = [str(tmp_path / "out0"), str(tmp_path / "out1")]
    write_nifti(output_path("case3", outputs[1]), np.zeros((2, 2, 2), np.uint8))
    open(os.path.join(outputs[1], "case3.png"), "wb").close()
    target = (3.0, 3.0, 6.0)
    inputs = ranks.run(
        lambda r: InferenceInputs(
            None, outputs[r], folder, target_spacing=target, skip_existing=True, extra_outputs=["{case}.png"]
        ).check()
    )
    assert sorted(name for _, name in checked) == [f"case{i}" for i in range(5)]  # every case read once ...
    assert {rank for rank, _ in checked} == {0, 1}  # ... by both ranks together
    for one in inputs:
        assert [c.name for c in one.cases] == ["case0", "case1", "case2", "case4"]
        assert [c.shape for c in one.cases] == [SHAPES[i] for i in (0, 1, 2, 4)]  # the other rank's results too
        assert one.done == [(os.path.join(folder, "case3.nii.gz"), output_path("case3", one.output_dir))]
    shards = [[item["case"] for item in one.items] for one in inputs]
    assert sorted(shards[0] + shards[1]) == ["case0", "case1", "case2", "case4"] and not set(shards[0]) & set(shards[1])
    todo = ["case0", "case1", "case2", "case4"]
    headers = [nib.load(os.path.join(folder, f"{name}.nii.gz")).header for name in todo]
    resampled = [np.prod(h.get_data_shape()) * np.prod(h.get_zooms()) / np.prod(target) for h in headers]
    assert shards == [[todo[i] for i in shard] for shard in shard_cases(resampled, 2)]  # balanced by resampled size


def test_ranks_that_see_different_inputs_are_refused(tmp_path, ranks):
    folders = [str(tmp_path / "in0"), str(tmp_path / "in1")]
    _cohort(folders[0], SHAPES[:2])
    _cohort(folders[1], SHAPES[:3])
    errors = ranks.run(lambda r: InferenceInputs(None, str(tmp_path / f"out{r}"), folders[r]).check())
    for error in errors:
        assert isinstance(error, InputError) and "rank 0: 2, rank 1: 3" in str(error)


def test_every_rank_exits_1_when_a_case_failed_on_another(tmp_path, ranks, capsys):
    folder = str(tmp_path / "in")
    _cohort(folder, SHAPES[:3])
    output = str(tmp_path / "out")

    def run(rank: int) -> tuple[int, list[str]]:
        inputs = InferenceInputs(None, output, folder).check()
        for index, item in enumerate(inputs.items):  # what the network writes, except for rank 0's first case
            if rank == 0 and index == 0:
                inputs._fail(item["case"], "RuntimeError: out of memory")
            else:
                write_nifti(output_path(item["case"], output), np.zeros((2, 2, 2), np.uint8))
        return inputs.finalize(exit_on_failure=False), [i["case"] for i in inputs.items]

    (status0, shard0), (status1, shard1) = ranks.run(run)
    assert status0 == status1 == 1
    err = capsys.readouterr().err
    assert err.count("inference: wrote 2 of 3 segmentation(s)") == 1  # one summary, from rank 0
    assert f"{os.path.join(folder, shard0[0] + '.nii.gz')}: RuntimeError: out of memory" in err
    assert f"rank 0 ({socket.gethostname()}): {len(shard0) - 1} of {len(shard0)} case(s) written" in err
    assert f"rank 1 ({socket.gethostname()}): {len(shard1)} of {len(shard1)} case(s) written" in err
    assert "inference (rank 1): exit status 1" in err


# ---------------------------------------------------------------------------------------------------------------
# skip_existing in one process
# ---------------------------------------------------------------------------------------------------------------


def test_skip_existing_keeps_complete_cases_and_redoes_the_others(tmp_path, capsys):
    folder = str(tmp_path / "in")
    _cohort(folder, SHAPES[:4])
    output = str(tmp_path / "out")
    complete = [write_nifti(output_path("case0", output), np.zeros((2, 2, 2), np.uint8)), f"{output}/case0.csv"]
    open(complete[1], "w").write("done\n")
    before = [os.stat(p) for p in complete]
    write_nifti(output_path("case1", output), np.zeros((2, 2, 2), np.uint8))  # killed before its CSV
    stale = [  # what atomic_output leaves when the process is killed inside it
        os.path.join(output, ".case2_seg.nii.gz.k1ll3d.tmp.nii.gz"),
        os.path.join(output, ".case0.csv.x7q2.csv.tmp"),
    ]
    for path in stale:
        open(path, "wb").write(b"\x1f\x8b partial")
    options = {"skip_existing": True, "extra_outputs": ["{case}.csv"]}
    with pytest.raises(FileExistsError, match="--skip_existing True to keep the complete ones"):
        InferenceInputs(None, output, folder).check()
    with pytest.raises(InputError, match="overwrite and skip_existing are both on"):
        InferenceInputs(None, output, folder, overwrite=True, **options)
    inputs = InferenceInputs(None, output, folder, **options).check()
    assert [c.name for c in inputs.cases] == ["case1", "case2", "case3"]
    assert [i["case"] for i in inputs.items] == ["case1", "case2", "case3"]
    assert inputs.done == [(os.path.join(folder, "case0.nii.gz"), complete[0])]
    assert not any(os.path.exists(p) for p in stale)
    assert [(s.st_ino, s.st_mtime_ns) for s in map(os.stat, complete)] == [(s.st_ino, s.st_mtime_ns) for s in before]
    for name in ("case1", "case2", "case3"):  # what the run writes
        write_nifti(output_path(name, output), np.zeros((2, 2, 2), np.uint8))
    assert inputs.finalize() == 0
    out = capsys.readouterr().out
    assert out.startswith(f"inference: wrote 3 of 4 segmentation(s) to {output}\n")
    assert "\n1 case(s) already done (skip_existing)" in out


# ---------------------------------------------------------------------------------------------------------------
# the overlays
# ---------------------------------------------------------------------------------------------------------------


OVERLAYS = [
    (["inference.json", "multi_gpu_inference.json"], "infer"),
    (["train.json", "evaluate.json", "multi_gpu_evaluate.json"], "train"),
]


@pytest.mark.usefixtures("single_process_group")
@pytest.mark.parametrize("files, workflow_type", OVERLAYS)
def test_the_overlays_keep_workflow_properties_and_checked_values(files, workflow_type, synthetic_study, monkeypatch):
    from monai.bundle import ConfigWorkflow

    from scripts.engine.config_check import check_config

    monkeypatch.setenv("RANK", "1")  # as torchrun sets it: rank 1 shows no progress bars
    runner = ConfigWorkflow(
        config_file=config_paths(*files), meta_file=os.path.join(CONFIGS, "metadata.json"),
        workflow_type=workflow_type, init_id="no_initialize", dataset_dir=synthetic_study,
    )  # fmt: skip
    runner.initialize()
    assert runner.check_properties() == []
    checked = runner.parser.get_parsed_content("checked_config")
    check_config(checked)
    assert files[0] != "inference.json" or (checked["sw_progress"] is False and checked["skip_existing"] is False)


def test_sharded_evaluation_reports_what_evaluate_json_reports():
    """multi_gpu_evaluate.json repeats evaluate.json's run (the report on rank 0 only): they must not drift apart."""
    evaluate, overlay = (json.load(open(p)) for p in config_paths("evaluate.json", "multi_gpu_evaluate.json"))
    assert overlay["run"] == [evaluate["run"][0], "$dist.get_rank() > 0 or " + evaluate["run"][1][1:]]
    assert "initialize" not in overlay  # appended to ("+initialize"), so evaluate.json's checks stay as they are


# ---------------------------------------------------------------------------------------------------------------
# end to end: torchrun with Gloo on the CPU
# ---------------------------------------------------------------------------------------------------------------

#: a run-time failure of one case (its preprocessing raises), and a pause after each case so a kill lands mid-run
FAILING_CASE = "zz_fails"
FAIL_OVERLAY = {
    "+preprocessing#transforms": [{
        "_target_": "Lambda",
        "func": f"$lambda d: int('not a number') if '{FAILING_CASE}' in str(d['image'].meta['filename_or_obj']) else d",
    }]
}  # fmt: skip
PAUSE = "$lambda d: __import__('time').sleep(4) or d"
PAUSE_OVERLAY = {"+postprocessing#transforms": [{"_target_": "Lambda", "func": PAUSE}]}
COHORT = [((40, 36, 12), AFFINE), ((56, 48, 16), SWAPPED), ((32, 32, 10), AFFINE), ((48, 40, 14), SWAPPED),
          ((64, 56, 12), AFFINE)]  # fmt: skip
GOOD = [f"case{i}" for i in range(len(COHORT))]


def _recorder(folder) -> str:
    """An overlay appending the image of every case a process segments to ``folder/<pid>.txt``; returns its path."""
    log = f"os.path.join({str(folder)!r}, f'{{os.getpid()}}.txt')"
    record = f"open({log}, 'a').write(d['image'].meta['filename_or_obj'] + '\\n')"
    path = os.path.join(folder, "record.json")
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"+postprocessing#transforms": [{"_target_": "Lambda", "func": f"$lambda d: {record} and d"}]}, f)
    return path


def _segmented(folder) -> list[list[str]]:
    """The case names each process recorded (:func:`_recorder`), one sorted list per process."""
    return [sorted(os.path.basename(line)[: -len(".nii.gz")] for line in open(p).read().split()) for p in
            sorted(glob.glob(os.path.join(folder, "*.txt")))]  # fmt: skip


def _files(folder: str) -> list[str]:
    return sorted(os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                  if os.path.isfile(p))  # fmt: skip


def _env() -> dict[str, str]:
    # one thread per process, as torchrun sets it: the single-process reference computes in the same order
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=BUNDLE_ROOT)


def _torchrun(*launcher: str, config: list[str], log_dir: str, overrides: list[str]) -> subprocess.Popen:
    """``torchrun <launcher> -m monai.bundle run inference`` with each rank's output in ``log_dir``."""
    command = [
        sys.executable, "-m", "torch.distributed.run", *launcher, "--log-dir", log_dir, "--redirects", "3",
        "-m", "monai.bundle", "run", "inference", "--config_file", str(config), *overrides,
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=BUNDLE_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _rank_logs(log_dir: str) -> list[str]:
    """stdout + stderr of every local rank of the torchrun launches that logged into ``log_dir``, in rank order."""
    folders = sorted(glob.glob(os.path.join(log_dir, "*", "attempt_0", "*")))
    return ["".join(open(os.path.join(f, n)).read() for n in ("stdout.log", "stderr.log")) for f in folders]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Five CT volumes, one that fails while it is segmented, a demo-size checkpoint, and the single-process run."""
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("cohort")
    for i, (shape, affine) in enumerate(COHORT):
        write_nifti(root / "in" / f"case{i}.nii.gz", ct_image(shape, seed=i), affine)
    write_nifti(root / "in" / f"{FAILING_CASE}.nii.gz", ct_image((24, 24, 8), seed=9))
    parser = ConfigParser()
    parser.read_config(config_paths("inference.json", "demo.json"))
    torch.manual_seed(0)
    os.makedirs(root / "models")
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    for name, overlay in (("fail.json", FAIL_OVERLAY), ("pause.json", PAUSE_OVERLAY)):
        (root / name).write_text(json.dumps(overlay))
    common = {"dataset_dir": str(root / "in"), "ckpt_dir": str(root / "models"), "num_workers": 0,
              "save_measurements": True, "sw_progress": False}  # fmt: skip
    reference = workflow(
        ["inference.json", "demo.json", str(root / "fail.json")], "infer", output_dir=str(root / "single"), **common
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference.initialize()
        reference.run()
        with pytest.raises(SystemExit):  # the failing case
            reference.finalize()
    finally:
        torch.set_num_threads(threads)
    overrides = [f"--{k}={v}" for k, v in common.items() if k != "sw_progress"]
    return {"root": root, "overrides": overrides, "reference": str(root / "single")}


def _assert_same_outputs(folder: str, reference: str, cases: list[str]) -> None:
    for case in cases:
        expected = nib.load(os.path.join(reference, f"{case}_seg.nii.gz"))
        written = nib.load(os.path.join(folder, f"{case}_seg.nii.gz"))
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(expected.dataobj)), case
        assert np.allclose(written.affine, expected.affine) and written.get_data_dtype() == np.uint8
        csv_name = f"{case}_measurements.csv"
        with open(os.path.join(folder, csv_name)) as a, open(os.path.join(reference, csv_name)) as b:
            assert a.read() == b.read(), case


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes_and_all_exit_1(cohort, tmp_path):
    root, output = cohort["root"], tmp_path / "out"
    written = sorted(f for f in os.listdir(cohort["reference"]) if f.endswith("_seg.nii.gz"))
    assert written == [f"{c}_seg.nii.gz" for c in GOOD]  # the single process: every case but the failing one
    record = tmp_path / "segmented"
    config = config_paths("inference.json", "demo.json", "multi_gpu_inference.json") + [
        str(root / "fail.json"), _recorder(record)
    ]  # fmt: skip
    launch = _torchrun(
        "--standalone", "--nproc_per_node=2", config=config, log_dir=str(tmp_path / "logs"),
        overrides=[*cohort["overrides"], f"--output_dir={output}"],
    )  # fmt: skip
    console = launch.communicate(timeout=600)[0]
    assert launch.returncode != 0, console[-3000:]
    rank0, rank1 = _rank_logs(str(tmp_path / "logs"))
    assert "inference: wrote 5 of 6 segmentation(s)" in rank0, rank0[-3000:]
    assert f"{root / 'in' / FAILING_CASE}.nii.gz: ValueError: invalid literal" in rank0
    assert "inference (rank 1): exit status 1" in rank1, rank1[-3000:]  # decided on every rank, whichever failed
    counts = [tuple(map(int, m)) for m in re.findall(r"rank \d \(.*\): (\d+) of (\d+) case\(s\) written", rank0)]
    segmented = _segmented(record)  # what each process really did
    assert len(segmented) == 2 and sorted(sum(segmented, [])) == GOOD  # each case once, the failing one on neither
    assert sorted(n for n, _ in counts) == sorted(map(len, segmented)) and sum(n for _, n in counts) == 6, counts
    _assert_same_outputs(str(output), cohort["reference"], GOOD)


@pytest.mark.slow
def test_a_killed_run_continues_on_two_nodes(cohort, tmp_path):
    root, output = cohort["root"], tmp_path / "out"
    paths = [*cohort["overrides"], "--image_pattern=case*", f"--output_dir={output}"]
    killed = subprocess.Popen(
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
         str(config_paths("inference.json", "demo.json") + [str(root / "pause.json")]), *paths],
        cwd=BUNDLE_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    finished = [str(output / "case0_seg.nii.gz"), str(output / "case0_measurements.csv")]
    deadline = time.monotonic() + 300
    while not all(map(os.path.exists, finished)) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)  # during the pause after case0
    killed.wait()
    assert all(map(os.path.exists, finished)) and not os.path.exists(output / "case1_seg.nii.gz"), os.listdir(output)
    untouched = [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in finished]
    stale = [output / ".case1_seg.nii.gz.k1ll3d.tmp.nii.gz", output / ".case0_measurements.csv.x7q2.csv.tmp"]
    for path in stale:  # what a kill inside a write leaves (atomic_output's temporary files)
        path.write_bytes(b"\x1f\x8b partial")
    shutil.copy(finished[0], output / "case3_seg.nii.gz")  # case3 killed between its segmentation and its CSV

    port = _free_port()
    record = tmp_path / "segmented"
    config = config_paths("inference.json", "demo.json", "multi_gpu_inference.json") + [_recorder(record)]
    nodes = [  # two "nodes" on this machine, meeting at a c10d rendezvous
        _torchrun(
            "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=cohort",
            config=config, log_dir=str(tmp_path / f"logs{node}"), overrides=[*paths, "--skip_existing=True"],
        )
        for node in (0, 1)
    ]  # fmt: skip
    consoles = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(c[-3000:] for c in consoles)
    logs = _rank_logs(str(tmp_path / "logs0")) + _rank_logs(str(tmp_path / "logs1"))
    summary = next(log for log in logs if "inference: wrote" in log)
    assert f"inference: wrote 4 of 5 segmentation(s) to {output}\n1 case(s) already done (skip_existing)" in summary
    counts = [tuple(map(int, m)) for m in re.findall(r"rank \d \(.*\): (\d+) of (\d+) case\(s\) written", summary)]
    segmented = _segmented(record)
    assert len(segmented) == 2 and sorted(sum(segmented, [])) == GOOD[1:]  # nothing computed twice, case0 not again
    assert sorted(n for n, _ in counts) == sorted(map(len, segmented)) and sum(n for _, n in counts) == 4, counts
    assert [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in finished] == untouched
    assert not any(p.exists() for p in stale)
    expected = [f"{c}_{kind}" for c in GOOD for kind in ("seg.nii.gz", "measurements.csv")]
    assert _files(str(output)) == sorted(expected + ["measurements_summary.csv"])
    with open(output / "measurements_summary.csv") as f:  # rebuilt on rank 0: every case of both nodes' runs
        assert sorted({row["case"] for row in csv.DictReader(f)}) == sorted(GOOD)
    _assert_same_outputs(str(output), cohort["reference"], GOOD)


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# sharded evaluation: the files of a single-process evaluation of the same cases
# ---------------------------------------------------------------------------------------------------------------


def _table(path: str) -> list[list[str]]:
    """A CSV (MetricsSaver writes tab-separated ones) as its header and then its rows in sorted order."""
    with open(path) as f:
        text = f.read()
    rows = list(csv.reader(text.splitlines(), delimiter="\t" if "\t" in text.split("\n", 1)[0] else ","))
    return rows[:1] + sorted(rows[1:])


@pytest.mark.slow
def test_sharded_evaluation_writes_what_one_process_writes(tmp_path):
    from monai.bundle import ConfigParser

    from scripts.data.synthetic import generate

    study = str(tmp_path / "study")
    generate(study, num_cases=4, shape=(64, 64, 24), spacing=(3.0, 3.0, 6.0), seed=5, val_fraction=0.75)
    assert len(json.load(open(os.path.join(study, "datalist.json")))["validation"]) == 3  # 2 + 1 over two ranks
    parser = ConfigParser()
    parser.read_config(config_paths("train.json", "demo.json"))
    torch.manual_seed(1)
    os.makedirs(tmp_path / "models")
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    paths = {"dataset_dir": study, "ckpt_dir": str(tmp_path / "models"), "num_workers": 0}
    single = workflow(["train.json", "evaluate.json", "demo.json"], output_dir=str(tmp_path / "single"), **paths)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single.initialize()
        single.run()
        single.finalize()
    finally:
        torch.set_num_threads(threads)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
        "run", "evaluating", "--config_file", str(config_paths("train.json", "evaluate.json", "demo.json",
        "multi_gpu_evaluate.json")), *(f"--{k}={v}" for k, v in paths.items()), f"--output_dir={tmp_path / 'ranks'}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=BUNDLE_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    # each rank evaluates a contiguous block of the validation cases, so the gathered rows (and the pictures drawn
    # from them, whose dots are placed in row order) come in the single-process order
    expected, written = (str(tmp_path / name) for name in ("single", "ranks"))
    files = _files(expected)
    assert _files(written) == files and "val_mean_dice_raw.csv" in files and "report/per_case_metrics.csv" in files
    for name in files:
        a, b = os.path.join(written, name), os.path.join(expected, name)
        if name.endswith(".csv"):  # per case and summaries: the same numbers to the last digit
            assert _table(a) == _table(b), name
        elif name.endswith(".nii.gz"):
            assert np.array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj)), name
        else:  # the pictures
            assert open(a, "rb").read() == open(b, "rb").read(), name
