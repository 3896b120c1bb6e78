"""The analytical estimator: sanity of cycles, resources and the variant comparison."""

from __future__ import annotations

import json

import pytest

from tvm_sparse import models
from tvm_sparse.codegen.fpga import NUMENTA_U250, VariantComparison
from tvm_sparse.codegen.fpga.estimator import estimate
from tvm_sparse.codegen.fpga.folding import auto_fold
from tvm_sparse.codegen.fpga.from_relax import build_hw_model
from tvm_sparse.codegen.fpga.hw_model import VARIANTS
from tvm_sparse.codegen.fpga.resources import memory
from tvm_sparse.codegen.fpga.target import PARTS, parse_fpga_target
from tvm_sparse.errors import TargetError
from tvm_sparse.frontend import import_model
from tvm_sparse.passes.canonicalize import canonicalize


@pytest.fixture(scope="module")
def gsc():
    imported = import_model(models.gsc_sparse_cnn(super_sparse=True))
    return canonicalize(imported.mod), imported.weighted_nodes


def _estimates(mod, names, target="fpga"):
    tgt = parse_fpga_target(target)
    return [auto_fold(build_hw_model(mod, tgt, v, names, name="gsc")) for v in VARIANTS]


def test_gsc_variants_ordering_and_fit(gsc):
    mod, names = gsc
    dense, sparse_dense, sparse_sparse = _estimates(mod, names)
    assert sparse_sparse.samples_per_s >= sparse_dense.samples_per_s >= dense.samples_per_s
    for est in (dense, sparse_dense, sparse_sparse):
        assert est.copies >= 1
        for resource, used in est.per_copy.items():
            assert used * est.copies <= est.available[resource]
        assert est.ii_cycles == max(x.cycles for x in est.layers) or est.ii_cycles > 0
        assert est.latency_cycles >= est.ii_cycles
    # fewer multiply-adds per sample as sparsity is exploited
    macs = [sum(x.macs for x in e.layers) for e in (dense, sparse_dense, sparse_sparse)]
    assert macs[0] > macs[1] > macs[2]
    assert macs[0] == dense.dense_macs
    table = VariantComparison([dense, sparse_dense, sparse_sparse], NUMENTA_U250).table()
    assert "1,300,000" in table and "sparse-sparse" in table


def test_estimate_json_and_table(gsc):
    mod, names = gsc
    hw = build_hw_model(mod, parse_fpga_target("fpga"), "sparse-sparse", names, name="gsc")
    est = estimate(hw)  # unfolded: one lane everywhere
    data = json.loads(est.to_json())
    assert data["copies"] == est.copies and "Assumptions" not in data["assumptions"][:1]
    assert {"dsp", "lut", "ff", "bram36", "uram"} == set(data["per_copy"])
    assert len(data["layers"]) == len(hw.layers)
    assert "samples/s per device" in est.table()
    folded = auto_fold(hw)
    assert folded.samples_per_s >= est.samples_per_s


def test_user_parallelism_is_kept(gsc):
    mod, names = gsc
    target = parse_fpga_target({"kind": "fpga", "parallelism": {"cnn2": 13}})
    hw = build_hw_model(mod, target, "sparse-sparse", names)
    hw.layer("cnn2").lanes, hw.layer("cnn2").lanes_fixed = 13, True
    auto_fold(hw)
    assert hw.layer("cnn2").lanes == 13


def test_int8_is_cheaper_than_float(gsc):
    mod, names = gsc
    tgt = parse_fpga_target({"kind": "fpga", "precision": "int8"})
    hw = build_hw_model(mod, tgt, "sparse-sparse", names)
    hw_f = build_hw_model(mod, parse_fpga_target("fpga"), "sparse-sparse", names)
    for model in (hw, hw_f):
        for layer in model.layers:
            layer.lanes = 8
    assert estimate(hw).per_copy["dsp"] < estimate(hw_f).per_copy["dsp"]


def test_memory_model():
    assert memory(0, 32, 1)["bram36"] == 0
    assert memory(2, 32, 2)["ff"] == 64  # registers
    assert memory(64, 32, 1)["lut"] > 0  # LUTRAM
    assert memory(1024, 32, 1)["bram36"] == 1
    big = memory(2_400_000, 32, 1)
    assert big["uram"] > 0 and big["bram36"] == 0


def test_target_parsing():
    t = parse_fpga_target("fpga")
    assert t.part.name == "xcu250-figd2104-2L-e" and t.clock_mhz == 300
    assert parse_fpga_target("fpga:u280").part.board == "u280"
    d = parse_fpga_target('{"kind": "fpga", "part": "xcu55c-fsvh2892-2L-e", "clock_mhz": 250}')
    assert d.part.board == "u55c" and d.clock_mhz == 250
    assert str(parse_fpga_target({"kind": "fpga", "precision": "ap_fixed<16,6>"}).precision) == (
        "ap_fixed<16,6>"
    )
    assert PARTS["xcu250-figd2104-2L-e"].dsp == 12_288
    for bad in (
        {"kind": "fpga", "part": "nope"},
        {"kind": "fpga", "speed": 1},
        "fpga:x",
        {"kind": "fpga", "precision": "bf16"},
        {"kind": "fpga", "parallelism": 0},
    ):
        with pytest.raises(TargetError):
            parse_fpga_target(bad)
