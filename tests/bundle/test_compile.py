"""``compile_network``: the configs compile the network in place, so outputs and checkpoint keys stay the same."""

from __future__ import annotations

import shutil

import pytest
import torch
from monai.bundle import ConfigParser

from .conftest import config_paths

TINY = {"network_def#blocks": [1, 1, 1], "network_def#channels": [8, 16, 24, 24], "network_def#d_model": 24,
        "network_def#num_heads": 4, "network_def#num_layers": 1, "network_def#mlp_dim": 32, "num_classes": 3,
        "label_names": {"0": "background", "1": "liver", "2": "spleen"}, "device": "$torch.device('cpu')"}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_network_matches_eager_and_keeps_its_state_dict():
    parser = ConfigParser()
    parser.read_config(config_paths("inference.json"))
    parser.update({**TINY, "compile_network": True})
    network = parser.get_parsed_content("network").eval()
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        eager = network(x)
        keys = list(network.state_dict())
        compile_step = [e for e in parser["initialize"] if "compile" in e]
        assert compile_step == ["$@compile_network and @network.compile()"]
        parser.get_parsed_content(f"initialize#{parser['initialize'].index(compile_step[0])}")
        assert network._compiled_call_impl is not None  # nn.Module.compile() swaps the call in place
        assert torch.allclose(network(x), eager, atol=1e-4)
    assert list(network.state_dict()) == keys  # no "_orig_mod." prefix: checkpoints load either way
