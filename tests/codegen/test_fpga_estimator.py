"""The analytical estimator: sanity of cycles, resources and the variant comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tvm_sparse import models
from tvm_sparse.codegen.fpga import NUMENTA_U250, VariantComparison
from tvm_sparse.codegen.fpga.estimator import copies_per_slr, estimate
from tvm_sparse.codegen.fpga.folding import auto_fold, ceiling
from tvm_sparse.codegen.fpga.from_relax import build_hw_model
from tvm_sparse.codegen.fpga.hw_model import VARIANTS, HwLayer, HwModel
from tvm_sparse.codegen.fpga.resources import mac_cost, memory, shares_operand, stage_resources
from tvm_sparse.codegen.fpga.target import PARTS, parse_fpga_target
from tvm_sparse.codegen.fpga.weight_stores import csr_store
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
    # skipping zero weights pays; sparse-sparse against sparse-dense depends on the engines'
    # fixed costs (the linear sparse-sparse finish is a complete unroll), so it is not asserted
    assert min(sparse_sparse.copies, sparse_dense.copies) >= 1
    # float dense: 2.4M weights x 32 bits of ROM exceed the U250's BRAM (URAM holds no ROM)
    assert dense.copies == 0 and dense.samples_per_s == 0
    for est in (dense, sparse_dense, sparse_sparse):
        assert est.copies == sum(est.slr_copies)
        for resource, used in est.per_copy.items():
            assert used * est.copies <= est.available[resource]
        stages = [x.cycles for x in est.layers]
        assert est.ii_cycles >= max(stages)
        assert est.latency_cycles >= sum(stages)
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
    assert data["copies"] == est.copies and data["assumptions"].startswith("Timing")
    assert {"dsp", "lut", "ff", "bram36", "uram"} == set(data["per_copy"])
    assert len(data["layers"]) == len(hw.layers)
    assert "samples/s per device" in est.table()
    folded = auto_fold(hw)
    assert folded.samples_per_s >= est.samples_per_s


def test_auto_fold_stays_under_its_ceiling(gsc):
    mod, names = gsc
    tgt = parse_fpga_target({"kind": "fpga", "precision": "int8"})
    hw = build_hw_model(mod, tgt, "sparse-sparse", names)
    floor, most_copies, bound = ceiling(hw)
    est = auto_fold(hw)
    # no folding beats the slowest stage at its most lanes, nor fits more copies than the
    # design with one lane everywhere
    assert est.ii_cycles >= floor and est.copies <= most_copies
    assert 0 < est.samples_per_s <= bound


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


def _used(mem: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in mem.items() if v}


def test_memory_model():
    # placement weighs a unit by its share of a U250: LUT 1/1,728,000, BRAM36 1/2,688,
    # URAM 1/1,280 (one BRAM36 ~ 643 LUT, one URAM ~ 1,350 LUT)
    assert _used(memory(0, 32, 1)) == {}
    assert _used(memory(2, 32, 2)) == {"ff": 64}  # 2 words x 32 bits of registers
    # 1024 x 32: 1024x36 BRAM36 = 1; URAM: 2 words a row, 512 rows = 1 URAM (dearer)
    assert _used(memory(1024, 32, 1)) == {"bram36": 1}
    # 512 x 8 written and read in one cycle: simple dual-port LUTRAM, 7 bits per 8 LUTs
    # (RAM64M8): 512/64 = 8 x ceil(8/7) = 2 x 8 = 128 LUT, cheaper than a BRAM18 (~ 321 LUT)
    assert _used(memory(512, 8, 2)) == {"lut": 128}
    # 4096 x 72: one URAM; as a ROM (URAM has no initial contents): 4096/512 = 8 BRAM36
    assert _used(memory(4096, 72, 1)) == {"uram": 1}
    assert _used(memory(4096, 72, 1, rom=True)) == {"bram36": 8}
    # 48 lanes read consecutive int8 values: rows of 24 words (192 bits), 50176/24 = 2091 rows;
    # BRAM36 512x72: ceil(2091/512) * ceil(192/72) = 5 * 3 = 15; URAM: ceil(192/72) = 3 -> URAM
    assert _used(memory(50176, 8, 48)) == {"uram": 3}
    # data-dependent addresses: 8 ports = 4 banks of 150 x 16; dual-port LUTRAM per bank
    # ceil(150/64) = 3 x ceil(16/7) = 3 x 8 = 72 LUT; 4 banks = 288 LUT
    assert _used(memory(600, 16, 8, scattered=True)) == {"lut": 288}
    # a ROM read on two ports is two LUT ROMs: 64 x 10 bits x 2 = 20 LUT
    assert _used(memory(64, 10, 2, rom=True)) == {"lut": 20}
    # a BRAM18 is half a BRAM36: 2048 x 9 bits
    assert _used(memory(2048, 9, 1, rom=True)) == {"bram36": 0.5}


def _int8_model(layer: HwLayer) -> HwModel:
    target = parse_fpga_target({"kind": "fpga", "precision": "int8"})
    return HwModel("t", "sparse-dense", target, [layer], layer.in_shape, layer.out_shape, 1)


def test_sparse_dense_linear_resources_by_hand():
    # 8 -> 4 linear, int8, rows with 2, 1, 0, 3 non-zeros (6 in all), 2 lanes: simd 2, pe 1
    w = np.zeros((4, 8), np.float32)
    w[0, [1, 5]] = 0.5
    w[1, 2] = -1.0
    w[3, [0, 3, 7]] = 0.25
    layer = HwLayer(0, "fc", "fc", "linear", "sparse_dense", (8,), (4,))
    layer.weights = csr_store(w, {}, (8,))
    layer.bias = np.zeros(4, np.float32)
    layer.lanes = 2
    layer.accum_t = "ap_fixed<24,12,AP_RND,AP_SAT>"
    res = stage_resources(_int8_model(layer), layer)
    # DSP: each lane multiplies its own weight by its own gathered input: no operand in common,
    # so no int8 packing: 2 lanes x 1 DSP
    assert res["dsp"] == 2
    lut = (
        800  # stage control
        + 2 * 20  # 2 MAC lanes x 20 LUT
        + 16  # val: 3 rows of 2 x 8 bits, LUTRAM: 1 LUT per bit x 16
        + 6  # off: 3 rows of 2 x 3-bit offsets (max 7)
        + 3 * 2  # ptr: 5 x 3 bits (max 6), ptr[r] and ptr[r + 1]: 2 ports
        + 24 * 2  # bias: 4 x 24 bits, 2 ports
        + 2 * 8  # input buffer 8 x 8 bits, 2 lanes gather: one dual-port bank, 8 LUTs per
        # 7 bits (2 x 8); one bank: no mux network
        + 8  # output buffer 4 x 8 bits, one port
        + 8
        + 20  # output FIFO: 8 bits + control
    )
    assert res["lut"] == lut == 968
    assert res["ff"] == 1000 + 2 * 30 + 20  # control, lanes, FIFO control
    assert res["bram36"] == 0 and res["uram"] == 0
    # the fold search's prices reach every memory, the weight ROMs included: with LUT dear,
    # val, off, ptr, bias, the input and output buffers go to BRAM (the FIFO stays LUT): the
    # three weight arrays and the bias are ROMs (a BRAM18 each, 0.5), the two buffers RAMs
    model = _int8_model(layer)
    model.memory_prices = {"lut": 1.0, "ff": 1e-9, "bram36": 1e-6, "uram": 1e-3}
    dear = stage_resources(model, layer)
    assert dear["lut"] == 800 + 2 * 20 + 8 + 20
    assert dear["bram36"] == 6 * 0.5


def test_kwta_resources_by_hand():
    # global k-WTA over 1024 int8 values, 4 lanes, no boost
    layer = HwLayer(0, "kw", "kw", "kwta", "kwta", (1024,), (1024,), attrs={"k": 100})
    layer.lanes = 4
    res = stage_resources(_int8_model(layer), layer)
    lut = (
        800  # stage control
        + 4 * (2 * 8 + 40)  # compare lanes
        + 8 * 3 * 8  # values: rows of 2 x 8 = 16 bits, 512 deep: 8 x ceil(16/7) x 8 = 192
        + 8 * 10 * 8  # uint32 keys: rows of 64 bits, 512 deep: 8 x ceil(64/7) x 8 = 640
        # (one BRAM36 512x72 would be 1/2,688 of the device against 640/1,728,000)
        + 4 * (4 * 5 * 8)  # histograms: 4 lanes x 256 x 32 bits: 4 x ceil(32/7) x 8 each
        + 4 * 32  # merge of the lanes' counts per bin
        + 4 * (9 + 32)  # each lane's run: the bin compare and the count's increment
        + 8 * 3 * 8  # selected values, as the values
        + 8
        + 20  # output FIFO
    )
    assert res["lut"] == lut == 2844 + 164
    assert res["bram36"] == 0
    # control, compare lanes, the runs' bin (9 bits) and count (32) registers, the FIFO
    assert res["ff"] == 1000 + 4 * 2 * 8 + 4 * (9 + 32) + 20
    assert res["dsp"] == 0 and res["uram"] == 0


def test_int8_dsp_packing_needs_a_shared_operand():
    target = parse_fpga_target({"kind": "fpga", "precision": "int8"})
    model = HwModel("t", "dense", target, [], (8,), (4,), 1)
    assert mac_cost(model, shared_operand=True)[0] == 0.5
    assert mac_cost(model, shared_operand=False)[0] == 1.0
    # dense linear: pe rows share each input once pe >= 2 (8 lanes over K = 4: simd 4, pe 2)
    layer = HwLayer(0, "fc", "fc", "linear", "dense", (4,), (4,))
    layer.lanes = 8
    assert shares_operand(layer)
    layer.lanes = 4  # simd 4, pe 1: four distinct weights x four distinct inputs
    assert not shares_operand(layer)


def test_copies_per_slr_by_hand():
    per_copy = {"dsp": 100.0, "lut": 100_000.0, "ff": 100_000.0, "bram36": 50.0, "uram": 0.0}
    slrs = PARTS["xcu250-figd2104-2L-e"].per_slr()
    counts, limit, span = copies_per_slr(per_copy, slrs)
    # U250: 1,728,000 LUT / 4 SLRs = 432,000; SLR0/2/3 keep 90% (DDR controller), SLR1 45%
    # (static shell); 80% usable: 311,040 LUT -> 3 copies, SLR1 155,520 -> 1 copy.
    # BRAM: 672 x 0.9 x 0.8 = 483.8 -> 9; DSP: 3072 x 0.9 x 0.8 = 2211.8 -> 22
    assert counts == [3, 1, 3, 3] and limit == "lut" and span == 1
    # a copy bigger than any SLR spans two pooled ones: 700 BRAM36 > 483.8
    counts, limit, span = copies_per_slr(per_copy | {"bram36": 700.0}, slrs)
    # SLR0+1: 672 x (0.9 + 0.45) x 0.8 = 725.8 -> 1; SLR2+3: 672 x 1.8 x 0.8 = 967.7 -> 1
    assert counts == [1, 1] and limit == "bram36" and span == 2


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
