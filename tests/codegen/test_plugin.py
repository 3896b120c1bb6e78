"""The TVM plugin: a fresh interpreter gets relax_pipeline="sparse" from `import tvm` alone, and
the report of what it compiled through ``capture_report``."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_sparse_pipeline_registered_on_import_tvm(tmp_path):
    script = textwrap.dedent(
        """
        import numpy as np, tvm
        from tvm import relax
        from tvm.relax import pipeline
        assert "sparse" in pipeline.PIPELINE_MAP, sorted(pipeline.PIPELINE_MAP)
        from tvm.relax.frontend.onnx import from_onnx
        from tvm_sparse import models
        model = models.pruned_mlp(layers=2, hidden=64, density=0.1)
        mod = from_onnx(model, keep_params_in_input=False)
        target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
        from tvm_sparse.passes.module_report import capture_report
        with capture_report() as captured:
            ex = tvm.compile(mod, target, relax_pipeline="sparse")
        report = captured.report
        assert [row.op for row in report.layers] == ["linear", "linear"], report.table()
        assert all(row.chosen and row.reason for row in report.layers), report.table()
        x = np.random.default_rng(0).standard_normal((1, 64)).astype("float32")
        y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        import onnxruntime as ort
        ref = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
        np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
    assert "Failed to autoload" not in proc.stderr
