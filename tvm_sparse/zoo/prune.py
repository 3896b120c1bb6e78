"""What every zoo member shares: magnitude pruning, BatchNorm statistics, the ONNX export.

Pruning policy (what SparseML / DeepSparse recipes do to CNNs and what ``magnitude_prune``
applies): every ``Conv2d`` and ``Linear`` is pruned on its own (per layer, not global) with
unstructured L1 magnitude pruning (``torch.nn.utils.prune.l1_unstructured``, then
``prune.remove`` so the zeros are baked into ``weight``), EXCEPT

- the stem conv (``in_channels == 3``): it holds few weights, sees the raw image and costs
  accuracy when pruned, so recipes keep it dense;
- depthwise convs (``groups == in_channels > 1``): 9 weights per channel, nothing to gain.

torch and onnx are imported inside the functions: ``tvm_sparse`` imports without them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

import numpy as np

from ..context import bound
from .member import IR_VERSION, OPSET

# Which torch exporter ``export_onnx`` runs: "torchscript" (the zoo's files) or "dynamo"
# (``torch.onnx.export``'s default since torch 2.9: what a user's own export is likely to be;
# it needs onnxscript). The two write different graphs of one model (opset 18, other op
# sequences), so the compiler is checked on both.
EXPORTERS = ("torchscript", "dynamo")
DYNAMO_OPSET = 18  # the dynamo exporter's lowest
_EXPORTER: ContextVar[str] = ContextVar("tvm_sparse_zoo_exporter", default="torchscript")


def torch_exporter(kind: str) -> AbstractContextManager[str]:
    """Within: every zoo export uses torch's ``kind`` exporter (one of ``EXPORTERS``)."""
    if kind not in EXPORTERS:
        raise ValueError(f"zoo: exporter must be one of {EXPORTERS}, got {kind!r}")
    return bound(_EXPORTER, kind)


def is_stem(module: Any) -> bool:
    """The first conv of an image network (reads the 3 colour channels)."""
    import torch

    return isinstance(module, torch.nn.Conv2d) and module.in_channels == 3


def is_depthwise(module: Any) -> bool:
    """A conv whose every group is one input channel."""
    import torch

    return (
        isinstance(module, torch.nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels
    )


def prunable(module: Any) -> bool:
    """Whether the policy above prunes ``module``."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return True
    return isinstance(module, torch.nn.Conv2d) and not is_stem(module) and not is_depthwise(module)


def magnitude_prune(model: Any, sparsity: float) -> list[str]:
    """Prune every prunable layer of ``model`` to ``sparsity`` in place; their names, in order.

    Each layer loses ``round(sparsity * weight.numel())`` of its smallest-magnitude weights.
    """
    from torch.nn.utils import prune

    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    pruned = []
    for name, module in model.named_modules():
        if prunable(module):
            if sparsity > 0:
                prune.l1_unstructured(module, name="weight", amount=float(sparsity))
                prune.remove(module, "weight")
            pruned.append(name)
    return pruned


def randomize_batchnorm(model: Any, example: Any, seed: int) -> None:
    """Give every BatchNorm real running statistics and a random affine, seeded.

    Why: the stock init (mean 0, var 1, weight 1, bias 0) makes BN an identity that a broken
    fold would not show. The running statistics come from one training-mode pass over
    ``example`` (as a trained network's would: each BN then normalizes what really reaches it,
    so a deep net keeps its activations O(1) at any sparsity and every layer shows in the
    output); then the affine is drawn at random. ``model`` is left in eval mode.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one pass sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(example)
    model.eval()
    for bn in norms:
        bn.momentum = 0.1  # torch's default again, so the export carries nothing odd
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in norms:
            n = bn.num_features
            bn.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=gen))
            bn.bias.copy_(torch.empty(n).normal_(0.0, 0.2, generator=gen))


def seeded_images(batch: int, image: int, seed: int) -> np.ndarray:
    """Seeded standard-normal images, [batch, 3, image, image] float32."""
    return np.random.default_rng(seed).standard_normal((batch, 3, image, image), dtype=np.float32)


def prune_and_calibrate(model: Any, *, sparsity: float, seed: int, image: int, batch: int) -> Any:
    """A freshly built CNN as the zoo exports it: convs Kaiming-initialized, magnitude-pruned to
    ``sparsity``, BN statistics from a few seeded images of the export size (so BN sees what it
    will see); returned in eval mode."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    with torch.no_grad():
        magnitude_prune(model, sparsity)
    randomize_batchnorm(
        model, torch.from_numpy(seeded_images(max(batch, 4), image, seed + 1)), seed
    )
    return model


def export_onnx(
    model: Any,
    args: Sequence[Any],
    path: str | os.PathLike,
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    fold_batchnorm: bool = True,
    drop_prefix: str = "",
) -> str:
    """Export ``model`` (eval mode) as a user would: TorchScript exporter, opset 17, static shapes
    (or torch's dynamo exporter at opset 18 within ``torch_exporter("dynamo")``).

    The exporter folds each eval-mode BatchNorm into the conv before it; ``fold_batchnorm=False``
    keeps them as ``BatchNormalization`` nodes (what other exporters and older files hold), so
    the compiler's own folding has something to do. ``drop_prefix`` (a wrapper module's scope,
    e.g. ``"/bert"``) is cut from the node names, which name the layers in the report. The
    IR version is lowered to at most 8 so DeepSparse 1.8 (onnx 1.14) reads the same file;
    the exporter's warnings (tracer, constant folding) are silenced. Returns the path.
    """
    import onnx
    import torch

    path = os.fspath(path)
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if _EXPORTER.get() == "dynamo":  # no training mode: BatchNorm as the exporter keeps it
            how = {"opset_version": DYNAMO_OPSET, "dynamo": True, "verbose": False}
        else:
            # PRESERVE exports the eval-mode model as is, without the exporter's BN fold
            mode = torch.onnx.TrainingMode
            how = {
                "opset_version": OPSET,
                "do_constant_folding": True,
                "dynamo": False,
                "training": mode.EVAL if fold_batchnorm else mode.PRESERVE,
            }
        torch.onnx.export(
            model,
            tuple(args),
            path,
            input_names=list(input_names),
            output_names=list(output_names),
            **how,
        )
    proto = onnx.load(path)
    if drop_prefix:
        for node in proto.graph.node:
            if node.name.startswith(drop_prefix + "/"):
                node.name = node.name[len(drop_prefix) :]
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    onnx.save(proto, path)
    return path
