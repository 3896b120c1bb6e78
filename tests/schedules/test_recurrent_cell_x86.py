"""The fused recurrent kernels (LSTM, GRU; dense and CSR products) against numpy: hidden sizes
that fill blocks and ones that do not, batches 1-3, both gate orders, time read forward and
backward along either axis, one row, weight densities from none to all."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tvm_sparse.schedules.kernel import build_kernel
from tvm_sparse.schedules.recurrent_cell_x86 import (
    CellSpec,
    block_units,
    csr_cell_call,
    dense_cell_call,
    pack_cell_panels,
    pack_cell_rows,
)
from tvm_sparse.target import resolve_target

TARGET = resolve_target("llvm")
ONNX_ORDER = ("i", "o", "f", "g")  # the column blocks of ONNX's W / R (i o f c)
TORCH_ORDER = ("i", "f", "g", "o")
GRU_ONNX_ORDER = ("z", "r", "n")  # ONNX z r h
GRU_TORCH_ORDER = ("r", "z", "n")
ROLES = {"lstm": ("i", "f", "g", "o"), "gru": ("z", "r", "n")}


def _gates(order: tuple[str, ...], hidden: int) -> tuple[int, ...]:
    cell = "lstm" if len(order) == 4 else "gru"
    return tuple(order.index(role) * hidden for role in ROLES[cell])


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _reference(spec: CellSpec, h0, c0, xw, r_t, aux):
    """Every step's (h, c), as the unfused graph computes them (c is None for a GRU)."""
    gates = [slice(q, q + spec.hidden) for q in spec.gates]
    h, c, hs, cs = h0, c0, [h0], [c0]
    for s in range(spec.steps):
        if spec.x_mode == "row":
            row = xw
        else:
            t = spec.first + s * spec.stride
            row = xw[t] if spec.time_axis == 0 else xw[:, t]
        hr = h @ r_t
        if spec.cell == "lstm":
            i, f, g, o = gates
            pre = row + hr
            p_i, p_f, p_o = aux if spec.peepholes else (0, 0, 0)
            pre_i, pre_f = pre[:, i] + c * p_i, pre[:, f] + c * p_f
            c = _sigmoid(pre_f) * c + _sigmoid(pre_i) * np.tanh(pre[:, g])
            h = _sigmoid(pre[:, o] + c * p_o) * np.tanh(c)
            cs.append(c)
        else:
            z_, r_, n_ = gates
            z = _sigmoid(row[:, z_] + hr[:, z_])
            n = np.tanh(row[:, n_] + _sigmoid(row[:, r_] + hr[:, r_]) * (hr[:, n_] + aux))
            h = n + z * (h - n)
        hs.append(h)
    return np.concatenate(hs), (np.concatenate(cs) if spec.cell == "lstm" else None)


def _run(spec: CellSpec, density: float = 1.0, seed: int = 0, weights: str = "dense"):
    rng = np.random.default_rng(seed)
    hidden, batch, roles = spec.hidden, spec.batch, len(spec.gates)
    r_t = rng.standard_normal((hidden, roles * hidden)).astype(np.float32) * 0.4
    r_t *= rng.random(r_t.shape) < density
    h0, c0 = (rng.standard_normal((batch, hidden)).astype(np.float32) for _ in range(2))
    if spec.cell == "gru":
        aux = rng.standard_normal(hidden).astype(np.float32)
    else:
        aux = rng.standard_normal((3, hidden)).astype(np.float32) if spec.peepholes else None
    xw = rng.standard_normal(spec.x_shape).astype(np.float32)
    if weights == "dense":
        call = dense_cell_call(r_t, spec, aux)
    else:
        call = csr_cell_call(*pack_cell_rows(r_t), spec, aux)
    states = 2 if spec.cell == "lstm" else 1
    outs = [tvm.runtime.tensor(np.zeros(call.out_shape, np.float32)) for _ in range(states)]
    first = (h0, c0) if spec.cell == "lstm" else (h0,)
    ins = [tvm.runtime.tensor(a) for a in (*first, xw, *call.consts)]
    build_kernel(call, TARGET)(*ins, *outs)
    want_h, want_c = _reference(spec, h0, c0, xw, r_t, aux)
    if want_c is not None:
        np.testing.assert_allclose(outs[1].numpy(), want_c, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(outs[0].numpy(), want_h, rtol=2e-5, atol=2e-5)


def _spec(hidden, batch, order=ONNX_ORDER, steps=4, axis=0, stride=1, mode="step",
          peepholes=False):  # fmt: skip
    cell = "lstm" if len(order) == 4 else "gru"
    width = len(order) * hidden
    total = steps + 2
    first = 1 if stride == 1 else total - 2
    if mode == "row":
        shape, steps, first = (batch, width), 1, 0
    else:
        shape = (total, batch, width) if axis == 0 else (batch, total, width)
    return CellSpec(
        cell=cell, hidden=hidden, batch=batch, units=block_units(hidden, 16, batch, len(order)),
        gates=_gates(order, hidden), x_mode=mode, x_shape=shape, time_axis=axis, first=first,
        steps=steps, stride=stride, peepholes=peepholes,
    )  # fmt: skip


@pytest.mark.parametrize("order", [ONNX_ORDER, GRU_ONNX_ORDER], ids=["lstm", "gru"])
@pytest.mark.parametrize("weights", ["dense", "csr"])
@pytest.mark.parametrize("hidden", [1, 5, 16, 20, 32, 33, 64, 100])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_hidden_sizes_and_batches(hidden, batch, weights, order):
    spec = _spec(hidden, batch, order)
    _run(spec, density=0.3 if weights == "csr" else 1.0, weights=weights)


@pytest.mark.parametrize("order", [ONNX_ORDER, GRU_ONNX_ORDER], ids=["lstm", "gru"])
@pytest.mark.parametrize("weights", ["dense", "csr"])
@pytest.mark.parametrize("hidden, batch", [(5, 4), (33, 6), (64, 4)])
def test_wider_batches_one_vector_a_gate(hidden, batch, weights, order):
    """Batches 4 and 6: one vector a gate (``block_units``), a partial block too."""
    spec = _spec(hidden, batch, order)
    _run(spec, density=0.3 if weights == "csr" else 1.0, weights=weights)


@pytest.mark.parametrize("weights", ["dense", "csr"])
@pytest.mark.parametrize("order", [ONNX_ORDER, TORCH_ORDER, GRU_ONNX_ORDER, GRU_TORCH_ORDER])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("stride", [1, -1])
def test_gate_orders_and_time_reading(order, axis, stride, weights):
    _run(_spec(24, 2, order, steps=5, axis=axis, stride=stride), density=0.5, weights=weights)


@pytest.mark.parametrize("order", [ONNX_ORDER, GRU_ONNX_ORDER], ids=["lstm", "gru"])
@pytest.mark.parametrize("weights", ["dense", "csr"])
def test_one_step_from_a_row(weights, order):
    _run(_spec(40, 1, order, mode="row"), weights=weights)


@pytest.mark.parametrize("order", [ONNX_ORDER, GRU_ONNX_ORDER], ids=["lstm", "gru"])
@pytest.mark.parametrize("weights", ["dense", "csr"])
@pytest.mark.parametrize("density", [0.0, 0.002, 0.05, 1.0])
def test_weight_densities(density, weights, order):
    """No non-zero at all (no recurrence), a few, 95% zeros, none zero: what dense math gives."""
    _run(_spec(48, 1, order), density=density, weights=weights)


def test_panels_regroup_each_units_gates():
    hidden, units = 6, 4
    spec = CellSpec("lstm", hidden, 1, units, _gates(ONNX_ORDER, hidden), "row", (1, 24))
    r_t = np.arange(hidden * 4 * hidden, dtype=np.float32).reshape(hidden, 4 * hidden)
    panels = pack_cell_panels(r_t, spec)
    assert panels.shape == (2, hidden, 4 * units)
    # block 1 holds units 4 and 5, then zeros; role order i, f, g, o (ONNX columns i o f c)
    np.testing.assert_array_equal(panels[1, :, 0:2], r_t[:, 4:6])  # i
    np.testing.assert_array_equal(panels[1, :, 4:6], r_t[:, 2 * hidden + 4 : 2 * hidden + 6])  # f
    np.testing.assert_array_equal(panels[1, :, 12:14], r_t[:, hidden + 4 : hidden + 6])  # o
    assert not panels[1, :, 2:4].any()


def test_block_units_are_two_vectors_or_the_layer():
    """Two vectors a gate up to 3 rows, then one while roles x rows accumulators fit in 3/4
    of the registers (24 zmm, 12 ymm), then none (the kernel is not used)."""
    assert [block_units(256, 16, b, 4) for b in (3, 4, 6, 7)] == [32, 16, 16, None]
    assert [block_units(256, 16, b, 3) for b in (3, 4, 8, 9)] == [32, 16, 16, None]
    assert [block_units(256, 8, b, 3) for b in (3, 4, 5)] == [16, 8, None]
    assert block_units(256, 16) == 32
    assert block_units(256, 8) == 16
    assert block_units(20, 16) == 32
    assert block_units(5, 16) == 8
    assert block_units(1, 16) == 1


@pytest.mark.parametrize("weights", ["dense", "csr"])
@pytest.mark.parametrize("hidden, batch", [(20, 1), (64, 3)])
def test_lstm_peepholes(hidden, batch, weights):
    _run(_spec(hidden, batch, steps=5, peepholes=True), density=0.4, weights=weights)


def _gru0_case(hidden, batch, steps, density, zr_offsets, rng):
    """A linear_before_reset = 0 GRU step chain: spec, inputs, the two weights and numpy's
    every-step h (z, r, n read from ONNX's z r h columns of the projection)."""
    r_zr = (rng.standard_normal((hidden, 2 * hidden)) * 0.3).astype(np.float32)
    r_n = (rng.standard_normal((hidden, hidden)) * 0.3).astype(np.float32)
    for r in (r_zr, r_n):
        r[rng.random(r.shape) >= density] = 0.0
    xw = rng.standard_normal((steps + 1, batch, 3 * hidden)).astype(np.float32)
    h0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    spec = CellSpec(
        cell="gru", hidden=hidden, batch=batch, units=block_units(hidden, 16),
        gates=(0, hidden, 2 * hidden), x_mode="step", x_shape=xw.shape, first=1, steps=steps,
        linear_before_reset=False, zr_offsets=zr_offsets,
    )  # fmt: skip
    z_cols, r_cols = (slice(q, q + hidden) for q in zr_offsets)
    h, hs = h0, [h0]
    for s in range(steps):
        x, hzr = xw[1 + s], h @ r_zr
        z = _sigmoid(x[:, :hidden] + hzr[:, z_cols])
        r = _sigmoid(x[:, hidden : 2 * hidden] + hzr[:, r_cols])
        n = np.tanh(x[:, 2 * hidden :] + (r * h) @ r_n)
        h = n + z * (h - n)
        hs.append(h)
    return spec, (h0, xw), (r_zr, r_n), np.concatenate(hs)


@pytest.mark.parametrize("weights", ["dense", "csr", "mixed"])
@pytest.mark.parametrize(
    "hidden, batch, density", [(1, 1, 1.0), (20, 2, 1.0), (33, 3, 0.3), (64, 1, 0.1), (64, 1, 0.0)]
)
@pytest.mark.parametrize("zr_offsets", [(0, "H"), ("H", 0)])
def test_gru_with_reset_before_the_product(hidden, batch, density, weights, zr_offsets):
    """linear_before_reset = 0: n = tanh(x_n + (r * h) @ R_n^T), two products a step. "mixed":
    R_zr dense, R_n CSR (the choice can make them differ), both run as CSR then."""
    from tvm_sparse.passes.recurrent_match import Weights
    from tvm_sparse.schedules.recurrent_cell_x86 import gru0_csr_call, gru0_dense_call

    offsets = tuple(hidden if q == "H" else q for q in zr_offsets)
    spec, (h0, xw), (r_zr, r_n), want = _gru0_case(
        hidden, batch, 4, density, offsets, np.random.default_rng(hidden + batch)
    )
    if weights == "dense":
        call = gru0_dense_call(r_zr, r_n, spec)
    elif weights == "csr":
        call = gru0_csr_call(pack_cell_rows(r_zr), pack_cell_rows(r_n), spec)
    else:
        zr = Weights(r_zr, None, b"zr")
        call = zr.with_second(Weights(None, pack_cell_rows(r_n), b"n")).kernel(spec)
    func = build_kernel(call, TARGET)["main"]
    out = tvm.runtime.tensor(np.zeros(spec.states_shape, np.float32))
    func(*(tvm.runtime.tensor(a) for a in (h0, xw, *call.consts)), out)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=2e-6)
