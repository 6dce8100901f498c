"""
Benchmark of the whole CoTr network (default configuration, 41.9M parameters) at a 192x192x48 patch.

- Inference: eval mode, batch 1, ``torch.inference_mode``; wall time split into CNN encoder / DeTrans / decoder
  with forward hooks, peak memory of one forward.
- Training step: forward + deep-supervision cross-entropy + backward (no optimiser step), ``use_checkpoint``
  False and True (same weights); forward time split with forward hooks, backward time split with gradient hooks
  on the DeTrans inputs and outputs (autograd runs the decoder's backward, then the DeTrans', then the
  encoder's), peak memory of one step. Batch 2 as in the paper (``--train_batch 1`` halves the time).

Repeats are small (one warm-up, then ``eval_repeats`` forwards and ``train_repeats`` steps per mode; medians),
so that the script runs in a few minutes on a 2-core CPU. Peak memory: increase of resident memory during the
call over the RSS just before it (freed heap returned with ``malloc_trim``, high-water mark reset; see
:func:`scripts.benchmarks.common.measure_peak_rss`); the weights and the input are not counted.

Usage::

    python -m scripts.benchmarks.bench_cotr                 # print the tables
    python -m scripts.benchmarks.bench_cotr --write_docs    # and update docs/benchmarks.md
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from scripts.benchmarks.common import (
    format_bytes,
    load_average,
    machine_info,
    machine_line,
    measure_peak_rss,
    median,
    update_docs_section,
)
from scripts.networks import CoTr

__all__ = ["PartTimer", "run_benchmark"]

PARTS = ("encoder", "detrans", "decoder")
PART_LABELS = {"encoder": "CNN encoder", "detrans": "DeTrans (6 layers, MS-DMSA)", "decoder": "decoder"}
DS_WEIGHTS = (0.533, 0.267, 0.133, 0.067)


class PartTimer:
    """
    Wall-clock time of CoTr's encoder, DeTrans and decoder in the forward pass (forward hooks) and, in training,
    in the backward pass: gradient hooks on the DeTrans outputs mark the end of the decoder's backward, hooks on
    its inputs the end of its own; the encoder's backward runs last. CPU execution is synchronous, so hooks time it.
    """

    def __init__(self, net: CoTr) -> None:
        self.marks: dict[str, float] = {}
        self.handles = []
        for name in PARTS:
            module = getattr(net, name)
            self.handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            self.handles.append(module.register_forward_hook(self._post_hook(name)))

    def _pre_hook(self, name: str):
        def hook(module, args):
            self.marks[f"{name}_start"] = time.perf_counter()
            if name == "detrans" and torch.is_grad_enabled():
                self._mark_on_grad(args[0], "detrans_backward_end")

        return hook

    def _post_hook(self, name: str):
        def hook(module, args, output):
            self.marks[f"{name}_end"] = time.perf_counter()
            if name == "detrans" and torch.is_grad_enabled():
                self._mark_on_grad(output, "decoder_backward_end")

        return hook

    def _mark_on_grad(self, tensors: Sequence[torch.Tensor], key: str) -> None:
        def hook(grad):
            self.marks[key] = max(self.marks.get(key, 0.0), time.perf_counter())

        for t in tensors:
            if t.requires_grad:
                t.register_hook(hook)

    def reset(self) -> None:
        self.marks = {}

    def forward_split(self) -> dict[str, float]:
        return {name: self.marks[f"{name}_end"] - self.marks[f"{name}_start"] for name in PARTS}

    def backward_split(self, start: float, end: float) -> dict[str, float]:
        decoder_end, detrans_end = self.marks["decoder_backward_end"], self.marks["detrans_backward_end"]
        return {"decoder": decoder_end - start, "detrans": detrans_end - decoder_end, "encoder": end - detrans_end}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def deep_supervision_loss(outputs: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every output against nearest-downsampled labels, weighted as in the training recipe."""
    loss = outputs[0].new_zeros(())
    for weight, logits in zip(DS_WEIGHTS, outputs):
        target = F.interpolate(labels[:, None].float(), size=logits.shape[2:], mode="nearest")[:, 0].long()
        loss = loss + weight * F.cross_entropy(logits, target)
    return loss


def _inference(net: CoTr, patch: Sequence[int], repeats: int) -> dict:
    net.eval()
    timer = PartTimer(net)
    x = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(0))
    totals, splits = [], []

    def forward():
        timer.reset()
        start = time.perf_counter()
        with torch.inference_mode():
            net(x)
        totals.append(time.perf_counter() - start)
        splits.append(timer.forward_split())

    forward()  # warm-up
    totals.clear(), splits.clear()
    mem, peak, _ = measure_peak_rss(forward)
    for _ in range(repeats - 1):
        forward()
    timer.remove()
    return {
        "total": median(totals),
        "forward": {p: median([s[p] for s in splits]) for p in PARTS},
        "memory": mem,
        "peak_rss": peak,
        "repeats": len(totals),
    }


def _training(net: CoTr, patch: Sequence[int], batch: int, repeats: int, warmup: int) -> dict:
    net.train()
    timer = PartTimer(net)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, *patch, generator=generator)
    labels = torch.randint(0, 14, (batch, *patch), generator=generator)
    totals, forwards, backwards = [], [], []

    def step():
        net.zero_grad(set_to_none=True)
        timer.reset()
        start = time.perf_counter()
        loss = deep_supervision_loss(net(x), labels)
        backward_start = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        totals.append(end - start)
        forwards.append(timer.forward_split())
        backwards.append(timer.backward_split(backward_start, end))

    for _ in range(warmup):
        step()
    totals.clear(), forwards.clear(), backwards.clear()
    net.zero_grad(set_to_none=True)
    mem, peak, _ = measure_peak_rss(step)
    for _ in range(repeats - 1):
        step()
    timer.remove()
    net.zero_grad(set_to_none=True)
    return {
        "total": median(totals),
        "forward": {p: median([s[p] for s in forwards]) for p in PARTS},
        "backward": {p: median([s[p] for s in backwards]) for p in PARTS},
        "memory": mem,
        "peak_rss": peak,
        "repeats": len(totals),
    }


def run_benchmark(
    patch: Sequence[int] = (192, 192, 48),
    eval_repeats: int = 2,
    train_batch: int = 2,
    train_repeats: int = 1,
    train_warmup: int = 1,
    train: bool = True,
    write_docs: bool = False,
) -> dict:
    """
    Time CoTr's inference and training step, print the tables and optionally update ``docs/benchmarks.md``.

    Args:
        patch: input size (MONAI order X, Y, Z), divisible by (16, 16, 8).
        eval_repeats: timed inference forwards (after one warm-up).
        train_batch: training batch size (the paper's is 2).
        train_repeats: timed training steps per ``use_checkpoint`` mode.
        train_warmup: untimed training steps before the first mode (the kernels are shared by both modes).
        train: also benchmark the training step.
        write_docs: replace this benchmark's section of ``docs/benchmarks.md``.
    """
    info = machine_info()
    print(machine_line(info), flush=True)
    torch.manual_seed(0)
    net = CoTr()
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    results: dict = {"params": params, "patch": tuple(patch), "train_batch": train_batch}
    results["inference"] = _inference(net, patch, eval_repeats)
    print("inference:", _fmt_run(results["inference"]), flush=True)
    if train:
        state = net.state_dict()
        for use_checkpoint in (False, True):
            model = CoTr(use_checkpoint=use_checkpoint)
            model.load_state_dict(state)
            key = f"train_checkpoint_{use_checkpoint}"
            results[key] = _training(
                model, patch, train_batch, train_repeats, train_warmup if not use_checkpoint else 0
            )
            print(f"training, use_checkpoint={use_checkpoint}:", _fmt_run(results[key]), flush=True)
            del model
    info["load_end"] = load_average()
    text = _report(results, info)
    print(text)
    if write_docs:
        print("updated", update_docs_section("bench_cotr", text))
    return results


def _fmt_run(run: dict) -> str:
    parts = ", ".join(f"{p} {1e3 * run['forward'][p]:.0f}" for p in PARTS)
    if "backward" in run:
        parts += "; backward " + ", ".join(f"{p} {1e3 * run['backward'][p]:.0f}" for p in PARTS)
    return f"total {1e3 * run['total']:.0f} ms (forward {parts} ms), peak memory +{format_bytes(run['memory'])}"


def _report(results: dict, info: dict[str, str]) -> str:
    patch = "x".join(map(str, results["patch"]))
    inference = results["inference"]
    lines = [
        "## Whole CoTr network",
        "",
        f"`python -m scripts.benchmarks.bench_cotr` — machine: {machine_line(info)}.",
        "",
        f"Default CoTr ({results['params']:,} parameters, 14 classes), input {patch} (MONAI order; 48x192x192 "
        "in the paper's D x H x W), float32. Small repeats because every call takes many seconds on this CPU: "
        f"inference = median of {inference['repeats']} forwards after one warm-up; training = one warm-up step, then "
        "the median of the timed steps (count in the table). The split into CNN encoder / DeTrans / decoder comes "
        "from forward hooks and, for the backward pass, gradient hooks at the DeTrans inputs and outputs; "
        "the rest of the step (loss, hook overhead) is the difference to the total. Peak memory = increase of "
        "resident memory during the call (weights and input not counted).",
        "",
        'The paper\'s "< 30 ms per 48x192x192 volume on a GTX 2080Ti" is a GPU figure: no GPU was available for this '
        "measurement, so it is neither reproduced nor contradicted here.",
        "",
        "### Inference (eval, batch 1, `inference_mode`)",
        "",
        "| part | forward | share |",
        "|---|---|---|",
    ]
    for p in PARTS:
        t = inference["forward"][p]
        lines.append(f"| {PART_LABELS[p]} | {1e3 * t:.0f} ms | {100 * t / inference['total']:.0f}% |")
    lines += [
        f"| **total** | **{1e3 * inference['total']:.0f} ms** | peak memory +{format_bytes(inference['memory'])} "
        f"(process peak RSS {format_bytes(inference['peak_rss'])}) |",
    ]
    runs = [(k, results[k]) for k in ("train_checkpoint_False", "train_checkpoint_True") if k in results]
    if runs:
        batch = results["train_batch"]
        note = ", as in the paper" if batch == 2 else " (the paper trains with batch 2)"
        lines += [
            "",
            f"### Training step (forward + deep-supervision CE + backward, batch {batch}{note})",
            "",
            "| part | " + " | ".join(f"`use_checkpoint={k.endswith('True')}` fwd / bwd" for k, _ in runs) + " |",
            "|---|" + "---|" * len(runs),
        ]
        for p in PARTS:
            cells = [f"{1e3 * r['forward'][p]:.0f} / {1e3 * r['backward'][p]:.0f} ms" for _, r in runs]
            lines.append(f"| {PART_LABELS[p]} | " + " | ".join(cells) + " |")
        totals = [f"**{1e3 * r['total']:.0f} ms** ({r['repeats']} timed)" for _, r in runs]
        lines.append("| **step total** | " + " | ".join(totals) + " |")
        lines.append("| **peak memory** | " + " | ".join(f"**+{format_bytes(r['memory'])}**" for _, r in runs) + " |")
        if len(runs) == 2:
            (_, plain), (_, ckpt) = runs
            saving = 1 - ckpt["memory"] / plain["memory"]
            lines += [
                "",
                f"Activation checkpointing (`use_checkpoint=True`) saves {100 * saving:.0f}% of the training step's "
                f"peak memory ({format_bytes(plain['memory'])} -> {format_bytes(ckpt['memory'])}, "
                f"{plain['memory'] / ckpt['memory']:.1f}x less) for {100 * (ckpt['total'] / plain['total'] - 1):.0f}% "
                "more time per step.",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import fire

    fire.Fire(run_benchmark, serialize=lambda _: None)  # the tables are printed already
