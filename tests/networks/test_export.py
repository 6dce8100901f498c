"""Export of an eval-mode CoTr: TorchScript tracing and ONNX (dynamo exporter, opset 20, fixed shape)."""

from __future__ import annotations

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
