"""Which ap_types headers the C simulation builds with: the real Xilinx ones when hls4ml (the
``fpga`` extra) is installed, else the stand-in, with one warning saying so."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tvm_sparse import models
from tvm_sparse.codegen.fpga import compile_fpga, csim, golden_outputs, number_formats

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.fixture(scope="module")
def fixed_project(tmp_path_factory):
    """A small ap_fixed<16,6> MLP project, written but not yet simulated."""
    model = models.pruned_mlp(layers=2, hidden=16, in_features=8, out_features=4, density=0.5)
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    out = tmp_path_factory.mktemp("fixed")
    target = {"kind": "fpga", "precision": "ap_fixed<16,6>"}
    return compile_fpga(
        model, target, output_dir=out, run_csim=False, tb_data=(x, golden_outputs(model, x))
    )


@pytest.mark.skipif(importlib.util.find_spec("hls4ml") is None, reason="needs hls4ml (fpga extra)")
def test_real_ap_types_are_used_when_hls4ml_is_installed(fixed_project, monkeypatch):
    for env in ("AP_TYPES", "TVM_SPARSE_AP_TYPES", "XILINX_HLS"):
        monkeypatch.delenv(env, raising=False)
    result = fixed_project.csim()
    headers = Path(result.headers)
    assert headers.parts[-3:] == ("templates", "vivado", "ap_types")
    assert "hls4ml" in headers.parts
    # the real header set (the stand-in is one ap_fixed.h with no ap_fixed_base.h beside it)
    assert (headers / "ap_fixed_base.h").is_file()
    assert result.to_dict()["headers"] == str(headers)


def test_fallback_to_the_stand_in_warns_once(fixed_project, monkeypatch, caplog):
    monkeypatch.setattr(csim, "vendor_header_dir", lambda: None)
    monkeypatch.setattr(csim, "_warned_compat", False)
    with caplog.at_level(logging.WARNING, logger=csim.__name__):
        first = fixed_project.csim()
        second = fixed_project.csim()
    assert first.headers == second.headers == "compat"
    warnings = [r for r in caplog.records if "stand-in" in r.getMessage()]
    assert len(warnings) == 1
    assert "tvm-sparse[fpga]" in warnings[0].getMessage()
    # asking for the stand-in explicitly is not a fallback
    caplog.clear()
    monkeypatch.setattr(csim, "_warned_compat", False)
    csim.build(fixed_project.output_dir, fixed_project.target.top, vendor_headers=False)
    assert not [r for r in caplog.records if "stand-in" in r.getMessage()]


@pytest.mark.skipif(importlib.util.find_spec("hls4ml") is None, reason="needs hls4ml (fpga extra)")
def test_stand_in_agrees_with_the_real_headers_on_int8(tmp_path):
    """The fallback computes what the real ap_types compute: int8 weights times ap_fixed, the
    per-channel requantization and boosted k-WTA keys (range() of the exact product)."""
    model = models.tiny_sparse_cnn(boosting=True)
    x = np.random.default_rng(4).standard_normal((3, 1, 32, 32)).astype(np.float32)
    target = {"kind": "fpga", "precision": "int8"}
    project = compile_fpga(
        model, target, output_dir=tmp_path, run_csim=False, tb_data=(x, golden_outputs(model, x))
    )
    real = csim.run_csim(tmp_path, "myproject", check=False, vendor_headers=True)
    compat = csim.run_csim(tmp_path, "myproject", check=False, vendor_headers=False)
    assert real.headers != "compat" and compat.headers == "compat"
    assert any(layer.rank_t.startswith("ap_fixed<24") for layer in project.hw.layers)
    np.testing.assert_array_equal(real.output, compat.output)
    assert real.max_abs_error > 0  # int8: not the float answer, so the comparison is not vacuous
    # boost tables hold raw words in an integer array (constant-initialized: a 50K-entry table
    # of ap_fixed initializers took g++ over ten minutes), decoded to what ap_fixed would hold
    params = (tmp_path / "firmware" / "parameters.h").read_text()
    assert params.count("typedef int32_t boost_store_t;") == 3
    kwta = next(layer for layer in project.hw.layers if layer.op == "kwta")
    store_t, raw = number_formats.boost_store_t(kwta), number_formats.boost_table(kwta)
    frac = 16 - int(kwta.boost_t.split(",")[1])
    assert store_t == "int32_t"
    np.testing.assert_array_equal(
        raw * 2.0**-frac, number_formats.quantize(kwta.boost, 16, 16 - frac)
    )
