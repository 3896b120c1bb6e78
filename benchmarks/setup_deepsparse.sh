#!/usr/bin/env bash
# Create .venv-deepsparse/ in the repo root with DeepSparse 1.8.0, the CPU peer for benchmarks.
#
# Why a separate venv: deepsparse 1.8.0 pins numpy<2 and onnx 1.14, which clash with the
# project's own venv (TVM 0.27, onnx>=1.16). Only a cp311 wheel exists (1.9.0 has no wheel),
# so this needs a python3.11. tvm_sparse/peers.py runs DeepSparse through this venv's python.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO_ROOT}/.venv-deepsparse"
PYTHON="${PYTHON:-python3.11}"
export NM_DISABLE_ANALYTICS=1

if ! command -v "${PYTHON}" >/dev/null; then
    echo "setup_deepsparse: ${PYTHON} not found (deepsparse 1.8.0 ships only a cp311 wheel)" >&2
    exit 1
fi
if [ "$("${PYTHON}" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" != "True" ]; then
    echo "setup_deepsparse: ${PYTHON} is not Python 3.11" >&2
    exit 1
fi

"${PYTHON}" -m venv "${VENV}"
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
"${VENV}/bin/python" -m pip install --quiet "deepsparse==1.8.0"

# Smoke test: compile and run a one-layer model, so a broken install fails here, not in a benchmark.
"${VENV}/bin/python" - <<'PY'
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import deepsparse

w = numpy_helper.from_array(np.ones((8, 16), np.float32), "w")
graph = helper.make_graph(
    [helper.make_node("Gemm", ["input", "w"], ["output"], transB=1)],
    "smoke",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16])],
    [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8])],
    [w],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "smoke.onnx")
    onnx.save(model, path)
    engine = deepsparse.compile_model(path, batch_size=1, num_cores=1)
    out = engine.run([np.ones((1, 16), np.float32)])[0]
assert np.allclose(out, 16.0), out
print("deepsparse", deepsparse.__version__, "works")
PY
