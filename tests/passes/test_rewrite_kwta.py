"""RewriteKwta: k-WTA subgraphs become one call_tir of the radix-select kernel, same results."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_sparse import models
from tvm_sparse.frontend import import_model
from tvm_sparse.op import kwta
from tvm_sparse.passes import pipeline
from tvm_sparse.passes.activation_sparsity import find_kwta
from tvm_sparse.passes.canonicalize import canonicalize
from tvm_sparse.passes.rewrite_kwta import RewriteKwta

from ..conftest import assert_close, ort_run
from . import kwta_forms


def _run(mod: tvm.IRModule, target, x: np.ndarray, relax_pipeline="default") -> np.ndarray:
    ex = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline)
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _rewrite(mod: tvm.IRModule, target) -> tvm.IRModule:
    with target:
        return RewriteKwta()(mod)


def _kernels(mod: tvm.IRModule) -> list[str]:
    return [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def _pipeline_with_rewrite(target) -> tvm.transform.Pass:
    """build_pipeline's phases with RewriteKwta right after the sparsify passes."""

    @tvm.transform.module_pass(opt_level=0, name="test.PipelineWithKwta")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        from tvm.relax import pipeline as tvm_pipeline

        with target:
            phases = [
                *pipeline.canonicalize_passes(),
                *pipeline.sparsify_passes(target),
                RewriteKwta(),
                *tvm_pipeline.library_dispatch_passes(target),
                *pipeline.legalize_passes(),
                *pipeline.schedule_passes(target),
                *pipeline.lower_passes(target),
            ]
            return tvm.transform.Sequential(phases)(mod)

    return _pass


@pytest.mark.parametrize("boosting", [False, True])
@pytest.mark.parametrize("shape, k", [((2, 4, 6, 6), 14), ((3, 50), 5)])
def test_kwta_model_matches_onnxruntime(target, rng, shape, k, boosting):
    model = models.kwta_model(shape, k, boosting=boosting)
    mod = _rewrite(canonicalize(import_model(model).mod), target)
    assert "relax.topk" not in mod.script() and find_kwta(mod["main"]) == []
    assert len(_kernels(mod)) == 1
    x = rng.integers(-4, 5, shape).astype(np.float32)  # ties with the k-th value
    np.testing.assert_array_equal(_run(mod, target, x), ort_run(model, x))


def test_tiny_cnn_through_the_pipeline(target, rng):
    model = models.tiny_sparse_cnn(batch=2, boosting=True)
    x = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
    got = _run(import_model(model).mod, target, x, _pipeline_with_rewrite(target))
    assert_close(got, ort_run(model, x))


def test_tiny_cnn_rewrites_all_three(target):
    mod = _rewrite(canonicalize(import_model(models.tiny_sparse_cnn(batch=1)).mod), target)
    assert len(_kernels(mod)) == 3 and "relax.topk" not in mod.script()
    assert find_kwta(mod["main"]) == []


def _kwta_module(shape, k, boost) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(kwta(x, k, boost)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("boosted", [False, True])
@pytest.mark.parametrize("shape, k", [((2, 3, 4, 4), 7), ((3, 40), 4)])
def test_relax_op_is_found_and_rewritten(target, rng, shape, k, boosted):
    per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    boost = rng.uniform(0.5, 1.5, per_channel).astype(np.float32) if boosted else None
    mod = _kwta_module(shape, k, boost)
    (match,) = find_kwta(mod["main"])
    assert (match.k, match.n, match.boost is not None) == (k, int(np.prod(shape[1:])), boosted)
    x = rng.integers(-3, 4, shape).astype(np.float32)
    expected = models.kwta_reference(x, k, boost)
    np.testing.assert_array_equal(_run(mod, target, x), expected)  # TVM's topk
    rewritten = _rewrite(mod, target)
    assert len(_kernels(rewritten)) == 1
    np.testing.assert_array_equal(_run(rewritten, target, x), expected)


def test_relax_op_rejects_bad_arguments():
    x = relax.Var("x", relax.TensorType((2, 10), "float32"))
    with pytest.raises(ValueError):
        kwta(x, 11)
    with pytest.raises(ValueError):
        kwta(x, 3, np.ones(7))


def test_other_targets_are_left_alone():
    mod = canonicalize(import_model(models.kwta_model((1, 20), 4)).mod)
    with tvm.target.Target({"kind": "cuda", "arch": "sm_90"}):
        assert RewriteKwta()(mod).same_as(mod)
    assert RewriteKwta()(mod).same_as(mod)  # no target at all


def _kwta_pool_module(shape, k, boost, pool, also_return_kwta: bool) -> tvm.IRModule:
    (size, strides) = pool
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(kwta(x, k, boost))
            pooled = bb.emit(relax.op.nn.max_pool2d(y, size, strides))
            out = bb.emit_output(relax.Tuple([pooled, y]) if also_return_kwta else pooled)
        bb.emit_func_output(out)
    return bb.get()


def _pool_reference(y: np.ndarray, size, strides) -> np.ndarray:
    (ph, pw), (sh, sw) = size, strides
    oh, ow = (y.shape[2] - ph) // sh + 1, (y.shape[3] - pw) // sw + 1
    windows = [
        y[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
        for i in range(ph)
        for j in range(pw)
    ]
    return np.max(windows, axis=0)


@pytest.mark.parametrize("boosted", [False, True])
@pytest.mark.parametrize("pool", [((2, 2), (2, 2)), ((3, 3), (2, 1))])
def test_kwta_reshape_maxpool_becomes_one_kernel(target, rng, boosted, pool):
    shape, k = (2, 3, 7, 6), 20
    boost = rng.uniform(0.5, 1.5, (1, 3, 1, 1)).astype(np.float32) if boosted else None
    mod = _rewrite(_kwta_pool_module(shape, k, boost, pool, False), target)
    kernels = _kernels(mod)
    assert len(kernels) == 1 and kernels[0].startswith("kwta_maxpool")
    assert "relax.nn.max_pool2d" not in mod.script()
    x = rng.integers(-3, 4, shape).astype(np.float32)  # ties with the k-th value
    expected = _pool_reference(models.kwta_reference(x, k, boost), *pool)
    np.testing.assert_array_equal(_run(mod, target, x), expected)


def test_kwta_read_elsewhere_is_not_fused(target, rng):
    shape, k, pool = (1, 2, 6, 6), 9, ((2, 2), (2, 2))
    mod = _rewrite(_kwta_pool_module(shape, k, None, pool, True), target)
    kernels = _kernels(mod)
    assert len(kernels) == 1 and not kernels[0].startswith("kwta_maxpool")
    x = rng.standard_normal(shape).astype(np.float32)
    ex = tvm.compile(mod, target=target)
    pooled, y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    expected_y = models.kwta_reference(x, k)
    np.testing.assert_array_equal(y.numpy(), expected_y)
    np.testing.assert_array_equal(pooled.numpy(), _pool_reference(expected_y, *pool))


def test_tiny_cnn_pools_are_fused(target):
    mod = _rewrite(canonicalize(import_model(models.tiny_sparse_cnn(batch=1)).mod), target)
    fused = [name for name in _kernels(mod) if name.startswith("kwta_maxpool")]
    assert len(fused) == 2 and "relax.nn.max_pool2d" not in mod.script()


# --- every nupic.torch form: one kernel, onnxruntime's result, ties included ---------------


@pytest.mark.parametrize("form, kind", kwta_forms.FORMS)
def test_every_nupic_form_is_rewritten_and_matches_onnxruntime(tmp_path, target, rng, form, kind):
    case = kwta_forms.export_form(form, kind, str(tmp_path / "kw.onnx"))
    mod = _rewrite(canonicalize(import_model(case.path).mod), target)
    (kernel,) = _kernels(mod)
    assert "relax.topk" not in mod.script()
    assert kernel.startswith("kwta_local" if case.local else "kwta_")
    assert kernel.endswith(f"_exact_{0}") == case.exact
    ex = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for ties in (False, True):
        x = kwta_forms.kwta_data(rng, case.shape, ties)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        want = ort_run(case.path, x)  # the file as exported (sorted=0 where torch wrote it)
        np.testing.assert_array_equal(got, want)
        winners = (got != 0).reshape(case.shape[0], -1, *case.shape[2:][: 2 * case.local])
        if case.exact:  # exactly k per group, however many tie
            assert np.all(winners.sum(axis=1) == case.k)


def test_kthvalue_ties_keep_every_value_at_the_threshold(tmp_path, target, rng):
    """kthvalue + masked_fill zeroes only boosted < the k-th: all ties with it win, as in torch."""
    torch = pytest.importorskip("torch")
    case = kwta_forms.export_form("kthvalue", "2d", str(tmp_path / "kw.onnx"))
    x = kwta_forms.kwta_data(rng, case.shape, ties=True)
    from tvm_sparse.zoo import gsc

    nn = gsc.torch_modules()
    duty = -np.log(case.boost.reshape(8, 25)[:, 0].astype(np.float64)) / kwta_forms.STRENGTH
    module = nn.KWinners2d((8, 5, 5), 0.25, "kthvalue", kwta_forms.STRENGTH, False,
                           torch.tensor(duty, dtype=torch.float32)).eval()  # fmt: skip
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    mod = _rewrite(canonicalize(import_model(case.path).mod), target)
    got = _run(mod, target, x)
    np.testing.assert_array_equal(got, want)
    assert np.any((got != 0).reshape(2, -1).sum(axis=1) > case.k)  # ties made more than k win


def test_per_feature_boost_after_the_flatten_runs_the_kernel(target, rng):
    """The issue's GSC form: Mul by a [1, C*H*W] boost after the flatten, TopK largest."""
    from .test_activation_sparsity import _flat_boost_model

    boost = rng.choice(np.float32([0.5, 1.0, 2.0]), (1, 36))  # boosted values still tie
    model = _flat_boost_model(boost)
    mod = _rewrite(canonicalize(import_model(model).mod), target)
    assert len(_kernels(mod)) == 1 and "relax.topk" not in mod.script()
    for ties in (False, True):
        x = kwta_forms.kwta_data(rng, (2, 4, 3, 3), ties)
        np.testing.assert_array_equal(_run(mod, target, x), ort_run(model, x))
