"""The machine probe: per-kernel ISA from the library's disassembly, CSR bytes, probe kernels.

No timing is asserted: the probes' numbers are only checked to be positive and finite.
"""

from __future__ import annotations

import math
import os
import shutil
import sys

import numpy as np
import pytest
from onnx import helper, numpy_helper

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCHMARKS))

import machine_probe  # noqa: E402


def test_isa_of_registers_and_summary():
    assert machine_probe._isa_of({"x", "y", "z"}) == "avx512"
    assert machine_probe._isa_of({"x", "y"}) == "avx2"
    assert machine_probe._isa_of(set()) == "sse/scalar"
    text = machine_probe.isa_summary({"a": "avx512", "b": "avx2", "c": "avx512"})
    assert text == "avx512 x2, avx2 x1 (b)"


def test_csr_bytes_counts_nonzeros_and_row_pointers():
    w = np.zeros((4, 6), np.float32)
    w[0, 1] = w[2, 3] = w[3, 5] = 1.0
    bias = numpy_helper.from_array(np.ones(4, np.float32), "bias")  # rank 1: not a weight
    graph = helper.make_graph([], "g", [], [], [numpy_helper.from_array(w, "w"), bias])
    assert machine_probe.csr_bytes(helper.make_model(graph)) == 3 * 8 + 5 * 4


def test_probe_kernels_run():
    assert math.isfinite(machine_probe.peak_gflops()) and machine_probe.peak_gflops() > 0
    small = machine_probe.bandwidth_gbs("llvm", 1 << 20)
    assert math.isfinite(small) and small > 0


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump is not installed")
def test_kernel_isas_names_the_models_kernels(tmp_path):
    """Every kernel of a compiled model is listed, with the ISA this host's target gives it."""
    import tvm_sparse
    from tvm_sparse import models
    from tvm_sparse.target import cpu_isa

    path = models.save(models.pruned_mlp(layers=2, hidden=64, density=0.2, batch=1),
                       str(tmp_path / "mlp.onnx"))  # fmt: skip
    module = tvm_sparse.compile(path, "llvm", measure=False)
    isas = machine_probe.kernel_isas(module)
    assert isas, "no kernel found in the disassembly"
    if cpu_isa("llvm").avx512:
        assert "avx512" in isas.values()
