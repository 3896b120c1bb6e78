"""Tutorial 2: prune a BERT encoder in PyTorch, export it, and compile it sparse with tvm-sparse.

Run it with ``.venv/bin/python tutorials/02_pruned_bert.py [--workdir DIR] [--full]``.

By default a small encoder (2 layers, hidden 64) keeps the tutorial under a minute; ``--full``
uses the MiniLM-L6 shape (6 layers, hidden 384, 12 heads, FFN 1536, seq 128), where the sparse
kernels pay off: 90% of every encoder weight is zero. Needs ``torch`` and ``transformers``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import onnxruntime as ort

import tvm_sparse

SMALL = {"layers": 2, "hidden": 64, "heads": 4, "intermediate": 256, "seq": 32}
FULL = {"layers": 6, "hidden": 384, "heads": 12, "intermediate": 1536, "seq": 128}


def prune_and_export(shape: dict, path: str, sparsity: float = 0.9) -> dict[str, np.ndarray]:
    """Steps 1-2 in PyTorch: a BERT encoder, 90% L1-pruned linears, an ONNX file."""
    import torch
    from torch.nn.utils import prune
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=shape["intermediate"],
        attn_implementation="eager",
    )
    bert = BertModel(config, add_pooling_layer=False).eval()
    # Your fine-tuned model goes here. Pruning: unstructured L1, each linear on its own.
    for module in bert.encoder.modules():
        if isinstance(module, torch.nn.Linear):
            prune.l1_unstructured(module, name="weight", amount=sparsity)
            prune.remove(module, "weight")  # make the zeros permanent

    class Encoder(torch.nn.Module):  # (input_ids, attention_mask) -> last_hidden_state
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]

    seq = shape["seq"]
    ids = torch.randint(0, 1000, (1, seq), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, seq, dtype=torch.int64)
    mask[:, seq - seq // 8 :] = 0  # some padding, so the attention mask matters
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # Static shapes (no dynamic_axes): tvm-sparse compiles for one input shape.
        torch.onnx.export(
            Encoder(bert).eval(),
            (ids, mask),
            path,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            opset_version=17,
            dynamo=False,
        )
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


def _cli(*args: str) -> str:
    """Run the ``tvm-sparse`` command line (as ``python -m tvm_sparse.cli``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tvm_sparse.cli", *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"tvm-sparse {args[0]} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _time(fn, repeat: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(workdir: str, full: bool) -> None:
    shape = FULL if full else SMALL
    onnx_path = os.path.join(workdir, "bert_pruned.onnx")

    # Steps 1-2. Prune in PyTorch and export to ONNX.
    feeds = prune_and_export(shape, onnx_path)
    print(f"[1-2] pruned and exported {onnx_path} ({shape})")

    # Step 3. Analyze: the density of every Q/K/V/O/FFN linear of every encoder layer.
    print("[3] tvm-sparse analyze:")
    print(_cli("analyze", onnx_path))

    # Step 4. Compile for this CPU. GELU and the biases run inside the sparse kernels; the
    #         attention matmuls, softmax and layernorm get tvm-sparse's dense CPU schedules.
    lib_path = os.path.join(workdir, "bert_pruned.so")
    _cli("compile", onnx_path, "--target", "llvm", "-o", lib_path)
    sparse = tvm_sparse.load(lib_path)
    print(f"[4] tvm-sparse compile -> {lib_path}; per-layer choices:")
    for layer in sparse.report.layers:
        print(f"    {layer.name:48s} {layer.weight_density:6.1%}  -> {layer.chosen:6s} "
              f"epilogue {'+'.join(layer.epilogue) or '-'}")  # fmt: skip

    # Step 5. Compare with onnxruntime (the answers) and with the dense build (the speed).
    inputs = (feeds["input_ids"], feeds["attention_mask"])
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    reference = session.run(None, feeds)[0]
    out = sparse.run(*inputs)
    scale = float(np.abs(reference).max())
    if not np.allclose(out, reference, rtol=1e-3, atol=1e-3 * scale):
        sys.exit(f"mismatch: max |diff| {np.abs(out - reference).max():.3g}")
    print(f"[5] tvm-sparse output matches onnxruntime (max |diff| "
          f"{np.abs(out - reference).max():.2g})")  # fmt: skip
    dense = tvm_sparse.compile(onnx_path, target="llvm", sparse=False)
    t_sparse = sparse.benchmark(*inputs)["median_s"]
    t_dense = dense.benchmark(*inputs)["median_s"]
    t_ort = _time(lambda: session.run(None, feeds))
    print(f"    tvm-sparse {t_sparse * 1e3:.2f} ms | tvm dense {t_dense * 1e3:.2f} ms | "
          f"onnxruntime {t_ort * 1e3:.2f} ms (this machine, one run; see "
          "benchmarks/bench_bert.py for 1-thread numbers with DeepSparse)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="where to write the model files (default: a temp dir)")
    parser.add_argument("--full", action="store_true", help="the MiniLM-L6 shape (slower)")
    args = parser.parse_args()
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        main(args.workdir, args.full)
    else:
        with tempfile.TemporaryDirectory(prefix="tvm-sparse-bert-") as tmp:
            main(tmp, args.full)
