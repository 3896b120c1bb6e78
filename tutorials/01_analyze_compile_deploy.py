"""Tutorial 1: analyze -> compile -> export -> load -> run a pruned network with tvm-sparse.

Run it with ``.venv/bin/python tutorials/01_analyze_compile_deploy.py [--workdir DIR]``.

We use Numenta's Google-Speech-Commands sparse CNN (sparse conv and linear weights, BatchNorm, and
k-winners-take-all activations), generated as an ONNX file the way PyTorch would export it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

import tvm_sparse
from tvm_sparse import models


def main(workdir: str) -> None:
    # Step 1. A pruned model as an ONNX file. Bring your own: any ONNX file with static shapes.
    onnx_path = models.save(models.gsc_sparse_cnn(super_sparse=True), f"{workdir}/gsc.onnx")
    print(f"[1] model: {onnx_path}")

    # Step 2. Analyze: how sparse is every layer, and what makes its input sparse?
    #         (CLI: tvm-sparse analyze gsc.onnx)
    report = tvm_sparse.analyze(onnx_path)
    print("[2] analysis:")
    print(report.table())

    # Step 3. Compile for this CPU. "llvm" means the host CPU with its real features and cores.
    #         Each layer gets dense or a sparse kernel, whichever is faster; the report says why.
    #         (CLI: tvm-sparse compile gsc.onnx --target llvm -o gsc.so)
    module = tvm_sparse.compile(onnx_path, target="llvm")
    print("[3] compiled; per-layer choices:")
    for layer in module.report.layers:
        print(f"    {layer.name:14s} -> {layer.chosen:12s} ({layer.reason})")

    # Step 4. Export: a shared library plus a JSON manifest (inputs, report) beside it.
    lib_path = f"{workdir}/gsc.so"
    manifest = module.export(lib_path)
    print(f"[4] exported {lib_path} and {manifest}")

    # Step 5. Load it back, here in a fresh Python process, as a deployment would, and run it.
    #         (CLI: tvm-sparse run gsc.so --inputs in.npz -o out.npz --print-time)
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    np.save(f"{workdir}/x.npy", x)
    loader = (
        "import numpy as np, tvm_sparse;"
        f"m = tvm_sparse.load({lib_path!r});"
        f"np.save({workdir + '/y.npy'!r}, m.run(np.load({workdir + '/x.npy'!r})))"
    )
    subprocess.run([sys.executable, "-c", loader], check=True)
    y = np.load(f"{workdir}/y.npy")

    # Step 6. Check against onnxruntime on the same ONNX file, and compare speed.
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x})[0]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-3 * scale)
    diff = float(np.abs(y - expected).max())
    print(f"[5] loaded module output matches onnxruntime (max abs diff {diff:.2e})")
    loaded = tvm_sparse.load(lib_path)
    stats = loaded.benchmark(x)
    print(f"[6] tvm-sparse: {stats['median_s'] * 1e3:.3f} ms per sample (median)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="where to write the files (default: a temp dir)")
    args = parser.parse_args()
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        main(args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="tvm-sparse-tutorial-") as tmp:
            main(tmp)
