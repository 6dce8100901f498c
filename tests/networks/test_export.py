"""Export of CoTr: TorchScript tracing and scripting, and ONNX (dynamo exporter, opset 20, fixed shape)."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from scripts.networks import CoTr

SMALL = dict(channels=(8, 16, 48, 48), d_model=48, num_heads=4, mlp_dim=64, num_layers=2)
SHAPE = (1, 1, 32, 48, 16)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = CoTr(in_channels=1, out_channels=3, **SMALL).eval()
    with torch.no_grad():  # move the DeTrans offsets off their init so the sampling is not trivially aligned
        for layer in model.detrans.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.05)
            layer.self_attn.attention_weights.weight.normal_(0, 0.05)
    return model


def test_torchscript_trace(small_model):
    x1, x2 = torch.randn(*SHAPE), torch.randn(*SHAPE)
    with torch.no_grad():
        traced = torch.jit.trace(small_model, x1)
        for x in (x1, x2):
            torch.testing.assert_close(traced(x), small_model(x), atol=1e-5, rtol=1e-5)
        # round trip through serialisation, as ckpt_export writes it
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        torch.testing.assert_close(loaded(x2), small_model(x2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_levels", [2, 1, 0])
def test_torchscript_script_matches_eager(num_levels):
    """``torch.jit.script`` (what ``ckpt_export`` does without ``--use_trace``) at two sizes, for every ablation."""
    torch.manual_seed(1)
    model = CoTr(in_channels=1, out_channels=3, num_levels=num_levels, use_checkpoint=True, **SMALL).eval()
    with torch.no_grad():
        for layer in model.detrans.layers if model.detrans is not None else []:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.05)
            layer.self_attn.attention_weights.weight.normal_(0, 0.05)
    scripted = torch.jit.script(model)
    graph = str(scripted.inlined_graph)
    assert "embedding_bag" not in graph  # the eager gather kernel stays out: MS-DMSA runs as grid_sample
    assert ("grid_sampler" in graph) == (num_levels > 0)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        for shape in (SHAPE, (2, 1, 48, 32, 24)):
            x = torch.randn(*shape)
            expected = model(x)
            torch.testing.assert_close(scripted(x), expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=1e-5)


def test_torchscript_script_trains_without_checkpointing():
    """
    A scripted network in training mode gives the deep-supervision list and gradients (no activation
    checkpointing).
    """
    torch.manual_seed(2)
    model = CoTr(in_channels=1, out_channels=3, dropout_rate=0.0, use_checkpoint=True, **SMALL).train()
    scripted = torch.jit.script(copy.deepcopy(model))  # a script module shares its parameters with the original
    x = torch.randn(*SHAPE)
    outputs, expected = scripted(x), model(x)
    assert isinstance(outputs, list) and [o.shape for o in outputs] == [e.shape for e in expected]
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    probes = [torch.randn_like(e) for e in expected]  # a plain sum would cancel through the instance norms
    for result in (outputs, expected):
        sum((r * p).sum() for r, p in zip(result, probes)).backward()
    for name, grad in ((n, p.grad) for n, p in scripted.named_parameters()):
        reference = model.get_parameter(name).grad
        assert grad is not None and reference is not None, name
        assert (grad - reference).norm() <= 1e-4 * reference.norm(), name


def test_onnx_export_matches_onnxruntime(small_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(*SHAPE)
    path = tmp_path / "cotr.onnx"
    torch.onnx.export(small_model, (x,), str(path), dynamo=True, opset_version=20)
    model_proto = onnx.load(str(path))
    onnx.checker.check_model(model_proto)
    assert any(node.op_type == "GridSample" for node in model_proto.graph.node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    with torch.no_grad():
        for sample in (x, torch.randn(*SHAPE)):
            (result,) = session.run(None, {name: sample.numpy()})
            expected = small_model(sample).numpy()
            assert result.shape == expected.shape
            assert np.abs(result - expected).max() < 1e-4
