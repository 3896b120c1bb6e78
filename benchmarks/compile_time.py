"""Compile + first run of dense zoo CNNs: tvm-sparse against plain TVM (issue #24's bar: <= 2x).

Each model is exported from the zoo at 0% sparsity, compiled by plain TVM (Relax ONNX frontend,
``tvm.compile`` with its default pipeline, generic ``llvm``) and by ``tvm_sparse.compile``, each
timed from the ONNX file to the first output, and the outputs compared. Run each model in a fresh
process with a fresh timing cache (``TVM_SPARSE_CACHE_DIR``) for a first-compile number.

    TVM_SPARSE_CACHE_DIR=$(mktemp -d) .venv/bin/python benchmarks/compile_time.py googlenet
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="zoo names (e.g. squeezenet1_1 googlenet)")
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    args = parser.parse_args()

    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    import tvm_sparse
    import tvm_sparse.compiler  # noqa: F401 - imported before the clock, as TVM's frontend is
    from tvm_sparse import zoo

    for name in args.models:
        path = os.path.join(args.workdir, f"{name}_{args.image}.onnx")
        zoo.export(name, path, sparsity=0.0, image=args.image)
        x = next(iter(zoo.inputs(name, image=args.image).values()))
        start = time.perf_counter()
        executable = tvm.compile(from_onnx(onnx.load(path)), target="llvm")
        vm = relax.VirtualMachine(executable, tvm.cpu())
        plain_out = vm["main"](tvm.runtime.tensor(x)).numpy()
        plain = time.perf_counter() - start
        start = time.perf_counter()
        module = tvm_sparse.compile(path, "llvm")
        ours_out = module.run(x)
        ours = time.perf_counter() - start
        print(module.compile_seconds.table())
        diff, scale = np.abs(ours_out - plain_out).max(), np.abs(plain_out).max()
        print(f"{name}@{args.image}: plain TVM compile+first run {plain:.1f} s, tvm-sparse "
              f"{ours:.1f} s, ratio {ours / plain:.2f}x, max abs diff {diff:.2e} "
              f"(|y| max {scale:.2e})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
