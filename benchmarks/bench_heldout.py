"""Held-out topologies the zoo does not have, tvm-sparse against onnxruntime on the same file.

    python benchmarks/bench_heldout.py [--models convnext vit ...] [--sparsities 0.0 0.9]
                                       [--rounds 10] [--round-time 0.3] [--workdir DIR]
                                       [--json out.json]

Each architecture is written here in plain torch (torchvision does not import beside the pinned
CPU torch), seeded, magnitude-pruned per layer (every Conv1d / Conv2d / ConvTranspose2d /
Linear, LSTM / GRU and ``nn.MultiheadAttention``'s packed in-projection, except stems and
depthwise convs, as the zoo's policy), BatchNorm given real statistics, exported by the
TorchScript exporter at opset 17 (``zoo.prune.export_onnx``) and compiled by
``tvm_sparse.compile(path, "llvm")``. The output is checked against onnxruntime on the same file
(rtol 1e-3, atol 1e-3 x the output's largest magnitude), then both are timed at 1 thread in
turns (``--rounds`` rounds of ``--round-time`` seconds each, the order alternating; a time is
the median of the per-round medians, ``x_ort`` the median of the per-round ratios
ort / tvm-sparse).

Each (model, sparsity) runs in its own worker process, so an abort in LLVM or TVM shows as a row
(``ERROR: exit -6``) instead of ending the run. What the compile prints on stderr (TVM's C++ log
and Python warnings) is counted: ``warn`` is the number of warning lines, the first few kept in
the JSON.

The models (batch 1):

- ``convnext``: ConvNeXt-T-style stages (96/192/384/768, depths 1/1/3/1): 4x4 patchify stem,
  7x7 depthwise conv, LayerNorm over channels through permutes, Linear 4x expand, GELU, layer
  scale, residual; LayerNorm + 2x2 stride-2 conv downsampling; 224 px;
- ``regnetx``: RegNetX-400MF (widths 32/64/160/384, depths 1/2/7/12, group width 16, no SE),
  224 px;
- ``vit``: ViT-Ti/16 cut to 6 blocks (dim 192, 3 heads, MLP 768): patch-embedding conv, cls
  token, position embedding, ``nn.MultiheadAttention``, pre-LayerNorm, GELU; 224 px;
- ``unet``: UNet encoder-decoder (32/64/128/256), max-pool down, ConvTranspose2d and bilinear
  ``F.interpolate`` up, skip concats, 2-class 1x1 head; 128 px;
- ``audio1d``: M5-style raw-waveform net (Conv1d 80/4 stem, BN1d, max-pools, a dilated Conv1d
  stack with residuals), global average, Linear 35; 16000 samples;
- ``mbv3s``: MobileNetV3-Small (hardswish, hardsigmoid squeeze-excitation, 3x3 and 5x5
  depthwise), 224 px;
- ``mixer``: MLP-Mixer-S/16 cut to 4 blocks (dim 512, token MLP 256, channel MLP 2048):
  token mixing through transposes, LayerNorm, GELU; 224 px;
- ``deeplab``: dilated ResNet-ish backbone (output stride 8) with an ASPP head (1x1 and
  3x3 convs at dilations 6/12/18, image pooling branch upsampled, concat), bilinear upsample
  to the input; 128 px;
- ``kws_lstm``: keyword spotting, a 2-layer LSTM (256) over 49 frames of 40 MFCCs, the last
  step to 12 classes (ONNX LSTM nodes, h0 from Expand of zeros);
- ``crnn``: two conv + BN + ReLU + max-pool blocks over a 40x64 spectrogram, a bidirectional
  GRU (128, linear_before_reset=1) over the 64 frames, mean, 12 classes.

Pruning also covers each recurrent weight (``weight_ih_l*`` / ``weight_hh_l*``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = (
    "convnext", "regnetx", "vit", "unet", "audio1d", "mbv3s", "mixer", "deeplab", "kws_lstm",
    "crnn",
)  # fmt: skip
COLUMNS = [
    "model",
    "sparsity",
    "compile",
    "max_abs_err",
    "max_rel_err",
    "compile_s",
    "tvm_sparse_ms",
    "ort_ms",
    "x_ort",
    "x_ort_range",
    "warn",
    "chosen",
]


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.0, 0.9])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--round-time", type=float, default=0.3, help="seconds per runtime per round")
    p.add_argument("--workdir", help="keep the ONNX files here (default: a temporary dir)")
    p.add_argument("--json", help="write the rows here too")
    p.add_argument(
        "--worker", nargs=3, metavar=("MODEL", "SPARSITY", "OUT"), help=argparse.SUPPRESS
    )
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# The architectures (torch imported only in the worker)
# --------------------------------------------------------------------------------------------


def _architectures():
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812 - torch's own spelling

    def conv_bn(cin, cout, k, stride=1, groups=1, dilation=1, act=nn.ReLU):
        pad = dilation * (k - 1) // 2
        layers = [
            nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        return nn.Sequential(*layers, *([act()] if act is not None else []))

    # -- ConvNeXt -------------------------------------------------------------------------------
    class LayerNorm2d(nn.LayerNorm):
        """LayerNorm over the channels of NCHW, through permutes (torchvision's form)."""

        def forward(self, x):
            x = x.permute(0, 2, 3, 1)
            x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)

    class CNBlock(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.pwconv1 = nn.Linear(dim, 4 * dim)
            self.pwconv2 = nn.Linear(4 * dim, dim)
            # a trained network's layer scales are far from their 1e-6 init
            self.gamma = nn.Parameter(torch.empty(dim).uniform_(0.1, 1.0))

        def forward(self, x):
            y = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC
            y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
            return x + (self.gamma * y).permute(0, 3, 1, 2)

    class ConvNeXt(nn.Module):
        def __init__(self, dims=(96, 192, 384, 768), depths=(1, 1, 3, 1)):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
            stages = []
            for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
                layers = []
                if i > 0:
                    layers += [
                        LayerNorm2d(dims[i - 1], eps=1e-6),
                        nn.Conv2d(dims[i - 1], dim, 2, 2),
                    ]
                layers += [CNBlock(dim) for _ in range(depth)]
                stages.append(nn.Sequential(*layers))
            self.stages = nn.Sequential(*stages)
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = nn.Linear(dims[-1], 1000)

        def forward(self, x):
            x = self.stages(self.stem(x))
            return self.head(self.norm(x.mean([2, 3])))

    # -- RegNetX-400MF --------------------------------------------------------------------------
    class XBlock(nn.Module):
        def __init__(self, cin, cout, stride, group_width=16):
            super().__init__()
            self.a = conv_bn(cin, cout, 1)
            self.b = conv_bn(cout, cout, 3, stride, groups=cout // group_width)
            self.c = conv_bn(cout, cout, 1, act=None)
            self.proj = (
                conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
            )

        def forward(self, x):
            short = x if self.proj is None else self.proj(x)
            return torch.relu(short + self.c(self.b(self.a(x))))

    class RegNetX(nn.Module):
        def __init__(self, widths=(32, 64, 160, 384), depths=(1, 2, 7, 12)):
            super().__init__()
            self.stem = conv_bn(3, 32, 3, 2)
            blocks, cin = [], 32
            for w, d in zip(widths, depths, strict=True):
                for j in range(d):
                    blocks.append(XBlock(cin, w, 2 if j == 0 else 1))
                    cin = w
            self.trunk = nn.Sequential(*blocks)
            self.fc = nn.Linear(cin, 1000)

        def forward(self, x):
            return self.fc(self.trunk(self.stem(x)).mean([2, 3]))

    # -- ViT ------------------------------------------------------------------------------------
    class EncoderBlock(nn.Module):
        def __init__(self, dim, heads, mlp):
            super().__init__()
            self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
            self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

        def forward(self, x):
            y = self.ln_1(x)
            y, _ = self.self_attention(y, y, y, need_weights=False)
            x = x + y
            return x + self.mlp(self.ln_2(x))

    class ViT(nn.Module):
        def __init__(self, image=224, patch=16, dim=192, depth=6, heads=3, mlp=768):
            super().__init__()
            self.conv_proj = nn.Conv2d(3, dim, patch, patch)
            tokens = (image // patch) ** 2 + 1
            self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos_embedding = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
            self.layers = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
            self.ln = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, 1000)

        def forward(self, x):
            x = self.conv_proj(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = self.layers(x + self.pos_embedding)
            return self.head(self.ln(x[:, 0]))

    # -- UNet -----------------------------------------------------------------------------------
    def double_conv(cin, cout):
        return nn.Sequential(conv_bn(cin, cout, 3), conv_bn(cout, cout, 3))

    class UNet(nn.Module):
        def __init__(self, chans=(32, 64, 128, 256), classes=2):
            super().__init__()
            c1, c2, c3, c4 = chans
            self.enc1, self.enc2 = double_conv(3, c1), double_conv(c1, c2)
            self.enc3, self.bottom = double_conv(c2, c3), double_conv(c3, c4)
            self.up3 = nn.ConvTranspose2d(c4, c3, 2, 2)
            self.dec3 = double_conv(2 * c3, c3)
            self.up2 = nn.ConvTranspose2d(c3, c2, 2, 2)
            self.dec2 = double_conv(2 * c2, c2)
            self.reduce1 = nn.Conv2d(c2, c1, 1)  # then bilinear upsampling, not a transpose
            self.dec1 = double_conv(2 * c1, c1)
            self.head = nn.Conv2d(c1, classes, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(F.max_pool2d(e1, 2))
            e3 = self.enc3(F.max_pool2d(e2, 2))
            b = self.bottom(F.max_pool2d(e3, 2))
            d3 = self.dec3(torch.cat([self.up3(b), e3], 1))
            d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
            u1 = F.interpolate(
                self.reduce1(d2), scale_factor=2, mode="bilinear", align_corners=False
            )
            return self.head(self.dec1(torch.cat([u1, e1], 1)))

    # -- 1D audio -------------------------------------------------------------------------------
    def conv1d_bn(cin, cout, k, stride=1, dilation=1):
        return nn.Sequential(
            nn.Conv1d(cin, cout, k, stride, dilation * (k - 1) // 2, dilation=dilation, bias=False),
            nn.BatchNorm1d(cout),
            nn.ReLU(),
        )

    class Res1d(nn.Module):
        def __init__(self, ch, dilation):
            super().__init__()
            self.body = nn.Sequential(conv1d_bn(ch, ch, 3, dilation=dilation), conv1d_bn(ch, ch, 3))

        def forward(self, x):
            return x + self.body(x)

    class Audio1d(nn.Module):
        def __init__(self, classes=35):
            super().__init__()
            self.features = nn.Sequential(
                conv1d_bn(1, 128, 80, 4), nn.MaxPool1d(4),
                conv1d_bn(128, 128, 3), nn.MaxPool1d(4),
                conv1d_bn(128, 256, 3), nn.MaxPool1d(4),
                Res1d(256, 2), Res1d(256, 4),
                conv1d_bn(256, 512, 3), nn.MaxPool1d(2),
            )  # fmt: skip
            self.fc = nn.Linear(512, classes)

        def forward(self, x):
            return self.fc(self.features(x).mean(-1))

    # -- MobileNetV3-Small ----------------------------------------------------------------------
    def make_div(v, d=8):
        return max(d, int(v + d / 2) // d * d)

    class SE(nn.Module):
        def __init__(self, ch):
            super().__init__()
            sq = make_div(ch // 4)
            self.fc1, self.fc2 = nn.Conv2d(ch, sq, 1), nn.Conv2d(sq, ch, 1)

        def forward(self, x):
            s = F.adaptive_avg_pool2d(x, 1)
            return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))

    class MBV3Block(nn.Module):
        def __init__(self, cin, k, exp, cout, se, act, stride):
            super().__init__()
            layers = [conv_bn(cin, exp, 1, act=act)] if exp != cin else []
            layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act))
            if se:
                layers.append(SE(exp))
            layers.append(conv_bn(exp, cout, 1, act=None))
            self.block = nn.Sequential(*layers)
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.block(x) if self.res else self.block(x)

    class MobileNetV3Small(nn.Module):
        R, H = nn.ReLU, nn.Hardswish
        # cin, k, exp, cout, se, act, stride (torchvision's table)
        CFG = (
            (16, 3, 16, 16, True, R, 2),
            (16, 3, 72, 24, False, R, 2),
            (24, 3, 88, 24, False, R, 1),
            (24, 5, 96, 40, True, H, 2),
            (40, 5, 240, 40, True, H, 1),
            (40, 5, 240, 40, True, H, 1),
            (40, 5, 120, 48, True, H, 1),
            (48, 5, 144, 48, True, H, 1),
            (48, 5, 288, 96, True, H, 2),
            (96, 5, 576, 96, True, H, 1),
            (96, 5, 576, 96, True, H, 1),
        )

        def __init__(self):
            super().__init__()
            layers = [conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
            layers += [MBV3Block(*c) for c in self.CFG]
            layers.append(conv_bn(96, 576, 1, act=nn.Hardswish))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(
                nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, 1000)
            )

        def forward(self, x):
            return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))

    # -- MLP-Mixer -------------------------------------------------------------------------------
    class MixerBlock(nn.Module):
        def __init__(self, tokens, dim, token_mlp, channel_mlp):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.token_mlp = nn.Sequential(
                nn.Linear(tokens, token_mlp), nn.GELU(), nn.Linear(token_mlp, tokens)
            )
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.channel_mlp = nn.Sequential(
                nn.Linear(dim, channel_mlp), nn.GELU(), nn.Linear(channel_mlp, dim)
            )

        def forward(self, x):
            x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
            return x + self.channel_mlp(self.norm2(x))

    class Mixer(nn.Module):
        def __init__(self, image=224, patch=16, dim=512, depth=4, token_mlp=256, channel_mlp=2048):
            super().__init__()
            tokens = (image // patch) ** 2
            self.stem = nn.Conv2d(3, dim, patch, patch)
            self.blocks = nn.Sequential(
                *[MixerBlock(tokens, dim, token_mlp, channel_mlp) for _ in range(depth)]
            )
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, 1000)

        def forward(self, x):
            x = self.blocks(self.stem(x).flatten(2).transpose(1, 2))
            return self.head(self.norm(x).mean(1))

    # -- DeepLab-ish -----------------------------------------------------------------------------
    class Basic(nn.Module):
        def __init__(self, cin, cout, stride, dilation):
            super().__init__()
            self.c1 = conv_bn(cin, cout, 3, stride, dilation=dilation)
            self.c2 = conv_bn(cout, cout, 3, dilation=dilation, act=None)
            self.down = (
                conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
            )

        def forward(self, x):
            return torch.relu(self.c2(self.c1(x)) + (x if self.down is None else self.down(x)))

    class ASPP(nn.Module):
        def __init__(self, cin, cout=128, rates=(6, 12, 18)):
            super().__init__()
            self.branches = nn.ModuleList(
                [conv_bn(cin, cout, 1)] + [conv_bn(cin, cout, 3, dilation=r) for r in rates]
            )
            self.pool = conv_bn(cin, cout, 1)
            self.project = conv_bn(cout * (len(rates) + 2), cout, 1)

        def forward(self, x):
            outs = [b(x) for b in self.branches]
            p = self.pool(F.adaptive_avg_pool2d(x, 1))
            outs.append(F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=False))
            return self.project(torch.cat(outs, 1))

    class DeepLab(nn.Module):
        def __init__(self, classes=21):
            super().__init__()
            self.stem = nn.Sequential(
                conv_bn(3, 32, 3, 2), conv_bn(32, 64, 3), nn.MaxPool2d(3, 2, 1)
            )
            self.layers = nn.Sequential(
                Basic(64, 64, 1, 1), Basic(64, 128, 2, 1),
                Basic(128, 256, 1, 2), Basic(256, 256, 1, 2),
                Basic(256, 256, 1, 4),
            )  # fmt: skip
            self.aspp = ASPP(256)
            self.head = nn.Conv2d(128, classes, 1)

        def forward(self, x):
            y = self.head(self.aspp(self.layers(self.stem(x))))
            return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    # -- recurrent keyword spotting (ONNX LSTM / GRU nodes, unrolled by onnx_recurrent) --------
    class KwsLSTM(nn.Module):
        """2-layer LSTM over 49 frames of 40 MFCCs, the last step's state to 12 keywords."""

        def __init__(self, classes=12):
            super().__init__()
            self.rnn = nn.LSTM(40, 256, num_layers=2, batch_first=True)
            self.fc = nn.Linear(256, classes)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    class CRNN(nn.Module):
        """Two conv blocks over a 40x64 spectrogram, a bidirectional GRU over time, mean."""

        def __init__(self, classes=12):
            super().__init__()
            self.conv = nn.Sequential(
                conv_bn(1, 32, 3), nn.MaxPool2d((2, 1)), conv_bn(32, 64, 3), nn.MaxPool2d((2, 1))
            )
            self.gru = nn.GRU(64 * 10, 128, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(256, classes)

        def forward(self, x):
            y = self.conv(x)
            b, c, f, t = y.shape
            y = self.gru(y.permute(0, 3, 1, 2).reshape(b, t, c * f))[0]
            return self.fc(y.mean(1))

    return {
        "convnext": (ConvNeXt, (1, 3, 224, 224)),
        "regnetx": (RegNetX, (1, 3, 224, 224)),
        "vit": (ViT, (1, 3, 224, 224)),
        "unet": (UNet, (1, 3, 128, 128)),
        "audio1d": (Audio1d, (1, 1, 16000)),
        "mbv3s": (MobileNetV3Small, (1, 3, 224, 224)),
        "mixer": (Mixer, (1, 3, 224, 224)),
        "deeplab": (DeepLab, (1, 3, 128, 128)),
        "kws_lstm": (KwsLSTM, (1, 49, 40)),
        "crnn": (CRNN, (1, 1, 40, 64)),
    }


def _prune(model, sparsity: float) -> None:
    """The zoo's policy over every weighted layer kind: per-layer L1 magnitude pruning, stems
    (at most 3 input channels) and depthwise convs dense; MHA's packed in-projection too."""
    import torch
    from torch.nn.utils import prune

    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    for m in model.modules():
        name = None
        if isinstance(m, torch.nn.Linear):
            name = "weight"
        elif isinstance(m, convs):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            name = None if m.in_channels <= 3 or depthwise else "weight"
        elif isinstance(m, torch.nn.MultiheadAttention) and m.in_proj_weight is not None:
            name = "in_proj_weight"
        elif isinstance(m, torch.nn.RNNBase) and sparsity > 0:  # each W_ih / W_hh
            for weight in [n for n, _ in m.named_parameters() if n.startswith("weight_")]:
                prune.l1_unstructured(m, name=weight, amount=float(sparsity))
                prune.remove(m, weight)
        if name is not None and sparsity > 0:
            prune.l1_unstructured(m, name=name, amount=float(sparsity))
            prune.remove(m, name)


def build(name: str, sparsity: float, seed: int = 0):
    """The seeded, pruned, calibrated eval-mode module of ``name`` and its input (numpy)."""
    import numpy as np
    import torch

    from tvm_sparse.zoo.prune import randomize_batchnorm

    torch.manual_seed(seed)
    cls, shape = _architectures()[name]
    model = cls()
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    with torch.no_grad():
        _prune(model, sparsity)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    calib = np.random.default_rng(seed + 1).standard_normal((4, *shape[1:]), dtype=np.float32)
    randomize_batchnorm(model, torch.from_numpy(calib), seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # LayerNorms with a trained-looking affine, not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.2, generator=gen)
    return model.eval(), x


def export(name: str, sparsity: float, path: str):
    import torch

    from tvm_sparse.zoo.prune import export_onnx

    model, x = build(name, sparsity)
    export_onnx(model, (torch.from_numpy(x),), path, ["input"], ["output"])
    return x


# --------------------------------------------------------------------------------------------
# One (model, sparsity) in a worker process
# --------------------------------------------------------------------------------------------


class _StderrCapture:
    """Everything written to fd 2 (TVM's C++ log and Python warnings) while inside."""

    def __enter__(self):
        sys.stderr.flush()
        self.file = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        self.text = self.file.read().decode(errors="replace")
        self.file.close()
        sys.stderr.write(self.text)


def _worker(name: str, sparsity: float, out: str, args: argparse.Namespace) -> None:
    os.environ["TVM_NUM_THREADS"] = "1"
    sys.path.insert(0, HERE)
    import warnings

    import numpy as np
    import tvm
    from peers import OrtRunner, median_time, ratio_summary

    import tvm_sparse
    from tvm_sparse.timing import take_turns

    row: dict = {"model": name, "sparsity": sparsity}
    workdir = args.workdir or tempfile.mkdtemp(prefix="tvm-sparse-heldout-")
    path = os.path.join(workdir, f"{name}_p{round(sparsity * 100)}.onnx")
    try:
        x = export(name, sparsity, path)
        ort = OrtRunner(path, threads=1)
        ref = ort.run([x])[0]
        start = time.perf_counter()
        with _StderrCapture() as cap, warnings.catch_warnings():
            warnings.simplefilter("always")
            module = tvm_sparse.compile(path, "llvm")
        row["compile_s"] = round(time.perf_counter() - start, 1)
        lines = [ln for ln in cap.text.splitlines() if "warn" in ln.lower()]
        row["warn"] = len(lines)
        row["warnings"] = lines[:20]
        row["compile"] = "OK"
        kernels = [layer.chosen for layer in module.report.layers]
        row["chosen"] = ",".join(f"{k} x{kernels.count(k)}" for k in sorted(set(kernels)))
        out_tvm = module.run(x)
        out_tvm = out_tvm[0] if isinstance(out_tvm, (list, tuple)) else out_tvm
        err = np.abs(out_tvm - ref)
        scale = max(float(np.abs(ref).max()), 1e-6)
        row["max_abs_err"] = float(err.max())
        row["max_rel_err"] = float(err.max() / scale)
        row["ref_scale"] = scale
        ok = bool(np.allclose(out_tvm, ref, rtol=1e-3, atol=1e-3 * scale))
        row["correct"] = ok
        main = module._main
        targs = [tvm.runtime.tensor(x)]
        tvm_timer = lambda: median_time(lambda: main(*targs), args.round_time, 3, warmup=1)  # noqa: E731
        ort_timer = ort.timer([x])
        samples = take_turns(
            {"tvm_sparse": tvm_timer, "ort": lambda: ort_timer(args.round_time)}, args.rounds
        )
        row["rounds_ms"] = {k: [t * 1e3 for t in v] for k, v in samples.items()}
        row["tvm_sparse_ms"] = statistics.median(samples["tvm_sparse"]) * 1e3
        row["ort_ms"] = statistics.median(samples["ort"]) * 1e3
        mid, lo, hi = ratio_summary(samples["ort"], samples["tvm_sparse"])
        row["x_ort"], row["x_ort_range"] = mid, f"{lo:.2f}-{hi:.2f}"
        if not ok:
            row["tvm_sparse_ms"] = f"MISMATCH ({row['tvm_sparse_ms']:.3g})"
    except Exception as exc:  # the row says what broke; the run goes on
        traceback.print_exc()
        row.setdefault("compile", f"ERROR: {type(exc).__name__}: {exc}"[:500])
        row["error"] = traceback.format_exc()
    with open(out, "w") as f:
        json.dump(row, f, default=str)


def main() -> int:
    args = _parse()
    if args.worker:
        name, sparsity, out = args.worker
        _worker(name, float(sparsity), out, args)
        return 0
    sys.path.insert(0, HERE)
    from peers import print_table

    from tvm_sparse.machine import cpuinfo

    info = cpuinfo()
    print(f"CPU: {info.get('model name', '?')}, {os.cpu_count()} cores, 1 thread", flush=True)
    rows = []
    for name in args.models:
        for sparsity in args.sparsities:
            print(f"[{name} {sparsity:.0%}]", file=sys.stderr, flush=True)
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
                out = tmp.name
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, str(sparsity), out]
            cmd += ["--rounds", str(args.rounds), "--round-time", str(args.round_time)]
            if args.workdir:
                os.makedirs(args.workdir, exist_ok=True)
                cmd += ["--workdir", args.workdir]
            proc = subprocess.run(cmd, check=False)
            try:
                with open(out) as f:
                    row = json.load(f)
            except (OSError, ValueError):
                row = {"model": name, "sparsity": sparsity}
                row["compile"] = f"ERROR: worker exit {proc.returncode}"
            os.unlink(out)
            summary = {k: row.get(k) for k in COLUMNS}
            print(f"    {json.dumps(summary, default=str)}", file=sys.stderr, flush=True)
            rows.append(row)
    print_table(rows, COLUMNS)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
