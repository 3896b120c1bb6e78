"""NaN / Inf activations: what skipping zero weights changes, and ``strict_nan`` undoing it.

A weight-sparse kernel never forms ``0 * x``: with a NaN or Inf input, dense math (onnxruntime)
gives NaN in every output whose weight on that input is zero, the sparse kernel does not. That is
the documented default; ``strict_nan=True`` gives onnxruntime's NaN / Inf pattern exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import tvm_sparse
from tvm_sparse import models
from tvm_sparse.schedules.kernel import build_kernel
from tvm_sparse.schedules.nan_fixup_x86 import nan_fixup_kernel
from tvm_sparse.target import resolve_target

from .conftest import ort_run


def _poisoned(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x[1, 3], x[2, 5], x[3, 7] = np.nan, np.inf, -np.inf
    return x


def _same_specials(out, ref):
    return np.array_equal(np.isnan(out), np.isnan(ref)) and np.array_equal(
        np.isinf(out) & (out > 0), np.isinf(ref) & (ref > 0)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixup_kernel_gives_dense_nan_pattern(seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((37, 29)) * (rng.random((37, 29)) < 0.2)).astype(np.float32)
    w[:, 4] = 0  # a column with no non-zero: every output of a non-finite input 4 is NaN
    x = rng.standard_normal((5, 29)).astype(np.float32)
    x[0, 4], x[1, rng.integers(29)], x[2, rng.integers(29)] = np.inf, np.nan, -np.inf
    x[3, [1, 2]] = np.inf, -np.inf
    with np.errstate(invalid="ignore"):
        dense = (x.astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32)
        sparse = np.array(
            [[np.sum(x[b, w[j] != 0] * w[j, w[j] != 0]) for j in range(37)] for b in range(5)],
            np.float32,
        )
    call = nan_fixup_kernel(5, w)
    target = resolve_target("llvm")
    fn = build_kernel(call, target)["main"]
    args = [tvm.runtime.tensor(a) for a in (x, *call.consts, sparse)]
    res = tvm.runtime.tensor(np.zeros((5, 37), np.float32))
    fn(*args, res)
    out = res.numpy()
    assert _same_specials(out, dense)
    finite = np.isfinite(dense)
    np.testing.assert_allclose(out[finite], dense[finite], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[4], sparse[4])  # a finite row is copied untouched


def test_strict_nan_matches_onnxruntime_where_skipping_zeros_does_not():
    model = models.pruned_mlp(layers=1, hidden=512, density=0.1, batch=4)
    x = _poisoned((4, 512))
    ref = ort_run(model, x)
    loose = tvm_sparse.compile(model, "llvm", measure=False)
    strict = tvm_sparse.compile(model, "llvm", measure=False, strict_nan=True)
    assert [layer.chosen for layer in strict.report.layers] == ["csr"]  # still sparse
    assert "skips zero weights" in loose.report.layers[0].reason
    assert "strict NaN" in strict.report.layers[0].reason
    out_loose, out_strict = loose.run(x), strict.run(x)
    assert not _same_specials(out_loose, ref)  # the documented difference...
    assert _same_specials(out_strict, ref)  # ...gone with strict_nan
    finite = np.isfinite(ref)
    np.testing.assert_allclose(out_strict[finite], ref[finite], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(out_strict[0], out_loose[0])  # finite rows: unchanged


def test_strict_nan_makes_conv_layers_dense():
    model = models.tiny_sparse_cnn()
    loose = tvm_sparse.compile(model, "llvm", measure=False)
    module = tvm_sparse.compile(model, "llvm", measure=False, strict_nan=True)
    assert any(x.op == "conv2d" and x.chosen != "dense" for x in loose.report.layers)
    convs = [layer for layer in module.report.layers if layer.op == "conv2d"]
    assert convs and all(layer.chosen == "dense" for layer in convs)


def test_dense_kernels_keep_nan_through_relu():
    """Dense kernels fuse ReLU as a select: max(NaN, 0) would give 0, onnxruntime gives NaN."""
    model = models.pruned_mlp(layers=2, hidden=64, density=1.0, batch=4)
    x = _poisoned((4, 64))
    out = tvm_sparse.compile(model, "llvm", sparse=False, measure=False).run(x)
    assert _same_specials(out, ort_run(model, x))


def test_cli_strict_nan_flag(tmp_path):
    from tvm_sparse.cli import main

    path = models.save(
        models.pruned_mlp(layers=1, hidden=32, density=0.2), str(tmp_path / "m.onnx")
    )
    assert main(["compile", path, "-o", str(tmp_path / "m.so"), "--strict-nan", "--report"]) == 0
