"""Tests of ``scripts/networks/cotr.py``: parameter counts, output structure and shapes, ablations, training
utilities (deep-supervision loss, checkpointing, autocast) and initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from monai.losses import DeepSupervisionLoss, DiceCELoss

import scripts.networks.decoder as decoder_module
import scripts.networks.detrans as detrans_module
import scripts.networks.encoder as encoder_module
from scripts.networks import CoTr

# a small configuration for forward passes (the full-size network is slow on CPU)
SMALL = dict(channels=(8, 16, 48, 48), d_model=48, num_heads=4, mlp_dim=64, num_layers=2)


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def head_sizes(size):
    """Full size and the three deep-supervision sizes for the default strides (stem [2, 2, 1], then 2s)."""
    x, y, z = size
    return [(x, y, z), (x // 2, y // 2, z), (x // 4, y // 4, z // 2), (x // 8, y // 8, z // 4)]


@pytest.fixture(scope="module")
def default_cotr():
    torch.manual_seed(0)
    return CoTr(in_channels=1, out_channels=14)


# ---------------------------------------------------------------------------------------------------------------
# parameter counts (paper / spec figures)
# ---------------------------------------------------------------------------------------------------------------


def test_parameter_count_default(default_cotr):
    assert trainable(default_cotr) == 41_872_504
    assert trainable(default_cotr.detrans) == 9_316_992


@pytest.mark.parametrize(
    "kwargs, count",
    [
        (dict(blocks=(1, 1, 1)), 27_934_840),  # CoTr*
        (dict(blocks=(2, 2, 2)), 36_894_712),  # CoTr-dagger
        (dict(num_levels=0), 32_555_512),  # w/o DeTrans
    ],
)
def test_parameter_count_variants(kwargs, count):
    model = CoTr(in_channels=1, out_channels=14, **kwargs)
    assert trainable(model) == count
    if kwargs.get("num_levels") == 0:
        assert model.detrans is None and count == 41_872_504 - 9_316_992


# ---------------------------------------------------------------------------------------------------------------
# output structure and shapes
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 1, 32, 48, 16), (1, 1, 32, 16, 8), (3, 1, 48, 32, 24), (1, 2, 16, 32, 16)])
def test_train_and_eval_outputs(shape):
    torch.manual_seed(1)
    model = CoTr(in_channels=shape[1], out_channels=3, **SMALL)
    x = torch.randn(*shape)
    model.train()
    outputs = model(x)
    assert isinstance(outputs, list) and len(outputs) == 4
    assert [o.shape for o in outputs] == [(shape[0], 3, *s) for s in head_sizes(shape[2:])]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (shape[0], 3, *shape[2:])


def test_eval_output_equals_training_full_resolution_without_dropout():
    torch.manual_seed(2)
    model = CoTr(out_channels=3, dropout_rate=0.0, **SMALL)
    x = torch.randn(1, 1, 16, 32, 8)
    with torch.no_grad():
        train_out = model.train()(x)[0]
        eval_out = model.eval()(x)
    torch.testing.assert_close(eval_out, train_out)


def test_no_deep_supervision_returns_tensor_in_training():
    model = CoTr(out_channels=2, deep_supervision=False, **SMALL).train()
    out = model(torch.randn(2, 1, 16, 32, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 16, 32, 8)
    # heads are built anyway, so checkpoints load in either mode
    assert set(model.state_dict()) == set(CoTr(out_channels=2, **SMALL).state_dict())


@pytest.mark.parametrize(
    "shape, bad", [((1, 1, 32, 40, 16), "axis 1"), ((1, 1, 32, 48, 12), "axis 2"), ((1, 1, 8, 16, 8), "axis 0")]
)
def test_non_divisible_size(shape, bad):
    model = CoTr(out_channels=2, **SMALL).eval()
    with pytest.raises(ValueError, match=r"\[16, 16, 8\]") as info:
        model(torch.randn(*shape))
    assert bad in str(info.value)


def test_single_voxel_deepest_map_is_refused_clearly():
    model = CoTr(out_channels=2, **SMALL).eval()
    with pytest.raises(ValueError, match=r"larger than \[16, 16, 8\]"):
        model(torch.randn(1, 1, 16, 16, 8))
    assert model(torch.randn(1, 1, 32, 16, 8)).shape == (1, 2, 32, 16, 8)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_levels=1),
        dict(num_levels=0),
        dict(num_levels=3, channels=(8, 48, 48, 48)),
        dict(num_levels=1, channels=(8, 16, 32, 48)),
        dict(num_points=1, num_heads=2, num_layers=1),
    ],
)
def test_ablations(kwargs):
    torch.manual_seed(3)
    config = {**SMALL, **kwargs}
    model = CoTr(out_channels=2, **config)
    levels = config.get("num_levels", 2)
    assert (model.detrans is None) == (levels == 0)
    if levels:
        assert model.detrans.num_levels == levels
    x = torch.randn(2, 1, 16, 32, 8)
    outputs = model.train()(x)
    assert [o.shape for o in outputs] == [(2, 2, *s) for s in head_sizes((16, 32, 8))]
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2, 16, 32, 8)


def test_detrans_output_reaches_decoder():
    """Changing the transformer changes the output; without it (num_levels=0) the output is the CNN's."""
    torch.manual_seed(4)
    model = CoTr(out_channels=2, dropout_rate=0.0, **SMALL).eval()
    x = torch.randn(1, 1, 16, 32, 8)
    with torch.no_grad():
        before = model(x)
        model.detrans.layers[-1].norm_mlp.bias.add_(1.0)
        after = model(x)
    assert not torch.allclose(before, after, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(d_model=32),  # stage widths are 48
        dict(channels=(8, 16, 32, 48)),  # two levels of different width
        dict(num_levels=4),
        dict(num_levels=-1),
        dict(stem_stride=(2, 2)),
        dict(d_model=48, num_heads=5),
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        CoTr(out_channels=2, **{**SMALL, **kwargs})


def test_d_model_mismatch_message():
    with pytest.raises(ValueError, match="d_model"):
        CoTr(out_channels=2, **{**SMALL, "d_model": 36})


@pytest.mark.parametrize(
    "norm_name, act_name",
    [
        ("batch", "relu"),
        (("group", {"num_groups": 4}), "relu"),
        (("instance", {"affine": True}), "relu"),
        ("batch", "leakyrelu"),
    ],
)
def test_norm_and_act_choices(norm_name, act_name):
    torch.manual_seed(5)
    model = CoTr(out_channels=2, norm_name=norm_name, act_name=act_name, **SMALL)
    if act_name == "relu":
        acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
        assert acts and all(isinstance(m, nn.ReLU) for m in acts)
    norm_type = {"batch": nn.BatchNorm3d, "group": nn.GroupNorm, "instance": nn.InstanceNorm3d}[
        norm_name if isinstance(norm_name, str) else norm_name[0]
    ]
    assert any(isinstance(m, norm_type) for m in model.encoder.modules())
    x = torch.randn(2, 1, 16, 32, 8)
    outputs = model.train()(x)
    assert len(outputs) == 4 and all(torch.isfinite(o).all() for o in outputs)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2, 16, 32, 8)


# ---------------------------------------------------------------------------------------------------------------
# training utilities
# ---------------------------------------------------------------------------------------------------------------


def deep_supervision_loss():
    return DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))


def test_deep_supervision_loss_and_backward():
    torch.manual_seed(6)
    model = CoTr(out_channels=4, **SMALL).train()
    x = torch.randn(2, 1, 32, 48, 16)
    label = torch.randint(0, 4, (2, 1, 32, 48, 16)).float()
    loss = deep_supervision_loss()(model(x), label)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.detrans.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0


def count_calls(monkeypatch, module):
    calls = []
    original = module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "checkpoint", counting)
    return calls


def test_checkpointing_gives_same_loss_and_gradients(monkeypatch):
    torch.manual_seed(7)
    plain = CoTr(out_channels=3, dropout_rate=0.0, **SMALL).train()
    ckpt = CoTr(out_channels=3, dropout_rate=0.0, use_checkpoint=True, **SMALL).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = {m.__name__: count_calls(monkeypatch, m) for m in (encoder_module, detrans_module, decoder_module)}
    x = torch.randn(2, 1, 16, 32, 8)
    label = torch.randint(0, 3, (2, 1, 16, 32, 8)).float()
    loss_fn = deep_supervision_loss()
    losses, grads = [], []
    for model in (plain, ckpt):
        model.zero_grad()
        loss = loss_fn(model(x), label)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    # every part really checkpointed (8 encoder blocks, 2 DeTrans layers, 3 decoder blocks)
    assert {k: len(v) for k, v in calls.items()} == {
        encoder_module.__name__: 8,
        detrans_module.__name__: 2,
        decoder_module.__name__: 3,
    }
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=1e-5)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4, msg=name)
    # checkpointing is a training-only device: eval does not call it
    before = sum(len(v) for v in calls.values())
    with torch.no_grad():
        ckpt.eval()(x)
    assert sum(len(v) for v in calls.values()) == before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast(dtype):
    torch.manual_seed(8)
    model = CoTr(out_channels=3, **SMALL).eval()
    x = torch.randn(1, 1, 32, 48, 16)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=dtype):
            low = model(x)
    assert low.shape == reference.shape and torch.isfinite(low).all()
    relative = (low.float() - reference).norm() / reference.norm()
    assert relative < 0.05, relative
    with torch.autocast("cpu", dtype=dtype):
        outputs = model.train()(x)
    assert len(outputs) == 4 and all(torch.isfinite(o).all() for o in outputs)


def test_forward_creates_no_parameters_or_buffers():
    model = CoTr(out_channels=2, **SMALL)
    params = {n: p.data_ptr() for n, p in model.named_parameters()}
    buffers = {n: b.data_ptr() for n, b in model.named_buffers()}
    x = torch.randn(1, 1, 16, 32, 8)
    model.train()(x)
    with torch.no_grad():
        model.eval()(x)
        model(torch.randn(2, 1, 32, 16, 16))  # another size
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == params
    assert {n: b.data_ptr() for n, b in model.named_buffers()} == buffers


# ---------------------------------------------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------------------------------------------


def test_conv_init_kaiming_fan_out(default_cotr):
    gain = math.sqrt(2.0 / (1 + 0.01**2))
    checked = 0
    for part in (default_cotr.encoder, default_cotr.decoder):
        for module in part.modules():
            if isinstance(module, nn.Conv3d) and module.weight.numel() > 500_000:
                fan_out = module.out_channels * math.prod(module.kernel_size)
                std = module.weight.std().item()
                assert abs(std - gain / math.sqrt(fan_out)) < 0.1 * gain / math.sqrt(fan_out)
                assert abs(module.weight.mean().item()) < 0.05 * std
                checked += 1
    assert checked == 11  # encoder: 2 in stage 1, 3 in stage 2, 2 in stage 3; decoder: 2 + 2 block convs


def test_norm_and_bias_init(default_cotr):
    norms = 0
    for part in (default_cotr.encoder, default_cotr.decoder):
        for module in part.modules():
            if isinstance(module, nn.InstanceNorm3d):
                assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
                norms += 1
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)) and module.bias is not None:
                assert torch.all(module.bias == 0)
    assert norms == 18  # encoder: stem 1 + 8 blocks + 3 shortcuts; decoder: 3 blocks x 2


@pytest.mark.parametrize("norm_name", ["batch", ("group", {"num_groups": 4})])
def test_other_norms_init(norm_name):
    model = CoTr(out_channels=2, norm_name=norm_name, **SMALL)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm3d, nn.GroupNorm)):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_level_embed_standard_normal(default_cotr):
    embed = default_cotr.detrans.level_embed.detach()
    assert embed.shape == (2, 384)
    assert abs(embed.mean().item()) < 0.15
    assert 0.9 < embed.std().item() < 1.1
