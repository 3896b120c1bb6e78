"""FuseRecurrentCell: ONNX LSTM and GRU nodes, unrolled by the frontend, compile with each
direction's steps in one fused kernel and equal onnxruntime (ONNX's reference for layout 1);
the forms it does not fuse (other activations, batches whose accumulators would not fit in
registers) still compile, unfused."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from onnx import numpy_helper

import tvm_sparse

from ..test_onnx_recurrent import _model, _reference

pytest.importorskip("onnxruntime")


def _compile_and_check(model, feeds, caplog, **options) -> tuple[int, int]:
    """Compile ``model``, check every output against the reference and return (steps fused,
    fused kernels) from the pass's log line ((0, 0) when nothing was fused)."""
    with caplog.at_level(logging.INFO, logger="tvm_sparse"):
        module = tvm_sparse.compile(model, "llvm", **{"measure": False, **options})
    got = module.run(*feeds.values())
    got = got if isinstance(got, tuple) else (got,)
    for want, out in zip(_reference(model, feeds), got, strict=True):
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)
    found = re.search(r"recurrent: (\d+) steps fused into (\d+) kernels", caplog.text)
    return (int(found[1]), int(found[2])) if found else (0, 0)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_every_direction_and_layout_fuses(direction, layout, caplog):
    model, feeds = _model("LSTM", steps=6, batch=2, hidden=20, direction=direction,
                          layout=layout)  # fmt: skip
    dirs = 2 if direction == "bidirectional" else 1
    # the first step's h0 @ R^T is folded (both are constants): the other 5 form the chain
    assert _compile_and_check(model, feeds, caplog) == (5 * dirs, dirs)


@pytest.mark.parametrize("batch", [1, 3])
def test_zero_initial_state_leaves_the_first_step_unfused(batch, caplog):
    """Without h0 / c0 the first step has no product (skipped by the expansion): the other
    steps form the chain."""
    model, feeds = _model("LSTM", steps=5, batch=batch, hidden=16, initial=False, bias=False)
    assert _compile_and_check(model, feeds, caplog) == (4, 1)


@pytest.mark.parametrize(
    "case",
    [
        {"activations": ["Sigmoid", "Tanh", "Relu"]},
        {"batch": 7},
        {"weights_as_inputs": True},
    ],
    ids=["relu_output", "batch7", "weights_as_inputs"],
)
def test_other_forms_compile_unfused(case, caplog):
    args = {"steps": 4, "batch": 2, "hidden": 8, **case}
    model, feeds = _model("LSTM", **args)
    assert _compile_and_check(model, feeds, caplog) == (0, 0)


def _accumulator_budget() -> int:
    """3/4 of this machine's vector registers: 24 of AVX-512's 32, 12 of AVX2's 16."""
    from tvm_sparse.target import resolve_target, vector_lanes

    return 24 if vector_lanes(resolve_target("llvm")) >= 16 else 12


@pytest.mark.parametrize("cell, gates", [("LSTM", 4), ("GRU", 3)])
def test_the_widest_batches_whose_accumulators_fit_fuse(cell, gates, caplog):
    """One vector a gate from 4 rows on: the widest batch whose gates x rows accumulators fit
    fuses (an LSTM's 4 x 6 and a GRU's 3 x 8 on AVX-512; 4 x 3 and 3 x 4 on AVX2), one row
    more stays unfused."""
    batch = _accumulator_budget() // gates
    model, feeds = _model(cell, steps=4, batch=batch, hidden=24)
    assert _compile_and_check(model, feeds, caplog) == (3, 1)
    caplog.clear()
    model, feeds = _model(cell, steps=4, batch=batch + 1, hidden=24)
    assert _compile_and_check(model, feeds, caplog) == (0, 0)


def test_only_the_last_state_read(caplog):
    """A model reading only Y_h: the steps' h rows other than the last are dead."""
    model, feeds = _model("LSTM", steps=7, batch=1, hidden=32, outputs=(False, True, False))
    assert _compile_and_check(model, feeds, caplog) == (6, 1)


@pytest.mark.parametrize("batch", [1, 2])
def test_pruned_recurrent_weight_fuses_with_its_csr_product(batch, caplog):
    """R 90% zero: the choice makes the product a CSR row kernel, and the chain fuses that."""
    model, feeds = _model("LSTM", steps=6, batch=batch, hidden=64, direction="bidirectional")
    weight = next(init for init in model.graph.initializer if init.name == "R")
    r = numpy_helper.to_array(weight).copy()
    r[np.random.default_rng(1).random(r.shape) < 0.9] = 0.0
    weight.CopyFrom(numpy_helper.from_array(r, "R"))
    assert _compile_and_check(model, feeds, caplog) == (10, 2)
    assert "lstm_csr" in caplog.text and "lstm_dense" not in caplog.text


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_as_pytorch_writes_it_fuses(direction, layout, bias, caplog):
    """linear_before_reset = 1, with and without the recurrent bias of the n gate."""
    model, feeds = _model("GRU", steps=5, batch=2, hidden=20, direction=direction,
                          layout=layout, bias=bias, linear_before_reset=1)  # fmt: skip
    dirs = 2 if direction == "bidirectional" else 1
    assert _compile_and_check(model, feeds, caplog) == (4 * dirs, dirs)
    assert "gru_dense" in caplog.text


@pytest.mark.parametrize("lbr, kernel", [(1, "gru_csr"), (0, "gru0_csr")])
def test_pruned_gru_fuses_with_its_csr_products(lbr, kernel, caplog):
    """Either form of the GRU; linear_before_reset = 0 with both its products CSR."""
    model, feeds = _model("GRU", steps=6, batch=1, hidden=64, linear_before_reset=lbr)
    weight = next(init for init in model.graph.initializer if init.name == "R")
    r = numpy_helper.to_array(weight).copy()
    r[np.random.default_rng(1).random(r.shape) < 0.9] = 0.0
    weight.CopyFrom(numpy_helper.from_array(r, "R"))
    assert _compile_and_check(model, feeds, caplog) == (5, 1)
    assert kernel in caplog.text


@pytest.mark.parametrize(
    "direction, layout, batch",
    [("forward", 0, 1), ("reverse", 1, 3), ("bidirectional", 0, 3), ("bidirectional", 1, 1)],
)
def test_gru_with_reset_before_the_product_fuses(direction, layout, batch, caplog):
    """linear_before_reset = 0 (ONNX's default, and Keras's reset_after=False): two products
    a step, both in the fused kernel."""
    model, feeds = _model("GRU", steps=5, batch=batch, hidden=20, direction=direction,
                          layout=layout)  # fmt: skip
    dirs = 2 if direction == "bidirectional" else 1
    assert _compile_and_check(model, feeds, caplog) == (4 * dirs, dirs)
    assert "gru0_dense" in caplog.text


def test_dense_baseline_fuses_too(caplog):
    """``sparse=False`` (the dense baseline) fuses the dense products."""
    model, feeds = _model("LSTM", steps=4, batch=1, hidden=16)
    assert _compile_and_check(model, feeds, caplog, sparse=False) == (3, 1)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("batch", [1, 2])
def test_lstm_with_peepholes_fuses(direction, batch, caplog):
    model, feeds = _model("LSTM", steps=5, batch=batch, hidden=24, direction=direction,
                          peepholes=True)  # fmt: skip
    dirs = 2 if direction == "bidirectional" else 1
    assert _compile_and_check(model, feeds, caplog) == (4 * dirs, dirs)
