"""Analytical FPGA estimates (#19): samples/s per device of the GSC networks and an MLP, for
every variant and precision, and how much each sparse variant gains over dense.

    python benchmarks/bench_fpga_estimate.py [--part u250] [--clock 300]
                                             [--precisions float,int8] [--json out.json]

Nothing is synthesized: each row is ``auto_fold`` of the network's hardware model (the folding,
memory placement and copies per SLR with the most samples/s) and rests on the assumptions of
``tvm_sparse/codegen/fpga/estimator.py``. ``x_dense`` divides a row's samples/s by the dense
variant of the same network at the same precision; for the super-sparse GSC network ``x_twin``
divides it by the dense variant of its dense twin (every weight kept, ReLU for k-WTA), the
comparison behind Numenta's published 112x. A variant that fits no copy shows 0 samples/s;
``SLRs`` lists the copies per SLR (``x2``: each copy spans two). ``ceiling`` bounds what any
folding of that variant could reach: the copies of its one-lane design (the fewest resources)
at its II floor (every stage at its most useful lanes); the two never meet, so it is loose.
``limit`` is the scarcest resource, or ``ddr`` where the DDR bandwidth caps the copies.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from tvm_sparse import models
from tvm_sparse.codegen.fpga.estimator import Estimate
from tvm_sparse.codegen.fpga.folding import auto_fold, ceiling
from tvm_sparse.codegen.fpga.from_relax import build_hw_model
from tvm_sparse.codegen.fpga.hw_model import VARIANTS
from tvm_sparse.codegen.fpga.target import parse_fpga_target
from tvm_sparse.frontend import import_model
from tvm_sparse.passes.canonicalize import canonicalize

NETWORKS = {
    "gsc": lambda: models.gsc_sparse_cnn(),
    "gsc_super": lambda: models.gsc_sparse_cnn(super_sparse=True),
    "gsc_twin": lambda: models.gsc_dense_twin(),
    "mlp": lambda: models.pruned_mlp(
        layers=3, hidden=256, in_features=784, out_features=10, density=0.1
    ),
}
NUMENTA = {"sparse-sparse": 1_300_000.0, "x_dense": 112.0}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="u250")
    p.add_argument("--clock", type=float, default=300.0, help="MHz")
    p.add_argument("--precisions", default="float,int8", help="comma separated")
    p.add_argument("--networks", default=",".join(NETWORKS), help="comma separated")
    p.add_argument("--json", help="write the rows here too")
    return p.parse_args()


def _row(net: str, est: Estimate, seconds: float) -> dict:
    return {
        "network": net,
        "variant": est.variant,
        "precision": est.precision,
        "samples_per_s": est.samples_per_s,
        "copies": est.copies,
        "slr_copies": est.slr_copies,
        "slrs_per_copy": est.slrs_per_copy,
        "ii_cycles": est.ii_cycles,
        "limited_by": est.limited_by,
        "ddr_limited": est.ddr_limited,
        "per_copy": {k: round(v, 1) for k, v in est.per_copy.items()},
        "macs_per_sample": sum(x.macs for x in est.layers),
        "fold_s": round(seconds, 2),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def main() -> None:
    args = _parse()
    rows: list[dict] = []
    for net in args.networks.split(","):
        imported = import_model(NETWORKS[net]())
        mod = canonicalize(imported.mod)
        for precision in args.precisions.split(","):
            target = parse_fpga_target(
                {"kind": "fpga", "part": args.part, "clock_mhz": args.clock, "precision": precision}
            )
            variants = ("dense",) if net == "gsc_twin" else VARIANTS
            for variant in variants:
                hw = build_hw_model(mod, target, variant, imported.weighted_nodes, name=net)
                floor, most_copies, bound = ceiling(hw)
                start = time.perf_counter()
                est = auto_fold(hw)
                row = _row(net, est, time.perf_counter() - start)
                row |= {"ii_floor": floor, "copies_at_one_lane": most_copies, "ceiling": bound}
                rows.append(row)
    by_key = {(r["network"], r["variant"], r["precision"]): r for r in rows}
    for r in rows:
        dense = by_key.get((r["network"], "dense", r["precision"]))
        r["x_dense"] = _ratio(r["samples_per_s"], dense["samples_per_s"] if dense else 0.0)
        twin = by_key.get(("gsc_twin", "dense", r["precision"]))
        if r["network"] == "gsc_super" and twin:
            r["x_twin"] = _ratio(r["samples_per_s"], twin["samples_per_s"])
    head = (
        f"{'network':<10} {'variant':<14} {'precision':<14} {'samples/s':>12} {'copies':>6} "
        f"{'SLRs':>12} {'II cyc':>8} {'limit':>7} {'x dense':>8} {'x twin':>7} "
        f"{'II floor':>8} {'ceiling':>11}"
    )
    print(f"{args.part} @ {args.clock:g} MHz (estimates, not synthesis)")
    print(head)
    print("-" * len(head))
    for r in rows:
        slrs = "/".join(map(str, r["slr_copies"] or []))
        if r["slrs_per_copy"] > 1:  # each copy spans that many SLRs
            slrs += f" x{r['slrs_per_copy']}"
        print(
            f"{r['network']:<10} {r['variant']:<14} {r['precision']:<14} "
            f"{r['samples_per_s']:>12,.0f} {r['copies']:>6} {slrs:>12} {r['ii_cycles']:>8} "
            f"{'ddr' if r['ddr_limited'] else r['limited_by']:>7} {r['x_dense']:>8.1f} "
            f"{r.get('x_twin', math.nan):>7.1f} "
            f"{r['ii_floor']:>8} {r['ceiling']:>11,.0f}"
        )
    print(
        f"Numenta (published, U250): sparse-sparse {NUMENTA['sparse-sparse']:,.0f} samples/s, "
        f"{NUMENTA['x_dense']:g}x dense"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"part": args.part, "clock_mhz": args.clock, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
