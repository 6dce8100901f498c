"""
Weights written before the layout changed still load: checkpoints are plain state dicts, so the network's parameter
names and shapes are its file format. The files in ``tests/networks/checkpoints`` were written by the code of commit
c61edd4 (before ``scripts/`` was grouped by concept): the state-dict shapes of the network of ``configs/train.json``,
and the state dict of a tiny CoTr with one input and the output it gave.
"""

from __future__ import annotations

import json
import os

import torch
from monai.bundle import ConfigParser

from scripts.engine.checkpoint import check_network_state, load_checkpoint
from scripts.networks import CoTr
from tests.conftest import BUNDLE_ROOT

CHECKPOINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")
#: the tiny network of ``tiny_cotr_state_dict.pt``
TINY = dict(
    in_channels=1,
    out_channels=3,
    blocks=[1, 1, 1],
    channels=[2, 4, 6, 6],
    d_model=6,
    num_heads=2,
    num_points=2,
    num_layers=1,
    mlp_dim=8,
    dropout_rate=0.0,
    deep_supervision=False,
)


def test_the_configs_network_has_the_parameter_names_and_shapes_of_before():
    frozen = json.load(open(os.path.join(CHECKPOINTS, "cotr_state_dict_shapes.json")))["state_dict"]
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE_ROOT, "configs", "train.json"))
    state = parser.get_parsed_content("network_def").state_dict()
    assert list(state) == list(frozen)
    assert {name: list(tensor.shape) for name, tensor in state.items()} == frozen


def test_a_checkpoint_written_before_loads_and_gives_the_same_output():
    state = load_checkpoint(os.path.join(CHECKPOINTS, "tiny_cotr_state_dict.pt"))
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # a plain state dict, no pickled classes
    network = CoTr(**TINY).eval()
    check_network_state(network, state, "tiny_cotr_state_dict.pt")
    network.load_state_dict(state, strict=True)
    recorded = torch.load(os.path.join(CHECKPOINTS, "tiny_cotr_io.pt"), weights_only=True)
    with torch.no_grad():
        output = network(recorded["input"])
    torch.testing.assert_close(output, recorded["output"], rtol=1e-5, atol=1e-6)
