"""``torch.compile(model, backend="tvm_sparse")``: registered by entry point, output equal to
eager, weights bound as constants (pruning hooks included), eager fallback with a warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

from tvm_sparse import torch_backend  # noqa: E402
from tvm_sparse.zoo import gsc  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles its own graphs: no cache entry or report of another test."""
    torch._dynamo.reset()
    torch_backend.clear()
    yield
    torch._dynamo.reset()


def _assert_equal(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max()) or 1.0
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4 * scale)


def _pruned_mlp() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                        nn.Linear(128, 10))  # fmt: skip
    for layer in (net[0], net[2]):
        prune.l1_unstructured(layer, "weight", amount=0.9)  # masks left as hooks
    return net.eval()


def test_the_backend_is_registered_by_entry_point():
    from torch._dynamo import list_backends, lookup_backend

    assert "tvm_sparse" in list_backends(exclude_tags=())
    assert lookup_backend("tvm_sparse") is torch_backend.tvm_sparse_backend


def test_pruned_mlp_equals_eager_and_reports_its_sparse_layers():
    net = _pruned_mlp()
    compiled = torch.compile(net, backend="tvm_sparse", dynamic=False,
                             options={"measure": False})  # fmt: skip
    x = torch.randn(1, 64)
    with torch.no_grad():
        _assert_equal(compiled(x), net(x))
        x2 = torch.randn(1, 64)
        _assert_equal(compiled(x2), net(x2))  # a second call: the same compiled graph
    graphs = torch_backend.compiled_graphs()
    assert len(graphs) == 1 and graphs[0].module is not None
    report = torch_backend.reports()[0]
    assert [layer.name for layer in report.layers] == ["0", "2", "4"]
    assert [round(layer.weight_density, 2) for layer in report.layers] == [0.1, 0.1, 1.0]
    assert report.layers[1].chosen != "dense"
    assert sum(graphs[0].weight_inputs) >= 6  # weights, masks and biases bound as constants


def test_gsc_kwta_network_equals_eager():
    net = gsc.build("gsc_kwta_feature_boost", sparsity=0.9)
    compiled = torch.compile(net, backend="tvm_sparse", dynamic=False,
                             options={"measure": False})  # fmt: skip
    x = torch.from_numpy(gsc._images(1, 5))
    with torch.no_grad():
        _assert_equal(compiled(x), net(x))
    report = torch_backend.reports()[0]
    assert [layer.activation["kind"] for layer in report.layers[1:]] == ["kwta"] * 3


def test_a_graph_it_cannot_take_runs_eagerly_with_a_warning(caplog):
    class Erfinv(nn.Module):  # neither TVM's torch importer nor ONNX has erfinv
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.erfinv(torch.tanh(self.fc(x)) * 0.5)

    net = Erfinv().eval()
    compiled = torch.compile(net, backend="tvm_sparse", dynamic=False)
    x = torch.randn(2, 8)
    with caplog.at_level(logging.WARNING, logger="tvm_sparse"), torch.no_grad():
        _assert_equal(compiled(x), net(x))
    assert "runs eagerly" in caplog.text and "erfinv" in caplog.text
    (graph,) = torch_backend.compiled_graphs()
    assert graph.module is None and "erfinv" in graph.fallback_reason
    assert torch_backend.reports() == []


def test_symbolic_shapes_run_eagerly_and_say_how_to_avoid_it(caplog):
    net = _pruned_mlp()
    compiled = torch.compile(net, backend="tvm_sparse", dynamic=True)
    x = torch.randn(3, 64)
    with caplog.at_level(logging.WARNING, logger="tvm_sparse"), torch.no_grad():
        _assert_equal(compiled(x), net(x))
    assert "dynamic=False" in caplog.text


def test_weight_names_come_from_dynamo_sources():
    source = "L['self']._modules['layer1']._modules['0']._modules['conv1']._parameters['weight']"
    assert torch_backend.weight_name(source) == "layer1.0.conv1"
    assert torch_backend.weight_name("L['x']") == "L['x']"
