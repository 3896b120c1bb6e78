"""Fold the constant-only parts of an ONNX graph into initializers before the Relax import.

Why: exporters write shape and index plumbing that depends on nothing but constants (PyTorch's
BERT export computes position ids, token type ids and parts of the attention mask with
``ConstantOfShape`` / ``Expand`` / ``GatherElements`` / ``Where`` on constants). TVM's ONNX
frontend fails on some of it (``ConstantOfShape`` with an empty shape gives a 1-element value a
rank-0 target and raises), and what it does import is work the compiled model need not do at run
time. Every node whose inputs are all known constants is evaluated once with onnx's reference
evaluator and replaced by its value; nodes it cannot evaluate are kept as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# Values bigger than this stay computed at run time (an Expand can blow a scalar up).
MAX_FOLDED_ELEMENTS = 1 << 22
_STANDARD_DOMAINS = ("", "ai.onnx")


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in _STANDARD_DOMAINS:
            return int(entry.version)
    return 17


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def _evaluate(node: onnx.NodeProto, known: dict[str, np.ndarray], opset: int):
    """The node's outputs as numpy arrays, or None when the reference evaluator cannot run it."""
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(node, opsets={"": opset})
        feeds = {name: known[name] for name in node.input if name}
        outputs = evaluator.run(None, feeds)
    except Exception:  # noqa: BLE001 - anything it cannot evaluate simply stays in the graph
        return None
    return [np.asarray(v) for v in outputs]


def fold_constants(
    model: onnx.ModelProto, max_elements: int = MAX_FOLDED_ELEMENTS
) -> onnx.ModelProto:
    """A copy of ``model`` with every constant-only node replaced by an initializer."""
    graph = model.graph
    overridable = {vi.name for vi in graph.input}  # an initializer listed as input may be fed
    known = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in overridable
    }
    graph_outputs = {o.name for o in graph.output}
    opset = _opset(model)
    kept: list[onnx.NodeProto] = []
    folded: dict[str, np.ndarray] = {}
    for node in graph.node:
        foldable = (
            node.domain in _STANDARD_DOMAINS
            and not _has_subgraph(node)
            and all(not name or name in known for name in node.input)
            and not any(name in graph_outputs for name in node.output)
        )
        values = _evaluate(node, known, opset) if foldable else None
        if values is None or any(v.size > max_elements for v in values):
            kept.append(node)
            continue
        for name, value in zip(node.output, values):
            if name:
                known[name] = folded[name] = value
    if not folded:
        return model
    used = {name for node in kept for name in node.input} | graph_outputs
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    initializers = [t for t in model.graph.initializer if t.name in used]
    initializers += [
        numpy_helper.from_array(value, name) for name, value in folded.items() if name in used
    ]
    del out.graph.initializer[:]
    out.graph.initializer.extend(initializers)
    # Shape annotations of folded values are now redundant.
    live = {name for node in kept for name in node.output}
    kept_info = [vi for vi in model.graph.value_info if vi.name in live]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept_info)
    return out
