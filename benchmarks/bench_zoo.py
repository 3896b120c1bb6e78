"""Model-zoo benchmark: every zoo member, tvm-sparse vs TVM dense vs onnxruntime vs DeepSparse.

    python benchmarks/bench_zoo.py [--threads 1] [--models resnet50 bert_base ...]
                                   [--sparsities 0.9 0.0 | all] [--batch 1 16]
                                   [--image 224] [--seq 128] [--padded 0]
                                   [--rounds 24] [--round-time 0.25] [--measure auto|all|none]
                                   [--no-deepsparse] [--workdir DIR] [--json out.json]

Every member of ``tvm_sparse.zoo.ZOO`` at run time (the CNNs, the GSC k-WTA forms, the
transformers; not the held-out classic CNNs, which conformance.py runs), or those ``--models``
names, is exported from PyTorch at each sparsity and batch
and run by every runtime on the same ONNX file (``harness.compare_runtimes``): each output is
checked against onnxruntime (rtol 1e-3, atol scaled to the output) before it is timed, a wrong
one reads ``MISMATCH``; the runtimes take turns in ``--rounds`` rounds of ``--round-time``
seconds, so each ratio compares two runtimes in the same seconds of a shared machine. A member
that fails to export or compile gets ``ERROR`` and the run goes on. ``--image`` / ``--seq`` /
``--padded`` go to the members that take them (CNNs / transformers). The CPU (vendor, model,
ISA) heads the table: DeepSparse is far stronger on AVX-512 than on AVX2. TVM sizes its thread
pool at import, so ``make bench`` runs this once per thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", help="zoo member names (default: every member)")
    p.add_argument("--sparsities", nargs="+", default=["0.9", "0.0"], help="or 'all'")
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--image", type=int, help="CNN image size (default: each member's, 224)")
    p.add_argument("--seq", type=int, help="transformer sequence length (default: 128)")
    p.add_argument("--padded", type=int, help="masked tail positions in transformer inputs")
    p.add_argument("--measure", choices=("auto", "all", "none"), default="auto")
    p.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch's exporter of the files (dynamo: torch.onnx.export's default)",
    )
    p.add_argument("--rounds", type=int, default=24, help="rounds in which the runtimes take turns")
    p.add_argument("--round-time", type=float, default=0.25, help="seconds per runtime per round")
    p.add_argument("--no-deepsparse", action="store_true")
    p.add_argument("--workdir", help="keep the ONNX files here (default: a temporary dir)")
    p.add_argument("--json", help="write the machine and the rows here too")
    return p.parse_args()


ARGS = _parse()
os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)  # before tvm is imported

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import RUNTIME_COLUMNS, compare_runtimes  # noqa: E402
from peers import print_table  # noqa: E402

from tvm_sparse import zoo  # noqa: E402
from tvm_sparse.machine import cpuinfo  # noqa: E402
from tvm_sparse.target import host_cpu  # noqa: E402
from tvm_sparse.zoo import prune  # noqa: E402

COLUMNS = [
    "model",
    "sparsity",
    "batch",
    "shape",
    *RUNTIME_COLUMNS,
    "dense_x_ort",
    "compile_s",
    "chosen",
]
# what --image / --seq / --padded set, in the members whose options name them
OVERRIDES = ("image", "seq", "padded")


def machine() -> dict:
    """The CPU the numbers were measured on: vendor, model, ISA, cores, LLVM's name for it."""
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    isa = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    if not isa:
        isa = [f for f in ("avx2", "fma") if f in flags]
    return {
        "vendor": info.get("vendor_id", "?"),
        "model": info.get("model name", "?"),
        "isa": "+".join(isa) or "no AVX2",
        "cores": os.cpu_count(),
        "llvm_mcpu": host_cpu(),
        "threads": ARGS.threads,
    }


def _options(member: zoo.ZooModel) -> dict:
    chosen = {name: getattr(ARGS, name) for name in OVERRIDES}
    return {k: v for k, v in chosen.items() if v is not None and k in member.options}


def _shape(member: zoo.ZooModel, options: dict) -> str:
    """The size that sets the cost: image side for CNNs, sequence length for transformers."""
    merged = {**member.options, **options}
    if "image" in merged:
        return f"{merged['image']}px"
    if "seq" in merged:
        padded = merged.get("padded") or 0
        return f"seq{merged['seq']}" + (f"-{padded}pad" if padded else "")
    return "-"


def _chosen(module) -> str:
    """Kernel counts over the layers, e.g. ``dense x3,sparse_conv x17``."""
    kernels = [layer.chosen for layer in module.report.layers]
    return ",".join(f"{k} x{kernels.count(k)}" for k in sorted(set(kernels)))


def bench_one(member: zoo.ZooModel, sparsity: float, batch: int, workdir: str) -> dict:
    options = _options(member)
    row = {
        "model": member.name,
        "sparsity": sparsity,
        "batch": batch,
        "shape": _shape(member, options),
    }
    tag = "_".join(f"{k}{v}" for k, v in sorted(options.items()))
    tag += "_dynamo" if ARGS.exporter == "dynamo" else ""
    path = os.path.join(workdir, f"{member.name}_p{round(sparsity * 100)}_b{batch}{tag}.onnx")
    start = time.perf_counter()
    if not os.path.exists(path):
        with prune.torch_exporter(ARGS.exporter):
            zoo.export(member.name, path, sparsity=sparsity, batch=batch, **options)
    feeds = zoo.inputs(member.name, batch=batch, seed=1, **options)
    _progress(f"exported in {time.perf_counter() - start:.1f} s; compiling and timing")
    row.update(
        compare_runtimes(
            path,
            list(feeds.values()),
            ARGS.threads,
            ARGS.round_time,
            ARGS.measure,
            not ARGS.no_deepsparse,
            ARGS.rounds,
        )
    )
    row["chosen"] = _chosen(row.pop("module"))
    return row


def _progress(text: str) -> None:
    print(f"    {text}", file=sys.stderr, flush=True)


def _summary(row: dict) -> str:
    def ms(key: str) -> str:
        value = row.get(key)
        return f"{value:.3g} ms" if isinstance(value, float) else str(value or "-")

    parts = [f"compile {row.get('compile_s', '-')} s", f"tvm-sparse {ms('tvm_sparse_ms')}"]
    parts += [f"ort {ms('ort_ms')}", f"deepsparse {ms('deepsparse_ms')}"]
    if isinstance(row.get("x_ort"), float):
        parts.append(f"x_ort {row['x_ort']:.2f}")
    parts += [f"{key}: {value}" for key, value in row.items() if key.endswith("_check")]
    return ", ".join(parts)


def main() -> int:
    # the classic CNNs are the held-out conformance set (benchmarks/conformance.py): name them
    names = ARGS.models or [n for n, m in zoo.ZOO.items() if m.family != "classic"]
    unknown = [n for n in names if n not in zoo.ZOO]
    if unknown:
        sys.exit(f"unknown zoo member(s) {unknown}; members: {', '.join(zoo.ZOO)}")
    sparsities = (
        list(zoo.SPARSITIES) if ARGS.sparsities == ["all"] else [float(s) for s in ARGS.sparsities]
    )
    cpu = machine()
    print(
        f"machine: {cpu['vendor']} {cpu['model']} ({cpu['isa']}; LLVM mcpu {cpu['llvm_mcpu']}),"
        f" {cpu['cores']} cores, {ARGS.threads} thread(s)",
        flush=True,
    )
    runs = [(n, s, b) for n in names for s in sparsities for b in ARGS.batch]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvm-sparse-zoo-") as tmp:
        workdir = ARGS.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        for i, (name, sparsity, batch) in enumerate(runs, 1):
            print(
                f"[{i}/{len(runs)}] {name} {sparsity:.0%} batch {batch}",
                file=sys.stderr,
                flush=True,
            )
            try:
                row = bench_one(zoo.ZOO[name], sparsity, batch, workdir)
            except Exception as err:  # one broken member must not lose the rest of the run
                traceback.print_exc()
                row = {"model": name, "sparsity": sparsity, "batch": batch}
                row["tvm_sparse_ms"] = f"ERROR: {type(err).__name__}"
            _progress(_summary(row))
            rows.append(row)
    print_table(rows, COLUMNS)
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump({"machine": cpu, "rows": rows}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
