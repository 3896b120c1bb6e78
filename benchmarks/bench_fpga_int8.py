"""How much of the answer int8 keeps: the C simulation of the generated int8 project against the
float CPU module, on the GSC networks the FPGA tests use.

For each network: ``--calib`` inputs calibrate the int8 formats (activation ranges), then the
int8 project is generated and C-simulated (g++, real ap_types when hls4ml is installed) on
``--samples`` other inputs; its logits are compared with ``tvm_sparse.compile(model, "llvm")``'s:
top-1 agreement, SQNR (10 log10(sum ref^2 / sum (q - ref)^2)) and max |q - ref|. Every number
comes from the C simulation of the generated code.

Inputs are the GSC zoo's own sample generator (``zoo.gsc._images``: standard normal 1x32x32,
seeded), calibration and evaluation from different seeds.

``--sensitivity`` adds what the float network itself does with a perturbation far smaller than
int8's: gaussian noise at a given SQNR (default 80 dB, about 13 bits) added to the first conv's
output, run through the float numpy executor. It bounds what any quantized datapath can reach:
the k-WTA layers turn a tiny change of a value near their threshold into a different winner.

    python benchmarks/bench_fpga_int8.py --samples 1000 --json int8.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tvm_sparse import models
from tvm_sparse.codegen.fpga import compile_fpga, golden_outputs
from tvm_sparse.codegen.fpga.calibration import forward_with_noise
from tvm_sparse.codegen.fpga.csim import sqnr_db
from tvm_sparse.zoo.gsc import _images

NETWORKS = {
    "gsc_super_sparse": lambda: models.gsc_sparse_cnn(super_sparse=True),
    "gsc_sparse": lambda: models.gsc_sparse_cnn(),
    "gsc_tiny": lambda: models.tiny_sparse_cnn(),
    "gsc_tiny_boosted": lambda: models.tiny_sparse_cnn(boosting=True),
    # control: the super-sparse network's topology with ReLU for k-WTA (no winner to lose)
    "gsc_dense_twin": lambda: models.gsc_dense_twin(),
}
DEFAULT = ("gsc_super_sparse", "gsc_sparse", "gsc_tiny", "gsc_tiny_boosted")
EVAL_SEED, CALIB_SEED = 1000, 2000


def sensitivity(hw, x: np.ndarray, ref: np.ndarray, db: float) -> dict:
    """Logits SQNR / top-1 of the float model with noise of ``db`` SQNR at the first weighted
    layer's output (numpy executor; what no quantized build can beat)."""
    first = next(i for i, layer in enumerate(hw.layers) if layer.weighted)
    q = forward_with_noise(hw, x, db, after=first)
    return {
        "noise_db": db,
        "sqnr_db": sqnr_db(q, ref),
        "top1_agreement": float(np.mean(q.argmax(1) == ref.argmax(1))),
    }


def run(name: str, samples: int, calib: int, out_dir: Path, noise_db: float | None) -> dict:
    model = NETWORKS[name]()
    x = _images(samples, EVAL_SEED)
    c = _images(calib, CALIB_SEED)
    start = time.perf_counter()
    golden = golden_outputs(model, x)
    project = compile_fpga(
        model,
        {"kind": "fpga", "precision": "int8"},
        output_dir=out_dir / name,
        tb_data=(x, golden),
        calibration_data=c,
        run_csim=False,
    )
    result = project.csim(opt="-O2")
    row = {
        "network": name,
        "samples": samples,
        "calibration_samples": calib,
        "inputs": f"zoo.gsc._images (N(0,1)), eval seed {EVAL_SEED}, calibration seed {CALIB_SEED}",
        "top1_agreement": result.top1_agreement,
        "sqnr_db": result.sqnr_db,
        "max_abs_error": result.max_abs_error,
        "max_rel_error": result.max_rel_error,
        "headers": result.headers,
        "csim_seconds": result.run_seconds,
        "seconds": time.perf_counter() - start,
    }
    if noise_db is not None:
        row["float_sensitivity"] = sensitivity(project.hw, x, golden, noise_db)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1000, help="evaluation samples (csim)")
    ap.add_argument("--calib", type=int, default=200, help="calibration samples (disjoint)")
    ap.add_argument("--networks", default=",".join(DEFAULT), help=f"of {', '.join(NETWORKS)}")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--out-dir", help="keep the generated projects here (default: a temp dir)")
    ap.add_argument(
        "--sensitivity",
        type=float,
        nargs="?",
        const=80.0,
        default=None,
        metavar="DB",
        help="also run the float model with DB-SQNR noise after its first layer (default 80)",
    )
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.out_dir or tmp)
        for name in args.networks.split(","):
            row = run(name.strip(), args.samples, args.calib, out_dir, args.sensitivity)
            rows.append(row)
            line = (
                f"{row['network']:<18} {row['samples']} samples: top-1 "
                f"{row['top1_agreement']:.1%}  SQNR {row['sqnr_db']:5.1f} dB  max |err| "
                f"{row['max_abs_error']:.3g} ({row['max_rel_error']:.1%} of max |ref|)  "
                f"[{row['seconds']:.0f} s]"
            )
            if "float_sensitivity" in row:
                s = row["float_sensitivity"]
                line += (
                    f"\n{'':<18} float + {s['noise_db']:g} dB noise after layer 1: top-1 "
                    f"{s['top1_agreement']:.1%}  SQNR {s['sqnr_db']:5.1f} dB"
                )
            print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
