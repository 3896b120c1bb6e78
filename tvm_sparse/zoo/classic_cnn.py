"""Classic CNN architectures beyond ResNet/MobileNet/VGG: the held-out set for conformance.

Why: a compiler tuned on a few topologies meets others in users' hands: 11x11 stride-4 stems,
grouped convs (ResNeXt, RegNet), concatenating branches (Inception, GoogLeNet, SqueezeNet,
DenseNet), BatchNorm before the conv (DenseNet: not foldable into the conv before it), channel
shuffles (ShuffleNetV2), squeeze-excitation and SiLU (EfficientNet), asymmetric 1x7 / 7x1 convs
and ceil-mode pooling. Each is written out after torchvision's topology (torchvision does not
import beside the pinned torch), seeded, magnitude-pruned like ``cnn.py``'s members, exported the
same way. ``benchmarks/conformance.py --models all`` runs them through plain TVM and tvm-sparse.
``width`` scales the channels (tests use small versions); ``image`` is the input size.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .member import ZooModel
from .prune import export_onnx, magnitude_prune, randomize_batchnorm

IMAGE = 224


def _modules(width: float) -> dict[str, Callable[[], object]]:  # noqa: C901 - one builder each
    import torch
    from torch import nn

    def ch(c: int) -> int:
        return max(8, int(round(c * width / 8)) * 8)

    def conv_bn(cin, cout, k, s=1, p=None, g=1, act=nn.ReLU):
        p = (k - 1) // 2 if p is None else p
        layers = [nn.Conv2d(cin, cout, k, s, p, groups=g, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, *([act()] if act else []))

    class Classifier(nn.Sequential):
        def __init__(self, cin: int, classes: int = 1000):
            super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    # -- AlexNet ---------------------------------------------------------------------------
    def alexnet():
        return nn.Sequential(
            nn.Conv2d(3, ch(64), 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(ch(64), ch(192), 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(ch(192), ch(384), 3, padding=1), nn.ReLU(),
            nn.Conv2d(ch(384), ch(256), 3, padding=1), nn.ReLU(),
            nn.Conv2d(ch(256), ch(256), 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(), nn.Dropout(),
            nn.Linear(ch(256) * 36, ch(4096)), nn.ReLU(), nn.Dropout(),
            nn.Linear(ch(4096), ch(4096)), nn.ReLU(), nn.Linear(ch(4096), 1000),
        )  # fmt: skip

    # -- VGG-19 with BN --------------------------------------------------------------------
    def vgg19():
        cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
               512, 512, 512, 512, "M")  # fmt: skip
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(conv_bn(cin, ch(v), 3))
                cin = ch(v)
        return nn.Sequential(
            *layers, nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
            nn.Linear(cin * 49, ch(4096)), nn.ReLU(), nn.Dropout(),
            nn.Linear(ch(4096), ch(4096)), nn.ReLU(), nn.Dropout(), nn.Linear(ch(4096), 1000),
        )  # fmt: skip

    # -- SqueezeNet 1.1 ----------------------------------------------------------------------
    class Fire(nn.Module):
        def __init__(self, cin, squeeze, expand):
            super().__init__()
            self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
            self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
            self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

        def forward(self, x):
            x = self.squeeze(x)
            return torch.cat([self.e1(x), self.e3(x)], 1)

    def squeezenet1_1():
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        return nn.Sequential(
            nn.Conv2d(3, ch(64), 3, 2), nn.ReLU(), pool(),
            Fire(ch(64), ch(16), ch(64)), Fire(ch(128), ch(16), ch(64)), pool(),
            Fire(ch(128), ch(32), ch(128)), Fire(ch(256), ch(32), ch(128)), pool(),
            Fire(ch(256), ch(48), ch(192)), Fire(ch(384), ch(48), ch(192)),
            Fire(ch(384), ch(64), ch(256)), Fire(ch(512), ch(64), ch(256)),
            nn.Dropout(), nn.Conv2d(ch(512), 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )  # fmt: skip

    # -- GoogLeNet (Inception v1, BN variant, no aux heads) -----------------------------------
    class InceptionV1(nn.Module):
        def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
            super().__init__()
            self.b1 = conv_bn(cin, c1, 1)
            self.b2 = nn.Sequential(conv_bn(cin, c3r, 1), conv_bn(c3r, c3, 3))
            self.b3 = nn.Sequential(conv_bn(cin, c5r, 1), conv_bn(c5r, c5, 3))  # torchvision: 3x3
            self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(cin, pp, 1))
            self.out = c1 + c3 + c5 + pp

        def forward(self, x):
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    def googlenet():
        spec = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
                (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),
                (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
                (256, 160, 320, 32, 128, 128), "M", (256, 160, 320, 32, 128, 128),
                (384, 192, 384, 48, 128, 128)]  # fmt: skip
        layers = [conv_bn(3, ch(64), 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True),
                  conv_bn(ch(64), ch(64), 1), conv_bn(ch(64), ch(192), 3),
                  nn.MaxPool2d(3, 2, ceil_mode=True)]  # fmt: skip
        cin = ch(192)
        for s in spec:
            if s == "M":
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
                continue
            block = InceptionV1(cin, *(ch(c) for c in s))
            layers.append(block)
            cin = block.out
        return nn.Sequential(*layers, nn.Dropout(0.2), Classifier(cin))

    # -- Inception v3 (one block of each kind) ---------------------------------------------
    class InceptionA(nn.Module):
        def __init__(self, cin, pool):
            super().__init__()
            self.b1 = conv_bn(cin, ch(64), 1)
            self.b5 = nn.Sequential(conv_bn(cin, ch(48), 1), conv_bn(ch(48), ch(64), 5))
            self.b3 = nn.Sequential(conv_bn(cin, ch(64), 1), conv_bn(ch(64), ch(96), 3),
                                    conv_bn(ch(96), ch(96), 3))  # fmt: skip
            self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), conv_bn(cin, pool, 1))
            self.out = ch(64) + ch(64) + ch(96) + pool

        def forward(self, x):
            return torch.cat([self.b1(x), self.b5(x), self.b3(x), self.bp(x)], 1)

    class InceptionB(nn.Module):  # grid reduction 35 -> 17
        def __init__(self, cin):
            super().__init__()
            self.b3 = conv_bn(cin, ch(384), 3, 2, 0)
            self.bd = nn.Sequential(conv_bn(cin, ch(64), 1), conv_bn(ch(64), ch(96), 3),
                                    conv_bn(ch(96), ch(96), 3, 2, 0))  # fmt: skip
            self.bp = nn.MaxPool2d(3, 2)
            self.out = ch(384) + ch(96) + cin

        def forward(self, x):
            return torch.cat([self.b3(x), self.bd(x), self.bp(x)], 1)

    class InceptionC(nn.Module):  # factorized 7x7: 1x7 and 7x1
        def __init__(self, cin, c7):
            super().__init__()
            self.b1 = conv_bn(cin, ch(192), 1)
            self.b7 = nn.Sequential(conv_bn(cin, c7, 1), conv_bn(c7, c7, (1, 7), p=(0, 3)),
                                    conv_bn(c7, ch(192), (7, 1), p=(3, 0)))  # fmt: skip
            self.bd = nn.Sequential(conv_bn(cin, c7, 1), conv_bn(c7, c7, (7, 1), p=(3, 0)),
                                    conv_bn(c7, ch(192), (1, 7), p=(0, 3)))  # fmt: skip
            self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), conv_bn(cin, ch(192), 1))
            self.out = 4 * ch(192)

        def forward(self, x):
            return torch.cat([self.b1(x), self.b7(x), self.bd(x), self.bp(x)], 1)

    class InceptionD(nn.Module):  # grid reduction 17 -> 8
        def __init__(self, cin):
            super().__init__()
            self.b3 = nn.Sequential(conv_bn(cin, ch(192), 1), conv_bn(ch(192), ch(320), 3, 2, 0))
            self.b7 = nn.Sequential(conv_bn(cin, ch(192), 1),
                                    conv_bn(ch(192), ch(192), (1, 7), p=(0, 3)),
                                    conv_bn(ch(192), ch(192), (7, 1), p=(3, 0)),
                                    conv_bn(ch(192), ch(192), 3, 2, 0))  # fmt: skip
            self.bp = nn.MaxPool2d(3, 2)
            self.out = ch(320) + ch(192) + cin

        def forward(self, x):
            return torch.cat([self.b3(x), self.b7(x), self.bp(x)], 1)

    class InceptionE(nn.Module):  # expanded filter bank: 1x3 and 3x1 side by side
        def __init__(self, cin):
            super().__init__()
            self.b1 = conv_bn(cin, ch(320), 1)
            self.b3 = conv_bn(cin, ch(384), 1)
            self.b3a = conv_bn(ch(384), ch(384), (1, 3), p=(0, 1))
            self.b3b = conv_bn(ch(384), ch(384), (3, 1), p=(1, 0))
            self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), conv_bn(cin, ch(192), 1))
            self.out = ch(320) + 2 * ch(384) + ch(192)

        def forward(self, x):
            y = self.b3(x)
            return torch.cat([self.b1(x), self.b3a(y), self.b3b(y), self.bp(x)], 1)

    def inception_v3():
        stem = nn.Sequential(
            conv_bn(3, ch(32), 3, 2, 0), conv_bn(ch(32), ch(32), 3, 1, 0),
            conv_bn(ch(32), ch(64), 3), nn.MaxPool2d(3, 2),
            conv_bn(ch(64), ch(80), 1), conv_bn(ch(80), ch(192), 3, 1, 0), nn.MaxPool2d(3, 2),
        )  # fmt: skip
        a = InceptionA(ch(192), ch(32))
        b = InceptionB(a.out)
        c = InceptionC(b.out, ch(128))
        d = InceptionD(c.out)
        e = InceptionE(d.out)
        return nn.Sequential(stem, a, b, c, d, e, nn.Dropout(), Classifier(e.out))

    # -- DenseNet-121 ------------------------------------------------------------------------
    class DenseLayer(nn.Module):
        def __init__(self, cin, growth):
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                nn.BatchNorm2d(4 * growth), nn.ReLU(),
                nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
            )  # fmt: skip

        def forward(self, x):
            return torch.cat([x, self.body(x)], 1)

    def densenet121():
        growth, cin = ch(32), ch(64)
        layers = [nn.Conv2d(3, cin, 7, 2, 3, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                  nn.MaxPool2d(3, 2, 1)]  # fmt: skip
        for i, count in enumerate((6, 12, 24, 16)):
            for _ in range(count):
                layers.append(DenseLayer(cin, growth))
                cin += growth
            if i < 3:
                layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cin // 2, 1, bias=False),
                           nn.AvgPool2d(2, 2)]  # fmt: skip
                cin //= 2
        return nn.Sequential(*layers, nn.BatchNorm2d(cin), nn.ReLU(), Classifier(cin))

    # -- ShuffleNetV2 x1.0 -------------------------------------------------------------------
    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            half = cout // 2
            self.stride = stride
            if stride > 1:
                self.left = nn.Sequential(conv_bn(cin, cin, 3, stride, g=cin, act=None),
                                          conv_bn(cin, half, 1))  # fmt: skip
            right_in = cin if stride > 1 else half
            self.right = nn.Sequential(conv_bn(right_in, half, 1),
                                       conv_bn(half, half, 3, stride, g=half, act=None),
                                       conv_bn(half, half, 1))  # fmt: skip

        def forward(self, x):
            if self.stride == 1:
                a, b = x.chunk(2, dim=1)
                out = torch.cat([a, self.right(b)], 1)
            else:
                out = torch.cat([self.left(x), self.right(x)], 1)
            n, c, h, w = out.shape
            return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    def shufflenet_v2():
        stages, cin = [], ch(24)
        for cout, repeats in ((ch(116), 4), (ch(232), 8), (ch(464), 4)):
            stages.append(ShuffleUnit(cin, cout, 2))
            stages += [ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)]
            cin = cout
        return nn.Sequential(conv_bn(3, ch(24), 3, 2), nn.MaxPool2d(3, 2, 1), *stages,
                             conv_bn(cin, ch(1024), 1), Classifier(ch(1024)))  # fmt: skip

    # -- EfficientNet-B0 ----------------------------------------------------------------------
    class SqueezeExcite(nn.Module):
        def __init__(self, c, squeeze):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

        def forward(self, x):
            s = torch.nn.functional.adaptive_avg_pool2d(x, 1)
            return x * torch.sigmoid(self.fc2(torch.nn.functional.silu(self.fc1(s))))

    class MBConv(nn.Module):
        def __init__(self, cin, cout, expand, k, stride):
            super().__init__()
            mid = cin * expand
            layers = [conv_bn(cin, mid, 1, act=nn.SiLU)] if expand != 1 else []
            layers += [conv_bn(mid, mid, k, stride, g=mid, act=nn.SiLU),
                       SqueezeExcite(mid, max(1, cin // 4)),
                       conv_bn(mid, cout, 1, act=None)]  # fmt: skip
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    def efficientnet_b0():
        cfg = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
               (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip
        layers, cin = [conv_bn(3, ch(32), 3, 2, act=nn.SiLU)], ch(32)
        for expand, k, stride, cout, repeats in cfg:
            for i in range(repeats):
                layers.append(MBConv(cin, ch(cout), expand, k, stride if i == 0 else 1))
                cin = ch(cout)
        layers.append(conv_bn(cin, ch(1280), 1, act=nn.SiLU))
        return nn.Sequential(*layers, nn.Dropout(0.2), Classifier(ch(1280)))

    # -- ResNeXt-50 32x4d and RegNetY-400MF: grouped convs ---------------------------------------
    class GroupedBottleneck(nn.Module):
        def __init__(self, cin, mid, cout, stride, groups, se: bool):
            super().__init__()
            layers = [conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, g=groups)]
            layers += [SqueezeExcite(mid, max(1, cin // 4))] if se else []
            self.body = nn.Sequential(*layers, conv_bn(mid, cout, 1, act=None))
            self.short = (conv_bn(cin, cout, 1, stride, act=None)
                          if stride > 1 or cin != cout else nn.Identity())  # fmt: skip

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    def resnext50_32x4d():
        layers, cin = [conv_bn(3, ch(64), 7, 2), nn.MaxPool2d(3, 2, 1)], ch(64)
        for i, (count, planes) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512))):
            mid, cout = ch(planes * 2), ch(planes * 4)  # width 4 per group x 32 groups
            groups = max(1, min(32, mid // 4))
            for j in range(count):
                stride = 2 if j == 0 and i > 0 else 1
                layers.append(GroupedBottleneck(cin, mid, cout, stride, groups, se=False))
                cin = cout
        return nn.Sequential(*layers, Classifier(cin))

    def regnet_y_400mf():
        layers, cin = [conv_bn(3, ch(32), 3, 2)], ch(32)
        for depth, width_out in ((1, 48), (3, 104), (6, 208), (6, 440)):
            cout = ch(width_out)
            for j in range(depth):
                layers.append(GroupedBottleneck(cin, cout, cout, 2 if j == 0 else 1,
                                                max(1, cout // 8), se=True))  # fmt: skip
                cin = cout
        return nn.Sequential(*layers, Classifier(cin))

    return {
        "alexnet": alexnet,
        "vgg19": vgg19,
        "squeezenet1_1": squeezenet1_1,
        "googlenet": googlenet,
        "inception_v3": inception_v3,
        "densenet121": densenet121,
        "shufflenet_v2": shufflenet_v2,
        "efficientnet_b0": efficientnet_b0,
        "resnext50_32x4d": resnext50_32x4d,
        "regnet_y_400mf": regnet_y_400mf,
    }


_DEFAULT_IMAGE = {"inception_v3": 299}


def build(name: str, *, sparsity: float, seed: int = 0, image: int = IMAGE, width: float = 1.0,
          batch: int = 1):  # fmt: skip
    """The seeded, pruned torch module of classic CNN ``name`` (eval mode)."""
    import torch

    torch.manual_seed(seed)
    model = _modules(width)[name]()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    with torch.no_grad():
        magnitude_prune(model, sparsity)
    randomize_batchnorm(model, torch.from_numpy(_images(max(batch, 2), image, seed + 1)), seed)
    return model


def _images(batch: int, image: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, image, image), dtype=np.float32)


def _exporter(name: str) -> Callable[..., str]:
    def export(path: str | os.PathLike, *, sparsity: float, batch: int, seed: int,
               image: int | None = None, width: float = 1.0) -> str:  # fmt: skip
        import torch

        size = image or _DEFAULT_IMAGE.get(name, IMAGE)
        model = build(name, sparsity=sparsity, seed=seed, image=size, width=width, batch=batch)
        x = torch.from_numpy(_images(batch, size, seed))
        return export_onnx(model, (x,), path, ["input"], ["output"])

    return export


def _inputs_for(name: str) -> Callable[..., dict[str, np.ndarray]]:
    def inputs(*, batch: int = 1, seed: int = 0, image: int | None = None,
               width: float = 1.0) -> dict[str, np.ndarray]:  # fmt: skip
        return {"input": _images(batch, image or _DEFAULT_IMAGE.get(name, IMAGE), seed)}

    return inputs


_DESCRIPTIONS = {
    "alexnet": "AlexNet: 11x11 stride-4 stem, 5x5, adaptive 6x6 pool, three fc",
    "vgg19": "VGG-19 BN: 16 3x3 convs, adaptive 7x7 pool, fc 4096-4096-1000",
    "squeezenet1_1": "SqueezeNet 1.1: Fire modules (concat), ceil-mode pools, conv classifier",
    "googlenet": "GoogLeNet (Inception v1, BN): four concatenated branches, ceil-mode pools",
    "inception_v3": "Inception v3 (one block of each kind): 1x7/7x1, 1x3/3x1, grid reductions",
    "densenet121": "DenseNet-121: BN-ReLU-conv dense blocks (concat), avg-pool transitions",
    "shufflenet_v2": "ShuffleNetV2 x1.0: channel split, depthwise, channel shuffle",
    "efficientnet_b0": "EfficientNet-B0: MBConv with SiLU, squeeze-excitation, 5x5 depthwise",
    "resnext50_32x4d": "ResNeXt-50 32x4d: grouped 3x3 convs in bottlenecks",
    "regnet_y_400mf": "RegNetY-400MF: grouped convs (group width 8) with squeeze-excitation",
}

MODELS = [
    ZooModel(
        name,
        "classic",
        _exporter(name),
        _inputs_for(name),
        _DESCRIPTIONS[name],
        {"image": _DEFAULT_IMAGE.get(name, IMAGE), "width": 1.0},
    )  # fmt: skip
    for name in _DESCRIPTIONS
]
