"""The report: analysis results, table and JSON round trip."""

from __future__ import annotations

import json

import pytest

import tvm_sparse
from tvm_sparse import models
from tvm_sparse.report import Report


@pytest.fixture(scope="module")
def gsc_report():
    return tvm_sparse.analyze(models.gsc_sparse_cnn(super_sparse=True))


def test_gsc_densities_and_kwta(gsc_report):
    by_name = {layer.name: layer for layer in gsc_report.layers}
    assert list(by_name) == ["cnn1", "cnn2", "linear", "output_linear"]
    assert by_name["cnn1"].weight_density == pytest.approx(12 / 25)
    assert by_name["cnn2"].weight_density == pytest.approx(0.20)
    assert by_name["linear"].weight_density == pytest.approx(0.05)
    assert by_name["output_linear"].weight_density == pytest.approx(1.0)
    assert by_name["cnn1"].activation["kind"] == "dense"
    assert by_name["cnn2"].activation["kind"] == "kwta"
    k1 = round(0.095 * 64 * 28 * 28)
    assert (by_name["cnn2"].activation["k"], by_name["cnn2"].activation["n"]) == (k1, 64 * 28 * 28)
    # k-WTA then a 2x2 max-pool: a pooled value is non-zero when any of its 4 inputs is
    pooled = 1 - (1 - k1 / (64 * 28 * 28)) ** 4
    assert by_name["cnn2"].activation["density"] == pytest.approx(pooled)
    assert by_name["linear"].activation["density"] == pytest.approx(1 - 0.875**4)
    assert by_name["output_linear"].activation["density"] == pytest.approx(100 / 1500)
    assert by_name["linear"].macs_dense == 1600 * 1500
    assert by_name["linear"].macs_sparse_sparse == round(1600 * 1500 * 0.05 * (1 - 0.875**4))


def test_table_and_json_round_trip(gsc_report):
    table = gsc_report.table()
    for name in ("cnn1", "cnn2", "linear", "output_linear", "kwta 12.5% pool 41%"):
        assert name in table
    data = json.loads(gsc_report.to_json())
    assert data["layers"][2]["macs_sparse_sparse"] == gsc_report.layers[2].macs_sparse_sparse
    again = Report.from_json(gsc_report.to_json())
    assert again.to_dict() == gsc_report.to_dict()


def test_mlp_patterns_are_reported():
    report = tvm_sparse.analyze(models.pruned_mlp(layers=2, hidden=64, pattern="nm", nm=(2, 4)))
    first = report.layers[0]
    assert first.weight_density == pytest.approx(0.5)
    assert first.patterns["best_nm"] == [2, 4]


def test_compile_time_by_phase_lists_every_phase_and_its_candidates():
    from tvm_sparse.phases import PhaseTimes

    times = PhaseTimes()
    for name, seconds in (("Import", 0.5), ("Sparsify: candidate builds", 2.0),
                          ("Sparsify", 3.0), ("Build (TIR lowering + LLVM)", 1.0)):  # fmt: skip
        times.add(name, seconds)
    lines = times.table().splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == [
        "Import",
        "Sparsify",
        "candidate",
        "Build",
        "total",
    ]
    assert lines[-1].split()[-2] == "4.50"  # sub-phases are inside their phase, not added twice
