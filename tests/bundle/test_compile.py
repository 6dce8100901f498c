"""
``compile_network``: the configs compile CoTr's encoder and decoder in place, so outputs and checkpoint keys stay the
same.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch._inductor.config
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from scripts.engine.streaming import StreamingSegmentationInferer
from scripts.networks import CoTr

from .conftest import SMALL_COTR, config_paths

TINY = {
    **SMALL_COTR,
    "num_classes": 3,
    "label_names": {"0": "background", "1": "liver", "2": "spleen"},
    "device": "$torch.device('cpu')",
    "patch_size": [32, 32, 16],
    "sw_batch_size": 2,
    "tta_flip_axes": [0],
}

# inference and evaluation freeze the weights into the compiled graph; training must not (its weights change)
FROZEN = "$@compile_network and scripts.engine.inferers.compile_for_inference(@network)"
# inference compiles the network it runs: the network itself, or every member of a --ckpt_files ensemble
FROZEN_INFERENCE = "$@compile_network and scripts.engine.inferers.compile_for_inference(@inference_network)"
COMPILE_STEPS = {
    ("inference.json",): FROZEN_INFERENCE,
    ("train.json", "evaluate.json"): FROZEN,
    ("train.json",): "$@compile_network and @network.compile()",
}


@pytest.fixture(autouse=True)
def restore_inductor_freezing():
    """compile_for_inference sets a process-wide Inductor flag; other tests in this process must not inherit it."""
    before = torch._inductor.config.freezing
    yield
    torch._inductor.config.freezing = before


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None, reason="torch.compile on CPU needs a C++ compiler"
)
@pytest.mark.parametrize("configs", list(COMPILE_STEPS), ids="+".join)
def test_compiled_network_matches_eager_with_weights_loaded_after_compiling(configs):
    parser = ConfigParser()
    parser.read_config(config_paths(*configs))
    parser.update({**TINY, "compile_network": True})
    network = parser.get_parsed_content("network").eval()
    keys = list(network.state_dict())
    compile_step = [e for e in parser["initialize"] if "compile" in e]
    assert compile_step == [COMPILE_STEPS[configs]]
    parser.get_parsed_content(f"initialize#{parser['initialize'].index(compile_step[0])}")
    # nn.Module.compile() swaps the call in place; the DeTrans stays eager for its fast MS-DMSA kernel
    assert network.encoder._compiled_call_impl is not None and network.decoder._compiled_call_impl is not None
    assert network.detrans._compiled_call_impl is None
    assert list(network.state_dict()) == keys  # no "_orig_mod." prefix: checkpoints load either way

    assert torch._inductor.config.freezing == (COMPILE_STEPS[configs] in (FROZEN, FROZEN_INFERENCE))
    # the workflows load the checkpoint after compiling (handler at STARTED): frozen weights must be the loaded ones
    torch.manual_seed(1)
    reference = CoTr(**{k.split("#")[1]: v for k, v in TINY.items() if k.startswith("network_def#")}, out_channels=3)
    network.load_state_dict(reference.state_dict())
    reference.eval()
    # through the config's own inferer, on a MetaTensor as the workflows give it: 3 windows of 32x32x16 in calls of
    # 2, so the last call has another batch size
    inferer = parser.get_parsed_content("validate#inferer" if "validate#inferer" in parser else "inferer")
    image = MetaTensor(torch.randn(1, 1, 64, 32, 16))
    # the streaming inferer's labels follow its blended logits; compare those (random weights leave near ties)
    infer = inferer.blended_logits if isinstance(inferer, StreamingSegmentationInferer) else inferer
    with torch.no_grad():
        compiled = infer(image, network)
        eager = infer(image, reference)
    assert isinstance(compiled, torch.Tensor) and compiled.shape == (1, 3, 64, 32, 16)
    torch.testing.assert_close(torch.as_tensor(compiled), torch.as_tensor(eager), atol=1e-4, rtol=1e-4)
