"""Fingerprint what the compiler outputs, to show a refactor changed nothing.

    python benchmarks/ir_fingerprint.py -o before.json          # on the old tree
    python benchmarks/ir_fingerprint.py --compare before.json   # on the new tree

For each model (the demo's and the tests' generated models) it runs the whole Relax pipeline with
the estimate-only choice (``measure=False``: measured choices move with the machine's noise) on a
fixed target, and records a hash of the lowered module's text (every PrimFunc's TIR and the Relax
driver), a hash of every constant the kernels read, the per-layer choices and reasons, and a hash
of the outputs on a fixed input. ``--compare`` prints every field that differs and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

import numpy as np
import tvm

from tvm_sparse import models
from tvm_sparse.frontend import import_model
from tvm_sparse.target import is_cpu, resolve_target


def _models(workdir: str) -> dict[str, str]:
    from tvm_sparse.models_bert import tiny_pruned_bert_onnx

    gen = {
        "mlp_b1": models.pruned_mlp(layers=3, hidden=256, density=0.1, batch=1),
        "mlp_b16": models.pruned_mlp(layers=3, hidden=256, density=0.1, batch=16),
        "mlp_block": models.pruned_mlp(layers=2, hidden=256, pattern="block", batch=4),
        "mlp_nm": models.pruned_mlp(layers=2, hidden=256, pattern="nm", batch=2),
        "mlp_dense": models.pruned_mlp(layers=2, hidden=128, density=1.0, batch=8),
        "gsc_super": models.gsc_sparse_cnn(super_sparse=True),
        "tiny_cnn_boost": models.tiny_sparse_cnn(boosting=True),
        "kwta": models.kwta_model([1, 8, 16, 16], k=200, boosting=True),
    }
    paths = {name: models.save(m, os.path.join(workdir, f"{name}.onnx")) for name, m in gen.items()}
    paths["bert_tiny"] = tiny_pruned_bert_onnx(os.path.join(workdir, "bert_tiny.onnx"))
    return paths


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint(path: str, target: tvm.target.Target) -> dict:
    """What one model compiles to, as hashes and the report's choices."""
    import tvm_sparse
    from tvm_sparse.passes.module_report import REPORT_ATTR, read_report
    from tvm_sparse.passes.pipeline import SparsifyOptions, build_pipeline

    imported = import_model(path)
    options = SparsifyOptions(layer_names=imported.weighted_nodes, measure=False)
    with target:
        lowered = build_pipeline(target, options)(imported.mod)
    report = read_report(lowered)
    lowered = lowered.without_attr(REPORT_ATTR)  # the report is hashed below, as choices
    result = {
        "module": _sha(lowered.script(show_meta=False).encode()),
        # with the metadata section: every constant (packed weights, indices) in full
        "constants": _sha(lowered.script(show_meta=True).encode()),
        "choices": [[r.name, r.chosen, r.reason] for r in report.layers],
    }
    if not is_cpu(target):
        return result  # built without a device to run on
    module = tvm_sparse.compile(path, target, measure=False)
    out = module.run(*module.random_inputs(seed=0))
    outs = out if isinstance(out, (list, tuple)) else [out]
    result["outputs"] = _sha(b"".join(np.ascontiguousarray(o).tobytes() for o in outs))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", help="write the fingerprints as JSON")
    parser.add_argument("--compare", help="compare with an earlier JSON; exit 1 on a difference")
    parser.add_argument("--models", help="comma-separated subset")
    args = parser.parse_args(argv)
    target = resolve_target({"kind": "llvm", "mcpu": "znver3", "num-cores": 2})
    result = {}
    with tempfile.TemporaryDirectory() as workdir:
        paths = _models(workdir)
        wanted = args.models.split(",") if args.models else list(paths)
        for name in wanted:
            result[name] = fingerprint(paths[name], target)
            print(name, *result[name].values(), flush=True)
        for name in ("mlp_b1", "mlp_b16", "mlp_block"):
            if name in wanted:
                result[f"{name}_cuda"] = fingerprint(paths[name], resolve_target("cuda"))
                print(f"{name}_cuda", *result[f"{name}_cuda"].values(), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        diffs = [
            f"{name}.{field}: {before[name][field]} -> {value}"
            for name, fields in result.items()
            if name in before
            for field, value in fields.items()
            if before[name][field] != value
        ]
        print("\n".join(diffs) if diffs else "identical")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
