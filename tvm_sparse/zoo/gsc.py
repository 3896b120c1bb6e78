"""GSC sparse CNN zoo members: nupic.torch's GSCSparseCNN, one member per k-WTA form it exports.

Why: k-WTA reaches the compiler in as many op patterns as nupic.torch has written it, and a
form the detector misses keeps TVM's full TopK sort (the network then loses to onnxruntime). The
modules below are eval-mode equivalents of nupic.torch's (``nupic/torch/functions/k_winners.py``
and ``modules/k_winners.py``), in plain torch:

- ``kthvalue`` (2020 on, ``break_ties=False``, the default): ``threshold = boosted.kthvalue(n - k
  + 1)``, ``x.masked_fill(boosted < threshold, 0)``; boost ``exp(-boost_strength * duty)``.
- ``break_ties`` (2020 on, ``break_ties=True``): TopK's indices scattered into an off-mask.
- ``scatter`` (2019): TopK's indices scattered into a mask (``KWinners``: ``mask * x``;
  ``KWinners2d``: the winners' values gathered and scattered into zeros); boost
  ``exp((target_density - duty) * boost_strength)``.

Neither torch.onnx exporter of torch 2.13 converts ``aten::kthvalue`` (TorchScript: unsupported at
opset 17; dynamo: no ONNX function), so the export registers what a user has to: kthvalue as ONNX
TopK of the ``n - k + 1`` smallest and a Gather of the last. The 2019 and ``break_ties`` forms
export TopK with ``sorted=0``.

The network (``models.SparseCNNConfig`` / nupic's GSCSparseCNN): [B,1,32,32] -> conv5x5 1->64 ->
BN -> k-WTA 9.5% -> maxpool2 -> conv5x5 64->64 -> BN -> k-WTA 12.5% -> maxpool2 -> flatten 1600
-> linear 1000 -> BN -> k-WTA 10% -> linear 12 -> LogSoftmax. BatchNorm is ``affine=False`` as in
nupic, with seeded running statistics. ``sparsity`` magnitude-prunes the two convs and the hidden
linear (nupic sparsifies exactly those three; the classifier stays dense). Duty cycles are seeded
around each layer's target density, so the boost changes which units win.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import numpy as np

from ..torch_frontend import kthvalue_as_topk
from .member import IR_VERSION, OPSET, ZooModel

IMAGE = 32
CHANNELS = (64, 64)
CNN_PERCENT_ON = (0.095, 0.125)
LINEAR_UNITS = 1000
LINEAR_PERCENT_ON = 0.1
CLASSES = 12
BOOST_STRENGTH = 1.5
KERNEL = 5


@functools.cache
def torch_modules() -> SimpleNamespace:
    """The torch modules: ``KWinners``, ``KWinners2d``, ``FlatKWinners``, ``GSCSparseCNN``
    (and ``torch``). torch is imported here, on first use: tvm_sparse works without it."""
    import torch
    from torch import nn

    def boost_factor(duty, strength: float, target_density: float, form: str):
        if form == "scatter":  # 2019: exp((target_density - duty) * strength)
            return torch.exp((target_density - duty) * strength)
        return torch.exp(-strength * duty)  # 2020 on: the same ranking, one op less

    class KWinners(nn.Module):
        """nupic.torch ``KWinners`` (k of ``n`` units per sample), eval mode."""

        def __init__(self, n: int, percent_on: float, form: str, boost_strength: float,
                     duty: torch.Tensor) -> None:  # fmt: skip
            super().__init__()
            self.n, self.form, self.boost_strength = n, form, boost_strength
            self.k_inference = int(int(round(n * percent_on)) * 1.0)  # k_inference_factor 1.0
            self.register_buffer("duty_cycle", duty.reshape(n))

        def forward(self, x):
            k = self.k_inference
            boosted = x.detach()
            if self.boost_strength > 0.0:
                factor = boost_factor(self.duty_cycle, self.boost_strength, k / self.n, self.form)
                boosted = boosted * factor
            if self.form == "kthvalue":
                threshold = boosted.kthvalue(x.shape[1] - k + 1, dim=1, keepdim=True)[0]
                return x.masked_fill(boosted < threshold, 0)
            indices = boosted.topk(k, dim=1, sorted=False)[1]
            if self.form == "break_ties":
                off_mask = torch.ones_like(boosted, dtype=torch.bool)
                off_mask.scatter_(1, indices, 0)
                return x.masked_fill(off_mask, 0)
            mask = torch.zeros_like(x).scatter(-1, indices, 1)  # 2019
            return mask * x

    class KWinners2d(nn.Module):
        """nupic.torch ``KWinners2d``: k of C*H*W per sample, or (``local``) k of C per location."""

        def __init__(self, shape: tuple[int, int, int], percent_on: float, form: str,
                     boost_strength: float, local: bool, duty: torch.Tensor) -> None:  # fmt: skip
            super().__init__()
            c, h, w = shape
            self.form, self.boost_strength, self.local = form, boost_strength, local
            self.k_inference = int(round((c if local else c * h * w) * percent_on))
            self.register_buffer("duty_cycle", duty.reshape(1, c, 1, 1))

        def forward(self, x):
            k = self.k_inference
            boosted = x.detach()
            if self.boost_strength > 0.0:
                units = x.shape[1] if self.local else x.shape[1] * x.shape[2] * x.shape[3]
                factor = boost_factor(self.duty_cycle, self.boost_strength, k / units, self.form)
                boosted = boosted * factor
            if self.form == "kthvalue":
                if self.local:
                    threshold = boosted.kthvalue(x.shape[1] - k + 1, dim=1, keepdim=True)[0]
                else:
                    n = x.shape[1] * x.shape[2] * x.shape[3]
                    threshold = boosted.view(x.shape[0], -1).kthvalue(n - k + 1, dim=1)[0]
                    threshold = threshold.view(x.shape[0], 1, 1, 1)
                return x.masked_fill(boosted < threshold, 0)
            if self.form == "break_ties":
                if self.local:
                    indices = boosted.topk(k=k, dim=1, sorted=False)[1]
                    off_mask = torch.ones_like(boosted, dtype=torch.bool)
                    off_mask.scatter_(1, indices, 0)
                else:
                    shape2 = (x.shape[0], x.shape[1] * x.shape[2] * x.shape[3])
                    indices = boosted.view(shape2).topk(k, dim=1, sorted=False)[1]
                    off_mask = torch.ones(shape2, dtype=torch.bool)
                    off_mask.scatter_(1, indices, 0)
                    off_mask = off_mask.view(x.shape)
                return x.masked_fill(off_mask, 0)
            if self.local:  # 2019 KWinners2dLocal
                indices = boosted.topk(k=k, dim=1)[1]
                res = torch.zeros_like(x)
                res.scatter_(1, indices, x.gather(1, indices))
                return res
            batch = x.shape[0]  # 2019 KWinners2dGlobal
            boosted = boosted.reshape((batch, -1))
            xr = x.reshape((batch, -1))
            res = torch.zeros_like(boosted)
            indices = boosted.topk(k, dim=1, sorted=False)[1]
            res.scatter_(1, indices, xr.gather(1, indices))
            return res.reshape(x.shape)

    class FlatKWinners(nn.Module):
        """``KWinners`` on a flattened conv output (a per-feature boost [C*H*W]), reshaped back."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.flatten(1)).view(x.shape)

    class GSCSparseCNN(nn.Sequential):
        """nupic.torch's GSCSparseCNN with ``make_kwta(layer, shape, percent_on)`` k-WTAs."""

        def __init__(self, make_kwta) -> None:
            super().__init__()
            size, in_ch = IMAGE, 1
            for i, (ch, pct) in enumerate(zip(CHANNELS, CNN_PERCENT_ON, strict=True)):
                size -= KERNEL - 1
                self.add_module(f"cnn{i + 1}", nn.Conv2d(in_ch, ch, KERNEL))
                self.add_module(f"cnn{i + 1}_batchnorm", nn.BatchNorm2d(ch, affine=False))
                self.add_module(f"cnn{i + 1}_kwinner", make_kwta(i, (ch, size, size), pct))
                self.add_module(f"cnn{i + 1}_maxpool", nn.MaxPool2d(2))
                size, in_ch = size // 2, ch
            self.add_module("flatten", nn.Flatten())
            self.add_module("linear", nn.Linear(in_ch * size * size, LINEAR_UNITS))
            self.add_module("linear_bn", nn.BatchNorm1d(LINEAR_UNITS, affine=False))
            self.add_module("linear_kwinner", make_kwta(2, (LINEAR_UNITS,), LINEAR_PERCENT_ON))
            self.add_module("output", nn.Linear(LINEAR_UNITS, CLASSES))
            self.add_module("softmax", nn.LogSoftmax(dim=1))

    return SimpleNamespace(
        torch=torch, KWinners=KWinners, KWinners2d=KWinners2d, FlatKWinners=FlatKWinners,
        GSCSparseCNN=GSCSparseCNN,
    )  # fmt: skip


# name -> (form, conv k-WTA: "global" / "local" / "flat", boosted, description)
_MEMBERS = {
    "gsc_kwta_channel_boost": ("kthvalue", "global", True,
        "KWinners2d (global, kthvalue + masked_fill), boost per channel [1,C,1,1]"),
    "gsc_kwta_feature_boost": ("kthvalue", "flat", True,
        "KWinners on the flattened conv output: boost per feature [C*H*W]"),
    "gsc_kwta2d_local": ("kthvalue", "local", True,
        "KWinners2d(local=True): k of the 64 channels at each location"),
    "gsc_kwta_noboost": ("kthvalue", "global", False, "KWinners2d global, boost_strength 0"),
    "gsc_kwta_break_ties": ("break_ties", "global", True,
        "break_ties=True: TopK indices scattered into an off-mask, exactly k win"),
    "gsc_kwta_topk_scatter": ("scatter", "global", True,
        "nupic.torch 2019: TopK indices scattered (winners gathered), exactly k win"),
    "gsc_kwta2d_local_topk_scatter": ("scatter", "local", True,
        "nupic.torch 2019 KWinners2dLocal: TopK over channels, indices scattered"),
}  # fmt: skip


def build(name: str, *, sparsity: float, seed: int = 0):
    """The eval-mode torch model of member ``name``, magnitude-pruned to ``sparsity``."""
    form, conv_kwta, boosted, _ = _MEMBERS[name]
    nn = torch_modules()
    torch = nn.torch
    gen = torch.Generator().manual_seed(seed)
    strength = BOOST_STRENGTH if boosted else 0.0

    def duty(units: int, percent_on: float):
        return torch.rand(units, generator=gen) * (2.0 * percent_on)

    def make_kwta(layer: int, shape: tuple[int, ...], percent_on: float):
        if len(shape) == 1:
            return nn.KWinners(shape[0], percent_on, form, strength, duty(shape[0], percent_on))
        if conv_kwta == "flat":
            units = int(np.prod(shape))
            inner = nn.KWinners(units, percent_on, form, strength, duty(units, percent_on))
            return nn.FlatKWinners(inner)
        local = conv_kwta == "local"
        return nn.KWinners2d(shape, percent_on, form, strength, local, duty(shape[0], percent_on))

    torch.manual_seed(seed)  # nn.Conv2d / nn.Linear draw their init from the global generator
    model = nn.GSCSparseCNN(make_kwta)
    with torch.no_grad():
        for layer in (model.cnn1, model.cnn2, model.linear):
            _magnitude_prune(layer.weight, sparsity)
        _calibrate_batchnorm(model, torch, seed)
    return model.eval()


def _calibrate_batchnorm(model, torch, seed: int) -> None:
    """Running statistics of the pruned network on a seeded batch, as training would leave
    them (untrained BN, mean 0 / var 1, would leave activations far from unit scale)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration batch
        norm.train()
    model(torch.from_numpy(_images(16, seed + 1)))
    for norm in norms:
        norm.eval()


def _magnitude_prune(weight, sparsity: float) -> None:
    """Zero the ``round(sparsity * size)`` smallest ``|w|`` of the whole tensor (in place)."""
    drop = int(round(sparsity * weight.numel()))
    if drop == 0:
        return
    order = weight.detach().abs().flatten().argsort(stable=True)
    weight.view(-1)[order[:drop]] = 0.0


def _images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 1, IMAGE, IMAGE)).astype(np.float32)


def export_torch(model, example: np.ndarray, path: str) -> str:
    """Export ``model`` (eval mode) as the zoo exports: TorchScript exporter, opset 17, static
    shapes, input "input", output "output", kthvalue as TopK (see the module docstring), IR
    version at most ``IR_VERSION``."""
    import onnx

    torch = torch_modules().torch
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with kthvalue_as_topk(), torch.no_grad():
        torch.onnx.export(
            model, (torch.from_numpy(example),), path, input_names=["input"],
            output_names=["output"], opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    proto = onnx.load(path)
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    onnx.save(proto, path)
    return path


def _exporter(name: str):
    def export(path: str, *, sparsity: float, batch: int, seed: int) -> str:
        model = build(name, sparsity=sparsity, seed=seed)
        return export_torch(model, _images(batch, seed), path)

    return export


def _inputs(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"input": _images(batch, seed)}


MODELS: list[ZooModel] = [
    ZooModel(name, "gsc", _exporter(name), _inputs, description=spec[3])
    for name, spec in _MEMBERS.items()
]
