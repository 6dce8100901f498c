"""The GPU check at tiny sizes on the CPU: it runs, writes its section, and its comparisons catch real differences."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from scripts.benchmarks import gpu_check
from scripts.benchmarks.gpu_check import (
    FORWARD_TOLERANCE,
    GRADIENT_TOLERANCE,
    KERNEL_GRADIENT_TOLERANCE,
    KERNEL_VALUE_TOLERANCE,
    TINY,
    Check,
    compare_forward_backward,
    compare_kernels,
    relative_error,
)
from scripts.networks import ms_deform_attn as msda


@pytest.fixture
def one_thread():
    """One thread: the tiny sizes are too small to gain from more, and a busy machine makes them slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_relative_error_is_the_largest_difference_over_the_largest_value():
    rng = np.random.default_rng(0)
    expected = rng.normal(size=(3, 4, 5))
    actual = expected + rng.normal(scale=1e-3, size=expected.shape)
    reference = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
    measured = relative_error(torch.tensor(actual, dtype=torch.float32), torch.tensor(expected))
    assert measured == pytest.approx(reference, rel=1e-3)
    assert relative_error(torch.ones(3), torch.zeros(3)) == 1.0  # a zero reference: the absolute error
    assert relative_error(torch.full((3,), 1e-9), torch.zeros(3), floor=1e-3) == pytest.approx(1e-6)


def test_the_network_comparison_catches_wrong_outputs_and_wrong_gradients(one_thread):
    torch.manual_seed(0)
    network = gpu_check._recipe(TINY, dropout_rate=0.0).get_parsed_content("network_def")
    x = torch.randn(1, 1, *TINY.compare_input)
    assert compare_forward_backward(network, copy.deepcopy(network), x)[:2] == (0.0, 0.0)
    shifted = copy.deepcopy(network)
    with torch.no_grad():
        weight = shifted.encoder.stem.conv.weight
        weight[0, 0, 0, 0, 0] += 0.05 * weight.abs().max()
    forward, gradient, _ = compare_forward_backward(network, shifted, x)
    assert forward > FORWARD_TOLERANCE and gradient > GRADIENT_TOLERANCE
    scaled = copy.deepcopy(network)  # same outputs, one gradient 1 % off
    scaled.decoder.final_head.weight.register_hook(lambda grad: grad * 1.01)
    forward, gradient, worst = compare_forward_backward(network, scaled, x)
    assert forward == 0.0 and gradient == pytest.approx(0.01, rel=1e-3) and worst == "decoder.final_head.weight"


def test_the_kernel_comparison_catches_wrong_values_and_wrong_gradients():
    device = torch.device("cpu")
    values, grads = compare_kernels(TINY, device)
    assert values <= KERNEL_VALUE_TOLERANCE and max(grads.values()) <= KERNEL_GRADIENT_TOLERANCE

    def off_values(value, shapes, locations, weights):
        return msda.ms_deform_attn_3d_gather(value, shapes, locations, weights) * (1 + 1e-3)

    def off_gradients(value, shapes, locations, weights):
        out = msda.ms_deform_attn_3d_gather(value, shapes, locations, weights)
        return out.detach() + 1.001 * (out - out.detach())  # the same values, every gradient 0.1 % larger

    values, _ = compare_kernels(TINY, device, fast=off_values)
    assert values == pytest.approx(1e-3, rel=0.01)
    values, grads = compare_kernels(TINY, device, fast=off_gradients)
    assert values <= KERNEL_VALUE_TOLERANCE
    assert all(g == pytest.approx(1e-3, rel=0.05) for g in grads.values()), grads


def test_a_tiny_run_passes_and_replaces_its_section_only(tmp_path, one_thread, capsys):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\n<!-- other:start -->\nother section\n<!-- other:end -->\n\n"
        "<!-- gpu_check:start -->\nold figures\n<!-- gpu_check:end -->\n"
    )
    checks = gpu_check.run_checks(tiny=True, docs_path=str(docs))
    verdicts = [c.passed for c in checks if c.passed is not None]
    assert len(verdicts) == 5 and all(verdicts), [c for c in checks if c.passed is False]
    assert len(checks) == 11  # and six figures: 2 forward times, 2 training steps, 2 sliding windows
    text = docs.read_text()
    assert "other section" in text and "old figures" not in text and text.count("<!-- gpu_check:start -->") == 1
    assert "tiny sizes: a test of the script" in text and "**5 of 5 checks passed.**" in text
    for check in checks:
        assert f"| {check.name} | {check.measured} |" in text
    assert "use_checkpoint=True" in capsys.readouterr().out


def test_a_failed_check_exits_with_status_1(monkeypatch):
    monkeypatch.setattr(gpu_check, "run_checks", lambda *args: [Check("a", "1"), Check("b", "2", "<= 1", False)])
    with pytest.raises(SystemExit) as stop:
        gpu_check.main()
    assert stop.value.code == 1
    monkeypatch.setattr(gpu_check, "run_checks", lambda *args: [Check("a", "1", "<= 1", True)])
    gpu_check.main()  # no exit
