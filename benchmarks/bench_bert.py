"""Pruned BERT encoder benchmark: tvm-sparse vs TVM dense vs onnxruntime vs DeepSparse.

    python benchmarks/bench_bert.py [--threads 1] [--sparsities 0.9,0.0] [--seq 128]
                                    [--layers 6 --hidden 384 --heads 12 --intermediate 1536]
                                    [--rounds 24] [--round-time 0.25]
                                    [--measure auto|all|none] [--json out.json]

The model is the MiniLM-L6 shape (6 layers, hidden 384, 12 heads, FFN 1536) with random weights,
every encoder linear L1-pruned to the given sparsity in PyTorch and exported to ONNX
(``tvm_sparse.models_bert``; needs torch + transformers). Every runtime runs the same ONNX file,
is checked against onnxruntime (rtol 1e-3) and timed by the same ``median_time`` loop
(DeepSparse served from its own venv, same loop), the runtimes taking turns in rounds
(``harness.compare_runtimes``). Read the ratios: the machine is shared and noisy. The floor at
90%: ~136M non-zero MACs in the linears + ~75M dense MACs in the attention matmuls.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sparsities", default="0.9,0.0")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--measure", choices=("auto", "all", "none"), default="auto")
    p.add_argument("--rounds", type=int, default=24, help="rounds in which the runtimes take turns")
    p.add_argument("--round-time", type=float, default=0.25, help="seconds per runtime per round")
    p.add_argument("--no-deepsparse", action="store_true")
    p.add_argument("--workdir", help="keep the ONNX files here (default: a temporary dir)")
    p.add_argument("--json", help="write the rows here too")
    return p.parse_args()


ARGS = _parse()
os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)  # before tvm is imported


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import RUNTIME_COLUMNS, compare_runtimes, report  # noqa: E402

from tvm_sparse.models_bert import bert_inputs, pruned_bert_onnx  # noqa: E402


def _model(sparsity: float, workdir: str) -> str:
    name = (
        f"bert_l{ARGS.layers}_h{ARGS.hidden}_a{ARGS.heads}_f{ARGS.intermediate}"
        f"_s{ARGS.seq}_b{ARGS.batch}_p{int(round(sparsity * 100))}.onnx"
    )
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        pruned_bert_onnx(
            path,
            layers=ARGS.layers,
            hidden=ARGS.hidden,
            heads=ARGS.heads,
            intermediate=ARGS.intermediate,
            seq=ARGS.seq,
            batch=ARGS.batch,
            sparsity=sparsity,
        )
    return path


def bench_one(sparsity: float, workdir: str) -> dict:
    path = _model(sparsity, workdir)
    feeds = bert_inputs(ARGS.batch, ARGS.seq, seed=1)
    inputs = [feeds["input_ids"], feeds["attention_mask"]]
    row = {"sparsity": sparsity, "seq": ARGS.seq, "batch": ARGS.batch}
    row.update(
        compare_runtimes(
            path,
            inputs,
            ARGS.threads,
            ARGS.round_time,
            ARGS.measure,
            not ARGS.no_deepsparse,
            ARGS.rounds,
        )
    )
    chosen = [layer.chosen for layer in row.pop("module").report.layers]
    row["chosen"] = ",".join(sorted({f"{c}x{chosen.count(c)}" for c in chosen}))
    return row


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvm-sparse-bert-") as tmp:
        workdir = ARGS.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        for sparsity in (float(s) for s in ARGS.sparsities.split(",")):
            print(f"... sparsity {sparsity:.0%}", file=sys.stderr, flush=True)
            rows.append(bench_one(sparsity, workdir))
    columns = ["sparsity", "seq", *RUNTIME_COLUMNS, "dense_x_ort", "compile_s", "chosen"]
    report(rows, columns, ARGS.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
