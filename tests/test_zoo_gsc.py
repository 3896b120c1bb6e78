"""The GSC zoo members (every nupic.torch k-WTA form) compile, equal onnxruntime, and report their
k-WTA activations, pruned to 90% and dense."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

import tvm_sparse  # noqa: E402
from tvm_sparse import zoo  # noqa: E402
from tvm_sparse.zoo import gsc  # noqa: E402

from .conftest import ort_run  # noqa: E402

GLOBAL = [(4767, 50176), (800, 6400), (100, 1000)]  # (k, n) of the three k-WTAs
LOCAL = [(6, 64), (8, 64), (100, 1000)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gsc")
    cache: dict = {}

    def get(name: str, sparsity: float) -> str:
        if (name, sparsity) not in cache:
            path = str(folder / f"{name}_{sparsity}.onnx")
            cache[name, sparsity] = zoo.export(name, path, sparsity=sparsity)
        return cache[name, sparsity]

    return get


def test_every_member_is_registered():
    names = {m.name for m in gsc.MODELS}
    assert names <= set(zoo.ZOO) and len(names) == 7
    assert all(zoo.ZOO[name].family == "gsc" for name in names)
    x = zoo.inputs("gsc_kwta_channel_boost", batch=2, seed=3)["input"]
    assert x.shape == (2, 1, 32, 32) and x.dtype == np.float32


@pytest.mark.parametrize("sparsity", [0.9, 0.0])
@pytest.mark.parametrize("name", [m.name for m in gsc.MODELS])
def test_member_equals_onnxruntime_and_reports_kwta(exported, name, sparsity):
    path = exported(name, sparsity)
    module = tvm_sparse.compile(path, "llvm", measure=False)
    x = zoo.inputs(name)["input"]
    want = ort_run(path, x)
    got = module.run(x)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * scale)

    layers = module.report.layers
    names = ["/cnn1/Conv", "/cnn2/Conv", "/linear/Gemm", "/output/Gemm"]  # torch node names
    assert [layer.name for layer in layers] == names
    acts = [layer.activation for layer in layers[1:]]
    expected = LOCAL if "local" in name else GLOBAL
    assert [(a["kind"], a["k"], a["n"]) for a in acts] == [("kwta", k, n) for k, n in expected]
    assert all(a["boosted"] == (name != "gsc_kwta_noboost") for a in acts)
    assert [a["local"] for a in acts] == ["local" in name] * 2 + [False]
    weights = [layer.weight_density for layer in layers]
    assert weights[:3] == pytest.approx([1.0 - sparsity] * 3, abs=1e-3) and weights[3] == 1.0


def test_unsorted_topk_export_compiles_as_written(exported):
    """torch.topk(sorted=False) exports TopK sorted=0, which TVM's importer refuses: the
    frontend sorts it (same result for the scatter that follows), as onnxruntime agrees."""
    path = exported("gsc_kwta_topk_scatter", 0.9)
    x = zoo.inputs("gsc_kwta_topk_scatter")["input"]
    got = tvm_sparse.compile(path, "llvm", measure=False).run(x)
    want = ort_run(path, x)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max()))
