"""The reference ONNX models: valid, runnable, and sparse exactly as they claim.

onnxruntime is the independent judge: k-WTA outputs are checked against both ORT and a
brute-force definition (argsort), weight densities against the initializers themselves.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from tvm_sparse import models

SMALL_MODELS = {
    "mlp_unstructured": lambda: models.pruned_mlp(layers=3, hidden=64, in_features=32, batch=2),
    "mlp_block": lambda: models.pruned_mlp(layers=2, hidden=64, pattern="block", density=0.25),
    "mlp_nm": lambda: models.pruned_mlp(layers=2, hidden=64, pattern="nm"),
    "tiny_cnn": lambda: models.tiny_sparse_cnn(batch=2),
    "tiny_cnn_boost": lambda: models.gsc_sparse_cnn(small=True, boosting=True),
    "gsc": lambda: models.gsc_sparse_cnn(),
    "gsc_super_boost": lambda: models.gsc_sparse_cnn(super_sparse=True, boosting=True),
    "gsc_dense_twin": lambda: models.gsc_dense_twin(batch=2),
    "kwta_4d": lambda: models.kwta_model([2, 3, 4, 4], k=7),
    "kwta_2d_boost": lambda: models.kwta_model([3, 20], k=5, boosting=True),
    "resnet_block": lambda: models.resnet_block(batch=2),
    "resnet_block_downsample": lambda: models.resnet_block(16, 32, 8, stride=2),
    "unsupported_op": lambda: models.model_with_unsupported_op(),
    "dynamic_batch": lambda: models.model_with_dynamic_batch(),
}


def _session(model: onnx.ModelProto, extra_outputs=()) -> ort.InferenceSession:
    """An ORT session that also returns the named intermediate values."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    known = {v.name: v for v in model.graph.value_info}
    for name in extra_outputs:
        model.graph.output.append(known[name])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _input_shape(model: onnx.ModelProto, symbolic: int = 3) -> list[int]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else symbolic for d in dims]


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _rand(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Every model: valid ONNX, the agreed interface, runs in onnxruntime
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_model_is_valid_and_runs(name):
    model = SMALL_MODELS[name]()
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == models.OPSET
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    x = _rand(_input_shape(model))
    (y,) = _session(model).run(None, {"input": x})
    assert np.all(np.isfinite(y))
    if name != "dynamic_batch":
        assert all(d.HasField("dim_value") for d in model.graph.input[0].type.tensor_type.shape.dim)


def test_models_are_deterministic_per_seed():
    a = models.tiny_sparse_cnn(seed=3).SerializeToString()
    assert a == models.tiny_sparse_cnn(seed=3).SerializeToString()
    assert a != models.tiny_sparse_cnn(seed=4).SerializeToString()


def test_pruned_mlp_matches_numpy():
    model = models.pruned_mlp(layers=3, hidden=48, in_features=16, out_features=8, batch=2)
    w = _weights(model)
    x = _rand((2, 16))
    ref = x
    for i in range(3):
        ref = ref @ w[f"fc{i}.weight"].T + w[f"fc{i}.bias"]
        if i < 2:
            ref = np.maximum(ref, 0)
    (y,) = _session(model).run(None, {"input": x})
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]


# --------------------------------------------------------------------------------------------
# Weight sparsity
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.1, 0.3])
def test_mlp_unstructured_density_is_exact_and_by_magnitude(density):
    model = models.pruned_mlp(layers=2, hidden=64, density=density)
    for name in ("fc0.weight", "fc1.weight"):
        w = _weights(model)[name]
        assert np.count_nonzero(w) == round(density * w.size)


def test_mlp_block_pattern():
    model = models.pruned_mlp(layers=2, hidden=64, density=0.25, pattern="block", block=(4, 8))
    w = _weights(model)["fc0.weight"]
    blocks = np.abs(w).reshape(16, 4, 8, 8).transpose(0, 2, 1, 3).reshape(16, 8, 32)
    nonzero_per_block = np.count_nonzero(blocks, axis=2)
    assert set(np.unique(nonzero_per_block)) == {0, 32}  # every block all-zero or all-non-zero
    assert np.mean(nonzero_per_block > 0) == 0.25


def test_mlp_nm_pattern():
    model = models.pruned_mlp(layers=2, hidden=64, pattern="nm", nm=(2, 4))
    w = _weights(model)["fc1.weight"]
    groups = np.count_nonzero(w.reshape(64, 16, 4), axis=2)
    assert np.all(groups == 2)


@pytest.mark.parametrize("super_sparse, linear_nnz, units", [(False, 160, 1000), (True, 80, 1500)])
def test_gsc_weight_densities(super_sparse, linear_nnz, units):
    w = _weights(models.gsc_sparse_cnn(super_sparse=super_sparse))
    # nupic.torch SparseWeights: every output unit has round(density * fan_in) non-zeros.
    per_unit = {
        "cnn1.weight": (64, 12),  # 50% of 1*5*5 = 12.5 -> 12
        "cnn2.weight": (64, 320),  # 20% of 64*5*5
        "linear.weight": (units, linear_nnz),  # 10% (super: 5%) of 1600
        "output_linear.weight": (12, units),  # dense
    }
    for name, (rows, nnz) in per_unit.items():
        rowwise = np.count_nonzero(w[name].reshape(rows, -1), axis=1)
        assert np.all(rowwise == nnz), name
    for bn in ("cnn1_batchnorm", "cnn2_batchnorm", "linear_bn"):
        assert np.all(w[f"{bn}.scale"] == 1) and np.all(w[f"{bn}.bias"] == 0)
        assert np.all(w[f"{bn}.running_mean"] >= 0) and np.all(w[f"{bn}.running_var"] > 0)


# --------------------------------------------------------------------------------------------
# GSC shapes and k-WTA inside the network
# --------------------------------------------------------------------------------------------
def test_gsc_config_sizes():
    cfg = models.GSC
    assert (cfg.conv_out(0), cfg.conv_out(1), cfg.flat_features) == (28, 10, 1600)
    assert cfg.kwta_sizes == (64 * 28 * 28, 64 * 10 * 10, 1000)
    assert cfg.kwta_ks == (round(0.095 * 50176), 800, 100)
    assert models.GSC_SUPER.kwta_sizes[2] == 1500
    assert models.GSC_SUPER.kwta_ks[2] == 100  # round(0.067 * 1500) = round(100.5)
    assert models.GSC_TINY.flat_features == 200


def test_gsc_intermediate_shapes():
    model = models.gsc_sparse_cnn(batch=2)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info
    }
    assert shapes["cnn1"] == [2, 64, 28, 28]
    assert shapes["cnn1_maxpool"] == [2, 64, 14, 14]
    assert shapes["cnn2"] == [2, 64, 10, 10]
    assert shapes["cnn2_maxpool"] == [2, 64, 5, 5]
    assert shapes["flatten"] == [2, 1600]
    assert shapes["linear"] == [2, 1000]
    assert _session(model).run(None, {"input": _rand((2, 1, 32, 32))})[0].shape == (2, 12)


@pytest.mark.parametrize("boosting", [False, True])
def test_kwta_density_inside_cnn(boosting):
    """Each k-WTA keeps exactly k of C*H*W per sample (random inputs: no ties)."""
    cfg = models.GSC_TINY
    model = models.tiny_sparse_cnn(batch=3, boosting=boosting)
    names = ["cnn1_kwinner/unflatten", "cnn2_kwinner/unflatten", "linear_kwinner/where"]
    _, *acts = _session(model, names).run(None, {"input": _rand((3, 1, 32, 32), seed=1)})
    for act, k, n in zip(acts, cfg.kwta_ks, cfg.kwta_sizes, strict=True):
        flat = act.reshape(3, -1)
        assert flat.shape[1] == n
        assert np.all(np.count_nonzero(flat, axis=1) == k)


def test_kwta_op_pattern():
    """The ops a PyTorch export of global KWinners2d produces, in order (the detector's input)."""
    ops = [n.op_type for n in models.kwta_model([1, 2, 3, 3], k=4).graph.node]
    assert ops == [
        "Reshape",
        "TopK",
        "Gather",
        "Unsqueeze",
        "GreaterOrEqual",
        "Where",
        "Reshape",
    ]
    boosted = [n.op_type for n in models.kwta_model([1, 2, 3, 3], k=4, boosting=True).graph.node]
    assert boosted[:3] == ["Reshape", "Mul", "Reshape"]
    topk = models.kwta_model([1, 8], k=3).graph.node[0]
    assert topk.op_type == "TopK"
    attrs = {a.name: a.i for a in topk.attribute}
    assert attrs == {"axis": -1, "largest": 1, "sorted": 1}


# --------------------------------------------------------------------------------------------
# kwta_reference: against a brute-force definition and against ORT
# --------------------------------------------------------------------------------------------
def test_kwta_reference_against_argsort():
    x = _rand((4, 3, 5, 5), seed=2)
    k = 9
    y = models.kwta_reference(x, k)
    flat = x.reshape(4, -1)
    expected = np.zeros_like(flat)
    top = np.argsort(-flat, axis=1)[:, :k]
    np.put_along_axis(expected, top, np.take_along_axis(flat, top, axis=1), axis=1)
    np.testing.assert_array_equal(y.reshape(4, -1), expected)


def test_kwta_reference_ties_all_win():
    x = np.array([[3.0, 1.0, 2.0, 2.0, 2.0, 0.0]], np.float32)
    np.testing.assert_array_equal(models.kwta_reference(x, 2), [[3, 0, 2, 2, 2, 0]])


def test_kwta_reference_boost_ranks_but_keeps_x():
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    boost = np.array([[10.0, 1.0, 1.0]], np.float32)  # boosted: 10, 2, 3
    np.testing.assert_array_equal(models.kwta_reference(x, 2, boost), [[1, 0, 3]])


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from([(1, 12), (3, 40), (1, 2, 3, 3), (2, 4, 5, 5)]),
    k_frac=st.floats(0.05, 1.0),
    boosting=st.booleans(),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kwta_reference_matches_ort(shape, k_frac, boosting, ties, seed):
    n = int(np.prod(shape[1:]))
    k = max(1, min(n, round(k_frac * n)))
    model = models.kwta_model(shape, k, seed=seed, boosting=boosting)
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, shape) if ties else rng.standard_normal(shape)
    x = x.astype(np.float32)
    boost = _weights(model).get("kwinner.boost_factor")
    (y,) = _session(model).run(None, {"input": x})
    np.testing.assert_array_equal(y, models.kwta_reference(x, k, boost))
    ranked = (x if boost is None else x * boost).reshape(shape[0], -1)
    kth = np.sort(ranked, axis=1)[:, n - k : n - k + 1]
    assert np.all(np.count_nonzero(ranked >= kth, axis=1) >= k)


# --------------------------------------------------------------------------------------------
# Bad inputs and save
# --------------------------------------------------------------------------------------------
def test_bad_input_models():
    unsupported = models.model_with_unsupported_op()
    assert "Det" in {n.op_type for n in unsupported.graph.node}
    dynamic = models.model_with_dynamic_batch()
    assert dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    (y,) = _session(dynamic).run(None, {"input": _rand((5, 64))})
    assert y.shape == (5, 64)


def test_save_round_trip(tmp_path):
    model = models.tiny_sparse_cnn()
    path = models.save(model, tmp_path / "sub" / "tiny.onnx")
    assert onnx.load(path).SerializeToString() == model.SerializeToString()


def test_gsc_dense_twin_is_the_super_sparse_topology_dense_with_relu():
    twin, sparse = models.gsc_dense_twin(), models.gsc_sparse_cnn(super_sparse=True)
    ops = [n.op_type for n in twin.graph.node]
    assert "TopK" not in ops and ops.count("Relu") == 3
    shapes = {i.name: tuple(i.dims) for i in twin.graph.initializer}
    sparse_shapes = {i.name: tuple(i.dims) for i in sparse.graph.initializer}
    for name in ("cnn1.weight", "cnn2.weight", "linear.weight", "output_linear.weight"):
        assert shapes[name] == sparse_shapes[name]
        weight = numpy_helper.to_array(next(i for i in twin.graph.initializer if i.name == name))
        assert np.count_nonzero(weight) == weight.size  # every weight kept
    with pytest.raises(ValueError, match="boosting"):
        models.sparse_cnn(models.GSC_SUPER, boosting=True, kwta=False)


def test_resnet_block_shapes_shortcut_and_densities():
    """Identity shortcut when the shape is kept, else a 1x1 stride-s conv; every conv keeps
    round(density * fan_in) weights per filter."""
    down = models.resnet_block(16, 32, 8, stride=2, density=0.1)
    out = down.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in out] == [1, 32, 4, 4]
    weights = {k: v for k, v in _weights(down).items() if k.endswith(".weight") and v.ndim == 4}
    assert sorted(weights) == ["conv1.weight", "conv2.weight", "downsample.weight"]
    for w in weights.values():
        fan_in = int(np.prod(w.shape[1:]))
        assert (np.count_nonzero(w.reshape(w.shape[0], -1), axis=1) == round(0.1 * fan_in)).all()
    identity = models.resnet_block()
    assert [n.op_type for n in identity.graph.node].count("Conv") == 2
    add = next(n for n in identity.graph.node if n.op_type == "Add")
    assert "input" in add.input  # the shortcut is the block's input itself
    with pytest.raises(ValueError, match="stride 3"):
        models.resnet_block(size=8, stride=3)
