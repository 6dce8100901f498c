"""Shared helpers of the benchmark scripts: machine description, timing, peak memory and the docs page."""

from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import re
import resource
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import torch

__all__ = [
    "REPO_ROOT",
    "DOCS_PATH",
    "machine_info",
    "machine_line",
    "load_average",
    "median",
    "median_times",
    "release_memory",
    "set_malloc_mmap_threshold",
    "current_rss",
    "measure_peak_rss",
    "times_and_peak_rss",
    "update_docs_section",
    "format_bytes",
    "markdown_table",
    "num_windows",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS_PATH = os.path.join(REPO_ROOT, "docs", "benchmarks.md")

DOCS_HEADER = """# Benchmarks

Measured with the scripts in `scripts/benchmarks/` (each writes its own section below with `--write_docs`):

    python -m scripts.benchmarks.bench_ms_deform_attn --write_docs
    python -m scripts.benchmarks.bench_cotr --write_docs
    python -m scripts.benchmarks.compare_networks --write_docs       (sizes: see its section)
    python -m scripts.benchmarks.equal_time_training --write_docs
    python -m scripts.benchmarks.bench_inference --write_docs True
    python -m scripts.benchmarks.gpu_check                    (on CUDA; writes its section)

Times are wall-clock medians after warm-up (the network comparison takes the fastest call, see its section). \
CPU peak memory is resident memory (RSS): the peak (`VmHWM`, reset
through `/proc/self/clear_refs` just before the measured call) minus the RSS just before it, after freed heap memory
was returned to the system (`malloc_trim`), so it counts what the call itself allocates and touches (activations,
gradients, workspaces), not the inputs or the weights.

"""


def machine_info() -> dict[str, str]:
    """CPU model, logical cores, torch threads, torch / Python versions, GPU (if any) and the load average."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), flags=re.MULTILINE)
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "load": load_average(),
    }


def machine_line(info: dict[str, str]) -> str:
    line = (
        f"{info['cpu']}, {info['cores']} logical cores, torch {info['torch']} with {info['threads']} threads, "
        f"Python {info['python']}, GPU: {info['gpu']}; load average (1/5/15 min) at the start: {info['load']}"
    )
    return line + (f", at the end: {info['load_end']}" if "load_end" in info else "")


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def median_times(functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """
    Wall-clock seconds of every function, ``repeats`` times each after ``warmup`` untimed calls. The functions are
    interleaved round by round, so that a change in the machine's load affects them alike.
    """
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def release_memory() -> None:
    """Collect garbage and give freed heap memory back to the system (glibc ``malloc_trim``), so RSS = live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def set_malloc_mmap_threshold(num_bytes: int = 1 << 16) -> bool:
    """glibc: serve allocations above ``num_bytes`` with mmap, so freed tensors leave RSS at once (memory runs only)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, num_bytes))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def current_rss() -> int:
    """Resident memory of this process in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        match = re.search(r"^VmHWM:\s*(\d+)\s*kB", f.read(), flags=re.MULTILINE)
    if match:
        return int(match.group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_peak_rss(fn: Callable[[], object]) -> tuple[int, int, object]:
    """
    Run ``fn`` once and return (peak RSS increase over the RSS just before the call, peak RSS, fn's result).
    Freed memory is released first; the process's RSS high-water mark is reset before the call (if the kernel
    does not allow it, the lifetime peak is used, which can only overstate the increase).
    """
    release_memory()
    before = current_rss()
    _reset_peak_rss()
    result = fn()
    peak = _peak_rss()
    return max(peak - before, 0), peak, result


def times_and_peak_rss(
    functions: dict[str, Callable[[], object]], repeats: int = 1, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """
    Wall-clock seconds of every function, interleaved round by round as in :func:`median_times`, and the peak RSS
    increase (:func:`measure_peak_rss`) of each function's call in the first timed round (freeing memory before it
    is not timed).
    """
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    memory: dict[str, int] = {}
    for round_index in range(repeats):
        for name, fn in functions.items():

            def timed(name: str = name, fn: Callable[[], object] = fn) -> None:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

            if round_index == 0:
                memory[name] = measure_peak_rss(timed)[0]
            else:
                timed()
    return times, memory


def num_windows(volume: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Windows a sliding window of ``roi`` with ``overlap`` places over ``volume`` (as MONAI's inferer scans it)."""
    count = 1
    for size, window in zip(volume, roi):
        step = max(int(window * (1 - overlap)), 1)
        count *= math.ceil((size - window) / step) + 1 if size > window else 1
    return count


def format_bytes(num: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if num >= scale:
            return f"{num / scale:.2f} {unit}" if unit == "GiB" else f"{num / scale:.0f} {unit}"
    return f"{num:.0f} B"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: ``header`` cells, the separator, then one line per row of cells."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def update_docs_section(name: str, text: str, path: str = DOCS_PATH) -> str:
    """Replace (or append) the section of ``path`` between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    content = DOCS_HEADER
    if os.path.exists(path):
        with open(path) as f:
            content = f.read()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", flags=re.DOTALL)
    content = pattern.sub(lambda _: block, content) if pattern.search(content) else content.rstrip() + "\n\n" + block
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)
    return path
