"""The thin-slab benchmark: slabs keep their world position, and every padding is segmented and scored."""

from __future__ import annotations

import numpy as np
import torch
from monai.bundle import ConfigParser

from scripts.benchmarks.thin_slab import PADDINGS, cut_slab, run_thin_slab
from tests.reliability.conftest import config_paths


def test_cut_slab_takes_the_slices_along_z():
    image = np.arange(4 * 3 * 10).reshape(4, 3, 10)
    slab, label = cut_slab(image, image + 1, 3, 4)
    assert slab.shape == (4, 3, 4) and np.array_equal(slab, image[..., 3:7]) and np.array_equal(label, slab + 1)


def test_every_slab_and_padding_is_scored(tmp_path):
    parser = ConfigParser()
    parser.read_config(config_paths("inference.json", "demo.json"))
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), checkpoint)
    rows = run_thin_slab(str(checkpoint), shape=(64, 64, 24), spacing=(3.0, 3.0, 4.0), slab_slices=(5,))
    assert [r[:2] for r in rows] == [["full volume (24 slices)", "-"]] + [["5 slices (20 mm)", p] for p in PADDINGS]
    assert rows[0][2] == "1.000"
    assert all(0.0 <= float(value) <= 1.0 for row in rows for value in row[2:])
