"""k-WTA test models: each nupic.torch form (``tvm_sparse.zoo.gsc``'s modules) at a small size,
exported the zoo's way, and hand-built ONNX graphs for the cases torch does not write."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

# (form, kind): kind "1d" KWinners, "2d" KWinners2d global, "local" KWinners2d(local=True),
# "flat" KWinners on a flattened NCHW tensor (one boost factor per feature)
FORMS = [
    ("kthvalue", "1d"),
    ("kthvalue", "2d"),
    ("kthvalue", "local"),
    ("kthvalue", "flat"),
    ("break_ties", "1d"),
    ("break_ties", "2d"),
    ("break_ties", "local"),
    ("scatter", "1d"),
    ("scatter", "2d"),
    ("scatter", "local"),
]
EXACT_FORMS = ("break_ties", "scatter")  # TopK's indices scattered: exactly k win
STRENGTH = 1.5


@dataclass(frozen=True)
class FormCase:
    path: str
    shape: tuple[int, ...]
    k: int
    n: int
    local: bool
    exact: bool
    boost: np.ndarray | None  # the factor per value of one sample, flattened


def export_form(form: str, kind: str, path: str, boosted: bool = True, seed: int = 0) -> FormCase:
    """One k-WTA module of ``form`` / ``kind`` exported to ``path``, with what it should match."""
    pytest.importorskip("torch")
    from tvm_sparse.zoo import gsc

    nn = gsc.torch_modules()
    torch = nn.torch
    gen = torch.Generator().manual_seed(seed)
    strength = STRENGTH if boosted else 0.0
    if kind == "1d":
        shape, n, k, channels = (2, 60), 60, 6, 60
        duty = torch.rand(n, generator=gen) * 0.2
        module = nn.KWinners(n, 0.1, form, strength, duty)
    elif kind == "flat":
        shape, n, k, channels = (2, 4, 5, 5), 100, 10, 100
        duty = torch.rand(n, generator=gen) * 0.2
        module = nn.FlatKWinners(nn.KWinners(n, 0.1, form, strength, duty))
    else:
        local = kind == "local"
        shape, channels = (2, 8, 5, 5), 8
        n, k = (8, 2) if local else (200, 50)
        duty = torch.rand(channels, generator=gen) * 0.5
        module = nn.KWinners2d(shape[1:], 0.25, form, strength, local, duty)
    gsc.export_torch(module.eval(), np.zeros(shape, np.float32), path)
    boost = None
    if boosted:
        density = k / n
        d = duty.numpy().astype(np.float64)
        factor = np.exp((density - d) * STRENGTH) if form == "scatter" else np.exp(-STRENGTH * d)
        per_value = int(np.prod(shape[1:]))
        boost = np.repeat(factor, per_value // channels).astype(np.float32)
    return FormCase(path, shape, k, n, kind == "local", form in EXACT_FORMS, boost)


def kwta_data(rng: np.random.Generator, shape, ties: bool) -> np.ndarray:
    """Normal values, or few distinct non-zero integers (many values tie with the k-th; a kept
    value is never 0, so the count of non-zeros is the count of winners)."""
    if not ties:
        return rng.standard_normal(shape).astype(np.float32)
    return rng.choice(np.float32([-3, -2, -1, 1, 2, 3]), shape)


def graph_model(nodes, inits: dict, shape, name: str = "kwta") -> onnx.ModelProto:
    """A checked opset-17 model from ``nodes`` over input "input" (``shape``) to "output"."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape))],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def threshold_nodes(
    ranked: str,
    kept: str,
    k: int,
    *,
    largest: bool = True,
    n: int = 0,
    compare: str = "GreaterOrEqual",
    keep_where: str = "on",
) -> tuple[list, dict]:
    """TopK over ``ranked`` -> one value -> ``compare`` -> Where on ``kept`` ("on": keep where
    the comparison holds; "off": zero there). ``largest=False`` takes the (n-k+1)-th smallest
    (kthvalue's export); the threshold value is the k-th largest either way."""
    count = k if largest else n - k + 1
    inits = {"topk_k": np.int64([count]), "kth": np.int64(count - 1), "axes": np.int64([1]),
             "zero": np.float32(0)}  # fmt: skip
    nodes = [
        helper.make_node(
            "TopK",
            [ranked, "topk_k"],
            ["values", "indices"],
            axis=1,
            largest=int(largest),
            sorted=1,
        ),  # fmt: skip
        helper.make_node("Gather", ["values", "kth"], ["kth_value"], axis=1),
        helper.make_node("Unsqueeze", ["kth_value", "axes"], ["thr"]),
        helper.make_node(compare, [ranked, "thr"], ["mask"]),
    ]
    branches = [kept, "zero"] if keep_where == "on" else ["zero", kept]
    nodes.append(helper.make_node("Where", ["mask", *branches], ["output"]))
    return nodes, inits
