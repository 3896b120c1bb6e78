"""k-WTA and ReLU detection on the patterns PyTorch exports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from tvm_sparse import models
from tvm_sparse.frontend import import_model
from tvm_sparse.ir.relax_utils import binding_map
from tvm_sparse.passes.activation_sparsity import find_kwta, pooled_density, producer_of
from tvm_sparse.passes.analyze_sparsity import analyze_function
from tvm_sparse.passes.canonicalize import canonicalize

from . import kwta_forms


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


# --- every form nupic.torch exports, and what is not k-WTA ---------------------------------


def _matches(model) -> list:
    return find_kwta(canonicalize(import_model(model).mod)["main"], exact=True, local=True)


@pytest.mark.parametrize(
    "form, kind, boosted",
    [(form, kind, True) for form, kind in kwta_forms.FORMS]
    + [("kthvalue", "2d", False), ("kthvalue", "local", False), ("break_ties", "1d", False)],
)
def test_every_nupic_form_is_found(tmp_path, form, kind, boosted):
    case = kwta_forms.export_form(form, kind, str(tmp_path / "kw.onnx"), boosted)
    func = canonicalize(import_model(case.path).mod)["main"]
    (match,) = find_kwta(func, exact=True, local=True)
    assert (match.k, match.n, match.local, match.exact) == (case.k, case.n, case.local, case.exact)
    # consumers of the threshold rule over whole samples (the FPGA backend) see only those
    assert len(find_kwta(func)) == int(not case.exact and not case.local)
    if boosted:  # the exported Exp(constant) is folded; one factor per value, row-major
        assert "Exp" in [node.op_type for node in onnx.load(case.path).graph.node]
        np.testing.assert_allclose(match.boost, case.boost, rtol=1e-6)
    else:
        assert match.boost is None


def test_local_kwta_reports_k_of_c(tmp_path):
    case = kwta_forms.export_form("kthvalue", "local", str(tmp_path / "kw.onnx"))
    func = canonicalize(import_model(case.path).mod)["main"]
    act = producer_of(func.body.body, binding_map(func))
    assert (act.kind, act.k, act.n, act.local) == ("kwta", 2, 8, True)
    assert act.density == pytest.approx(2 / 8) and "per location" in act.describe()


def _flat_boost_model(boost: np.ndarray, shape=(2, 4, 3, 3), k=7, largest=True):
    """Reshape -> Mul(boost [1, C*H*W]) -> threshold k-WTA -> Reshape: the issue's form."""
    batch, n = shape[0], int(np.prod(shape[1:]))
    nodes = [
        helper.make_node("Reshape", ["input", "flat_shape"], ["flat"]),
        helper.make_node("Mul", ["flat", "boost"], ["boosted"]),
    ]
    tail, inits = kwta_forms.threshold_nodes("boosted", "flat", k, largest=largest, n=n)
    tail[-1].output[0] = "kept"
    nodes += tail + [helper.make_node("Reshape", ["kept", "shape"], ["output"])]
    inits.update(flat_shape=np.int64([batch, -1]), boost=boost, shape=np.int64(shape))
    return kwta_forms.graph_model(nodes, inits, shape)


@pytest.mark.parametrize("largest", [True, False])
def test_per_feature_boost_after_the_flatten_is_found(rng, largest):
    boost = rng.uniform(0.5, 1.5, (1, 36)).astype(np.float32)
    (match,) = _matches(_flat_boost_model(boost, largest=largest))
    assert (match.k, match.n) == (7, 36)
    np.testing.assert_array_equal(match.boost, boost[0])


@pytest.mark.parametrize(
    "factor",
    [
        pytest.param(lambda rng: -rng.uniform(0.5, 1.5, (1, 36)), id="negative"),
        pytest.param(lambda rng: np.where(np.arange(36) == 5, -1.0, 1.0)[None], id="one-negative"),
        pytest.param(lambda rng: np.zeros((1, 36)), id="zero"),
        pytest.param(lambda rng: np.full((1, 36), np.inf), id="infinite"),
        pytest.param(lambda rng: rng.uniform(0.5, 1.5, (1, 36)), id="positive"),  # the control
    ],
)
def test_only_a_positive_constant_factor_is_a_boost(rng, request, factor):
    model = _flat_boost_model(np.asarray(factor(rng), np.float32))
    found = _matches(model)
    assert len(found) == (1 if request.node.callspec.id == "positive" else 0)


def test_data_dependent_factor_is_not_a_boost():
    """TopK ranks x * sigmoid(x): a computed factor can reorder x, so no kernel may assume it."""
    nodes = [helper.make_node("Sigmoid", ["input"], ["gate"])]
    nodes.append(helper.make_node("Mul", ["input", "gate"], ["ranked"]))
    tail, inits = kwta_forms.threshold_nodes("ranked", "input", 5)
    assert _matches(kwta_forms.graph_model(nodes + tail, inits, (2, 40))) == []
    plain, inits = kwta_forms.threshold_nodes("input", "input", 5)  # the control
    assert len(_matches(kwta_forms.graph_model(plain, inits, (2, 40)))) == 1


@pytest.mark.parametrize(
    "compare, keep_where, is_kwta",
    [
        ("GreaterOrEqual", "on", True),  # kthvalue's threshold, kept where >=
        ("Less", "off", True),  # kthvalue + masked_fill: zeroed where <
        ("LessOrEqual", "on", False),  # keeps the k smallest: k-losers
        ("Less", "on", False),  # keeps those below the threshold
        ("GreaterOrEqual", "off", False),  # zeroes the winners
    ],
)
def test_topk_of_the_smallest_is_kwta_only_as_a_kthvalue_threshold(compare, keep_where, is_kwta):
    nodes, inits = kwta_forms.threshold_nodes(
        "input", "input", 5, largest=False, n=40, compare=compare, keep_where=keep_where
    )
    found = _matches(kwta_forms.graph_model(nodes, inits, (2, 40)))
    assert [(m.k, m.n) for m in found] == ([(5, 40)] if is_kwta else [])


def test_threshold_of_another_tensor_is_not_kwta():
    """TopK ranks x + 1 while the mask compares x: the threshold is not x's k-th value."""
    nodes = [helper.make_node("Add", ["input", "one"], ["shifted"])]
    tail, inits = kwta_forms.threshold_nodes("shifted", "input", 5)
    tail[3].input[0] = "input"  # compare x against a threshold taken from x + 1
    inits["one"] = np.float32(1.0)
    assert _matches(kwta_forms.graph_model(nodes + tail, inits, (2, 40))) == []


def test_gathered_index_sets_k():
    """values[:, j] of a TopK(K) is the (j+1)-th largest: k follows the index, not K."""
    nodes, inits = kwta_forms.threshold_nodes("input", "input", 9)
    inits["kth"] = np.int64(3)
    (match,) = _matches(kwta_forms.graph_model(nodes, inits, (2, 40)))
    assert (match.k, match.n) == (4, 40)
