from __future__ import annotations

import os

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

import scripts.reports.architecture_figure as architecture_figure
from scripts.networks import CoTr
from scripts.reports.architecture_figure import (
    ARCHITECTURE_DPI,
    ARCHITECTURE_FIGSIZE,
    describe,
    draw_architecture,
    trace_shapes,
)

FIGURE_SIZE = (round(ARCHITECTURE_FIGSIZE[1] * ARCHITECTURE_DPI), round(ARCHITECTURE_FIGSIZE[0] * ARCHITECTURE_DPI))
DOCS_FIGURE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "architecture.png"
)
TINY = {"channels": (8, 12, 12, 12), "d_model": 12, "num_heads": 2, "mlp_dim": 24, "num_layers": 2, "out_channels": 5}


def _meta_cotr(**kwargs) -> CoTr:
    with torch.device("meta"):
        return CoTr(**kwargs)


def test_describe_reads_the_default_network():
    net = _meta_cotr(deep_supervision=False).eval()
    content = describe(net, (192, 192, 48))
    assert [b.shape for b in content["encoder"]] == [
        (1, 192, 192, 48),
        (64, 96, 96, 48),
        (192, 48, 48, 24),
        (384, 24, 24, 12),
        (384, 12, 12, 6),
    ]
    assert [b.shape for b in content["decoder"]] == [
        (384, 24, 24, 12),
        (192, 48, 48, 24),
        (64, 96, 96, 48),
        (14, 192, 192, 48),
    ]
    assert [b.shape for b in content["heads"]] == [(14, 24, 24, 12), (14, 48, 48, 24), (14, 96, 96, 48)]
    assert "3 × res. block" in content["encoder"][2].text and "2 × res. block" in content["encoder"][4].text
    assert content["detrans"]["shapes"] == [(384, 24, 24, 12), (384, 12, 12, 6)]
    assert any("7776 tokens" in line for line in content["detrans"]["lines"])
    params = content["params"]
    assert params["total"] == sum(p.numel() for p in net.parameters())
    assert params["total"] == sum(v for k, v in params.items() if k != "total")
    assert not net.training and not net.deep_supervision  # the caller's module is left alone
    assert next(net.parameters()).device.type == "meta"


def test_trace_shapes_falls_back_to_a_small_cpu_run(monkeypatch):
    net = _meta_cotr(**TINY)
    expected = trace_shapes(net, (64, 48, 32))
    real_run = architecture_figure._hooked_run

    def no_meta(model, size, device):
        if str(device) == "meta":
            raise NotImplementedError("no meta kernel")
        return real_run(model, size, device)

    monkeypatch.setattr(architecture_figure, "_hooked_run", no_meta)
    assert trace_shapes(net, (64, 48, 32)) == expected
    assert expected["stage3"] == [(12, 4, 3, 4)] and expected["final_upsample"] == [(5, 64, 48, 32)]


def test_draw_architecture_png(tmp_path):
    path = draw_architecture(str(tmp_path / "arch.png"), input_size=(64, 64, 32), **TINY)
    png = mpimg.imread(path)
    assert png.shape[:2] == FIGURE_SIZE
    assert png[..., :3].var() > 0.005
    detrans_colour = to_rgb(architecture_figure._COLOURS["detrans"])
    assert np.all(np.abs(png[..., :3] - detrans_colour) < 0.01, axis=-1).sum() > 1000

    path = draw_architecture(str(tmp_path / "no_detrans.png"), input_size=(64, 64, 32), num_levels=0, **TINY)
    png = mpimg.imread(path)
    assert np.all(np.abs(png[..., :3] - detrans_colour) < 0.01, axis=-1).sum() == 0

    with pytest.raises(ValueError, match="divisible"):
        draw_architecture(str(tmp_path / "bad.png"), input_size=(60, 64, 32), **TINY)


def test_docs_figure_is_committed_and_small():
    assert os.path.isfile(DOCS_FIGURE), (
        "run: python -m scripts.reports.architecture_figure --output_png docs/architecture.png"
    )
    assert os.path.getsize(DOCS_FIGURE) < 300_000
    assert mpimg.imread(DOCS_FIGURE).shape[:2] == FIGURE_SIZE
