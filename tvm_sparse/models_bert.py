"""Pruned BERT-family encoders exported from PyTorch to ONNX: the transformer test models.

Why real PyTorch instead of a hand-built ONNX graph (as ``models.py`` does for MLPs and CNNs):
the point is to accept what the PyTorch exporter writes for a ``transformers`` encoder (3-D
``MatMul`` + separate bias ``Add``, erf GELU, LayerNormalization, the attention-mask plumbing),
so the graph must come from the exporter itself. torch and transformers are imported inside the
functions: ``tvm_sparse`` works without them.

Weights are random (``torch.manual_seed(seed)``), every encoder linear (Q, K, V, attention
output, FFN in and out) is pruned with unstructured L1 magnitude pruning per layer
(``torch.nn.utils.prune.l1_unstructured``), and the export is the TorchScript exporter at
opset 17 with static shapes: its node names (``/encoder/layer.0/attention/self/query/MatMul``)
name the layers in the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

VOCAB = 1000

__all__ = [
    "BertShape",
    "MINILM_L6",
    "TINY_BERT",
    "bert_inputs",
    "pruned_bert_onnx",
]


@dataclass(frozen=True)
class BertShape:
    """The few numbers that fix an encoder's cost: depth, widths, and the static input shape."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    seq: int = 128
    batch: int = 1


MINILM_L6 = BertShape(layers=6, hidden=384, heads=12, intermediate=1536, seq=128)
TINY_BERT = BertShape(layers=2, hidden=64, heads=4, intermediate=256, seq=32)


def bert_inputs(
    batch: int = 1, seq: int = 128, *, seed: int = 0, padded: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic ``input_ids`` and ``attention_mask`` (int64); ``padded`` masks the tail."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    if padded:
        mask[:, seq - padded :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _prune_encoder(model, sparsity: float) -> None:
    """Unstructured L1 pruning of every encoder ``nn.Linear``, each layer on its own, made final."""
    import torch
    from torch.nn.utils import prune

    for module in model.encoder.modules():
        if isinstance(module, torch.nn.Linear) and sparsity > 0:
            prune.l1_unstructured(module, name="weight", amount=float(sparsity))
            prune.remove(module, "weight")


def _randomize_affine(model) -> None:
    """Non-zero biases and LayerNorm affines (BERT initializes them to 0 and 1).

    With the stock init every bias is zero, the exporter merges them into one initializer, and a
    wrong bias fusion could not show in the outputs.
    """
    import torch

    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and module.bias is not None:
            torch.nn.init.normal_(module.bias, std=0.05)
        if isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.normal_(module.weight, mean=1.0, std=0.05)


def _build(shape: BertShape, sparsity: float, seed: int):
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=max(512, shape.seq),
        hidden_act="gelu",  # the exact erf form
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        _randomize_affine(model)
        _prune_encoder(model, sparsity)
    return model


def pruned_bert_module(shape: BertShape, *, sparsity: float = 0.9, seed: int = 0):
    """The pruned encoder as a torch module taking positional ``(input_ids, attention_mask)``
    and returning ``last_hidden_state``, with its seeded example inputs (torch tensors)."""
    import torch

    class _Encoder(torch.nn.Module):
        """Positional (ids, mask) -> last_hidden_state, so the export needs no kwargs."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    feeds = bert_inputs(shape.batch, shape.seq, seed=seed)
    args = (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    return _Encoder(_build(shape, sparsity, seed)).eval(), args


def pruned_bert_onnx(
    path: str | os.PathLike,
    *,
    layers: int = 6,
    hidden: int = 384,
    heads: int = 12,
    intermediate: int = 1536,
    seq: int = 128,
    batch: int = 1,
    sparsity: float = 0.9,
    seed: int = 0,
) -> str:
    """Build a random BERT encoder, prune its linears to ``sparsity``, export to ONNX at ``path``
    (``zoo.prune.export_onnx``: the zoo's exporter settings, and its ``torch_exporter``).

    Inputs ``input_ids`` and ``attention_mask`` ([batch, seq], int64), output
    ``last_hidden_state`` ([batch, seq, hidden], float32). Returns the path written.
    """
    from .zoo.prune import export_onnx  # the zoo imports this module

    shape = BertShape(layers, hidden, heads, intermediate, seq, batch)
    encoder, args = pruned_bert_module(shape, sparsity=sparsity, seed=seed)
    # the wrapper's "/bert" prefix is dropped so node names read like a plain BertModel export
    return export_onnx(encoder, args, path, ["input_ids", "attention_mask"],
                       ["last_hidden_state"], drop_prefix="/bert")  # fmt: skip


def tiny_pruned_bert_onnx(path: str | os.PathLike, *, sparsity: float = 0.9, seed: int = 0) -> str:
    """The test-sized encoder (2 layers, hidden 64, 4 heads, FFN 256, seq 32)."""
    s = TINY_BERT
    return pruned_bert_onnx(
        path,
        layers=s.layers,
        hidden=s.hidden,
        heads=s.heads,
        intermediate=s.intermediate,
        seq=s.seq,
        batch=s.batch,
        sparsity=sparsity,
        seed=seed,
    )
