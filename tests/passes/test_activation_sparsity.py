"""k-WTA and ReLU detection on the patterns PyTorch exports."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_sparse import models
from tvm_sparse.frontend import import_model
from tvm_sparse.passes.activation_sparsity import find_kwta, pooled_density
from tvm_sparse.passes.analyze_sparsity import analyze_function
from tvm_sparse.passes.canonicalize import canonicalize


@pytest.mark.parametrize("boosting", [False, True])
@pytest.mark.parametrize("shape, k", [((1, 4, 6, 6), 14), ((2, 50), 5)])
def test_kwta_subgraph_is_found(shape, k, boosting):
    model = models.kwta_model(shape, k, boosting=boosting)
    func = canonicalize(import_model(model).mod)["main"]
    (match,) = find_kwta(func)
    assert match.k == k
    assert match.n == int(np.prod(shape[1:]))
    assert (match.boost is not None) == boosting
    if boosting:
        assert match.boost.shape == (match.n,)


@pytest.mark.parametrize("boosting", [False, True])
def test_layer_inputs_of_gsc_cnn(boosting):
    imported = import_model(models.tiny_sparse_cnn(boosting=boosting))
    rows = analyze_function(canonicalize(imported.mod)["main"], imported.weighted_nodes)
    kinds = [act.kind for _, act in rows]
    assert kinds == ["dense", "kwta", "kwta", "kwta"]
    cfg = models.GSC_TINY
    densities = [act.density for _, act in rows[1:]]
    kwta = [k / n for k, n in zip(cfg.kwta_ks, cfg.kwta_sizes)]
    # the two conv-side k-WTAs reach their layer through a 2x2 max-pool; the last does not
    expected = [pooled_density(kwta[0], 4), pooled_density(kwta[1], 4), kwta[2]]
    np.testing.assert_allclose(densities, expected)
    assert [(act.k, act.n) for _, act in rows[1:]] == list(zip(cfg.kwta_ks, cfg.kwta_sizes))
    assert "max_pool2d" in rows[1][1].through
    assert all(act.boosted == boosting for _, act in rows[1:])
    assert [layer.name for layer, _ in rows] == ["cnn1", "cnn2", "linear", "output_linear"]


def test_relu_between_layers_is_reported():
    imported = import_model(models.pruned_mlp(layers=3, hidden=32, density=0.2))
    rows = analyze_function(canonicalize(imported.mod)["main"], imported.weighted_nodes)
    assert [act.kind for _, act in rows] == ["dense", "relu", "relu"]
    assert [layer.activation for layer, _ in rows] == ["relu", "relu", None]


def test_where_with_nonzero_fill_is_not_kwta():
    """Where(mask, x, 1.0) keeps ones, not zeros: no sparsity to exploit."""
    model = models.kwta_model((1, 20), 4)
    for init in model.graph.initializer:
        if init.data_type == 1 and init.dims == [] and init.float_data == [] and init.raw_data:
            value = np.frombuffer(init.raw_data, dtype=np.float32)
            if value.size == 1 and value[0] == 0.0:
                init.raw_data = np.array(1.0, np.float32).tobytes()
    func = canonicalize(import_model(model).mod)["main"]
    assert find_kwta(func) == []


def test_pooled_density():
    assert pooled_density(0.0, 4) == 0.0
    assert pooled_density(1.0, 4) == 1.0
    assert pooled_density(0.5, 1) == 0.5
    np.testing.assert_allclose(pooled_density(0.125, 4), 1 - 0.875**4)


def test_pytorch_export_of_boosted_kwinners_is_found(tmp_path):
    """torch.where(boosted >= topk(...).values[:, k-1:], x, zeros_like(x)) as torch exports it."""
    torch = pytest.importorskip("torch")

    class KWinners(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("boost", torch.rand(1, 4, 1, 1) + 0.5)

        def forward(self, x):
            flat = x.flatten(1)
            boosted = (x * self.boost).flatten(1)
            kth = torch.topk(boosted, 7, dim=1).values[:, 6:]
            return torch.where(boosted >= kth, flat, torch.zeros_like(flat)).view_as(x)

    path = str(tmp_path / "kw.onnx")
    torch.onnx.export(
        KWinners(),
        (torch.randn(2, 4, 5, 5),),
        path,
        input_names=["input"],
        opset_version=17,
        dynamo=False,
    )
    func = canonicalize(import_model(path).mod)["main"]
    (match,) = find_kwta(func)
    assert (match.k, match.n) == (7, 100) and match.boost is not None
