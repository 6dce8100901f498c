"""
Equal-time training of CoTr and MONAI's baselines (SwinUNETR, UNETR, SegResNet, DynUNet) on the synthetic CT
study, then the held-out mean Dice of each: which network learns most in the same wall-clock time on this machine.
**Synthetic data** (:func:`scripts.data.synthetic.generate`, as ``scripts.apps.demo`` uses it), not comparable with
BTCV.

Every network is trained by the bundle's own training workflow: ``configs/train.json`` + ``configs/demo.json``
(the CPU demo recipe: AdamW, 64x64x32 patches at 3x3x6 mm, batch 2, the full augmentation, Dice + CE with deep
supervision where the network has it) + the network's overlay (``configs/baselines/*.json``), with the patch
fixed to ``patch_size`` for all and widths shrunk to the demo's scale (:data:`DEMO_SCALE`). Each trains for
``seconds`` of wall-clock time, with the recipe's polynomial learning-rate decay stretched over that time
(:class:`WallClockSchedule`); data caching is not counted. Then the bundle's validation evaluator (Gaussian
sliding window, overlap 0.5, no test-time augmentation) gives the mean Dice over the 13 organs on the held-out
cases, for the final weights.

Usage::

    python -m scripts.benchmarks.equal_time_training                     # 110 s per network, print the table
    python -m scripts.benchmarks.equal_time_training --seconds 300 --write_docs
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine, Events

from scripts.benchmarks.common import (
    load_average,
    machine_info,
    machine_line,
    release_memory,
    update_docs_section,
)
from scripts.benchmarks.compare_networks import NETWORKS, load_config
from scripts.data.synthetic import generate

__all__ = ["DEMO_SCALE", "WallClockSchedule", "train_for", "run_equal_time"]

DEFAULT_SECONDS, DEFAULT_PATCH = 110.0, (64, 64, 32)

#: network -> config-id overrides that shrink it to the demo's scale. CoTr's come from configs/demo.json (widths
#: 16/32/48/48, DeTrans width 48 with 4 heads and MLP 96); the baselines follow them where they have the same
#: knob: DynUNet's widths, UNETR's transformer. SegResNet keeps MONAI's default width, SwinUNETR takes its smallest
#: (feature_size must be a multiple of 12).
DEMO_SCALE: dict[str, dict[str, Any]] = {
    "cotr": {},
    "swinunetr": {"network_def#feature_size": 12},
    "unetr": {
        "network_def#hidden_size": 48,
        "network_def#num_heads": 4,
        "network_def#mlp_dim": 96,
        "network_def#feature_size": 8,
    },
    "segresnet": {"network_def#init_filters": 8},
    "dynunet": {"network_def#filters": [16, 32, 48, 48, 48, 48]},
}


class WallClockSchedule:
    """
    Ends the training after ``seconds`` of wall-clock time and anneals the learning rate over them with the
    recipe's polynomial decay, ``base_lr * (1 - elapsed / seconds) ** power``, set before every iteration: every
    network gets the whole schedule within the same time, however many iterations that is.

    Args:
        seconds: training time from ``Events.STARTED``.
        base_lr: initial learning rate.
        power: exponent of the polynomial decay.
    """

    def __init__(self, seconds: float, base_lr: float, power: float) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be positive, got {seconds}.")
        self.seconds, self.base_lr, self.power = seconds, base_lr, power
        self.start = 0.0
        self.trained_s = 0.0  # up to the end of the last iteration, without the handlers that run on completion

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_STARTED, self._set_learning_rate)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_when_done)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _start(self, engine: Engine) -> None:
        self.start = time.perf_counter()

    def _set_learning_rate(self, engine: Engine) -> None:
        lr = self.base_lr * max(1.0 - self.elapsed() / self.seconds, 0.0) ** self.power
        for group in engine.optimizer.param_groups:
            group["lr"] = lr

    def _stop_when_done(self, engine: Engine) -> None:
        self.trained_s = self.elapsed()
        if self.trained_s >= self.seconds:
            engine.terminate()


def train_for(name: str, seconds: float, dataset_dir: str, workdir: str, patch_size: Sequence[int]) -> dict[str, Any]:
    """
    Train network ``name`` (a key of :data:`DEMO_SCALE`) for ``seconds`` on the study in ``dataset_dir`` and evaluate
    it on the held-out cases; returns ``params``, ``iterations``, ``train_s`` and ``dice``.

    Args:
        name: network to train.
        seconds: wall-clock training time.
        dataset_dir: synthetic study with its ``datalist.json``.
        workdir: folder for this network's checkpoints and logs.
        patch_size: training patch (x, y, z) for every network; SwinUNETR needs multiples of 32.
    """
    label, overlays = NETWORKS[name]
    # demo.json before the overlay: its CoTr widths must not land in a baseline's network_def
    overrides = {
        "dataset_dir": dataset_dir,
        "ckpt_dir": os.path.join(workdir, "models"),
        "output_dir": os.path.join(workdir, "eval"),
        "patch_size": list(patch_size),
        "checkpoint_interval": 0,
        # the epoch-based schedule and validation never come due: WallClockSchedule ends the run
        "max_epochs": 1_000_000,
        "val_interval": 1_000_000,
        **DEMO_SCALE[name],
    }
    parser = load_config(("demo.json", *overlays), overrides)
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")  # caches the training data
    evaluator = parser.get_parsed_content("validate#evaluator")  # and the held-out data, before the clock starts
    params = sum(p.numel() for p in parser.get_parsed_content("network").parameters() if p.requires_grad)
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {params:,} parameters, training for {seconds:g} s", flush=True)
    base_lr, power = parser.get_parsed_content("learning_rate"), parser.get_parsed_content("poly_power")
    schedule = WallClockSchedule(seconds, base_lr, power)
    schedule.attach(trainer)
    trainer.run()
    evaluator.run()
    result = {
        "params": params,
        "iterations": trainer.state.iteration,
        "train_s": schedule.trained_s,
        "dice": float(evaluator.state.metrics["val_mean_dice"]),
    }
    print(
        f"[{time.strftime('%H:%M:%S')}] {label}: {result['iterations']} iterations in {result['train_s']:.0f} s, "
        f"held-out mean Dice {result['dice']:.3f}",
        flush=True,
    )
    return result


def run_equal_time(
    networks: Sequence[str] = tuple(DEMO_SCALE),
    seconds: float = DEFAULT_SECONDS,
    patch_size: Sequence[int] = DEFAULT_PATCH,
    num_cases: int = 16,
    seed: int = 0,
    workdir: str | None = None,
    write_docs: bool = False,
) -> dict[str, dict[str, Any]]:
    """
    Train every network for the same wall-clock time on one synthetic study, print the held-out mean Dice table
    and optionally update ``docs/benchmarks.md``.

    Args:
        networks: keys of :data:`DEMO_SCALE`.
        seconds: wall-clock training time per network.
        patch_size: training patch (x, y, z) for every network (the demo's; multiples of 32 suit all).
        num_cases: labelled synthetic cases (a quarter held out), as in the demo.
        seed: seed of the synthetic study.
        workdir: folder for the study, checkpoints and logs (existing data is reused); a temporary one if None.
        write_docs: replace this benchmark's section of ``docs/benchmarks.md``.
    """
    unknown = [n for n in networks if n not in DEMO_SCALE]
    if unknown:
        raise ValueError(f"unknown networks {unknown}; choose among {list(DEMO_SCALE)}.")
    info = machine_info()
    print(machine_line(info), flush=True)
    with contextlib.ExitStack() as stack:
        workdir = os.path.abspath(workdir or stack.enter_context(tempfile.TemporaryDirectory()))
        dataset_dir = os.path.join(workdir, "data")
        datalist = os.path.join(dataset_dir, "datalist.json")
        if not os.path.exists(datalist):
            generate(dataset_dir, num_cases=num_cases, seed=seed)
        with open(datalist) as f:
            split = {key: len(cases) for key, cases in json.load(f).items() if key in ("training", "validation")}
        results = {}
        for name in networks:
            results[name] = train_for(name, seconds, dataset_dir, os.path.join(workdir, name), patch_size)
            release_memory()
    info["load_end"] = load_average()
    text = report(results, info, seconds, patch_size, split)
    print(text)
    if write_docs:
        print("updated", update_docs_section("equal_time_training", text))
    return results


def _override_text(overrides: dict[str, Any]) -> str:
    return ", ".join(f"`{k.split('#', 1)[1]}` {v}" for k, v in overrides.items()) or "`configs/demo.json`"


def report(
    results: dict[str, dict[str, Any]],
    info: dict[str, str],
    seconds: float,
    patch_size: Sequence[int],
    split: dict[str, int],
) -> str:
    """The docs section: settings and the held-out mean Dice per network (``split``: cases per datalist key)."""
    recipe = load_config(("demo.json",))
    patch = "x".join(map(str, patch_size))
    spacing = "x".join(f"{s:g}" for s in recipe.get_parsed_content("target_spacing"))
    optimizer = recipe["optimizer"]["_target_"].rsplit(".", 1)[-1]
    command = "python -m scripts.benchmarks.equal_time_training"
    command += f" --seconds {seconds:g}" if seconds != DEFAULT_SECONDS else ""
    command += f' --patch_size "[{",".join(map(str, patch_size))}]"' if tuple(patch_size) != DEFAULT_PATCH else ""
    lines = [
        "## Equal-time training on synthetic data",
        "",
        f"`{command} --write_docs` — machine: {machine_line(info)}.",
        "",
        f"**Synthetic data, not BTCV**: {sum(split.values())} synthetic phantoms of `scripts.data.synthetic` "
        f"({split['training']} train, {split['validation']} held out), the CPU demo recipe (`configs/train.json` + "
        f"`configs/demo.json`: {optimizer}, {spacing} mm, batch {recipe.get_parsed_content('batch_size')}, the full "
        f"augmentation, Dice + CE with deep supervision for CoTr and DynUNet) with a {patch} patch for every "
        f"network, each network trained for **{seconds:g} s of wall-clock time** on this CPU (the learning rate "
        "decays polynomially over that time; caching the data is not counted), then the held-out mean Dice over "
        "the 13 organs of the final weights (Gaussian sliding window, no TTA). The networks are shrunk to the "
        "demo's scale, as the demo shrinks CoTr; the widths are config-id overrides (`DEMO_SCALE` in the script). "
        "A network that computes faster gets more iterations; the machine is shared with other jobs, so the "
        "iteration counts also reflect its load while each network trained. This says which architecture learns "
        "most in a tiny CPU budget on easy synthetic anatomy, not how they rank on BTCV with full training.",
        "",
        "| network | widths (config-id overrides) | parameters | iterations | s / iteration | held-out mean Dice |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {NETWORKS[name][0]} | {_override_text(DEMO_SCALE[name])} | {r['params']:,} | {r['iterations']} "
            f"| {r['train_s'] / max(r['iterations'], 1):.2f} | **{r['dice']:.3f}** |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import fire

    fire.Fire(run_equal_time, serialize=lambda _: None)  # the table is printed already
