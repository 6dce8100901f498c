from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.inferers import SimpleInferer, SlidingWindowInferer

from scripts.engine import inferers
from scripts.engine.inferers import FlipTTA, FlipTTAInferer, flip_combinations


class PositionDependent(nn.Module):
    """Not flip-equivariant: output depends on where a voxel is, so each flip gives a different result."""

    def __init__(self) -> None:
        super().__init__()
        self.ramp = nn.Parameter(torch.arange(4 * 6 * 5, dtype=torch.float64).reshape(1, 1, 4, 6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x * self.ramp, x + self.ramp), dim=1)


def test_flip_combinations_are_all_subsets():
    assert flip_combinations([0, 1, 2]) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert flip_combinations([]) == [()]


def test_flip_tta_averages_unflipped_predictions():
    network = PositionDependent()
    x = torch.randn(2, 1, 4, 6, 5, dtype=torch.float64)
    expected = torch.zeros(2, 2, 4, 6, 5, dtype=torch.float64)
    for axes in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]:
        flipped = x.flip(axes) if axes else x
        out = network(flipped)
        expected += out.flip(axes) if axes else out
    expected /= 8
    assert torch.allclose(FlipTTA(network, (0, 1, 2))(x), expected)
    assert torch.equal(FlipTTA(network, ())(x), network(x))


def test_flip_tta_of_equivariant_network_is_identity():
    network = nn.Conv3d(1, 3, kernel_size=1).double()
    x = torch.randn(1, 1, 4, 6, 5, dtype=torch.float64)
    assert torch.allclose(FlipTTA(network)(x), network(x))


def test_flip_tta_rejects_bad_axes():
    with pytest.raises(ValueError, match="spatial_axes"):
        FlipTTA(nn.Identity(), (0, 3))


def test_flip_tta_inferer_wraps_the_inner_inferer():
    network = PositionDependent()
    x = torch.randn(1, 1, 4, 6, 5, dtype=torch.float64)
    assert torch.allclose(FlipTTAInferer(SimpleInferer(), (0, 2))(x, network), FlipTTA(network, (0, 2))(x))
    window = SlidingWindowInferer(roi_size=(4, 6, 5), overlap=0.0)
    assert torch.allclose(FlipTTAInferer(window, (1,))(x, network), FlipTTA(network, (1,))(x))


class RecordsDtype(nn.Module):
    """A convolution that remembers the dtype it computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, kernel_size=3, padding=1)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        self.seen.append(out.dtype)
        return out


@pytest.mark.parametrize("precision, dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_reduced_precision_runs_under_autocast_and_returns_float32(precision, dtype):
    torch.manual_seed(0)
    network = RecordsDtype()
    x = torch.randn(1, 1, 8, 6, 4)
    reference = network(x)
    out = FlipTTA(network, (0,), precision=precision)(x)
    assert network.seen[1:] == [dtype, dtype] and out.dtype == torch.float32
    flipped = network.conv(x.flip(2)).flip(2)
    assert torch.allclose(out, (reference + flipped) / 2, atol=0.05) and not torch.equal(out, (reference + flipped) / 2)
    window = SlidingWindowInferer(roi_size=(4, 6, 4), overlap=0.5)
    assert FlipTTAInferer(window, (), precision=precision)(x, network).dtype == torch.float32


def test_precision_is_checked_and_the_default_fits_the_machine(monkeypatch):
    with pytest.raises(ValueError, match="precision must be one of"):
        FlipTTA(nn.Identity(), (), precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        FlipTTAInferer(SimpleInferer(), (), precision="half")
    monkeypatch.setattr(inferers, "native_bfloat16_cpu", lambda: True)
    assert inferers.default_precision() == ("float32" if torch.cuda.is_available() else "bfloat16")
    monkeypatch.setattr(inferers, "native_bfloat16_cpu", lambda: False)
    assert inferers.default_precision() == "float32"
