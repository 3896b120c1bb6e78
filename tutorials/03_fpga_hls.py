"""Tutorial 3: a sparse CNN -> Vitis HLS project -> C simulation -> FPGA estimates.

Run it with ``.venv/bin/python tutorials/03_fpga_hls.py [--workdir DIR]``. No Xilinx tool is
needed: the project is C-simulated with g++, and the throughput numbers are analytical estimates
(see ``tvm_sparse/codegen/fpga/estimator.py`` for every assumption).

The network is Numenta's GSC super-sparse CNN: sparse conv / linear weights and k-winners-take-all
activations, so its layers can be sparse-sparse (only non-zero weights times non-zero inputs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort

from tvm_sparse import models
from tvm_sparse.codegen.fpga import NUMENTA_U250, compile_fpga


def main(workdir: str) -> None:
    # Step 1. The model, as an ONNX file (any conv / linear / k-WTA / max-pool / ReLU network
    #         with static shapes works, chains and ResNet basic blocks: models.resnet_block).
    onnx_path = models.save(models.gsc_sparse_cnn(super_sparse=True), f"{workdir}/gsc.onnx")
    print(f"[1] model: {onnx_path}")

    # Step 2. Compile for the FPGA target: a U250 at 300 MHz, float, parallelism folded by the
    #         estimator. The project lands in workdir/gsc_hls, laid out like an hls4ml project.
    #         (CLI: tvm-sparse compile gsc.onnx --target fpga -o gsc_hls)
    project_dir = os.path.join(workdir, "gsc_hls")
    project = compile_fpga(onnx_path, "fpga", output_dir=project_dir, run_csim=False)
    print(f"[2] HLS project in {project_dir}:")
    for root, _, files in sorted(os.walk(project_dir)):
        rel = os.path.relpath(root, project_dir)
        if "hls_compat" not in rel:
            print(f"      {rel}/: {', '.join(sorted(files))}")
    for layer in project.hw.layers:
        if layer.weights is not None:
            w = layer.weights
            print(
                f"      {layer.name:<14} {layer.engine:<14} {w.value_words:>7} weight words for "
                f"{w.nnz} non-zeros (dense: {layer.out_shape[0] * layer.n_kin})"
            )

    # Step 3. C simulation: g++ builds firmware + testbench (a compatibility header stands in for
    #         hls_stream.h / ap_fixed.h) and compares with the CPU module's outputs.
    result = project.csim()
    print(f"[3] {result.summary()}")

    # Step 4. The same numbers from onnxruntime, the reference everyone trusts.
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ort_out = np.concatenate([session.run(None, {"input": x[None]})[0] for x in project.tb_inputs])
    np.testing.assert_allclose(result.output, ort_out, rtol=1e-5, atol=1e-5 * np.abs(ort_out).max())
    print(
        f"[4] csim output matches onnxruntime: max |diff| = "
        f"{np.abs(result.output - ort_out).max():.2e} over {ort_out.size} values"
    )

    # Step 5. Estimates: cycles, II, resources per layer; copies per device; samples/s.
    print("[5] estimate of the generated (sparse-sparse) design:")
    print(project.estimate().table())

    # Step 6. Dense vs sparse-dense vs sparse-sparse, next to Numenta's published U250 numbers,
    #         in float (what was generated) and in int8 (closer to what Numenta deployed).
    print("[6] variants, float:")
    print(project.estimates_all_variants(NUMENTA_U250).table())
    int8 = compile_fpga(onnx_path, {"kind": "fpga", "precision": "int8"}, run_csim=False)
    print("    variants, int8:")
    print(int8.estimates_all_variants(NUMENTA_U250).table())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", default=None, help="where to write files (default: a temp dir)"
    )
    args = parser.parse_args()
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        main(args.workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
    sys.exit(0)
